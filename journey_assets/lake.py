"""The event lake: Delta Lake tables written and read by Spark (no Dagster here).

Tables (paths from ``resources.lake.LakeResource``):

* ``events``: one row per unique valid event (the nine fields plus ``event_id``,
  ``event_date``, ``category_l1``, ``price_tier``), partitioned by ``event_date``. Written
  insert-only by ``event_id`` (a MERGE with only a not-matched clause), so an event read twice
  (a replayed micro-batch, a re-read topic after a checkpoint reset, a CSV loaded again) is
  stored once. Change data feed is on, for consumers that follow what each commit inserted
  (``read_inserted_since``); an insert-only MERGE writes no change files for it.
* ``dead_letters``: rejected records, insert-only by their ``_id`` (the hash of their source
  position), partitioned by ``received_date``.
* dimensions (``product_catalog``, ``category_hierarchy``, ``user_dimension``): overwritten
  by their assets; each version stays readable by time travel until VACUUM.

Streaming writes are idempotent per micro-batch as well: Delta records ``(txnAppId,
txnVersion)`` in the commit that applies them and skips a second write with the same pair. The
streaming sink uses the query's id (kept in its checkpoint) as the app id and the batch id as
the version, so a replayed batch is skipped, while a new checkpoint (new id) can neither skip
new batches nor touch old history (insert-only).

Outside Spark, read a table with ``deltalake`` (delta-rs): ``DeltaTable(path).to_pandas()``, or
``duckdb.from_arrow(DeltaTable(path).to_pyarrow_dataset())`` (see ``read_table_arrow``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

DELTA = "delta"
#: Session confs that make Delta's DML (MERGE) idempotent (Delta >= 2.3).
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
#: Session conf whose value Delta stores in the commit's ``userMetadata``: an idempotent
#: commit is tagged ``<app id>:<version>``, so its metrics can be found again after a replay.
COMMIT_TAG_CONF = "spark.databricks.delta.commitInfo.userMetadata"
#: How many of the latest commits are searched for a replayed commit's tag.
_TAG_SEARCH_DEPTH = 100
#: Change data feed on the events table: a consumer can read the rows each commit added.
EVENTS_TABLE_PROPERTIES = {"delta.enableChangeDataFeed": "true"}
#: VACUUM keeps files a reader of the last 7 days of versions may still need (Delta's default);
#: time travel to a version older than that fails after a VACUUM.
DEFAULT_VACUUM_RETENTION_HOURS = 168

# The idempotency confs are session-wide: one writer at a time sets them.
_TXN_LOCK = threading.Lock()
#: Tables this process has seen exist (a create-if-not-exists per micro-batch costs a commit
#: check each time).
_KNOWN_TABLES: set[str] = set()


def is_table(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def ensure_table(spark: SparkSession, path: str, like: DataFrame, partition_by: str,
                 properties: dict[str, str] | None = None) -> None:
    """Create the table at ``path`` with ``like``'s schema unless it exists already."""
    from delta.tables import DeltaTable

    if path in _KNOWN_TABLES:
        return
    builder = (DeltaTable.createIfNotExists(spark).location(path).addColumns(like.schema)
               .partitionedBy(partition_by))
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    builder.execute()
    _KNOWN_TABLES.add(path)


@contextmanager
def idempotent_commit(spark: SparkSession, app_id: str | None, version: int | None,
                      tag: str) -> Iterator[None]:
    """Within the block, a Delta commit carries ``(app_id, version)``; one that a table has
    already recorded for ``app_id`` (same or higher version) is skipped. The commit's
    ``userMetadata`` is ``tag``, to find the commit again."""
    confs = {COMMIT_TAG_CONF: tag}
    if app_id is not None and version is not None:
        confs.update({TXN_APP_ID_CONF: app_id, TXN_VERSION_CONF: str(version)})
    with _TXN_LOCK:
        for key, value in confs.items():
            spark.conf.set(key, value)
        try:
            yield
        finally:
            for key in confs:
                spark.conf.unset(key)


def commit_tag(app_id: str, version: int) -> str:
    return f"{app_id}:{version}"


@dataclass(frozen=True)
class InsertCounts:
    """What an insert-only MERGE did: rows offered (unique by key) and rows inserted."""

    source_rows: int = 0
    inserted: int = 0


def _tagged_commit_counts(spark: SparkSession, path: str, tag: str) -> InsertCounts | None:
    """The counts of the MERGE commit tagged ``tag`` among the table's latest commits."""
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    # Usually the latest commit; a replay's may be older (maintenance commits in between).
    for depth in (1, _TAG_SEARCH_DEPTH):
        found = (table.history(depth).where(F.col("userMetadata") == tag)
                 .select("operationMetrics").first())
        if found is not None:
            break
    else:
        return None
    metrics = found["operationMetrics"] or {}
    return InsertCounts(int(metrics.get("numSourceRows", 0)),
                        int(metrics.get("numTargetRowsInserted", 0)))


def _partition_literals(values: Sequence[Any]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, date):
            return f"DATE'{value.isoformat()}'"
        return "'" + str(value).replace("'", "''") + "'"

    return ", ".join(literal(v) for v in values)


@dataclass(frozen=True)
class SecondsRange:
    """The first and last whole second (unix) of a timestamp column among some rows."""

    first: int
    last: int


def _within_seconds(alias: str, column: str, partition_by: str,
                    ranges: Mapping[Any, SecondsRange]) -> str:
    """Per partition, ``column`` within its range: ``[first, last + 1)`` seconds (UTC)."""
    def instant(seconds: int) -> str:
        return f"TIMESTAMP'{datetime.fromtimestamp(seconds, UTC).isoformat()}'"

    parts = [f"({alias}.{partition_by} = {_partition_literals([value])} "
             f"AND {alias}.{column} >= {instant(r.first)} "
             f"AND {alias}.{column} < {instant(r.last + 1)})"
             for value, r in sorted(ranges.items())]
    return "(" + " OR ".join(parts) + ")"


def insert_new_rows(spark: SparkSession, path: str, rows: DataFrame, key: str,
                    partition_by: str, app_id: str | None = None, version: int | None = None,
                    properties: dict[str, str] | None = None,
                    partitions: Iterable[Any] | None = None,
                    time_column: str | None = None,
                    seconds_by_partition: Mapping[Any, SecondsRange] | None = None,
                    ) -> InsertCounts:
    """Insert the rows of ``rows`` whose ``key`` the table does not hold yet; returns the
    MERGE's counts (a replayed idempotent commit, which Delta skips, returns the counts of
    the commit that applied it, found by its tag among the latest 100; a MERGE that inserted
    nothing made no commit: 0 inserted).

    ``rows`` must be unique by ``key`` (MERGE inserts every unmatched source row). The match
    only looks at the partitions ``rows`` falls in (their values are collected: a handful of
    days), so its cost follows the size of those partitions, not of the table.
    ``partitions``: those values when the caller knows them already (saves a Spark job).

    ``time_column`` and ``seconds_by_partition`` (per partition value, the seconds of
    ``time_column`` that ``rows`` span; used when it covers every partition written): when
    the key fixes that column to the second (an event_id hashes event_time's second), a stored
    row with the same key lies in the same seconds, so the match reads only the files whose
    statistics overlap them. A micro-batch's MERGE then costs what its own time slice holds,
    not everything its day holds so far.
    """
    from delta.tables import DeltaTable

    ensure_table(spark, path, rows, partition_by, properties)
    if partitions is None:
        partitions = [r[0] for r in rows.select(partition_by).distinct().collect()]
    partitions = [p for p in partitions if p is not None]
    if not partitions:
        return InsertCounts()
    condition = (f"t.{key} = s.{key} AND t.{partition_by} = s.{partition_by} "
                 f"AND t.{partition_by} IN ({_partition_literals(sorted(partitions))})")
    if (time_column is not None and seconds_by_partition is not None
            and set(partitions) <= set(seconds_by_partition)):
        condition += " AND " + _within_seconds(
            "t", time_column, partition_by, {p: seconds_by_partition[p] for p in partitions})
    # Tagged, so that one path reads the counts of a first run and of a replay (Delta skips a
    # replayed commit; the counts are those of the commit that applied it).
    tag = (commit_tag(app_id, version) if app_id is not None and version is not None
           else f"untracked:{uuid.uuid4()}")
    with idempotent_commit(spark, app_id, version, tag):
        (DeltaTable.forPath(spark, path).alias("t")
         .merge(rows.alias("s"), condition)
         .whenNotMatchedInsertAll()
         .execute())
    counts = _tagged_commit_counts(spark, path, tag)
    if counts is None:
        # Delta makes no commit for a MERGE that inserts nothing (every row already stored),
        # and a replay of such a batch finds none either: nothing was inserted.
        return InsertCounts(source_rows=rows.count(), inserted=0)
    return counts


def overwrite_table(frame: DataFrame, path: str) -> None:
    """Replace the table's contents (a dimension rebuilt by its asset), schema included."""
    (frame.write.format(DELTA).mode("overwrite").option("overwriteSchema", "true")
     .save(path))


def table_version(spark: SparkSession, path: str) -> int:
    """The table's latest version (what a reader that starts now sees)."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def read_table(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The table as of ``version`` (None: the latest)."""
    reader = spark.read.format(DELTA)
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def read_inserted_since(spark: SparkSession, path: str, after_version: int) -> DataFrame:
    """Rows inserted by the commits after ``after_version`` (the change data feed)."""
    return (spark.read.format(DELTA).option("readChangeFeed", "true")
            .option("startingVersion", after_version + 1).load(path)
            .where(F.col("_change_type") == "insert"))


def read_table_arrow(path: str, version: int | None = None):
    """A ``pyarrow.dataset.Dataset`` of the table read by delta-rs, without Spark (for DuckDB,
    pandas, checks)."""
    from deltalake import DeltaTable

    table = DeltaTable(path, version=version)
    return table.to_pyarrow_dataset()


def optimize_and_vacuum(spark: SparkSession, path: str,
                        retention_hours: int = DEFAULT_VACUUM_RETENTION_HOURS,
                        ) -> dict[str, Any]:
    """Compact small files (OPTIMIZE), then delete files no version within the retention
    needs (VACUUM). Returns the operations' metrics."""
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    metrics = table.optimize().executeCompaction().select("metrics.*").first().asDict()
    table.vacuum(retention_hours)
    return {
        "files_added": int(metrics.get("numFilesAdded") or 0),
        "files_removed": int(metrics.get("numFilesRemoved") or 0),
        "version": table_version(spark, path),
        "retention_hours": retention_hours,
    }
