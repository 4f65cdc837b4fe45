"""foreachBatch writers: every write is idempotent, so a replayed micro-batch changes nothing.

* MongoDB: documents carry a deterministic ``_id`` and go through ``upsert_documents``.
* The Parquet lake: a micro-batch's files are named after its batch id and replace any files
  of an earlier attempt of the same batch (``write_lake_batch``), so a batch re-run after a
  crash neither loses nor doubles rows; ``read_event_lake`` still drops duplicate event_ids.
* Sessions and the funnel are recomputed from the lake (unique events) for the sessions in the
  lake files written since the last refresh (``SessionRefresher``, every ``interval_s`` and at
  the end of a run), so late or replayed events converge to the batch result instead of being
  counted again, and the per-batch work stays small.
* Within a batch, the MongoDB insert of the enriched events (FerretDB's CPU) overlaps with the
  lake write (this process's CPU).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pymongo.database import Database
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from journey_assets.resources.mongo import upsert_documents
from journey_assets.resources.spark import scheduler_pool
from journey_assets.schema import EVENT_DATE, EVENT_ID, USER_SESSION
from journey_assets.transforms.events import (
    DEAD_LETTER_COLUMNS,
    REASON,
    SOURCE,
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


def arrow_documents(table: pa.Table) -> list[dict[str, Any]]:
    """Arrow rows as BSON-ready dicts: dates as ISO text (BSON has no date type), timestamps
    as UTC datetimes (BSON dates), nulls as None."""
    for i, column in enumerate(table.schema):
        if pa.types.is_date(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.string()))
    return table.to_pylist()


def frame_documents(frame: DataFrame) -> list[dict[str, Any]]:
    """A (small, per-batch) frame as BSON-ready dicts, through Arrow (one Spark job)."""
    return arrow_documents(frame.toArrow())


_LAKE_FILE = re.compile(r"^stream-b(\d{12})-\d{4}\.parquet$")


def write_lake_batch(table: pa.Table, events_path: str, batch_id: int) -> int:
    """Write one micro-batch (an Arrow table with ``event_date``) to the lake, deterministically.

    One file per event_date, ``event_date=D/stream-b<batch>-0000.parquet``, written under a
    hidden temporary name and renamed (atomic per file on local or mounted filesystems), after
    deleting any file an earlier attempt of the same batch left there: a batch re-run after a
    crash neither loses nor doubles rows. Returns the number of files written.
    """
    root = Path(events_path)
    prefix = f"stream-b{batch_id:012d}-"
    days = table.column(EVENT_DATE)
    body = table.drop_columns([EVENT_DATE])  # the partition directory carries it
    written = 0
    for day in sorted(pc.unique(days).to_pylist()):
        target = root / f"{EVENT_DATE}={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob(f"{prefix}*"):
            stale.unlink()
        staging = target / f".{prefix}0000.parquet.tmp"  # leading dot: readers skip it
        pq.write_table(body.filter(pc.equal(days, day)), staging)
        os.replace(staging, target / f"{prefix}0000.parquet")
        written += 1
    return written


def lake_batch_files(events_path: str, after_batch: int) -> dict[int, list[Path]]:
    """Streaming lake files of batches after ``after_batch``, by batch id."""
    found: dict[int, list[Path]] = defaultdict(list)
    root = Path(events_path)
    if not root.exists():
        return {}
    for file in root.glob(f"{EVENT_DATE}=*/stream-b*.parquet"):
        match = _LAKE_FILE.match(file.name)
        if match and int(match.group(1)) > after_batch:
            found[int(match.group(1))].append(file)
    return dict(found)


class SinkStats:
    """Cumulative seconds and documents per sink (the benchmark reports the Mongo share)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.documents: dict[str, int] = defaultdict(int)

    def timed_upsert(self, db: Database, collection: str, docs: list[dict[str, Any]],
                     strategy: str, keep_existing: bool = False) -> int:
        start = time.perf_counter()
        written = upsert_documents(db, collection, docs, strategy=strategy,
                                   keep_existing=keep_existing) if docs else 0
        self.seconds[f"mongo.{collection}"] += time.perf_counter() - start
        self.documents[f"mongo.{collection}"] += written
        return written

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "documents": dict(self.documents)}


class _Dimension:
    """A dimension table read once and read again only when its files change (the dimension
    assets rewrite them); until it exists, enrichment goes on without it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: tuple | None = None
        self._frame: DataFrame | None = None

    def frame(self, spark: SparkSession) -> DataFrame | None:
        root = Path(self.path)
        files = sorted(root.rglob("*.parquet")) if root.exists() else []
        signature = tuple((str(f), f.stat().st_mtime_ns) for f in files)
        if signature != self._signature:
            self._signature = signature
            self._frame = spark.read.parquet(self.path) if files else None
        return self._frame


class SessionRefresher:
    """Recompute ``user_session_analytics`` and ``conversion_funnel`` for the sessions in the
    lake files written since the last refresh.

    The last refreshed batch id is kept in ``state_dir`` and written only after the upserts, so
    after a crash the next refresh covers the same files again (the upserts are idempotent).
    A session lasts at most ``horizon_days`` (sessions end after a 30-minute pause), so a
    session holding an event of day D started on D-h..D and all its events lie within
    D-h..D+h: reading those lake partitions gives complete sessions.
    """

    def __init__(self, db: Database, events_path: str, state_dir: str, horizon_days: int = 1,
                 interval_s: float = 30.0, write_strategy: str = "auto",
                 stats: SinkStats | None = None) -> None:
        self.db = db
        self.events_path = events_path
        self.state_file = Path(state_dir) / "refreshed.json"
        self.horizon = horizon_days
        self.interval_s = interval_s
        self.strategy = write_strategy
        self.stats = stats or SinkStats()
        self._last_run = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last_run >= self.interval_s

    def _refreshed_batch(self) -> int:
        if not self.state_file.exists():
            return -1
        return int(json.loads(self.state_file.read_text())["last_batch"])

    def _mark(self, batch_id: int) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        staging = self.state_file.with_suffix(".tmp")
        staging.write_text(json.dumps({"last_batch": batch_id}))
        os.replace(staging, self.state_file)

    def refresh(self, spark: SparkSession) -> dict[str, int]:
        """Refresh now; returns documents written per collection ({} if nothing was new)."""
        self._last_run = time.monotonic()
        pending = lake_batch_files(self.events_path, self._refreshed_batch())
        if not pending:
            return {}
        start = time.perf_counter()
        files = [str(f) for batch in pending.values() for f in batch]
        dates = sorted({dt.date.fromisoformat(Path(f).parent.name.split("=", 1)[1])
                        for f in files})
        touched = (spark.read.parquet(*files).select(USER_SESSION)
                   .where(F.col(USER_SESSION).isNotNull()).distinct())
        sessions, funnel = self._recompute(spark, touched, dates)
        self.stats.add_seconds("sessions_recompute", time.perf_counter() - start)
        written = {
            USER_SESSION_ANALYTICS: self.stats.timed_upsert(self.db, USER_SESSION_ANALYTICS,
                                                            sessions, self.strategy),
            CONVERSION_FUNNEL: self.stats.timed_upsert(self.db, CONVERSION_FUNNEL, funnel,
                                                       self.strategy),
        }
        self._mark(max(pending))
        return written

    def _recompute(self, spark: SparkSession, touched: DataFrame, dates: list[dt.date],
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = min(dates) - dt.timedelta(days=self.horizon)
        last = max(dates) + dt.timedelta(days=self.horizon)
        # Both results read the same unique events: read and de-duplicate the lake once.
        history = read_event_lake(spark, self.events_path, first.isoformat(),
                                  last.isoformat()).persist()
        try:
            # Full metrics (with the pandas-UDF score) only for the touched sessions; the
            # funnel needs every session of its days, but only their counts.
            session_docs = frame_documents(session_documents(session_metrics(
                history.join(F.broadcast(touched), USER_SESSION, "left_semi"))))
            days = sorted({(d - dt.timedelta(days=k)).isoformat()
                           for d in dates for k in range(self.horizon + 1)})
            funnel = conversion_funnel(session_metrics(history, with_quality_score=False)
                                       .where(F.col(SESSION_DATE).isin(days)))
            funnel_docs = frame_documents(funnel_documents(funnel))
        finally:
            history.unpersist()
        return session_docs, funnel_docs


class EventsSink:
    """foreachBatch of the ``events`` query (rows of ``triage_events``): dead letters, enriched
    events (MongoDB and the lake, overlapped), then - when due - the session/funnel refresh,
    which reads the lake."""

    def __init__(self, db: Database, events_path: str, product_path: str, user_path: str,
                 refresher: SessionRefresher, write_strategy: str = "auto",
                 stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.events_path = events_path
        self.products = _Dimension(product_path)
        self.users = _Dimension(user_path)
        self.refresher = refresher
        self.strategy = write_strategy
        self.stats = stats or SinkStats()
        self.on_batch = on_batch
        # One writer thread: MongoDB inserts run there while this thread writes the lake.
        self._mongo = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mongo-sink")

    def close(self) -> None:
        self._mongo.shutdown(wait=True)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        scheduler_pool(batch.sparkSession, EVENTS_POOL)
        out = self._write(batch.sparkSession, batch, batch_id)
        if self.refresher.due():
            out.update(self.refresher.refresh(batch.sparkSession))
        if self.on_batch is not None:
            self.on_batch("events", batch_id, out)

    def _write(self, spark: SparkSession, batch: DataFrame, batch_id: int) -> dict[str, Any]:
        # The batch is triaged already (``triage_events`` in the query: its expression tree is
        # built once, not per micro-batch over py4j). One Spark job (one read of the Kafka
        # offsets, one parse) for both outputs; the rest works on the Arrow table here.
        table = join_dimensions(batch, self.products.frame(spark),
                                self.users.frame(spark)).toArrow()
        rejected = pc.is_valid(table.column(REASON))
        dead = arrow_documents(
            table.filter(rejected).select(list(DEAD_LETTER_COLUMNS))
            .rename_columns(["_id", *DEAD_LETTER_COLUMNS[1:]]))
        for doc in dead:  # source as a sub-document {topic, partition, offset}
            doc[SOURCE] = _source_dict(doc[SOURCE])
        out: dict[str, Any] = {
            DEAD_LETTER_EVENTS: self.stats.timed_upsert(self.db, DEAD_LETTER_EVENTS, dead,
                                                        self.strategy)}

        # Exact duplicates within the batch collapse here; across batches the event_id _id
        # (Mongo) and the lake's dedup-on-read make a repeat a no-op.
        enriched = first_per_key(
            table.filter(pc.invert(rejected)).drop_columns(list(DEAD_LETTER_COLUMNS)), EVENT_ID)
        if enriched.num_rows == 0:
            out[ENRICHED_EVENTS] = 0
            return out
        with_ids = enriched.append_column("_id", enriched.column(EVENT_ID))
        inserted = self._mongo.submit(
            # An event's _id is its content hash: a repeat (a duplicate row in a later batch,
            # a replayed batch) is the same event, already written - keep it.
            lambda: self.stats.timed_upsert(self.db, ENRICHED_EVENTS,
                                            arrow_documents(with_ids), self.strategy,
                                            keep_existing=True))
        start = time.perf_counter()
        write_lake_batch(enriched, self.events_path, batch_id)
        self.stats.add_seconds("lake", time.perf_counter() - start)
        start = time.perf_counter()
        out[ENRICHED_EVENTS] = inserted.result()
        self.stats.add_seconds("mongo_wait", time.perf_counter() - start)
        return out


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """The first row of each distinct ``key``, in table order (an Arrow drop-duplicates)."""
    if table.num_rows == 0:
        return table
    position = "_position"
    numbered = table.append_column(position, pa.array(range(table.num_rows), pa.int64()))
    first = numbered.group_by(key, use_threads=False).aggregate([(position, "min")])
    positions = first.column(f"{position}_min")
    return table.take(pc.take(positions, pc.sort_indices(positions)))


def _source_dict(source_json: str | None) -> dict[str, Any] | None:
    return None if source_json is None else json.loads(source_json)


class AggregationsSink:
    """foreachBatch of the ``aggregations`` query (update mode, rows of
    ``aggregation_documents``): upsert the changed groups.

    Update mode re-emits a group with its full current value whenever it changes, so an
    upsert by the deterministic _id leaves the latest (final, once the watermark passes) value.
    """

    def __init__(self, db: Database, write_strategy: str = "auto",
                 stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.strategy = write_strategy
        self.stats = stats or SinkStats()
        self.on_batch = on_batch

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        scheduler_pool(batch.sparkSession, AGGREGATIONS_POOL)
        docs = frame_documents(batch)  # shaped as documents in the query already
        written = self.stats.timed_upsert(self.db, EVENT_AGGREGATIONS, docs, self.strategy)
        if self.on_batch is not None:
            self.on_batch("aggregations", batch_id, {EVENT_AGGREGATIONS: written})
