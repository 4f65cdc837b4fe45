"""foreachBatch writers: every write is idempotent, so a replayed micro-batch changes nothing.

Nothing of a micro-batch is collected to the driver: the Delta commits are Spark writes (data
files written by executor tasks, the log by the driver), and the MongoDB documents are written
by executor tasks (``serving.write_frame``). The driver keeps only counters, and writes the
one data-quality ledger document per batch that they make (``serving.write_documents``).

* The lake (``journey_assets.lake``): events and dead letters are MERGEd insert-only by their
  key, inside a commit that carries ``(txnAppId, txnVersion) = (query id, batch id)``: a batch
  re-run after a crash is skipped by Delta, an event read twice is stored once.
* MongoDB: after the lake commit, documents with a deterministic ``_id`` go through
  ``upsert_documents`` (insert-only for events: the ``_id`` hashes the event). A crash between
  the two writes re-runs the batch: the lake part is skipped, the MongoDB part is redone.
* Sessions are Spark state (``transforms.sessions``): the sessions query's sink upserts each
  changed session's document (by user_session) and adds the micro-batch's changes to each
  day's funnel counters once (guarded by the batch id), then rewrites those days' funnels.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from pymongo.database import Database
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from journey_assets import lake
from journey_assets.resources.spark import scheduler_pool
from journey_assets.schema import EVENT_DATE, EVENT_ID, EVENT_TIME, USER_SESSION
from journey_assets.serving import (
    FAULT_ENV,
    BatchWriter,
    MongoTarget,
    WriteSummary,
    add_counters_once,
    write_batches,
    write_documents,
    write_frame,
)
from journey_assets.streaming.ledger import (
    DATA_QUALITY_LEDGER,
    LEDGER_FIGURES,
    LEDGER_SUMMARY,
    ledger_document,
    offset_entries,
    planned_ranges,
)
from journey_assets.transforms.events import (
    LAKE_COLUMNS,
    POSITION,
    REASON,
    RECEIVED_AT,
    SOURCE,
    dead_letter_rows,
    join_dimensions,
)
from journey_assets.transforms.sessions import (
    KIND,
    LATE_FOR_SESSION,
    LATE_ROW,
    STORED,
    funnel_deltas,
    funnel_document,
    streamed_session_documents,
)

ENRICHED_EVENTS = "enriched_events"
DEAD_LETTER_EVENTS = "dead_letter_events"
EVENT_AGGREGATIONS = "event_aggregations"
USER_SESSION_ANALYTICS = "user_session_analytics"
CONVERSION_FUNNEL = "conversion_funnel"
#: The funnel's per-day counters, per sessions query (internal; conversion_funnel derives).
FUNNEL_COUNTERS = "conversion_funnel_counters"
#: FAIR pools (resources/fair_scheduler.xml): latency-bound aggregations before bulk events.
AGGREGATIONS_POOL = "aggregations"
EVENTS_POOL = "events"
RECEIVED_DATE = "received_date"


def fault_point(name: str, batch_id: int) -> None:
    """Test hook: ``JOURNEY_FAULT=<name>:<batch>`` SIGKILLs this process group there.

    ``lake_commit`` fires 0.3 s into the batch's Delta MERGE (data files being written, the
    commit not yet made), ``after_lake`` between the Delta commit and the MongoDB write; the
    serving layer has ``mongo_write:<collection>`` (after the first chunk of documents).
    """
    wanted = os.environ.get(FAULT_ENV, "")
    if wanted == f"{name}:{batch_id}":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if wanted == f"lake_commit:{batch_id}" and name == "before_lake":
        threading.Timer(0.3, os.killpg, (os.getpgid(0), signal.SIGKILL)).start()


class SinkStats:
    """Cumulative seconds and documents per sink, and documents per writing executor."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.documents: dict[str, int] = defaultdict(int)
        self.writers: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.Lock()

    def timed_write(self, frame: DataFrame, target: MongoTarget, collection: str,
                    write_batch: BatchWriter | None = None, **options: Any) -> int:
        """``write_frame`` (or ``write_batches`` with ``write_batch``), timed and counted."""
        start = time.perf_counter()
        summary: WriteSummary = (
            write_batches(frame, target, collection, write_batch) if write_batch is not None
            else write_frame(frame, target, collection, **options))
        with self._lock:
            self.seconds[f"mongo.{collection}"] += time.perf_counter() - start
            self.documents[f"mongo.{collection}"] += summary.written
            for executor, n in summary.by_executor.items():
                self.writers[collection][executor] += n
        return summary.written

    def add_documents(self, collection: str, written: int) -> None:
        with self._lock:
            self.documents[f"mongo.{collection}"] += written

    def add_seconds(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Adds the block's seconds to ``name`` (where a micro-batch's time goes)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(name, time.perf_counter() - start)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "documents": dict(self.documents),
                "writers": {c: dict(w) for c, w in self.writers.items()}}


def _dimension(spark: SparkSession, path: str) -> DataFrame | None:
    """The latest version of a dimension table, or None until its asset has written one."""
    return lake.read_table(spark, path) if lake.is_table(spark, path) else None


class EventsSink:
    """foreachBatch of the ``events`` query (rows of ``triage_events``): the lake commit
    (events and dead letters), then the MongoDB documents.

    ``app_id`` is the query's id (Spark keeps it in the checkpoint): the pipeline hands it over
    once ``start()`` returns, which may be after the first batch has begun.
    """

    def __init__(self, mongo: MongoTarget, events_path: str, dead_letters_path: str,
                 product_path: str, user_path: str, checkpoint: str, topic: str,
                 stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.mongo = mongo
        self.checkpoint = checkpoint
        self.topic = topic
        self.events_path = events_path
        self.dead_letters_path = dead_letters_path
        self.product_path = product_path
        self.user_path = user_path
        self.stats = stats or SinkStats()
        self.on_batch = on_batch
        self._app_id: str | None = None
        self._app_id_ready = threading.Event()

    def set_app_id(self, query_id: str) -> None:
        self._app_id = f"journey-events-{query_id}"
        self._app_id_ready.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        scheduler_pool(spark, EVENTS_POOL)
        if not self._app_id_ready.wait(timeout=120):
            raise RuntimeError("the events query's id never reached its sink")
        triaged = batch.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            out = self._write(spark, triaged, batch_id)
        finally:
            triaged.unpersist()
        if self.on_batch is not None:
            self.on_batch("events", batch_id, out)

    def _write(self, spark: SparkSession, triaged: DataFrame, batch_id: int) -> dict[str, Any]:
        # Exact duplicates within the batch collapse here (MERGE inserts every unmatched source
        # row); across batches the lake's insert-only MERGE and MongoDB's _id make a repeat a
        # no-op.
        events = (triaged.where(F.col(REASON).isNull()).select(*LAKE_COLUMNS)
                  .dropDuplicates([EVENT_ID]).persist(StorageLevel.MEMORY_AND_DISK))
        dead = dead_letter_rows(triaged).withColumn(RECEIVED_DATE, F.to_date("received_at"))
        try:
            # The lake's share of the batch: the counts job, then both commits.
            with self.stats.timed("lake"):
                # One small Spark job over the batch: the days both tables are written in, and the
                # ledger's counts by reason and by Kafka partition.
                with self.stats.timed("events.groups"):
                    groups = (triaged.groupBy(
                        F.col(REASON), F.col(EVENT_DATE),
                        F.to_date(RECEIVED_AT).alias(RECEIVED_DATE),
                        F.col(f"{POSITION}.partition").alias("partition"))
                        .agg(F.count(F.lit(1)).alias("rows"),
                             F.min(f"{POSITION}.offset").alias("first"),
                             F.max(f"{POSITION}.offset").alias("last"),
                             F.min(F.unix_timestamp(EVENT_TIME)).alias("first_second"),
                             F.max(F.unix_timestamp(EVENT_TIME)).alias("last_second"))
                        .collect())
                fault_point("before_lake", batch_id)
                with self.stats.timed("events.lake_events"):
                    inserted = lake.insert_new_rows(
                        spark, self.events_path, events, EVENT_ID, EVENT_DATE, self._app_id,
                        batch_id, lake.EVENTS_TABLE_PROPERTIES,
                        partitions={g[EVENT_DATE] for g in groups if g[REASON] is None},
                        time_column=EVENT_TIME, seconds_by_partition=_seconds_by_day(groups))
                with self.stats.timed("events.lake_dead_letters"):
                    # Creates the table on the first batch; a batch without rejects writes nothing.
                    lake.insert_new_rows(spark, self.dead_letters_path, dead, "_id", RECEIVED_DATE,
                                         self._app_id, batch_id,
                                         partitions={g[RECEIVED_DATE] for g in groups if g[REASON]})
            fault_point("after_lake", batch_id)
            with self.stats.timed("events.ledger_document"):
                ledger = self._ledger_document(spark, batch_id, groups, inserted)
            # The driver's own counters, one document: written from here, no Spark job.
            # Insert-only: a replayed batch keeps the first record of it.
            with self.stats.timed(f"mongo.{DATA_QUALITY_LEDGER}"):
                written = write_documents(self.mongo, DATA_QUALITY_LEDGER, [ledger],
                                          keep_existing=True)
            self.stats.add_documents(DATA_QUALITY_LEDGER, written)

            with self.stats.timed("events.dimensions"):
                enriched = join_dimensions(events, _dimension(spark, self.product_path),
                                           _dimension(spark, self.user_path))
            # Most batches reject nothing: then the dead-letter documents' Spark job (and its
            # Python worker) is skipped.
            rejected = any(g[REASON] is not None for g in groups)
            return {
                LEDGER_FIGURES: {k: v for k, v in ledger.items() if k in LEDGER_SUMMARY},
                DEAD_LETTER_EVENTS: self.stats.timed_write(
                    dead.drop(RECEIVED_DATE), self.mongo, DEAD_LETTER_EVENTS,
                    json_fields=(SOURCE,)) if rejected else 0,
                # An event's _id is its content hash: a repeat is the same event - keep it.
                ENRICHED_EVENTS: self.stats.timed_write(
                    enriched.withColumn("_id", F.col(EVENT_ID)), self.mongo, ENRICHED_EVENTS,
                    keep_existing=True),
            }
        finally:
            events.unpersist()

    def _ledger_document(self, spark: SparkSession, batch_id: int, groups: list[Row],
                         inserted: lake.InsertCounts) -> dict[str, Any]:
        dead: dict[str, int] = defaultdict(int)
        read: dict[int, tuple[int, int, int]] = {}
        for g in groups:
            if g[REASON] is not None:
                dead[g[REASON]] += g["rows"]
            if g["partition"] is not None:
                count, first, last = read.get(g["partition"], (0, g["first"], g["last"]))
                read[g["partition"]] = (count + g["rows"], min(first, g["first"]),
                                        max(last, g["last"]))
        start, end = planned_ranges(spark, self.checkpoint, batch_id, self.topic)
        return ledger_document(
            self._app_id or "", batch_id, self.topic,
            records_in=sum(g["rows"] for g in groups),
            valid=sum(g["rows"] for g in groups if g[REASON] is None),
            source_rows=inserted.source_rows, inserted=inserted.inserted, dead_lettered=dead,
            offsets=offset_entries(read, start, end))


def _seconds_by_day(groups: list[Row]) -> dict[Any, lake.SecondsRange]:
    """Per event_date of the valid rows, the seconds their event_time spans."""
    ranges: dict[Any, lake.SecondsRange] = {}
    for g in groups:
        if g[REASON] is None and g[EVENT_DATE] is not None and g["first_second"] is not None:
            known = ranges.get(g[EVENT_DATE])
            first, last = g["first_second"], g["last_second"]
            ranges[g[EVENT_DATE]] = (lake.SecondsRange(first, last) if known is None else
                                     lake.SecondsRange(min(known.first, first),
                                                       max(known.last, last)))
    return ranges


class AggregationsSink:
    """foreachBatch of the ``aggregations`` query (update mode, rows of
    ``aggregation_documents``): upsert the changed groups from the executors.

    Update mode re-emits a group with its full current value whenever it changes, so an
    upsert by the deterministic _id leaves the latest (final, once the watermark passes) value.
    """

    def __init__(self, mongo: MongoTarget, stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.mongo = mongo
        self.stats = stats or SinkStats()
        self.on_batch = on_batch

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        scheduler_pool(batch.sparkSession, AGGREGATIONS_POOL)
        # A trigger's changed groups: few rows, so no shuffle before the single FerretDB writer.
        written = self.stats.timed_write(batch, self.mongo, EVENT_AGGREGATIONS, small=True)
        if self.on_batch is not None:
            self.on_batch("aggregations", batch_id, {EVENT_AGGREGATIONS: written})


class SessionsSink:
    """foreachBatch of the ``sessions`` query (rows of ``session_state_updates``).

    1. the batch is materialized once (the state store commits here);
    2. the changed sessions' documents are upserted from the executors (a replay writes the
       same documents again);
    3. events late for a closed session become dead letters (reason ``late_for_session``);
    4. the batch's per-day funnel changes (a few rows) are added to the days' counters once -
       keyed by the query id (Spark keeps it in the checkpoint, so a new checkpoint counts
       afresh) and guarded by the batch id - and those days' funnel documents are rewritten.
    """

    def __init__(self, mongo: MongoTarget, stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.mongo = mongo
        self.stats = stats or SinkStats()
        self.on_batch = on_batch
        self._query_id: str | None = None
        self._query_id_ready = threading.Event()

    def set_query_id(self, query_id: str) -> None:
        self._query_id = query_id
        self._query_id_ready.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        scheduler_pool(batch.sparkSession, EVENTS_POOL)
        if not self._query_id_ready.wait(timeout=120):
            raise RuntimeError("the sessions query's id never reached its sink")
        updates = batch.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            with self.stats.timed("sessions.state"):
                kinds = {r[KIND]: r["count"] for r in updates.groupBy(KIND).count().collect()}
            fault_point("after_session_state", batch_id)
            out: dict[str, Any] = {}
            if kinds:
                out = self._write(updates, batch_id, kinds)
        finally:
            updates.unpersist()
        if self.on_batch is not None:
            self.on_batch("sessions", batch_id, out)

    def _write(self, updates: DataFrame, batch_id: int, kinds: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {LATE_FOR_SESSION: kinds.get(LATE_ROW, 0)}
        out[USER_SESSION_ANALYTICS] = self.stats.timed_write(
            streamed_session_documents(updates), self.mongo, USER_SESSION_ANALYTICS,
            stored_column=STORED)
        if kinds.get(LATE_ROW):
            late = updates.where(F.col(KIND) == LATE_ROW).select(
                F.concat(F.lit(f"{LATE_FOR_SESSION}:"),
                         F.get_json_object("late_event", f"$.{EVENT_ID}")).alias("_id"),
                F.lit(LATE_FOR_SESSION).alias(REASON),
                F.col("late_event").alias("raw"),
                F.to_json(F.struct(F.lit("sessions").alias("query"),
                                   USER_SESSION)).alias(SOURCE),
                F.current_timestamp().alias("received_at"))
            # Insert-only: a replay keeps the first record (and its received_at).
            out[DEAD_LETTER_EVENTS] = self.stats.timed_write(
                late, self.mongo, DEAD_LETTER_EVENTS, keep_existing=True, json_fields=(SOURCE,))
        out[CONVERSION_FUNNEL] = self.stats.timed_write(
            funnel_deltas(updates), self.mongo, CONVERSION_FUNNEL,
            write_batch=_funnel_writer(f"{self._query_id}", batch_id))
        return out


def _funnel_writer(query_id: str, batch_id: int) -> BatchWriter:
    """Executor side: add one batch's per-day deltas to each day's counters once (keyed by the
    sessions query, guarded by the batch id), then rewrite that day's funnel document."""
    def write(db: Database, deltas: pa.RecordBatch) -> int:
        for row in deltas.to_pylist():
            day = row.pop("date")
            counts = add_counters_once(db, FUNNEL_COUNTERS, f"{query_id}:{day}", batch_id, row)
            db[CONVERSION_FUNNEL].replace_one({"_id": day}, funnel_document(day, counts),
                                              upsert=True)
        return deltas.num_rows

    return write
