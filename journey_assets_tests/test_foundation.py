"""The foundation against real services: Kafka round trip through Spark, idempotent upserts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import dagster as dg
import pytest
from kafka import KafkaProducer
from pymongo.database import Database

from journey_assets.definitions import build_definitions
from journey_assets.serving import (
    MongoTarget,
    is_ferretdb,
    upsert_documents,
    write_documents,
    write_frame,
)
from journey_assets.settings import Settings
from journey_assets.streaming.ledger import DATA_QUALITY_LEDGER, ledger_document, ledger_problems


def test_kafka_records_read_back_through_spark_batch_source(spark, settings: Settings,
                                                            fresh_topic: str) -> None:
    sent = {f"k{i}": {"n": i, "text": f"value {i}", "price": i * 0.25} for i in range(1000)}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             key_serializer=str.encode,
                             value_serializer=lambda v: json.dumps(v).encode())
    for key, value in sent.items():
        producer.send(fresh_topic, key=key, value=value)
    producer.flush()
    producer.close()

    rows = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", fresh_topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v", "partition")
        .collect()
    )
    received = {r.k: json.loads(r.v) for r in rows}
    assert len(rows) == 1000
    assert received == sent
    assert {r.partition for r in rows} == {0, 1, 2}


@pytest.mark.parametrize("strategy", ["auto", "replace"])
def test_bulk_upsert_twice_leaves_exactly_one_document_each(mongo_db: Database,
                                                            strategy: str) -> None:
    coll = f"upsert_probe_{strategy}"
    # "replace" on FerretDB must stay under its ~100-matches-per-command stall (see mongo.py).
    batch = 2000 if strategy == "auto" else 90
    docs = [{"_id": f"doc-{i}", "i": i, "square": i * i} for i in range(1000)]
    assert upsert_documents(mongo_db, coll, docs, batch_size=batch, strategy=strategy) == 1000
    changed = [{**d, "square": -1} if d["i"] % 10 == 0 else d for d in docs]
    assert upsert_documents(mongo_db, coll, changed, batch_size=min(batch, 300),
                            strategy=strategy) == 1000
    assert mongo_db[coll].count_documents({}) == 1000
    assert mongo_db[coll].count_documents({"square": -1}) == 100
    assert mongo_db[coll].find_one({"_id": "doc-7"})["square"] == 49


def test_keep_existing_inserts_only_new_ids_and_counts_them(mongo_db: Database) -> None:
    coll = "keep_existing_probe"
    first = [{"_id": f"ev-{i}", "v": "first"} for i in range(0, 600)]
    assert upsert_documents(mongo_db, coll, first, batch_size=250, keep_existing=True) == 600
    # A later batch repeats 300 of them (with other content) and brings 300 new ones, one of
    # them twice: only the new ids are written, once; the repeated ids keep their document.
    later = ([{"_id": f"ev-{i}", "v": "later"} for i in range(300, 900)]
             + [{"_id": "ev-899", "v": "later"}])
    assert upsert_documents(mongo_db, coll, later, batch_size=250, keep_existing=True) == 300
    assert mongo_db[coll].count_documents({}) == 900
    assert mongo_db[coll].count_documents({"v": "first"}) == 600
    assert mongo_db[coll].find_one({"_id": "ev-450"})["v"] == "first"
    assert mongo_db[coll].find_one({"_id": "ev-750"})["v"] == "later"


def test_replacing_in_shared_commands_still_writes_a_document_deleted_meanwhile(
        mongo_db: Database) -> None:
    """The taken _ids are replaced REPLACES_PER_COMMAND to a command; a document deleted
    between the insert and its replacement is inserted again, the others replaced once."""
    from journey_assets.serving import REPLACES_PER_COMMAND, _replace_existing

    coll = mongo_db["replace_chunks_probe"]
    n = 2 * REPLACES_PER_COMMAND + 7  # two full commands and a partial one
    coll.insert_many([{"_id": f"s-{i}", "v": 0} for i in range(n)])
    coll.delete_one({"_id": "s-30"})  # inside the second command
    _replace_existing(coll, [{"_id": f"s-{i}", "v": 1} for i in range(n)])
    assert coll.count_documents({}) == n
    assert coll.count_documents({"v": 1}) == n


def test_driver_written_ledger_document_keeps_its_first_record_and_its_types(
        settings: Settings, mongo_db: Database) -> None:
    """The ledger's document is written by the driver (``write_documents``, no Spark job):
    insert-only, so a replayed batch keeps the first record; sub-documents and the UTC
    instant arrive as BSON, as ``arrow_documents`` would make them."""
    target = MongoTarget(settings.mongo_uri, settings.mongo_db)
    offsets = [{"partition": 0, "start": 0, "end": 12, "read": 12, "first_read": 0,
                "last_read": 11, "skipped": 0, "skipped_range": None, "gaps": 0}]
    first = ledger_document("app", 3, "topic", records_in=12, valid=10, source_rows=9,
                            inserted=7, dead_lettered={"missing_user_id": 2}, offsets=offsets)
    assert write_documents(target, DATA_QUALITY_LEDGER, [first], keep_existing=True) == 1
    replay = {**first, "inserted": 0, "duplicates_in_lake": 9}  # the replay finds them stored
    assert write_documents(target, DATA_QUALITY_LEDGER, [replay], keep_existing=True) == 0

    stored = mongo_db[DATA_QUALITY_LEDGER].find_one({"_id": "app:3"})
    assert mongo_db[DATA_QUALITY_LEDGER].count_documents({}) == 1
    assert (stored["inserted"], stored["duplicates_in_batch"], stored["duplicates_in_lake"]) == (
        7, 1, 2)
    assert stored["dead_lettered"] == {"missing_user_id": 2}
    assert stored["offsets"][0]["read"] == 12
    assert isinstance(stored["recorded_at"], datetime)
    assert abs((datetime.now(UTC) - stored["recorded_at"]).total_seconds()) < 60
    assert ledger_problems(stored) == []


def test_definitions_load_and_validate(settings: Settings) -> None:
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    assert set(defs.resources) >= {"kafka", "mongo", "spark", "lake"}


def test_write_frame_replaces_from_the_executors_one_task_on_ferretdb(
        spark, settings: Settings, mongo_db: Database) -> None:
    """A re-write replaces every document; on FerretDB (one SQLite writer) a write that may
    replace runs as one task, on MongoDB one per partition; insert-only writes stay parallel."""
    coll = "write_frame_probe"
    target = MongoTarget(settings.mongo_uri, settings.mongo_db)
    rows = spark.range(0, 3000, numPartitions=4).selectExpr(
        "concat('u', id) AS _id", "id AS n", "id * 2 AS twice")
    first = write_frame(rows, target, coll)
    second = write_frame(rows.selectExpr("_id", "n", "-1 AS twice"), target, coll)
    inserted = write_frame(rows, target, coll + "_insert_only", keep_existing=True)

    one_writer = is_ferretdb(mongo_db)
    assert (first.tasks, second.tasks) == ((1, 1) if one_writer else (4, 4))
    assert inserted.tasks == 4
    assert first.written == second.written == inserted.written == 3000
    docs = {d["_id"]: d for d in mongo_db[coll].find({}, {"twice": 1, "n": 1})}
    assert len(docs) == 3000
    assert {d["twice"] for d in docs.values()} == {-1}
    assert sorted(d["n"] for d in docs.values()) == list(range(3000))


def test_write_frame_replaces_rows_marked_stored_and_inserts_the_rest(
        spark, settings: Settings, mongo_db: Database) -> None:
    """Rows marked stored (a session written by an earlier batch) are replaced, new rows
    inserted, a row marked stored whose document is missing is still written, and the marker
    column never reaches a document. (That no insert is tried first shows only as speed:
    docs/streaming.md "FerretDB notes".)"""
    coll = "write_frame_stored_probe"
    target = MongoTarget(settings.mongo_uri, settings.mongo_db)
    mongo_db[coll].insert_many([{"_id": f"s{i}", "v": 0} for i in range(0, 200)])
    # s0-s199 are stored; s200-s299 are new; s300-s309 claim to be stored but are not.
    rows = spark.range(0, 310, numPartitions=3).selectExpr(
        "concat('s', id) AS _id", "1 AS v", "(id < 200 OR id >= 300) AS _stored")
    summary = write_frame(rows, target, coll, stored_column="_stored")

    assert summary.written == 310
    docs = {d["_id"]: d for d in mongo_db[coll].find({})}
    assert len(docs) == 310
    assert {d["v"] for d in docs.values()} == {1}
    assert all(set(d) == {"_id", "v"} for d in docs.values())


def test_local_sessions_rebuild_delta_state_with_one_task_per_core(spark) -> None:
    """Delta's 50 state-reconstruction tasks are sized for a cluster; a local session uses its
    own task slots, and a cluster master keeps Delta's default."""
    from journey_assets.resources.spark import _local_cores

    assert spark.conf.get("spark.databricks.delta.snapshotPartitions") == "2"
    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == "2000"
    assert _local_cores("local[3]") == 3
    assert _local_cores("local") == 1
    assert _local_cores("local[*]") == (os.cpu_count() or 1)
    assert _local_cores("local-cluster[2,1,1024]") is None
    assert _local_cores("k8s://https://kubernetes.default.svc") is None


def test_streaming_driver_gets_a_bounded_heap_and_the_setting_wins() -> None:
    """The streaming run's heap is capped (bounded micro-batches need no more, and G1 fills
    whatever it is given); batch work keeps a larger one; JOURNEY_SPARK_DRIVER_MEMORY wins."""
    from journey_assets.resources import build_resources
    from journey_assets.resources.spark import (
        BATCH_DRIVER_MEMORY,
        STREAM_DRIVER_MEMORY,
        SparkResource,
        driver_heap,
    )

    # journey stream and the benches resolve the heap with the same function
    assert driver_heap(None, streaming=True) == STREAM_DRIVER_MEMORY
    assert driver_heap("3g", streaming=True) == "3g"
    assert SparkResource().driver_heap() == BATCH_DRIVER_MEMORY == "4g"
    assert SparkResource().driver_heap(streaming=True) == STREAM_DRIVER_MEMORY == "2g"
    configured = build_resources(Settings.from_env({"JOURNEY_SPARK_DRIVER_MEMORY": "1g"}))
    assert configured["spark"].driver_heap(streaming=True) == "1g"
    assert configured["spark"].driver_heap() == "1g"
    assert Settings.from_env({}).spark_driver_memory is None
