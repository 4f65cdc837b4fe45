"""foreachBatch writers: every write is idempotent, so a replayed micro-batch changes nothing.

* MongoDB: documents carry a deterministic ``_id`` and go through ``upsert_documents``.
* The Parquet lake: a micro-batch's files are named after its batch id and replace any files
  of an earlier attempt of the same batch (``write_lake_batch``), so a batch re-run after a
  crash neither loses nor doubles rows; ``read_event_lake`` still drops duplicate event_ids.
* Sessions and the funnel are recomputed for the keys a batch touched from the lake (unique
  events), so late or replayed events converge to the batch result instead of being counted
  again.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pymongo.database import Database
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, TimestampType

from journey_assets.resources.mongo import upsert_documents
from journey_assets.schema import EVENT_DATE, EVENT_ID, USER_SESSION
from journey_assets.transforms.events import (
    dead_letters,
    enrich_events,
    read_event_lake,
    valid_events,
)
from journey_assets.transforms.sessions import (
    SESSION_DATE,
    conversion_funnel,
    funnel_documents,
    session_documents,
    session_metrics,
)
from journey_assets.transforms.windows import aggregation_documents

ENRICHED_EVENTS = "enriched_events"
DEAD_LETTER_EVENTS = "dead_letter_events"
EVENT_AGGREGATIONS = "event_aggregations"
USER_SESSION_ANALYTICS = "user_session_analytics"
CONVERSION_FUNNEL = "conversion_funnel"


def frame_documents(frame: DataFrame) -> list[dict[str, Any]]:
    """A (small, per-batch) frame as BSON-ready dicts: dates as ISO text, nulls as None.

    Arrow ``toPandas`` is ~5x faster than ``collect()`` for tens of thousands of rows.
    """
    date_cols = [f.name for f in frame.schema.fields if isinstance(f.dataType, DateType)]
    for name in date_cols:
        frame = frame.withColumn(name, F.date_format(F.col(name), "yyyy-MM-dd"))
    ts_cols = [f.name for f in frame.schema.fields if isinstance(f.dataType, TimestampType)]
    pdf = frame.toPandas()
    if pdf.empty:
        return []
    out = pdf.astype(object).where(pd.notna(pdf), None)
    for name in ts_cols:  # naive UTC datetimes (the session time zone is UTC): BSON dates
        out[name] = [None if v is None else v.to_pydatetime() for v in out[name]]
    return out.to_dict("records")


def write_lake_batch(enriched: DataFrame, events_path: str, batch_id: int) -> int:
    """Write one micro-batch to the lake under event_date partitions, deterministically.

    Spark writes to a staging directory; the files are then moved to
    ``event_date=D/stream-b<batch>-<n>.parquet`` after deleting any file a previous attempt of
    the same batch left there. Local or mounted filesystems (os.replace is atomic per file).
    """
    root = Path(events_path)
    staging = root.parent / "_staging" / f"{root.name}-b{batch_id}"
    if staging.exists():
        shutil.rmtree(staging)
    enriched.write.mode("overwrite").partitionBy(EVENT_DATE).parquet(str(staging))
    prefix = f"stream-b{batch_id:012d}-"
    moved = 0
    for part_dir in sorted(staging.glob(f"{EVENT_DATE}=*")):
        target = root / part_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob(f"{prefix}*"):
            stale.unlink()
        for n, file in enumerate(sorted(part_dir.glob("*.parquet"))):
            os.replace(file, target / f"{prefix}{n:04d}.parquet")
            moved += 1
    shutil.rmtree(staging, ignore_errors=True)
    return moved


class SinkStats:
    """Cumulative seconds and documents per sink (the benchmark reports the Mongo share)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.documents: dict[str, int] = defaultdict(int)

    def timed_upsert(self, db: Database, collection: str, docs: list[dict[str, Any]],
                     strategy: str) -> int:
        start = time.perf_counter()
        written = upsert_documents(db, collection, docs, strategy=strategy) if docs else 0
        self.seconds[f"mongo.{collection}"] += time.perf_counter() - start
        self.documents[f"mongo.{collection}"] += written
        return written

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "documents": dict(self.documents)}


def _read_dimension(spark: SparkSession, path: str) -> DataFrame | None:
    # The dimension assets may not exist yet: enrich without them rather than fail.
    p = Path(path)
    if not p.exists() or not any(p.rglob("*.parquet")):
        return None
    return spark.read.parquet(path)


class EventsSink:
    """foreachBatch of the ``events`` query: dead letters, enriched events, lake, sessions,
    funnel - in that order, so the lake holds a batch before the recomputation reads it."""

    def __init__(self, db: Database, events_path: str, product_path: str, user_path: str,
                 session_horizon_days: int = 1, write_strategy: str = "auto",
                 stats: SinkStats | None = None,
                 on_batch: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.events_path = events_path
        self.product_path = product_path
        self.user_path = user_path
        self.horizon = session_horizon_days
        self.strategy = write_strategy
        self.stats = stats or SinkStats()
        self.on_batch = on_batch

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        batch = batch.persist()
        try:
            out = self._write(spark, batch, batch_id)
        finally:
            batch.unpersist()
        if self.on_batch is not None:
            self.on_batch("events", batch_id, out)

    def _write(self, spark: SparkSession, batch: DataFrame, batch_id: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # A payload that is not UTF-8 is kept with U+FFFD for the bad bytes (BSON text must be
        # valid UTF-8, and so must Arrow's).
        dead = frame_documents(
            dead_letters(batch)
            .withColumn("raw", F.make_valid_utf8(F.col("raw")))
            .withColumn("source", F.to_json(F.col("source"))))
        for doc in dead:  # source as a sub-document {topic, partition, offset}
            doc["source"] = _source_dict(doc["source"])
        out[DEAD_LETTER_EVENTS] = self.stats.timed_upsert(self.db, DEAD_LETTER_EVENTS, dead,
                                                          self.strategy)

        products = _read_dimension(spark, self.product_path)
        users = _read_dimension(spark, self.user_path)
        # Exact duplicates within the batch collapse here; across batches the event_id _id
        # (Mongo) and the lake's dedup-on-read make a repeat a no-op.
        enriched = (enrich_events(valid_events(batch), products, users)
                    .dropDuplicates([EVENT_ID]).persist())
        try:
            dates = [r[0] for r in enriched.select(EVENT_DATE).distinct().collect()]
            if not dates:
                out[ENRICHED_EVENTS] = 0
                return out
            start = time.perf_counter()
            write_lake_batch(enriched, self.events_path, batch_id)
            self.stats.add_seconds("lake", time.perf_counter() - start)
            docs = frame_documents(enriched.withColumn("_id", F.col(EVENT_ID)))
            out[ENRICHED_EVENTS] = self.stats.timed_upsert(self.db, ENRICHED_EVENTS, docs,
                                                           self.strategy)
            start = time.perf_counter()
            sessions, funnel = self._recompute_sessions(spark, enriched, dates)
            self.stats.add_seconds("sessions_recompute", time.perf_counter() - start)
            out[USER_SESSION_ANALYTICS] = self.stats.timed_upsert(
                self.db, USER_SESSION_ANALYTICS, sessions, self.strategy)
            out[CONVERSION_FUNNEL] = self.stats.timed_upsert(
                self.db, CONVERSION_FUNNEL, funnel, self.strategy)
        finally:
            enriched.unpersist()
        return out

    def _recompute_sessions(self, spark: SparkSession, enriched: DataFrame, dates: list[dt.date],
                            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Sessions touched by the batch and funnel days they can affect, from the lake.

        A session lasts at most ``horizon`` days (sessions end after a 30-minute pause), so a
        session holding an event of day D started on D-h..D and all its events lie within
        D-h..D+h: reading those lake partitions gives complete sessions.
        """
        first = min(dates) - dt.timedelta(days=self.horizon)
        last = max(dates) + dt.timedelta(days=self.horizon)
        history = read_event_lake(spark, self.events_path, first.isoformat(), last.isoformat())
        sessions = session_metrics(history).persist()
        try:
            touched = enriched.select(USER_SESSION).where(F.col(USER_SESSION).isNotNull()).distinct()
            session_docs = frame_documents(session_documents(
                sessions.join(F.broadcast(touched), USER_SESSION, "left_semi")))
            days = sorted({(d - dt.timedelta(days=k)).isoformat()
                           for d in dates for k in range(self.horizon + 1)})
            funnel = conversion_funnel(sessions.where(F.col(SESSION_DATE).isin(days)))
            funnel_docs = frame_documents(funnel_documents(funnel))
        finally:
            sessions.unpersist()
        return session_docs, funnel_docs


def _source_dict(source_json: str | None) -> dict[str, Any] | None:
    import json

    return None if source_json is None else json.loads(source_json)


class AggregationsSink:
    """foreachBatch of the ``aggregations`` query (update mode): upsert the changed groups.

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
        docs = frame_documents(aggregation_documents(batch))
        written = self.stats.timed_upsert(self.db, EVENT_AGGREGATIONS, docs, self.strategy)
        if self.on_batch is not None:
            self.on_batch("aggregations", batch_id, {EVENT_AGGREGATIONS: written})
