"""The batch assets through real Dagster materializations, on a generated lake, checked
against independent pandas computations over the same raw records."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
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
    build_batch_definitions,
    features_path,
)
from journey_assets.resources import build_resources
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

AS_OF = "2019-10-31"        # 31 days of history before, 14 days of future after it
BACKFILL_AS_OF = "2019-11-01"
LOOKBACK = 30
RUN_CONFIG = {"ops": {
    # Fewer trees / iterations than the production defaults: same code, test-sized.
    CHURN_PREDICTIONS: {"config": {"num_trees": 30, "max_depth": 8}},
    CUSTOMER_SEGMENTS: {"config": {"k_min": 3, "k_max": 5, "max_iter": 15}},
}}


@pytest.fixture(scope="module")
def batch(spark, settings, tmp_path_factory):
    """A 45-day synthetic lake (planted churn) and the batch definitions over it."""
    own = dataclasses.replace(settings, data_dir=tmp_path_factory.mktemp("batch"),
                              partitions_start="2019-10-01")
    records = list(generate_records(SyntheticConfig(
        n_events=45_000, seed=7, days=45, duplicate_fraction=0.01, invalid_fraction=0.005)))
    resources = build_resources(own)
    write_event_lake(spark_events(spark, records), resources["lake"].events_path)
    definitions = build_batch_definitions(own)
    assets = {a.key.to_user_string(): a for a in definitions.assets}
    return {"settings": own, "resources": resources, "assets": assets,
            "definitions": definitions, "events": reference_events(records)}


@pytest.fixture(scope="module")
def first_run(batch):
    result = dg.materialize(list(batch["assets"].values()), resources=batch["resources"],
                            partition_key=AS_OF, run_config=RUN_CONFIG)
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


def test_churn_model_quality_and_documents(first_run, mongo_db):
    metadata, _ = first_run
    meta = {k: v.value for k, v in metadata[CHURN_PREDICTIONS].items()}
    # The generator plants churn (decaying activity): learnable, but not perfectly.
    assert 0.7 <= meta["auc_roc"] < 0.99, meta["auc_roc"]
    assert meta["train_as_of"] == "2019-10-17" and meta["test_as_of"] == AS_OF
    for key in ("auc_pr", "precision", "recall"):
        assert 0.0 < meta[key] <= 1.0
    docs = list(mongo_db[CHURN_PREDICTIONS].find({"as_of": AS_OF}))
    users = mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF})
    assert len(docs) == users
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
    assert dg.materialize(assets, resources=resources, partition_key=BACKFILL_AS_OF).success
    expected = pandas_user_features(batch["events"], date.fromisoformat(BACKFILL_AS_OF), LOOKBACK)
    assert mongo_db[USER_FEATURES].count_documents({"as_of": BACKFILL_AS_OF}) == len(expected)
    assert mongo_db[USER_FEATURES].count_documents({"as_of": AS_OF}) == before
    assert mongo_db[TIME_SERIES].count_documents({"date": BACKFILL_AS_OF}) == len(EVENT_TYPES)

    # Re-materializing a partition: same documents, no duplicates, stale ones removed.
    mongo_db[USER_FEATURES].insert_one({"_id": f"-1:{AS_OF}", "user_id": -1, "as_of": AS_OF})
    assert dg.materialize(assets, resources=resources, partition_key=AS_OF).success
    ids = [d["_id"] for d in mongo_db[USER_FEATURES].find({"as_of": AS_OF}, {"_id": 1})]
    assert len(ids) == len(set(ids)) == before
    assert f"-1:{AS_OF}" not in ids
    ts_ids = [d["_id"] for d in mongo_db[TIME_SERIES].find({}, {"_id": 1})]
    assert len(ts_ids) == len(set(ts_ids)) == 2 * len(EVENT_TYPES)


def test_schedule_requests_latest_complete_day(batch):
    definitions = batch["definitions"]
    repo = dg.Definitions(assets=definitions.assets, jobs=definitions.jobs,
                          schedules=definitions.schedules,
                          resources=batch["resources"]).get_repository_def()
    schedule = repo.get_schedule_def("batch_analytics_every_6h")
    assert schedule.cron_schedule == "0 */6 * * *"
    with dg.instance_for_test() as instance:
        from datetime import UTC, datetime

        context = dg.build_schedule_context(
            instance=instance, repository_def=repo,
            scheduled_execution_time=datetime(2019, 11, 2, 18, 0, tzinfo=UTC))
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2019-11-01"]
