"""Correctness of the streaming pipeline against an independent pandas computation.

Generated events (with exact duplicates and invalid rows) plus a few malformed JSON payloads
go through the real broker and an available-now run; every collection must equal what plain
Python/pandas computes from the same input rows.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.lake import read_table_arrow
from journey_assets.resources.kafka import ensure_topic
from journey_assets.schema import category_l1, event_id, validate_record
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.ledger import DATA_QUALITY_LEDGER, ledger_problems
from journey_assets.streaming.pipeline import StreamOptions, run_stream, target_from
from journey_assets_tests.session_truth import (
    assert_funnel_equal,
    assert_sessions_equal,
    truth_funnel,
    truth_sessions,
)

MALFORMED_PAYLOADS = (b"{not json", b"", b"[1, 2, 3", b"\xff\xfe garbage")
WINDOWS = (("tumbling_5m", 300, 0), ("sliding_10m_5m", 600, 0), ("sliding_10m_5m", 600, 300))


# -- the independent truth (plain Python over the input rows) --------------------------------
@dataclasses.dataclass
class Truth:
    dead_letters: int
    events: dict[str, dict[str, Any]]          # event_id -> typed event
    aggregations: dict[tuple, dict[str, Any]]  # (type, start, event_type, l1) -> metrics
    sessions: dict[str, dict[str, Any]]
    funnel: dict[str, dict[str, Any]]


def compute_truth(records: Iterable[Mapping[str, Any]], malformed: int) -> Truth:
    events: dict[str, dict[str, Any]] = {}
    invalid = 0
    for rec in records:
        event, _reason = validate_record(rec)
        if event is None:
            invalid += 1
            continue
        events.setdefault(event_id(event), event)

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for ev in events.values():
        ts = int(ev["event_time"].timestamp())
        for wtype, _length, back in WINDOWS:
            start = ts // 300 * 300 - back
            groups[(wtype, start, ev["event_type"], category_l1(ev["category_code"]))].append(ev)

    aggregations = {}
    for key, evs in groups.items():
        prices = [e["price"] for e in evs]
        aggregations[key] = {
            "event_count": len(evs), "unique_users": len({e["user_id"] for e in evs}),
            "revenue": sum(e["price"] for e in evs if e["event_type"] == "purchase"),
            "avg_price": sum(prices) / len(prices), "min_price": min(prices),
            "max_price": max(prices),
        }
    session_rows = truth_sessions(events.values())
    funnel = truth_funnel(session_rows)
    return Truth(invalid + malformed, events, aggregations, session_rows, funnel)


# -- comparing MongoDB with the truth -------------------------------------------------------
def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def assert_ledger_holds(db: Database, unique_events: int | None = None) -> list[dict]:
    """Every micro-batch's ledger document satisfies both identities, no offset was skipped,
    and (``unique_events``) the lake inserts of all batches add up to the unique events."""
    docs = list(db[DATA_QUALITY_LEDGER].find())
    assert docs, "no ledger document"
    assert [p for doc in docs for p in ledger_problems(doc)] == []
    assert all(d["skipped_offsets"] == 0 and d["gap_offsets"] == 0 for d in docs)
    if unique_events is not None:
        assert sum(d["inserted"] for d in docs) == unique_events
    return docs


def assert_matches_truth(db: Database, truth: Truth) -> None:
    assert db.dead_letter_events.count_documents({}) == truth.dead_letters
    assert_ledger_holds(db, len(truth.events))

    stored_ids = {d["_id"] for d in db.enriched_events.find({}, {"_id": 1})}
    assert stored_ids == set(truth.events)
    sample = db.enriched_events.find_one({"event_type": "purchase"})
    expected = truth.events[sample["_id"]]
    assert _utc(sample["event_time"]) == expected["event_time"]  # a BSON date
    assert sample["price"] == expected["price"]
    assert sample["category_l1"] == category_l1(expected["category_code"])

    docs = list(db.event_aggregations.find())
    got = {(d["window_type"], int(_utc(d["window_start"]).timestamp()), d["event_type"],
            d["category_l1"]): d for d in docs}
    assert len(docs) == len(got) == len(truth.aggregations)
    assert set(got) == set(truth.aggregations)
    for key, want in truth.aggregations.items():
        doc = got[key]
        assert doc["event_count"] == want["event_count"], key
        assert doc["revenue"] == pytest.approx(want["revenue"], abs=0.011), key
        assert doc["min_price"] == want["min_price"] and doc["max_price"] == want["max_price"]
        assert doc["avg_price"] == pytest.approx(want["avg_price"], abs=1e-3), key
        # HyperLogLog++ estimate: contract is within 2% (exact at these small counts)
        assert abs(doc["unique_users"] - want["unique_users"]) <= max(
            1, math.ceil(0.02 * want["unique_users"])), key
        length = 300 if key[0] == "tumbling_5m" else 600
        assert (_utc(doc["window_end"]) - _utc(doc["window_start"])).total_seconds() == length

    assert_sessions_equal({d["_id"]: d for d in db.user_session_analytics.find()},
                          truth.sessions)
    assert_funnel_equal({d["_id"]: d for d in db.conversion_funnel.find()}, truth.funnel)


# -- fixtures -------------------------------------------------------------------------------
def send_malformed(bootstrap: str, topic: str) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for payload in MALFORMED_PAYLOADS:
        producer.send(topic, key=b"malformed", value=payload)
    producer.flush()
    producer.close()
    return len(MALFORMED_PAYLOADS)


@pytest.fixture
def stream_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Own topic, database and data dir (lake + checkpoints) for one streaming test."""
    suffix = uuid.uuid4().hex[:6]
    return dataclasses.replace(settings, topic=f"{settings.topic}_s{suffix}",
                               mongo_db=f"{settings.mongo_db}_s{suffix}", data_dir=tmp_path)


@pytest.fixture
def stream_db(stream_settings: Settings):
    client: MongoClient = MongoClient(stream_settings.mongo_uri, tz_aware=True)
    yield client[stream_settings.mongo_db]
    client.drop_database(stream_settings.mongo_db)
    client.close()


def test_history_queries_trigger_less_often_unless_configured() -> None:
    """Continuous mode: the aggregations at ``trigger_seconds``; the events and sessions
    queries (whose batches cost mostly a fixed amount) at 60 and 45 s unless set, never more
    often than the aggregations."""
    default = StreamOptions(mode="continuous")
    assert (default.trigger_seconds, default.events_trigger, default.sessions_trigger) == (
        2.0, 60.0, 45.0)
    slow = StreamOptions(mode="continuous", trigger_seconds=90.0)
    assert (slow.events_trigger, slow.sessions_trigger) == (90.0, 90.0)
    tuned = StreamOptions(mode="continuous", events_trigger_seconds=20.0,
                          sessions_trigger_seconds=30.0)
    assert (tuned.events_trigger, tuned.sessions_trigger) == (20.0, 30.0)


def test_available_now_run_equals_independent_computation(spark, stream_settings: Settings,
                                                          stream_db: Database) -> None:
    config = SyntheticConfig(n_events=12_000, seed=7, days=2, duplicate_fraction=0.02,
                             invalid_fraction=0.01)
    records = list(generate_records(config))
    ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=3)
    summary = produce(records, stream_settings.kafka_bootstrap, stream_settings.topic,
                      progress=False)
    assert summary.sent == len(records)
    malformed = send_malformed(stream_settings.kafka_bootstrap, stream_settings.topic)
    truth = compute_truth(records, malformed)
    assert len(truth.events) < len(records) - truth.dead_letters + malformed  # dups exist

    progress: list[dict[str, Any]] = []
    result = run_stream(spark, target_from(stream_settings), StreamOptions(mode="available-now"),
                        on_progress=lambda _q, rec: progress.append(rec))
    assert result.input_rows["events"] == len(records) + malformed
    assert result.input_rows["aggregations"] == len(records) + malformed
    assert result.input_rows["sessions"] == len(records) + malformed
    assert {rec["query"] for rec in progress} == {"events", "aggregations", "sessions"}
    assert_matches_truth(stream_db, truth)
    # The ledger against plain Python over the same records: every record counted once, the
    # dead letters by the schema's Python twin's reasons.
    ledger = assert_ledger_holds(stream_db, len(truth.events))
    assert sum(d["records_in"] for d in ledger) == len(records) + malformed
    reasons = Counter(reason for _ev, reason in map(validate_record, records) if reason)
    reasons["malformed_json"] += malformed
    assert sum((Counter(d["dead_lettered"]) for d in ledger), Counter()) == reasons
    assert sum(d["duplicates_in_batch"] + d["duplicates_in_lake"] for d in ledger) == (
        len(records) - sum(reasons.values()) + malformed - len(truth.events))

    # A second run over the same checkpoints reads nothing new and changes nothing.
    again = run_stream(spark, target_from(stream_settings), StreamOptions(mode="available-now"))
    assert sum(again.input_rows.values()) == 0
    assert_matches_truth(stream_db, truth)

    # The lake holds each unique event exactly once, read without Spark (delta-rs).
    target = target_from(stream_settings)
    lake_ids = read_table_arrow(target.events_path).to_table(columns=["event_id"])
    assert sorted(lake_ids.column("event_id").to_pylist()) == sorted(truth.events)
    dead = read_table_arrow(target.dead_letters_path).to_table(columns=["_id"])
    assert dead.num_rows == truth.dead_letters


def test_catchup_materializes_the_streaming_assets_through_dagster(
        spark, stream_settings: Settings, stream_db: Database) -> None:
    import dagster as dg

    from journey_assets.assets.streaming import (
        STREAMING_OP,
        STREAMING_SPECS,
        ledger_identity_holds,
        no_offsets_skipped,
        streaming_pipeline,
    )
    from journey_assets.resources import build_resources

    records = list(generate_records(SyntheticConfig(n_events=1_500, seed=5, days=1,
                                                    invalid_fraction=0.02)))
    produce(records, stream_settings.kafka_bootstrap, stream_settings.topic, progress=False)
    truth = compute_truth(records, malformed=0)

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [streaming_pipeline, ledger_identity_holds, no_offsets_skipped], instance=instance,
            resources=build_resources(stream_settings),
            run_config={"ops": {STREAMING_OP: {"config": {
                "mode": "available-now", "materialize_every_s": 0.0}}}})
        assert result.success
        keys = {m.asset_key for m in result.get_asset_materialization_events()
                for m in [m.event_specific_data.materialization]}
        assert keys == {spec.key for spec in STREAMING_SPECS}
        # per-micro-batch materializations carry rows in and offsets
        mid_run = [e.event_specific_data.materialization
                   for e in result.get_asset_materialization_events()
                   if "rows_in_since_last" in e.event_specific_data.materialization.metadata]
        assert mid_run
        assert sum(m.metadata["rows_in_since_last"].value for m in mid_run
                   if m.asset_key == dg.AssetKey("enriched_events")) == len(records)
        # The ledger: its asset shows the last batch's figures, and both checks pass.
        ledger = [m for m in mid_run if m.asset_key == dg.AssetKey(DATA_QUALITY_LEDGER)]
        assert ledger and ledger[-1].metadata["ledger_skipped_offsets"].value == 0
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"ledger_identity_holds": True, "no_offsets_skipped": True}
    assert stream_db.enriched_events.count_documents({}) == len(truth.events)
    assert stream_db.dead_letter_events.count_documents({}) == truth.dead_letters
