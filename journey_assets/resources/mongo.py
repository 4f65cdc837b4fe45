"""MongoDB (or FerretDB locally): the serving store, as a Dagster resource.

The writing itself lives in ``journey_assets.serving`` (one converter, one writer, shared by
streaming, dimensions and batch); this module gives assets a configured connection.
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pymongo.database import Database

from journey_assets.serving import MongoTarget, mongo_client, upsert_documents
from journey_assets.settings import DEFAULT_MONGO_DB, DEFAULT_MONGO_URI


class MongoResource(dg.ConfigurableResource):
    """Connection to the serving database (``JOURNEY_MONGO_URI`` / ``JOURNEY_MONGO_DB``)."""

    uri: str = DEFAULT_MONGO_URI
    database: str = DEFAULT_MONGO_DB
    # "auto": delete+insert on FerretDB, replace-upserts on MongoDB (see upsert_documents).
    write_strategy: str = "auto"

    @property
    def target(self) -> MongoTarget:
        """Where executor-side writers (``serving.write_frame``) send documents."""
        return MongoTarget(self.uri, self.database, self.write_strategy)

    @contextmanager
    def db(self) -> Iterator[Database]:
        client = mongo_client(self.uri)
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
