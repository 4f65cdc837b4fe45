"""Dimension assets: product_catalog, category_hierarchy, user_dimension.

One multi-asset reads the topic once (Spark Kafka batch source) and builds whichever of the
three are selected; each goes to Parquet (``lake.dimension_path(name)``, overwritten) and to the
MongoDB collection of the same name (``_id`` = the key, idempotent upsert). Checks read the
Parquet back (DuckDB) and assert the key is unique and never null.
"""


from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time
from typing import Any

import dagster as dg
import duckdb
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from journey_assets.assets.ingestion import TOPIC_ASSET_KEY, read_topic_events
from journey_assets.resources import KafkaResource, LakeResource, MongoResource, SparkResource
from journey_assets.transforms.dimensions import (
    CATEGORY_HIERARCHY,
    DIMENSION_KEYS,
    PRODUCT_CATALOG,
    USER_DIMENSION,
    build_category_hierarchy,
    build_product_catalog,
    build_user_dimension,
)

DIMENSIONS_GROUP = "dimensions"
PREVIEW_ROWS = 5

_BUILDERS: dict[str, Callable[[DataFrame], DataFrame]] = {
    PRODUCT_CATALOG: build_product_catalog,
    CATEGORY_HIERARCHY: build_category_hierarchy,
    USER_DIMENSION: build_user_dimension,
}
_DESCRIPTIONS = {
    PRODUCT_CATALOG: "One row per product: category, brand, typical (median) price, popularity.",
    CATEGORY_HIERARCHY: "One row per category_id: dotted code split into levels l1/l2/l3.",
    USER_DIMENSION: "One row per user: deterministic synthetic demographics (hash of user_id).",
}

DIMENSION_SPECS = [
    dg.AssetSpec(
        key=name,
        deps=[TOPIC_ASSET_KEY],
        description=_DESCRIPTIONS[name],
        kinds={"spark", "parquet", "mongodb"},
        group_name=DIMENSIONS_GROUP,
        metadata={"key": DIMENSION_KEYS[name]},
    )
    for name in (PRODUCT_CATALOG, CATEGORY_HIERARCHY, USER_DIMENSION)
]


def _bson_value(value: Any) -> Any:
    # BSON has datetimes but no dates; timestamps are stored as UTC.
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    return value


def dataframe_documents(df: DataFrame, key: str) -> Iterator[dict[str, Any]]:
    """Rows as MongoDB documents with ``_id`` = the key. Timestamps travel as epoch
    microseconds so they do not depend on the Python process's local time zone."""
    ts_cols = [f.name for f in df.schema.fields if isinstance(f.dataType, TimestampType)]
    exported = df.select(*(F.unix_micros(F.col(c)).alias(c) if c in ts_cols else F.col(c)
                           for c in df.columns))
    for row in exported.toLocalIterator():
        doc = row.asDict()
        for c in ts_cols:
            if doc[c] is not None:
                doc[c] = datetime.fromtimestamp(doc[c] / 1_000_000, UTC)
        yield {"_id": doc[key], **{k: _bson_value(v) for k, v in doc.items()}}


def _preview(df: DataFrame) -> str:
    rows = df.limit(PREVIEW_ROWS).collect()
    header = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join([header, rule, *body])


@dg.multi_asset(specs=DIMENSION_SPECS, can_subset=True, name="dimension_tables")
def dimension_tables(context: dg.AssetExecutionContext, spark: SparkResource,
                     kafka: KafkaResource, lake: LakeResource,
                     mongo: MongoResource) -> Iterator[dg.MaterializeResult]:
    session = spark.get_session()
    events = read_topic_events(session, kafka.bootstrap_servers, kafka.topic).cache()
    try:
        n_events = events.count()
        context.log.info(f"{n_events:,} valid events in topic {kafka.topic}")
        for asset_key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            name = asset_key.path[-1]
            key = DIMENSION_KEYS[name]
            path = lake.dimension_path(name)
            _BUILDERS[name](events).write.mode("overwrite").parquet(path)
            table = session.read.parquet(path)  # write once, read the stored result back
            rows = table.count()
            written = mongo.upsert(name, dataframe_documents(table, key))
            yield dg.MaterializeResult(
                asset_key=asset_key,
                metadata={
                    "rows": rows,
                    "mongo_documents_written": written,
                    "source_events": n_events,
                    "path": dg.MetadataValue.path(path),
                    "preview": dg.MetadataValue.md(_preview(table)),
                },
            )
    finally:
        events.unpersist()


def key_check_result(path: str, key: str) -> dg.AssetCheckResult:
    """Is ``key`` unique and non-null in the Parquet table at ``path``?"""
    with duckdb.connect() as con:
        rows, distinct, nulls = con.execute(
            f"SELECT count(*), count(DISTINCT {key}), count(*) FILTER (WHERE {key} IS NULL) "
            "FROM read_parquet(?)", [f"{path}/*.parquet"],
        ).fetchone()  # type: ignore[misc]
    return dg.AssetCheckResult(
        passed=bool(rows > 0 and nulls == 0 and distinct == rows),
        metadata={"rows": rows, "distinct_keys": distinct, "null_keys": nulls,
                  "duplicate_keys": rows - nulls - distinct},
    )


def _key_check(name: str) -> dg.AssetChecksDefinition:
    key = DIMENSION_KEYS[name]

    @dg.asset_check(asset=name, name=f"{key}_unique_not_null", blocking=True,
                    description=f"{key} is unique and never null in {name} (non-empty table).")
    def check(lake: LakeResource) -> dg.AssetCheckResult:
        return key_check_result(lake.dimension_path(name), key)

    return check


DIMENSION_CHECKS = [_key_check(name) for name in (PRODUCT_CATALOG, CATEGORY_HIERARCHY,
                                                  USER_DIMENSION)]
