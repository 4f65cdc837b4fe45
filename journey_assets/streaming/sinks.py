"""foreachBatch writers: every write is idempotent, so a replayed micro-batch changes nothing.

Nothing of a micro-batch is collected to the driver: the Delta commits are Spark writes (data
files written by executor tasks, the log by the driver), and the MongoDB documents are written
by executor tasks (``serving.write_frame``). The driver keeps only counters.

* The lake (``journey_assets.lake``): events and dead letters are MERGEd insert-only by their
  key, inside a commit that carries ``(txnAppId, txnVersion) = (query id, batch id)``: a batch
  re-run after a crash is skipped by Delta, an event read twice is stored once.
* MongoDB: after the lake commit, documents with a deterministic ``_id`` go through
  ``upsert_documents`` (insert-only for events: the ``_id`` hashes the event). A crash between
  the two writes re-runs the batch: the lake part is skipped, the MongoDB part is redone.
* Sessions and the funnel are recomputed from the lake (unique events) for the sessions the
  commits since the last refresh inserted (the events table's change data feed), every
  ``interval_s`` and at the end of a run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from journey_assets import lake
from journey_assets.resources.spark import scheduler_pool
from journey_assets.schema import EVENT_DATE, EVENT_ID, USER_SESSION
from journey_assets.serving import FAULT_ENV, MongoTarget, WriteSummary, write_frame
from journey_assets.transforms.events import (
    LAKE_COLUMNS,
    REASON,
    SOURCE,
    dead_letter_rows,
    join_dimensions,
    read_event_lake,
)
from journey_assets.transforms.sessions import (
    SESSION_DATE,
    conversion_funnel,
    funnel_documents,
    session_documents,
    session_metrics,
)

ENRICHED_EVENTS = "enriched_events"
DEAD_LETTER_EVENTS = "dead_letter_events"
EVENT_AGGREGATIONS = "event_aggregations"
USER_SESSION_ANALYTICS = "user_session_analytics"
CONVERSION_FUNNEL = "conversion_funnel"
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
                    **options: Any) -> int:
        start = time.perf_counter()
        summary: WriteSummary = write_frame(frame, target, collection, **options)
        with self._lock:
            self.seconds[f"mongo.{collection}"] += time.perf_counter() - start
            self.documents[f"mongo.{collection}"] += summary.written
            for executor, n in summary.by_executor.items():
                self.writers[collection][executor] += n
        return summary.written

    def add_seconds(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "documents": dict(self.documents),
                "writers": {c: dict(w) for c, w in self.writers.items()}}


def _dimension(spark: SparkSession, path: str) -> DataFrame | None:
    """The latest version of a dimension table, or None until its asset has written one."""
    return lake.read_table(spark, path) if lake.is_table(spark, path) else None


class SessionRefresher:
    """Recompute ``user_session_analytics`` and ``conversion_funnel`` for the sessions the
    events table's commits since the last refresh inserted (its change data feed).

    The last refreshed table version is kept in ``state_dir`` and written only after the
    upserts, so after a crash the next refresh covers the same commits again (the upserts are
    idempotent). A session lasts at most ``horizon_days`` (sessions end after a 30-minute
    pause), so a session holding an event of day D started on D-h..D and all its events lie
    within D-h..D+h: reading those lake partitions gives complete sessions.
    """

    def __init__(self, mongo: MongoTarget, events_path: str, state_dir: str,
                 horizon_days: int = 1, interval_s: float = 30.0,
                 stats: SinkStats | None = None) -> None:
        self.mongo = mongo
        self.events_path = events_path
        self.state_file = Path(state_dir) / "refreshed.json"
        self.horizon = horizon_days
        self.interval_s = interval_s
        self.stats = stats or SinkStats()
        self._last_run = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last_run >= self.interval_s

    def _refreshed_version(self) -> int:
        if not self.state_file.exists():
            return -1
        return int(json.loads(self.state_file.read_text())["last_version"])

    def _mark(self, version: int) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        staging = self.state_file.with_suffix(".tmp")
        staging.write_text(json.dumps({"last_version": version}))
        os.replace(staging, self.state_file)

    def refresh(self, spark: SparkSession) -> dict[str, int]:
        """Refresh now; returns documents written per collection ({} if nothing was new)."""
        self._last_run = time.monotonic()
        if not lake.is_table(spark, self.events_path):
            return {}
        version = lake.table_version(spark, self.events_path)
        after = self._refreshed_version()
        if version <= after:
            return {}
        start = time.perf_counter()
        inserted = (lake.read_inserted_since(spark, self.events_path, after)
                    .where(F.col("_commit_version") <= version)
                    .select(USER_SESSION, EVENT_DATE).persist())
        try:
            dates = sorted(r[0] for r in inserted.select(EVENT_DATE).distinct().collect())
            touched = (inserted.select(USER_SESSION).where(F.col(USER_SESSION).isNotNull())
                       .distinct())
            written = self._recompute(spark, touched, dates, version) if dates else {}
        finally:
            inserted.unpersist()
        self.stats.add_seconds("sessions_refresh", time.perf_counter() - start)
        self._mark(version)
        return written

    def _recompute(self, spark: SparkSession, touched: DataFrame, dates: list[dt.date],
                   version: int) -> dict[str, int]:
        first = min(dates) - dt.timedelta(days=self.horizon)
        last = max(dates) + dt.timedelta(days=self.horizon)
        # Both results read the same unique events: read the lake once.
        history = read_event_lake(spark, self.events_path, first.isoformat(),
                                  last.isoformat(), version=version).persist()
        try:
            # Full metrics (with the pandas-UDF score) only for the touched sessions; the
            # funnel needs every session of its days, but only their counts.
            sessions = session_documents(session_metrics(
                history.join(F.broadcast(touched), USER_SESSION, "left_semi")))
            days = sorted({(d - dt.timedelta(days=k)).isoformat()
                           for d in dates for k in range(self.horizon + 1)})
            funnel = funnel_documents(conversion_funnel(
                session_metrics(history, with_quality_score=False)
                .where(F.col(SESSION_DATE).isin(days))))
            return {
                USER_SESSION_ANALYTICS: self.stats.timed_write(sessions, self.mongo,
                                                               USER_SESSION_ANALYTICS),
                CONVERSION_FUNNEL: self.stats.timed_write(funnel, self.mongo,
                                                          CONVERSION_FUNNEL),
            }
        finally:
            history.unpersist()


class EventsSink:
    """foreachBatch of the ``events`` query (rows of ``triage_events``): the lake commit
    (events and dead letters), then the MongoDB documents, then - when due - the
    session/funnel refresh, which reads the lake.

    ``app_id`` is the query's id (Spark keeps it in the checkpoint): the pipeline hands it over
    once ``start()`` returns, which may be after the first batch has begun.
    """

    def __init__(self, mongo: MongoTarget, events_path: str, dead_letters_path: str,
                 product_path: str, user_path: str, refresher: SessionRefresher,
                 stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.mongo = mongo
        self.events_path = events_path
        self.dead_letters_path = dead_letters_path
        self.product_path = product_path
        self.user_path = user_path
        self.refresher = refresher
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
        if self.refresher.due():
            out.update(self.refresher.refresh(spark))
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
            start = time.perf_counter()
            # The days both tables are written in, in one (small) Spark job over the batch.
            days = (triaged.select(F.col(REASON).isNull().alias("valid"), EVENT_DATE,
                                   F.to_date("received_at").alias(RECEIVED_DATE))
                    .distinct().collect())
            fault_point("before_lake", batch_id)
            lake.insert_new_rows(spark, self.events_path, events, EVENT_ID, EVENT_DATE,
                                 self._app_id, batch_id, lake.EVENTS_TABLE_PROPERTIES,
                                 partitions={d[EVENT_DATE] for d in days if d["valid"]})
            lake.insert_new_rows(spark, self.dead_letters_path, dead, "_id", RECEIVED_DATE,
                                 self._app_id, batch_id,
                                 partitions={d[RECEIVED_DATE] for d in days if not d["valid"]})
            self.stats.add_seconds("lake", time.perf_counter() - start)
            fault_point("after_lake", batch_id)

            enriched = join_dimensions(events, _dimension(spark, self.product_path),
                                       _dimension(spark, self.user_path))
            return {
                DEAD_LETTER_EVENTS: self.stats.timed_write(
                    dead.drop(RECEIVED_DATE), self.mongo, DEAD_LETTER_EVENTS,
                    json_fields=(SOURCE,)),
                # An event's _id is its content hash: a repeat is the same event - keep it.
                ENRICHED_EVENTS: self.stats.timed_write(
                    enriched.withColumn("_id", F.col(EVENT_ID)), self.mongo, ENRICHED_EVENTS,
                    keep_existing=True),
            }
        finally:
            events.unpersist()


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
        written = self.stats.timed_write(batch, self.mongo, EVENT_AGGREGATIONS)
        if self.on_batch is not None:
            self.on_batch("aggregations", batch_id, {EVENT_AGGREGATIONS: written})
