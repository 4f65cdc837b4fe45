"""The batch assets through real Dagster materializations, on a generated lake, checked
against independent pandas computations over the same raw records."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel

from journey_assets.assets.batch import (
    CHURN_AUC_CHECK,
    CHURN_PREDICTIONS,
    CUSTOMER_SEGMENTS,
    STATISTICS,
    TIME_SERIES,
    USER_FEATURES,
    ChurnConfig,
    build_batch_definitions,
    features_path,
)
from journey_assets.ml import churn as churn_ml
from journey_assets.partitions import AS_OF_PARTITIONS, data_days
from journey_assets.resources import LakeResource, build_resources
from journey_assets.schema import EVENT_TYPES, price_tier
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.events import write_event_lake
from journey_assets.transforms.features import FEATURE_COLUMNS
from journey_assets_tests.test_features import (
    assert_features_equal,
    pandas_user_features,
    reference_events,
    spark_events,
)

AS_OF = "2019-10-31"        # 45 days of history before, 14 days of future after it
BACKFILL_AS_OF = "2019-11-01"
LOOKBACK = 30
HORIZON = 14
#: The lake: 2019-09-17 .. 2019-11-14 (59 days: churn at AS_OF trains on 2019-10-17 with a
#: full 30-day lookback from 2019-09-18), with no events at all on GAP_DAY.
LAKE_START = "2019-09-17"
LAKE_DAYS = 59
GAP_DAY = date(2019, 9, 20)
RUN_CONFIG = {"ops": {
    # Fewer trees / iterations than the production defaults: same code, test-sized.
    CHURN_PREDICTIONS: {"config": {"num_trees": 30, "max_depth": 8}},
    CUSTOMER_SEGMENTS: {"config": {"k_min": 3, "k_max": 5, "max_iter": 15}},
}}


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """One Dagster instance for the module: it holds the dynamic as_of partitions (in a
    directory of its own, which other tests' instances cannot tear down)."""
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("instance"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def batch(spark, settings, tmp_path_factory, instance):
    """A 59-day synthetic lake (planted churn) with one empty day, and the batch definitions
    over it; the lake's days are the instance's partitions (what the schedule adds)."""
    own = dataclasses.replace(settings, data_dir=tmp_path_factory.mktemp("batch"),
                              partitions_start="2019-09-01")
    records = [r for r in generate_records(SyntheticConfig(
        n_events=55_000, seed=7, start=LAKE_START, days=LAKE_DAYS, duplicate_fraction=0.01,
        invalid_fraction=0.005)) if not (r["event_time"] or "").startswith(GAP_DAY.isoformat())]
    resources = build_resources(own)
    write_event_lake(spark_events(spark, records), resources["lake"].events_path)
    definitions = build_batch_definitions(own)
    events = reference_events(records)
    instance.add_dynamic_partitions(AS_OF_PARTITIONS, data_days(
        events["event_date"].min(), events["event_date"].max()))
    assets = {a.key.to_user_string(): a for a in definitions.assets}
    return {"settings": own, "resources": resources, "assets": assets,
            "definitions": definitions, "events": events, "instance": instance}


@pytest.fixture(scope="module")
def first_run(batch):
    result = dg.materialize(list(batch["assets"].values()), resources=batch["resources"],
                            partition_key=AS_OF, run_config=RUN_CONFIG,
                            instance=batch["instance"])
    assert result.success
    return {ev.materialization.asset_key.to_user_string(): ev.materialization.metadata
            for ev in result.get_asset_materialization_events()}, result


def _docs(mongo_db, collection: str, query: dict) -> pd.DataFrame:
    return pd.DataFrame(list(mongo_db[collection].find(query)))


def test_every_asset_materialized_with_metadata(first_run):
    metadata, result = first_run
    assert set(metadata) == {USER_FEATURES, CUSTOMER_SEGMENTS, CHURN_PREDICTIONS, TIME_SERIES,
                             STATISTICS}
    assert "| viewed |" in metadata[USER_FEATURES]["funnel"].value
    assert "High-value loyal" in metadata[CUSTOMER_SEGMENTS]["segment_profiles"].value
    assert Path(metadata[TIME_SERIES]["plot_path"].value).stat().st_size > 5_000
    assert metadata[TIME_SERIES]["plot"].value.startswith("![daily events](data:image/png")
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(CHURN_AUC_CHECK, True)]


def test_feature_documents_equal_pandas(first_run, batch, mongo_db):
    docs = _docs(mongo_db, USER_FEATURES, {"as_of": AS_OF})
    assert (docs["_id"] == docs["user_id"].astype(str) + ":" + AS_OF).all()
    expected = pandas_user_features(batch["events"], date.fromisoformat(AS_OF), LOOKBACK)
    assert len(expected) > 1_000
    assert_features_equal(docs, expected)


def _pandas_churn_population(ev: pd.DataFrame, as_of: date) -> pd.Series:
    """Eligible users of as_of (bought, or active on >= 3 days, in the 30-day lookback) ->
    churned (no event in the 14 days after): the rule of ml/churn.py, again in pandas."""
    start = as_of - timedelta(days=LOOKBACK - 1)
    window = ev[(ev["event_date"] >= start) & (ev["event_date"] <= as_of)]
    by_user = window.groupby("user_id")
    eligible = ((by_user["event_type"].apply(lambda t: (t == "purchase").any()))
                | (by_user["event_date"].nunique() >= churn_ml.DEFAULT_MIN_ACTIVE_DAYS))
    later = ev[(ev["event_date"] > as_of)
               & (ev["event_date"] <= as_of + timedelta(days=HORIZON))]["user_id"]
    users = eligible[eligible].index
    return pd.Series((~users.isin(set(later))).astype(float), index=users)


def test_churn_model_quality_and_documents(first_run, batch, mongo_db):
    metadata, result = first_run
    meta = {k: v.value for k, v in metadata[CHURN_PREDICTIONS].items()}
    # The generator plants churn (decaying activity): learnable, but not perfectly.
    assert 0.7 <= meta["auc_roc"] < 0.99, meta["auc_roc"]
    assert meta["train_as_of"] == "2019-10-17" and meta["test_as_of"] == AS_OF
    for key in ("auc_pr", "precision", "recall", "precision_top_decile"):
        assert 0.0 < meta[key] <= 1.0
    # The base rate and the lift are measured on the eligible population of the test day.
    expected = _pandas_churn_population(batch["events"], date.fromisoformat(AS_OF))
    assert meta["test_users"] == len(expected)
    assert meta["base_rate"] == pytest.approx(expected.mean())
    assert meta["auc_pr_lift"] == pytest.approx(meta["auc_pr"] / expected.mean())
    [check] = result.get_asset_check_evaluations()
    assert check.passed == (meta["auc_pr_lift"] >= churn_ml.required_lift(
        expected.mean(), ChurnConfig().min_auc_pr_lift))
    # Every snapshot (train, test, score) had the full lookback, inside the lake.
    windows = {w["role"]: w for w in meta["snapshot_windows"]}
    lake_first = batch["events"]["event_date"].min()
    for role, as_of in (("train", "2019-10-17"), ("test", AS_OF), ("score", AS_OF)):
        first, last = (date.fromisoformat(d) for d in windows[role]["lookback"].split(" .. "))
        assert windows[role]["as_of"] == as_of and last == date.fromisoformat(as_of)
        assert (last - first).days + 1 == LOOKBACK and first >= lake_first
    docs = list(mongo_db[CHURN_PREDICTIONS].find({"as_of": AS_OF}))
    # Scored: exactly the eligible users; those who never qualified get no churn score.
    assert {d["user_id"] for d in docs} == set(expected.index)
    assert mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF}) > len(docs)
    for doc in docs:
        assert type(doc["churn_probability"]) is float and 0.0 <= doc["churn_probability"] <= 1.0
        assert doc["churn_prediction"] == int(doc["churn_probability"] >= 0.5)
        assert doc["model_version"] == meta["model_version"]
    assert Path(meta["model_path"]).exists()


def test_segments_documents_and_saved_model(first_run, batch, spark, mongo_db):
    metadata, _ = first_run
    meta = {k: v.value for k, v in metadata[CUSTOMER_SEGMENTS].items()}
    assert set(meta["silhouette_scores"]) == {"3", "4", "5"}
    assert meta["silhouette"] == max(meta["silhouette_scores"].values())
    docs = _docs(mongo_db, CUSTOMER_SEGMENTS, {"as_of": AS_OF}).set_index("user_id")
    assert len(docs) == mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF})
    assert set(docs["segment"]) == set(range(meta["k"]))
    names = {int(s): n for s, n in meta["segment_names"].items()}
    assert (docs["segment_name"] == docs["segment"].map(names)).all()
    assert len(set(names.values())) == meta["k"]
    # The saved model is the one that assigned the documents' segments.
    model = PipelineModel.load(meta["model_path"])
    features = spark.read.parquet(features_path(batch["resources"]["lake"], AS_OF))
    again = model.transform(features).select("user_id", "segment").toPandas().set_index("user_id")
    assert (again["segment"].sort_index() == docs["segment"].sort_index()).all()


def _daily_counts(events: pd.DataFrame, day: date) -> pd.DataFrame:
    days = [day - timedelta(days=i) for i in range(7, -1, -1)]
    counts = events.groupby(["event_date", "event_type"]).size()
    return pd.DataFrame({t: [int(counts.get((d, t), 0)) for d in days] for t in EVENT_TYPES},
                        index=days)


def test_time_series_documents_equal_pandas(first_run, batch, mongo_db):
    day = date.fromisoformat(AS_OF)
    table = _daily_counts(batch["events"], day)
    docs = {d["event_type"]: d for d in mongo_db[TIME_SERIES].find({"date": AS_OF})}
    assert set(docs) == set(EVENT_TYPES)
    on_day = batch["events"][batch["events"]["event_date"] == day]
    for t in EVENT_TYPES:
        series = table[t]
        doc = docs[t]
        assert doc["_id"] == f"{AS_OF}:{t}"
        assert doc["event_count"] == series.iloc[-1]
        assert doc["ma_7d"] == pytest.approx(series.iloc[-7:].mean())
        assert doc["ma_3d"] == pytest.approx(series.iloc[-3:].mean())
        prev = series.iloc[-2]
        expected_growth = (series.iloc[-1] - prev) / prev if prev else None
        assert doc["dod_growth"] == pytest.approx(expected_growth)
        hours = on_day[on_day["event_type"] == t]["event_time"].dt.hour.value_counts()
        assert doc["hourly_counts"] == [int(hours.get(h, 0)) for h in range(24)]


def test_statistics_documents(first_run, batch, mongo_db):
    docs = {d["analysis"]: d for d in mongo_db[STATISTICS].find({"as_of": AS_OF})}
    assert set(docs) == {"price_percentiles", "feature_correlation",
                         "chi_square_price_tier_purchase", "feature_distribution"}
    day = date.fromisoformat(AS_OF)
    ev = batch["events"]
    window = ev[(ev["event_date"] > day - timedelta(days=LOOKBACK)) & (ev["event_date"] <= day)]
    tiers = window.assign(tier=window["price"].map(price_tier),
                          purchase=window["event_type"] == "purchase")
    table = tiers.groupby("tier")["purchase"].agg(["size", "sum"])
    chi = docs["chi_square_price_tier_purchase"]
    assert {t: (c["events"], c["purchases"]) for t, c in chi["contingency"].items()} == {
        t: (int(r["size"]), int(r["sum"])) for t, r in table.iterrows()}
    observed = np.array([[r["size"] - r["sum"], r["sum"]] for _, r in table.iterrows()])
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    assert chi["statistic"] == pytest.approx(((observed - expected) ** 2 / expected).sum())
    assert chi["degrees_of_freedom"] == len(table) - 1

    features = pandas_user_features(ev, day, LOOKBACK)
    shape = docs["feature_distribution"]["columns"]
    for column in ("frequency", "monetary", "recency_days"):
        x = features[column].to_numpy(dtype=float)
        m2, m3, m4 = (((x - x.mean()) ** p).mean() for p in (2, 3, 4))
        assert shape[column]["skewness"] == pytest.approx(m3 / m2 ** 1.5, rel=1e-6)
        assert shape[column]["kurtosis"] == pytest.approx(m4 / m2 ** 2 - 3, rel=1e-6)
    corr = docs["feature_correlation"]["matrix"]
    expected_corr = features[list(FEATURE_COLUMNS)].astype(float).corr()
    assert corr["frequency"]["views"] == pytest.approx(expected_corr.loc["frequency", "views"])
    assert corr["recency_days"]["active_days"] == pytest.approx(
        expected_corr.loc["recency_days", "active_days"])
    by_cat = {p["category_l1"]: p for p in docs["price_percentiles"]["by_category_l1"]}
    prices = window.assign(cat=window["category_code"].fillna("unknown").str.split(".").str[0])
    for cat, group in prices.groupby("cat"):
        assert by_cat[cat]["events"] == len(group)
        lo, hi = np.quantile(group["price"], [0.49, 0.51], method="nearest")
        assert lo <= by_cat[cat]["p50"] <= hi


def test_backfill_and_rematerialize_are_idempotent(first_run, batch, mongo_db):
    assets = [batch["assets"][USER_FEATURES], batch["assets"][TIME_SERIES]]
    resources = batch["resources"]
    # A second partition (a backfill of another day) leaves the first one alone.
    before = mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF})
    assert dg.materialize(assets, resources=resources, partition_key=BACKFILL_AS_OF,
                          instance=batch["instance"]).success
    expected = pandas_user_features(batch["events"], date.fromisoformat(BACKFILL_AS_OF), LOOKBACK)
    assert mongo_db[USER_FEATURES].count_documents({"as_of": BACKFILL_AS_OF}) == len(expected)
    assert mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF}) == before
    assert mongo_db[TIME_SERIES].count_documents({"date": BACKFILL_AS_OF}) == len(EVENT_TYPES)

    # Re-materializing a partition: same documents, no duplicates, stale ones removed.
    mongo_db[USER_FEATURES].insert_one({"_id": f"-1:{AS_OF}", "user_id": -1, "as_of": AS_OF})
    assert dg.materialize(assets, resources=resources, partition_key=AS_OF,
                          instance=batch["instance"]).success
    ids = [d["_id"] for d in mongo_db[USER_FEATURES].find({"as_of": AS_OF}, {"_id": 1})]
    assert len(ids) == len(set(ids)) == before
    assert f"-1:{AS_OF}" not in ids
    ts_ids = [d["_id"] for d in mongo_db[TIME_SERIES].find({}, {"_id": 1})]
    assert len(ts_ids) == len(set(ts_ids)) == 2 * len(EVENT_TYPES)


def _evaluate_schedule(batch, instance: dg.DagsterInstance, at: datetime,
                       lake: LakeResource | None = None):
    definitions = batch["definitions"]
    # Resources of its own: a schedule context binds them to its (short-lived) instance.
    resources = {**build_resources(batch["settings"]), **({"lake": lake} if lake else {})}
    repo = dg.Definitions(assets=definitions.assets, jobs=definitions.jobs,
                          schedules=definitions.schedules,
                          resources=resources).get_repository_def()
    schedule = repo.get_schedule_def("batch_analytics_every_6h")
    assert schedule.cron_schedule == "0 */6 * * *"
    # As a context manager: its exit closes what the context opened (resources, the instance's
    # context state), which would otherwise outlive this test's short-lived instance.
    with dg.build_schedule_context(instance=instance, repository_def=repo,
                                   scheduled_execution_time=at, resources=resources) as context:
        return schedule.evaluate_tick(context)


def test_schedule_requests_the_lakes_last_complete_day(batch, tmp_path):
    events = batch["events"]
    first, last = events["event_date"].min(), events["event_date"].max()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        # Replayed 2019 data, evaluated years later: the lake's last day is complete.
        result = _evaluate_schedule(batch, instance, datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
        assert [r.partition_key for r in result.run_requests] == [last.isoformat()]
        # The partition set is the data's days (from the configured floor), nothing after.
        floor = max(first, date.fromisoformat(batch["settings"].partitions_start))
        expected_keys = [(floor + timedelta(days=i)).isoformat()
                         for i in range((last - floor).days + 1)]
        assert instance.get_dynamic_partitions(AS_OF_PARTITIONS) == expected_keys
        # While the last day is still being written, the day before it is the latest complete.
        result = _evaluate_schedule(batch, instance, datetime.combine(
            last, datetime.min.time(), tzinfo=UTC) + timedelta(hours=18))
        assert [r.partition_key for r in result.run_requests] == [
            (last - timedelta(days=1)).isoformat()]
        # An empty lake: a clear skip, not an error.
        empty = LakeResource(data_dir=str(Path(batch["settings"].data_dir) / "no_lake_here"))
        result = _evaluate_schedule(batch, instance, datetime(2026, 5, 4, 12, 0, tzinfo=UTC),
                                    lake=empty)
        assert not result.run_requests and "no events" in result.skip_message


def test_moving_averages_on_the_lakes_first_days_follow_the_data_calendar(batch, mongo_db):
    """ma_7d / ma_3d on the first days of the lake = pandas rolling(min_periods=1) over the
    data's own days (from its first event day; the empty GAP_DAY counts as a zero day)."""
    ev = batch["events"]
    first = ev["event_date"].min()
    assert first == date.fromisoformat(LAKE_START) and GAP_DAY not in set(ev["event_date"])
    for day in (first + timedelta(days=2), GAP_DAY + timedelta(days=2)):
        assert dg.materialize([batch["assets"][TIME_SERIES]], resources=batch["resources"],
                              partition_key=day.isoformat(),
                              instance=batch["instance"]).success
        days = pd.date_range(first, day, freq="D").date
        counts = ev.groupby(["event_date", "event_type"]).size()
        docs = {d["event_type"]: d for d in mongo_db[TIME_SERIES].find({"date": day.isoformat()})}
        for t in EVENT_TYPES:
            series = pd.Series([int(counts.get((d, t), 0)) for d in days], index=days,
                               dtype=float)
            assert docs[t]["event_count"] == series.iloc[-1]
            assert docs[t]["ma_7d"] == pytest.approx(
                series.rolling(7, min_periods=1).mean().iloc[-1])
            assert docs[t]["ma_3d"] == pytest.approx(
                series.rolling(3, min_periods=1).mean().iloc[-1])


def test_churn_on_a_lake_too_short_for_the_lookback_fails_with_the_missing_days(
        spark, settings, tmp_path_factory):
    """40 days of data; 30-day lookback + train and test horizons of 14 days need 58."""
    own = dataclasses.replace(settings, data_dir=tmp_path_factory.mktemp("short"))
    records = list(generate_records(SyntheticConfig(n_events=4_000, seed=3, days=40)))
    resources = build_resources(own)
    write_event_lake(spark_events(spark, records), resources["lake"].events_path)
    definitions = build_batch_definitions(own)
    assets = {a.key.to_user_string(): a for a in definitions.assets}
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("short_instance"))) \
            as instance:
        instance.add_dynamic_partitions(AS_OF_PARTITIONS, [AS_OF])
        result = dg.materialize([assets[USER_FEATURES], assets[CHURN_PREDICTIONS]],
                                resources=resources, partition_key=AS_OF, instance=instance,
                                raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    days = reference_events(records)["event_date"]
    missing = LOOKBACK + 2 * HORIZON - ((days.max() - days.min()).days + 1)
    assert missing == 18
    message = failure.step_failure_data.error.to_string()
    assert f"{missing} day(s) missing" in message, message
