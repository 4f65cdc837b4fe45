"""ML building blocks: snapshot planning and labels (no leakage), segment naming, scoring."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from pyspark.sql import functions as F

from journey_assets.ml import churn as churn_ml
from journey_assets.ml.segments import fit_segments, name_segments, profiles_markdown
from journey_assets.transforms.features import build_user_features
from journey_assets_tests.test_features import _record, spark_events


def test_plan_uses_complete_label_windows_only():
    first, last = date(2019, 10, 1), date(2019, 11, 14)
    # as_of with a complete future: test on it, train one horizon earlier.
    plan = churn_ml.plan_snapshots("2019-10-31", 14, first, last)
    assert (plan.test_as_of, plan.train_as_of) == (date(2019, 10, 31), date(2019, 10, 17))
    assert plan.predict_label_complete
    # as_of near the end of data: its label is unknown, so test on the latest knowable day.
    plan = churn_ml.plan_snapshots("2019-11-10", 14, first, last)
    assert plan.predict_as_of == date(2019, 11, 10) and not plan.predict_label_complete
    assert (plan.test_as_of, plan.train_as_of) == (date(2019, 10, 31), date(2019, 10, 17))
    # The train label window ends where the test snapshot begins: no overlap with the test.
    assert churn_ml.label_window_complete(plan.train_as_of, 14, plan.test_as_of)
    with pytest.raises(ValueError, match="not enough history"):
        churn_ml.plan_snapshots("2019-10-20", 14, first, date(2019, 10, 25))


def test_every_snapshot_gets_the_full_lookback_or_the_plan_says_what_is_missing():
    first, last = date(2019, 9, 18), date(2019, 11, 14)
    plan = churn_ml.plan_snapshots("2019-10-31", 14, first, last, lookback_days=30)
    windows = {w.role: w for w in plan.windows}
    assert [w.as_of for w in plan.windows] == [date(2019, 10, 17), date(2019, 10, 31),
                                               date(2019, 10, 31)]
    for w in plan.windows:  # each one: 30 days of features inside the lake
        assert (w.as_of - w.lookback_start).days + 1 == 30 and w.lookback_start >= first
        assert (w.label_end - w.label_start).days + 1 == 14
        assert w.label_start == w.as_of + timedelta(days=1)
    assert windows["train"].lookback_start == first  # this lake is exactly long enough
    assert windows["test"].label_end <= last and plan.read_span == (first, last)
    # One day shorter: one day missing, and the message says so.
    with pytest.raises(churn_ml.NotEnoughHistory, match=r"1 day\(s\) missing") as short:
        churn_ml.plan_snapshots("2019-10-31", 14, first + timedelta(days=1), last, 30)
    assert short.value.missing_days == 1
    # An October-only lake (the case): 31 days, 58 needed.
    with pytest.raises(churn_ml.NotEnoughHistory, match=r"27 day\(s\) missing"):
        churn_ml.plan_snapshots("2019-10-31", 14, date(2019, 10, 1), date(2019, 10, 31), 30)


def test_labels_look_only_at_the_future(spark):
    events = spark_events(spark, [
        _record("2019-10-10 12:00:00", "purchase", 1, "a"),   # on as_of: a feature, not label
        _record("2019-10-09 12:00:00", "view", 2, "b"),
        _record("2019-10-11 00:00:00", "purchase", 2, "c"),   # first day after: not churned
        _record("2019-10-08 12:00:00", "view", 3, "d"),
        _record("2019-10-24 23:59:59", "purchase", 3, "e"),   # last day of the horizon
        _record("2019-10-07 12:00:00", "view", 4, "f"),
        _record("2019-10-25 00:00:00", "purchase", 4, "g"),   # after the horizon: churned
        _record("2019-10-12 08:00:00", "purchase", 5, "h"),   # only future: not in snapshot
    ])
    # Everyone active in the lookback is eligible here, and staying means buying.
    everyone = churn_ml.Eligibility(buyers=True, min_active_days=1,
                                    activity=churn_ml.PURCHASE_ACTIVITY)
    snapshot = churn_ml.labelled_snapshot(events, "2019-10-10", 30, 14, everyone)
    labels = {r.user_id: r.churned for r in snapshot.collect()}
    assert labels == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}
    # The default population: only user 1 bought (users 2-4 were active on one day only),
    # and staying means any event: user 1 has none after as_of.
    default = churn_ml.labelled_snapshot(events, "2019-10-10", 30, 14)
    assert {r.user_id: r.churned for r in default.collect()} == {1: 1.0}
    # Features of the labelled snapshot are exactly the as_of features (nothing from after).
    plain = build_user_features(events, "2019-10-10", 30)
    assert sorted(map(tuple, snapshot.drop(churn_ml.LABEL).collect())) == sorted(
        map(tuple, plain.collect()))


def test_segment_names_follow_profiles():
    base = {"users": 10, "recency_days": 5.0, "frequency": 10.0, "monetary": 0.0, "views": 9.0,
            "carts": 0.5, "purchases": 0.0, "sessions": 2.0, "cart_abandonment_rate": 0.1,
            "active_days": 2.0, "avg_price": 50.0}
    profiles = {
        0: {**base, "recency_days": 20.0},                                   # long gone
        1: {**base, "monetary": 900.0, "purchases": 3.0, "active_days": 8.0},  # spends
        2: {**base, "purchases": 0.5, "monetary": 40.0, "cart_abandonment_rate": 0.9},
        3: {**base, "views": 40.0},                                          # looks, never buys
        4: {**base, "purchases": 0.4, "monetary": 30.0, "active_days": 6.0},
        5: {**base, "purchases": 0.3, "monetary": 20.0},
        6: {**base, "purchases": 0.2, "monetary": 10.0},
    }
    names = name_segments(profiles)
    assert names[1] == "High-value loyal" and names[0] == "At-risk"
    assert names[3] == "Browsers" and names[2] == "Cart abandoners"
    assert names[4] == "Engaged regulars"
    assert {names[5], names[6]} == {"Occasional visitors 1", "Occasional visitors 2"}
    table = profiles_markdown(profiles, names)
    assert table.count("\n") == len(profiles) + 1 and "| 1 | High-value loyal |" in table


def test_segments_and_churn_scores_on_small_data(spark):
    from journey_assets.sources.synthetic import SyntheticConfig, generate_records

    records = list(generate_records(SyntheticConfig(n_events=8_000, seed=5, days=30)))
    events = spark_events(spark, records).cache()
    features = build_user_features(events, "2019-10-15", 15).cache()
    result = fit_segments(features, (2, 3), max_iter=10, max_fit_users=300)
    assert set(result.silhouettes) == {2, 3} and result.k in (2, 3)
    assert sum(p["users"] for p in result.profiles.values()) == features.count()
    assert sorted(result.names) == list(range(result.k))

    train = churn_ml.labelled_snapshot(events, "2019-10-15", 15, 14)
    model = churn_ml.fit_churn_model(train, num_trees=5, max_depth=4)
    scored = churn_ml.score(model, features, threshold=0.5)
    assert dict(scored.dtypes)[churn_ml.CHURN_PROBABILITY] == "double"
    assert dict(scored.dtypes)[churn_ml.CHURN_PREDICTION] == "int"
    bad = scored.where((F.col(churn_ml.CHURN_PROBABILITY) < 0)
                       | (F.col(churn_ml.CHURN_PROBABILITY) > 1)
                       | (F.col(churn_ml.CHURN_PREDICTION)
                          != (F.col(churn_ml.CHURN_PROBABILITY) >= 0.5).cast("int")))
    assert bad.count() == 0
    assert set(churn_ml.feature_importances(model)) == set(
        c for c in features.columns if c not in ("user_id", "as_of", "lookback_days"))


def _planted_churn_records(seed: int = 11) -> tuple[list[dict], set[int]]:
    """Buyers who visit on random days until their stop day (a third of them stop: the planted
    churners), and one-day visitors who never qualify as customers. Plain Python."""
    import random

    rng = random.Random(seed)
    first, days = date(2019, 9, 1), 75            # 2019-09-01 .. 2019-11-14
    records: list[dict] = []
    for user in range(1, 401):                     # buyers
        rate = rng.uniform(0.2, 0.6)
        stop = rng.randrange(10, days) if rng.random() < 0.35 else days
        bought = False
        for d in range(stop):
            if rng.random() >= rate:
                continue
            day = (first + timedelta(days=d)).isoformat()
            session = f"u{user}d{d}"
            for k in range(rng.randint(1, 4)):
                records.append(_record(f"{day} 1{k}:00:00", "view", user, session, 20.0 + k,
                                       user % 7, 100 + k))
            if not bought or rng.random() < 0.25:
                bought = True
                records.append(_record(f"{day} 15:00:00", "cart", user, session, 30.0, 3, 100))
                records.append(_record(f"{day} 15:05:00", "purchase", user, session, 30.0, 3,
                                       100))
    visitors = set(range(10_001, 10_801))          # never qualified: one day, views only
    for user in visitors:
        day = (first + timedelta(days=rng.randrange(days))).isoformat()
        for k in range(rng.randint(1, 3)):
            records.append(_record(f"{day} 09:0{k}:00", "view", user, f"v{user}", 12.0))
    return records, visitors


def _pandas_labels(records: list[dict], as_of: date, lookback: int, horizon: int,
                   min_active_days: int) -> dict[int, float]:
    """Eligible users of as_of (bought, or active on >= min_active_days days, in the lookback)
    -> 1.0 when they have no event in the horizon: the rule written again in plain Python."""
    start, end = as_of - timedelta(days=lookback - 1), as_of + timedelta(days=horizon)
    days: dict[int, set[date]] = {}
    buyers: set[int] = set()
    later: set[int] = set()
    for r in records:
        day, user = date.fromisoformat(r["event_time"][:10]), int(r["user_id"])
        if start <= day <= as_of:
            days.setdefault(user, set()).add(day)
            if r["event_type"] == "purchase":
                buyers.add(user)
        elif as_of < day <= end:
            later.add(user)
    return {u: float(u not in later) for u, active in days.items()
            if u in buyers or len(active) >= min_active_days}


def test_planted_churners_among_buyers_are_found_and_visitors_never_scored(spark):
    import numpy as np

    records, visitors = _planted_churn_records()
    events = spark_events(spark, records).cache()
    lookback, horizon = 30, 14
    plan = churn_ml.plan_snapshots("2019-10-31", horizon, date(2019, 9, 1), date(2019, 11, 14),
                                   lookback)
    predict = build_user_features(events, plan.predict_as_of, lookback).cache()
    train, test = churn_ml.train_test_snapshots(events, plan, lookback, predict)
    expected = _pandas_labels(records, plan.test_as_of, lookback, horizon,
                              churn_ml.DEFAULT_MIN_ACTIVE_DAYS)
    assert {r.user_id: r.churned for r in test.select("user_id", churn_ml.LABEL).collect()} \
        == expected
    assert not visitors & set(expected)
    base_rate = sum(expected.values()) / len(expected)
    assert 0.05 < base_rate < 0.45, base_rate      # churners exist, and are a minority

    model = churn_ml.fit_churn_model(train, num_trees=20, max_depth=5, seed=3)
    metrics = churn_ml.evaluate(model, test)
    assert metrics["base_rate"] == pytest.approx(base_rate)
    assert metrics["auc_pr"] >= 2 * base_rate, metrics
    assert metrics["auc_pr_lift"] == pytest.approx(metrics["auc_pr"] / base_rate)
    # Average precision again in numpy from the scored test users: the same verdict.
    scored = churn_ml.score(model, test).select(churn_ml.CHURN_PROBABILITY, churn_ml.LABEL) \
        .toPandas().sort_values(churn_ml.CHURN_PROBABILITY, ascending=False)
    hits = scored[churn_ml.LABEL].to_numpy()
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    average_precision = float((precision_at * hits).sum() / hits.sum())
    assert average_precision >= 2 * base_rate
    top = scored.head(int(np.ceil(0.1 * len(scored))))
    assert metrics["precision_top_decile"] >= 2 * base_rate
    assert top[churn_ml.LABEL].mean() >= 2 * base_rate

    # Scoring covers the eligible users of as_of only: visitors who never qualified get no
    # churn score at all (so never a churn prediction).
    served = churn_ml.score(model, churn_ml.eligible(predict)).select("user_id").collect()
    served_ids = {r.user_id for r in served}
    assert served_ids == set(expected) and not served_ids & visitors
    assert predict.where(F.col("user_id").isin(list(visitors))).count() > 0  # they were there
    train.unpersist()
    test.unpersist()
    events.unpersist()
    predict.unpersist()
