"""MongoDB (or FerretDB locally): the serving store, as a Dagster resource.

The writing itself lives in ``journey_assets.serving`` (one converter, one writer, shared by
streaming, dimensions and batch); this module gives assets a configured connection.
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pymongo.database import Database
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from journey_assets.serving import (
    RUN_MARKER,
    MongoTarget,
    delete_stale,
    ensure_partition_index,
    mongo_client,
    upsert_documents,
    write_frame,
)
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
        documents: Iterable[Mapping[str, Any]] | DataFrame, marker: str,
    ) -> int:
        """Write the partition's documents stamped with ``marker`` (this materialization),
        then delete the partition's documents without it.

        Re-materializing a partition thus leaves exactly the new result, never a union with
        the old one, and never a moment with the partition missing. No command grows with the
        partition: a DataFrame is written from the executors (``write_frame``), the delete is
        one filter. Returns the documents written.
        """
        if isinstance(documents, DataFrame):
            written = write_frame(documents.withColumn(RUN_MARKER, F.lit(marker)), self.target,
                                  collection).written
        else:
            with self.db() as db:
                written = upsert_documents(
                    db, collection, ({**d, RUN_MARKER: marker} for d in documents),
                    strategy=self.write_strategy)
        with self.db() as db:
            ensure_partition_index(db, collection, list(partition_filter))
            delete_stale(db, collection, partition_filter, marker)
        return written
