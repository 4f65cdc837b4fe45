"""The MongoDB serving layer: one DataFrame -> document rule, one writer (no Dagster here).

Documents are written where Spark's data is: ``write_frame`` runs the writes inside executor
tasks (``mapInArrow``), partition by partition, with one long-lived ``MongoClient`` per executor
Python worker; the driver only receives one small summary row per partition. Adding executors
adds write throughput, and no micro-batch or partition passes through the driver. What the
driver makes itself from its counters (the streaming ledger's one document per micro-batch) it
writes with ``write_documents``, without a Spark job.

The one rule for values (``arrow_documents``):

* TIMESTAMP columns become BSON dates (UTC instants, millisecond precision);
* DATE columns become ISO text ``YYYY-MM-DD`` (BSON has no calendar-day type; a midnight-UTC
  date would read as an instant, and the text sorts and compares like the day);
* nulls are stored as null; structs as sub-documents, arrays as arrays;
* ``json_fields``: text columns holding JSON (a dead letter's ``source``) become sub-documents.

Every write is idempotent: a document carries a deterministic ``_id`` and is written with
``upsert_documents`` (replace-by-``_id``, or insert-only with ``keep_existing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pymongo
from pymongo import MongoClient, ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pyspark.sql import DataFrame

DEFAULT_BATCH_SIZE = 2_000
# FerretDB v1.24 (SQLite) stalls on one update command that matches more than ~100 existing
# documents, and filters in Go whatever cannot be pushed down to SQLite (anything but a lone
# string `_id`): a delete by `$in` or by partition reads the whole collection (~35 s per command
# on 1.1M documents). Its UPDATE and DELETE by `_id` scanned the table too, until the local
# FerretDB build added the index they need (local/ferretdb/idindex.go): a replace_one by _id
# is now ~1 ms at any size. On FerretDB we insert a batch and replace the _ids that were taken,
# one command each. Both strategies are idempotent.
_DUPLICATE_KEY = 11000
REPLACE = "replace"
INSERT_REPLACE = "insert_replace"
KEEP_EXISTING = "keep_existing"  # insert-only (upsert_documents(keep_existing=True))
#: FerretDB, documents written before (upsert_documents(stored=True)): replace by _id first.
#: A failed insert costs FerretDB ~0.09 ms a document, a replace ~0.4 ms (measured).
REPLACE_STORED = "replace_stored"
#: FerretDB only: an always-empty collection whose one insert per replacing batch lets SQLite
#: rewind its WAL (``_let_ferretdb_rewind_its_wal``).
WAL_REWIND_COLLECTION = "_journey_wal_rewind"
#: Client timeouts: a hung server fails a write instead of blocking a task forever.
SERVER_SELECTION_TIMEOUT_MS = 10_000
SOCKET_TIMEOUT_MS = 120_000
CONNECT_TIMEOUT_MS = 10_000

#: Test hook: ``JOURNEY_FAULT=mongo_write:<collection>`` kills this process group right after
#: the first chunk of that collection is written (a crash in the middle of a MongoDB write).
FAULT_ENV = "JOURNEY_FAULT"


# -- documents ------------------------------------------------------------------------------
def arrow_documents(table: pa.Table | pa.RecordBatch,
                    json_fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Arrow rows as BSON-ready dicts, by the module's one rule for values."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    for i, column in enumerate(table.schema):
        if pa.types.is_date(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.string()))
    docs = table.to_pylist()
    for name in json_fields:
        for doc in docs:
            if doc.get(name) is not None:
                doc[name] = json.loads(doc[name])
    return docs


# -- writing --------------------------------------------------------------------------------
def mongo_client(uri: str, app_name: str | None = None) -> MongoClient:
    """A client with timeouts on every operation (never an endless wait on a hung server)."""
    return MongoClient(uri, tz_aware=True, appname=app_name,
                       serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
                       connectTimeoutMS=CONNECT_TIMEOUT_MS, socketTimeoutMS=SOCKET_TIMEOUT_MS)


def is_ferretdb(db: Database) -> bool:
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def checked_strategy(strategy: str) -> str:
    if strategy not in ("auto", REPLACE, INSERT_REPLACE):
        raise ValueError(f"unknown Mongo write strategy {strategy!r}: auto, replace or insert_replace")
    return strategy


def write_strategy_for(db: Database, strategy: str = "auto") -> str:
    if checked_strategy(strategy) == "auto":
        return INSERT_REPLACE if is_ferretdb(db) else REPLACE
    return strategy


def upsert_documents(
    db: Database, collection: str, documents: Iterable[Mapping[str, Any]],
    batch_size: int = DEFAULT_BATCH_SIZE, strategy: str = "auto", keep_existing: bool = False,
    stored: bool = False,
) -> int:
    """Write each document under its deterministic ``_id``, replacing any earlier version.

    Replaying the same documents changes nothing. Returns how many documents were written.
    ``keep_existing``: an ``_id`` that is taken keeps its document and nothing is replaced -
    for documents that are their ``_id`` (an enriched event: the ``_id`` hashes the event), a
    repeat is the same event, and skipping it spares a write per repeat.
    ``stored``: the ``_id``s are expected to be taken (new versions of documents written
    before); on FerretDB they are replaced without the insert attempt that would fail for
    each (an ``_id`` that is free after all is inserted).
    """
    chosen = KEEP_EXISTING if keep_existing else write_strategy_for(db, strategy)
    if stored and chosen == INSERT_REPLACE:
        chosen = REPLACE_STORED
    coll = db[collection]
    written = 0
    batch: list[dict[str, Any]] = []
    for doc in documents:
        if "_id" not in doc:
            raise ValueError(f"document for {collection!r} has no deterministic _id: {doc!r}")
        batch.append(dict(doc))
        if len(batch) >= batch_size:
            written += _flush(coll, batch, chosen)
            _fault_point(collection)
            batch = []
    if batch:
        written += _flush(coll, batch, chosen)
        _fault_point(collection)
    return written


def _fault_point(collection: str) -> None:
    if os.environ.get(FAULT_ENV) == f"mongo_write:{collection}":
        import signal

        # A Python worker runs in a process group of its own: kill the JVM's (the driver's).
        # Without a JVM above it (a write from the driver's Python process), its own group.
        pid = os.getpid()
        for _ in range(4):
            if Path(f"/proc/{pid}/exe").resolve().name == "java":
                break
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        else:
            pid = os.getpid()
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _flush(coll: Collection, batch: list[dict[str, Any]], strategy: str) -> int:
    # Within a batch the last version of an _id wins, as it would with sequential replaces.
    unique = list({doc["_id"]: doc for doc in batch}.values())
    if strategy == KEEP_EXISTING:
        return len(unique) - len(_insert_new(coll, unique))
    if strategy in (INSERT_REPLACE, REPLACE_STORED):
        taken = _insert_new(coll, unique) if strategy == INSERT_REPLACE else unique
        if taken:
            _replace_existing(coll, taken)
            _let_ferretdb_rewind_its_wal(coll.database)
        return len(unique)
    ops = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in unique]
    result = coll.bulk_write(ops, ordered=False)
    return result.upserted_count + result.matched_count


def _insert_new(coll: Collection, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert all; return the documents whose ``_id`` already existed (not written yet)."""
    try:
        coll.insert_many(docs, ordered=False)
        return []
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(err.get("code") != _DUPLICATE_KEY for err in errors):
            raise
        return [docs[err["index"]] for err in errors]


#: Replacements per FerretDB ``update`` command: each statement is one replace by _id (found
#: by index); one command for many saves the round trips (measured: 0.38 ms a document in
#: commands of 25 or 50, 1.27 ms with one command each). FerretDB stalls on commands that
#: match more than ~100 documents, so the commands stay well below that.
REPLACES_PER_COMMAND = 25


def _replace_existing(coll: Collection, docs: list[dict[str, Any]]) -> None:
    """Replace the documents whose ``_id`` was taken (unique within a batch), each by _id: the
    one FerretDB write that finds its document by index instead of scanning the collection.
    A document deleted meanwhile is inserted again.
    """
    for start in range(0, len(docs), REPLACES_PER_COMMAND):
        chunk = docs[start:start + REPLACES_PER_COMMAND]
        result = coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d) for d in chunk],
                                 ordered=False)
        if result.matched_count < len(chunk):  # some were deleted meanwhile: find which
            for doc in chunk:
                if coll.replace_one({"_id": doc["_id"]}, doc).matched_count == 0:
                    _insert_new(coll, [doc])


def _let_ferretdb_rewind_its_wal(db: Database) -> None:
    """FerretDB keeps an update's read transaction open while it writes, so during a run of
    replace_one's SQLite's checkpoint never completes and the WAL is never rewound: measured on
    a 1.1M-document re-write, it grew by 6 MB/s and the replaces slowed from 570 to 300 a
    second. One commit with no reader open (a small insert) lets the checkpoint complete and
    the next write rewind the WAL (measured: 20,000 replaces, the WAL stays at 7 MiB)."""
    key = uuid.uuid4().hex
    db[WAL_REWIND_COLLECTION].insert_one({"_id": key})
    db[WAL_REWIND_COLLECTION].delete_one({"_id": key})


# -- partitions ----------------------------------------------------------------------------
#: Field stamped on every document of a partition write: the materialization that wrote it.
RUN_MARKER = "_run"


#: Deadline of one stale-document delete (overrides the client's socket timeout): FerretDB
#: answers it with a scan of the whole collection (filtered in Go), 35 s to ~2 minutes on 1.1M
#: documents, more on a busy machine; MongoDB finds the documents through the partition index in milliseconds.
STALE_DELETE_TIMEOUT_S = 1800.0


def ensure_partition_index(db: Database, collection: str, partition_keys: Sequence[str]) -> None:
    """An index on the partition's keys and the run marker: the stale delete and a partition's
    reads are index scans on MongoDB, whatever the number of partitions (idempotent)."""
    db[collection].create_index([*((key, 1) for key in partition_keys), (RUN_MARKER, 1)])


def delete_stale(db: Database, collection: str, partition_filter: Mapping[str, Any],
                 marker: str) -> int:
    """Delete the partition's documents that the write stamped ``marker`` did not touch.

    One command of constant size whatever the partition's size (no list of kept ids)."""
    with pymongo.timeout(STALE_DELETE_TIMEOUT_S):
        result = db[collection].delete_many({**partition_filter, RUN_MARKER: {"$ne": marker}})
    return result.deleted_count


def add_counters_once(db: Database, collection: str, key: str, sequence: int,
                      deltas: Mapping[str, int]) -> dict[str, Any]:
    """Add ``deltas`` to the counters of document ``key`` unless ``sequence`` (a micro-batch id)
    was already applied to it; returns the document's counters after.

    The guard (``_seq`` < sequence) makes a replayed micro-batch a no-op: batches reach a
    document in increasing order, and a replay finds its own id stored. When the guard fails on
    a missing document, the upsert's insert hits the existing ``_id``: already applied.
    """
    coll = db[collection]
    with contextlib.suppress(DuplicateKeyError):
        coll.update_one({"_id": key, "_seq": {"$lt": sequence}},
                        {"$inc": dict(deltas), "$set": {"_seq": sequence}}, upsert=True)
    return coll.find_one({"_id": key}) or {}


# -- the executor-side writer ---------------------------------------------------------------
@dataclass(frozen=True)
class MongoTarget:
    """Where documents go; picklable, so executor tasks receive it with the function."""

    uri: str
    database: str
    write_strategy: str = "auto"


#: One client per (process, URI, client name): executor Python workers are reused across tasks;
#: the driver has one for ``write_documents``.
_CLIENTS: dict[tuple[str, str], MongoClient] = {}
_CLIENTS_LOCK = threading.Lock()


def executor_id() -> str:
    """The Spark executor this process works for ("driver" in local mode).

    A Python worker descends from its executor's JVM; on Kubernetes the executor pod's
    environment names it, on a local or standalone cluster the JVM's command line does.
    """
    if os.environ.get("SPARK_EXECUTOR_ID"):
        return os.environ["SPARK_EXECUTOR_ID"]
    pid = os.getppid()
    for _ in range(4):  # worker -> daemon -> executor JVM
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--executor-id" in args:
                return args[args.index(b"--executor-id") + 1].decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return "driver"


_STRATEGIES: dict[str, str] = {}


#: The driver's client name: its short-lived client (the write strategy) and its one writer
#: (``write_documents``) show apart from the executors' (``journey-executor-<id>-<pid>``) in
#: the server's connection list.
DRIVER_APP_NAME = "journey-driver"


def _driver_strategy(target: MongoTarget) -> str:
    """The write strategy, resolved on the driver once per URI (with a short-lived client)."""
    if target.write_strategy != "auto":
        return checked_strategy(target.write_strategy)
    if target.uri not in _STRATEGIES:
        with mongo_client(target.uri, app_name=DRIVER_APP_NAME) as client:
            _STRATEGIES[target.uri] = write_strategy_for(client[target.database])
    return _STRATEGIES[target.uri]


def _process_client(uri: str, app_name: str | None = None) -> MongoClient:
    """This process's long-lived client for ``uri`` (named after its executor by default)."""
    name = app_name or f"journey-executor-{executor_id()}-{os.getpid()}"
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((uri, name))
        if client is None:
            client = _CLIENTS[(uri, name)] = mongo_client(uri, app_name=name)
        return client


SUMMARY_SCHEMA = "executor string, pid long, collection string, rows long, written long"


@dataclass
class WriteSummary:
    """What one ``write_frame`` call wrote, by executor (rows seen, documents written)."""

    collection: str
    rows: int = 0
    written: int = 0
    tasks: int = 0
    by_executor: dict[str, int] = field(default_factory=dict)


#: Writes one Arrow batch of a partition to the database; returns documents written.
BatchWriter = Callable[[Database, pa.RecordBatch], int]


def write_batches(frame: DataFrame, target: MongoTarget, collection: str,
                  write_batch: BatchWriter) -> WriteSummary:
    """Run ``write_batch`` over the Arrow batches of ``frame`` in the executor tasks, each with
    its worker's long-lived client; the driver collects one summary row per task."""
    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        db = _process_client(target.uri)[target.database]
        rows = written = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            rows += batch.num_rows
            written += write_batch(db, batch)
        yield pa.RecordBatch.from_pydict({
            "executor": [executor_id()], "pid": [os.getpid()], "collection": [collection],
            "rows": [rows], "written": [written]})

    summary = WriteSummary(collection)
    for row in frame.mapInArrow(write_partition, SUMMARY_SCHEMA).collect():
        summary.tasks += 1
        summary.rows += row["rows"]
        summary.written += row["written"]
        if row["rows"]:
            summary.by_executor[row["executor"]] = (
                summary.by_executor.get(row["executor"], 0) + row["written"])
    return summary


def write_documents(target: MongoTarget, collection: str,
                    documents: Iterable[Mapping[str, Any]], keep_existing: bool = False) -> int:
    """Write a few documents from this process, without a Spark job: records the driver makes
    from its own counters (the ledger's one document per micro-batch), as ``arrow_documents``
    would make them. Rows of a DataFrame go through ``write_frame``, from the executors."""
    db = _process_client(target.uri, DRIVER_APP_NAME)[target.database]
    return upsert_documents(db, collection, documents, strategy=_driver_strategy(target),
                            keep_existing=keep_existing)


def write_frame(frame: DataFrame, target: MongoTarget, collection: str,
                keep_existing: bool = False, json_fields: Sequence[str] = (),
                batch_size: int = DEFAULT_BATCH_SIZE, small: bool = False,
                stored_column: str | None = None) -> WriteSummary:
    """Write the rows of ``frame`` (one column ``_id``) to ``collection`` from the executors.

    Each task converts its partition's Arrow batches with ``arrow_documents`` and writes them
    with ``upsert_documents``. On FerretDB (strategy ``insert_replace``) a write that may
    replace documents runs as one task: FerretDB's SQLite has one writer, and two tasks
    replacing documents at once fail with ``database is locked (SQLITE_BUSY)`` on a large
    collection. The frame is repartitioned (a shuffle), so the work before the write keeps
    its parallelism; on MongoDB every partition writes at once. ``small``: the rows are few
    and cheap to compute (a streaming aggregation's changed groups), so the partitions are
    coalesced into the one writing task instead: no shuffle stage on the latency path.
    ``stored_column``: a boolean column, true where the row's ``_id`` has a document already
    (``upsert_documents(stored=True)``); it is not written. With it, the rows must be unique
    by ``_id`` (the new and the stored ones are written one group after the other).
    """
    if "_id" not in frame.columns:
        raise ValueError(f"rows for {collection!r} need an _id column: {frame.columns}")
    strategy = KEEP_EXISTING if keep_existing else _driver_strategy(target)
    if strategy == INSERT_REPLACE:
        frame = frame.coalesce(1) if small else frame.repartition(1)

    def write_documents(db: Database, batch: pa.RecordBatch, stored: bool = False) -> int:
        return upsert_documents(db, collection, arrow_documents(batch, json_fields),
                                batch_size=batch_size, strategy=strategy,
                                keep_existing=keep_existing, stored=stored)

    def write_batch(db: Database, batch: pa.RecordBatch) -> int:
        if stored_column is None:
            return write_documents(db, batch)
        is_stored = batch.column(stored_column).fill_null(False)
        batch = batch.drop_columns([stored_column])
        return (write_documents(db, batch.filter(pc.invert(is_stored)))
                + write_documents(db, batch.filter(is_stored), stored=True))

    return write_batches(frame, target, collection, write_batch)
