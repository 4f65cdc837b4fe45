"""Dimension assets through Dagster: kafka_replay job -> topic -> dimension tables + checks.

Expected values are computed independently with pandas from the very records that were sent.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pytest

from journey_assets.assets.dimensions import DIMENSION_CHECKS, dimension_tables
from journey_assets.assets.ingestion import TOPIC_ASSET_KEY, customer_events_topic, kafka_replay
from journey_assets.lake import read_table_arrow
from journey_assets.resources import build_resources
from journey_assets.schema import CSV_COLUMNS, category_l1, validate_record
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.dimensions import user_demographics

N_EVENTS = 12_000
SEED = 21
INVALID = 0.01


@pytest.fixture(scope="module")
def expected_events() -> pd.DataFrame:
    """Unique valid events of the replay, typed, computed without Spark."""
    config = SyntheticConfig(n_events=N_EVENTS, seed=SEED, invalid_fraction=INVALID)
    typed = [ev for ev, _ in map(validate_record, generate_records(config)) if ev is not None]
    df = pd.DataFrame(typed, columns=list(CSV_COLUMNS))
    return df.drop_duplicates(subset=list(CSV_COLUMNS)).reset_index(drop=True)


@pytest.fixture(scope="module")
def materialized(settings, spark, mongo_db):
    """Run the replay job (it creates the topic), then materialize the three dimensions."""
    run_settings = dataclasses.replace(settings, topic=f"{settings.topic}_dimensions")
    resources = build_resources(run_settings)
    replay = kafka_replay.execute_in_process(
        run_config={"ops": {"replay_events": {"config": {
            "source": "synthetic", "events": N_EVENTS, "seed": SEED,
            "invalid_fraction": INVALID}}}},
        resources=resources,
    )
    assert replay.success
    result = dg.materialize([customer_events_topic, dimension_tables, *DIMENSION_CHECKS],
                            resources=resources)
    return replay, result, resources


def test_replay_records_the_topic_materialization(materialized):
    replay, _, _ = materialized
    [mat] = [m for m in replay.get_asset_materialization_events()
             if m.asset_key == TOPIC_ASSET_KEY]
    meta = mat.materialization.metadata
    assert meta["sent"].value == N_EVENTS
    assert meta["invalid"].value == round(N_EVENTS * INVALID)
    assert sum(meta["end_offsets"].value.values()) == N_EVENTS
    assert len(meta["end_offsets"].value) == 3


def test_checks_pass(materialized):
    _, result, _ = materialized
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 3
    assert all(e.passed for e in evaluations), [(e.check_name, e.metadata) for e in evaluations]


def _table(resources, name: str) -> pd.DataFrame:
    """The dimension's latest Delta version, read without Spark (delta-rs)."""
    return read_table_arrow(resources["lake"].dimension_path(name)).to_table().to_pandas()


def test_product_catalog_matches_pandas(materialized, expected_events):
    _, result, resources = materialized
    got = _table(resources, "product_catalog").set_index("product_id").sort_index()
    ev = expected_events
    g = ev.groupby("product_id")
    want = pd.DataFrame({
        "typical_price": g["price"].median(),
        "popularity": g.size(),
        "views": ev[ev.event_type == "view"].groupby("product_id").size(),
        "purchases": ev[ev.event_type == "purchase"].groupby("product_id").size(),
        "category_id": g["category_id"].first(),
        "brand": g["brand"].first(),
        "category_code": g["category_code"].first(),
    }).fillna({"views": 0, "purchases": 0})
    assert list(got.index) == list(want.index)
    pd.testing.assert_series_equal(got["typical_price"], want["typical_price"], check_names=False)
    for col in ("popularity", "views", "purchases", "category_id"):
        assert (got[col].astype(int) == want[col].astype(int)).all(), col
    for col in ("brand", "category_code"):
        assert got[col].fillna("<null>").equals(want[col].fillna("<null>")), col
    assert (got["category_l1"] == want["category_code"].map(category_l1)).all()
    ranked = got.sort_values("popularity_rank")
    assert ranked["popularity"].is_monotonic_decreasing
    assert sorted(got["popularity_rank"]) == list(range(1, len(got) + 1))
    [mat] = [m for m in result.get_asset_materialization_events()
             if m.asset_key == dg.AssetKey("product_catalog")]
    assert mat.materialization.metadata["rows"].value == len(want)


def test_category_hierarchy_matches_pandas(materialized, expected_events):
    _, _, resources = materialized
    got = _table(resources, "category_hierarchy").set_index("category_id").sort_index()
    ev = expected_events
    codes = ev.dropna(subset=["category_code"]).groupby("category_id")["category_code"].first()
    assert list(got.index) == sorted(ev["category_id"].unique())
    assert got["events"].astype(int).equals(ev.groupby("category_id").size().astype(int))
    for cid, row in got.iterrows():
        code = codes.get(cid)
        parts = code.split(".") if code else []
        assert row["category_code"] == code or (code is None and row["category_code"] is None)
        assert row["category_l1"] == (parts[0] if parts else "unknown")
        assert row["category_l2"] == (parts[1] if len(parts) > 1 else None)
        assert row["category_l3"] == (parts[2] if len(parts) > 2 else None)
        assert row["depth"] == len(parts)


def test_user_dimension_matches_python_twin(materialized, expected_events):
    _, _, resources = materialized
    got = _table(resources, "user_dimension").set_index("user_id").sort_index()
    first_seen = expected_events.groupby("user_id")["event_time"].min()
    assert list(got.index) == list(first_seen.index)
    for uid, row in got.sample(300, random_state=1).iterrows():
        want = user_demographics(int(uid))
        for col in ("segment", "country", "city", "age_group", "gender"):
            assert row[col] == want[col], (uid, col)
        assert row["registration_date"] == min(want["registration_date"], first_seen[uid].date())
    # The hash spreads users over every value, roughly by the stated weights.
    assert got["segment"].value_counts(normalize=True)["mass_market"] == pytest.approx(0.45, abs=0.05)
    assert got["country"].nunique() == 6


def test_mongo_collections_mirror_the_lake(materialized, mongo_db):
    _, _, resources = materialized
    for name, key in (("product_catalog", "product_id"), ("category_hierarchy", "category_id"),
                      ("user_dimension", "user_id")):
        table = _table(resources, name)
        docs = list(mongo_db[name].find({}))
        assert len(docs) == len(table), name
        assert {d["_id"] for d in docs} == set(table[key]), name
    doc = mongo_db["user_dimension"].find_one({})
    # The serving layer's one rule: a DATE is ISO text, a TIMESTAMP a BSON date.
    users = _table(resources, "user_dimension").set_index("user_id")
    assert doc["registration_date"] == users.loc[doc["_id"], "registration_date"].isoformat()
    assert doc["first_seen"].tzinfo is not None and doc["first_seen"] < datetime(2019, 11, 1, tzinfo=UTC)


def test_rematerialize_is_idempotent(materialized, mongo_db):
    _, _, resources = materialized
    before = mongo_db["product_catalog"].count_documents({})
    result = dg.materialize([customer_events_topic, dimension_tables, *DIMENSION_CHECKS],
                            resources=resources, selection=["product_catalog"])
    assert result.success
    assert mongo_db["product_catalog"].count_documents({}) == before
