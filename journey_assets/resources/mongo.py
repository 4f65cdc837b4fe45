"""MongoDB (or FerretDB locally): the serving store. Every write goes through ``upsert_documents``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pymongo import MongoClient, ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from journey_assets.settings import DEFAULT_MONGO_DB, DEFAULT_MONGO_URI

DEFAULT_BATCH_SIZE = 2_000
# FerretDB v1.24 (SQLite) stalls on one update command that matches more than ~100 existing
# documents, and is 10-50x slower at upserts than at inserts: on FerretDB we write a batch as
# "delete these _ids, insert these documents" instead. Both strategies are idempotent.
_DUPLICATE_KEY = 11000
REPLACE = "replace"
DELETE_INSERT = "delete_insert"
KEEP_EXISTING = "keep_existing"  # insert-only (upsert_documents(keep_existing=True))


def is_ferretdb(db: Database) -> bool:
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def write_strategy_for(db: Database, strategy: str = "auto") -> str:
    if strategy == "auto":
        return DELETE_INSERT if is_ferretdb(db) else REPLACE
    if strategy not in (REPLACE, DELETE_INSERT):
        raise ValueError(f"unknown Mongo write strategy {strategy!r}: auto, replace or delete_insert")
    return strategy


def upsert_documents(
    db: Database, collection: str, documents: Iterable[Mapping[str, Any]],
    batch_size: int = DEFAULT_BATCH_SIZE, strategy: str = "auto", keep_existing: bool = False,
) -> int:
    """Write each document under its deterministic ``_id``, replacing any earlier version.

    Replaying the same documents changes nothing. Returns how many documents were written.
    ``keep_existing``: an ``_id`` that is taken keeps its document and nothing is replaced -
    for documents that are their ``_id`` (an enriched event: the ``_id`` hashes the event), a
    repeat is the same event, and skipping it spares FerretDB's delete, which scans the whole
    collection (a cost that grows with the collection, paid by every micro-batch that holds
    one repeat of an earlier one).
    """
    chosen = KEEP_EXISTING if keep_existing else write_strategy_for(db, strategy)
    coll = db[collection]
    written = 0
    existing: list[dict[str, Any]] = []  # delete_insert: documents whose _id was taken
    batch: list[dict[str, Any]] = []
    for doc in documents:
        if "_id" not in doc:
            raise ValueError(f"document for {collection!r} has no deterministic _id: {doc!r}")
        batch.append(dict(doc))
        if len(batch) >= batch_size:
            written += _flush(coll, batch, chosen, existing)
            batch = []
    if batch:
        written += _flush(coll, batch, chosen, existing)
    if existing:
        _replace_existing(coll, existing, batch_size)
    return written


def _flush(coll: Collection, batch: list[dict[str, Any]], strategy: str,
           existing: list[dict[str, Any]]) -> int:
    # Within a batch the last version of an _id wins, as it would with sequential replaces.
    unique = list({doc["_id"]: doc for doc in batch}.values())
    if strategy == KEEP_EXISTING:
        return len(unique) - len(_insert_new(coll, unique))
    if strategy == DELETE_INSERT:
        existing.extend(_insert_new(coll, unique))
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


def _replace_existing(coll: Collection, docs: list[dict[str, Any]], batch_size: int) -> None:
    """Delete the earlier versions, insert the new ones: ONE delete for the whole call.

    FerretDB answers any delete (by ``$in``, or one ``_id``) with a scan of the whole
    collection, so the cost is per delete command, nearly whatever the number of ids: the
    documents of all chunks are collected and replaced together. If a later chunk repeats an
    _id of an earlier one, the later version wins, as with sequential replaces.
    """
    latest = list({doc["_id"]: doc for doc in docs}.values())
    coll.delete_many({"_id": {"$in": [doc["_id"] for doc in latest]}})
    for start in range(0, len(latest), batch_size):
        coll.insert_many(latest[start:start + batch_size], ordered=False)


class MongoResource(dg.ConfigurableResource):
    """Connection to the serving database (``JOURNEY_MONGO_URI`` / ``JOURNEY_MONGO_DB``)."""

    uri: str = DEFAULT_MONGO_URI
    database: str = DEFAULT_MONGO_DB
    # "auto": delete+insert on FerretDB, replace-upserts on MongoDB (see upsert_documents).
    write_strategy: str = "auto"
    server_selection_timeout_ms: int = 10_000

    @contextmanager
    def db(self) -> Iterator[Database]:
        client: MongoClient = MongoClient(
            self.uri, serverSelectionTimeoutMS=self.server_selection_timeout_ms, tz_aware=True
        )
        try:
            yield client[self.database]
        finally:
            client.close()

    def upsert(self, collection: str, documents: Iterable[Mapping[str, Any]]) -> int:
        with self.db() as db:
            return upsert_documents(db, collection, documents, strategy=self.write_strategy)

    def replace_partition(
        self, collection: str, partition_filter: Mapping[str, Any],
        documents: Iterable[Mapping[str, Any]],
    ) -> int:
        """Upsert ``documents`` and delete the partition's documents they no longer include.

        Re-materializing a partition thus leaves exactly the new result, never a union with
        the old one, and never a moment with the partition missing.
        """
        docs = list(documents)
        with self.db() as db:
            written = upsert_documents(db, collection, docs, strategy=self.write_strategy)
            keep = [d["_id"] for d in docs]
            db[collection].delete_many({**partition_filter, "_id": {"$nin": keep}})
        return written
