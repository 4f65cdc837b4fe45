"""ML building blocks: snapshot planning and labels (no leakage), segment naming, scoring."""

from __future__ import annotations

from datetime import date

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
    snapshot = churn_ml.labelled_snapshot(events, "2019-10-10", 30, 14)
    labels = {r.user_id: r.churned for r in snapshot.collect()}
    assert labels == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}
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
