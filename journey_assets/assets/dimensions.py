"""Dimension assets: product_catalog, category_hierarchy, user_dimension.

One multi-asset reads the topic once (Spark Kafka batch source) and builds whichever of the
three are selected; each goes to a Delta table (``lake.dimension_path(name)``, overwritten: a
new table version) and to the MongoDB collection of the same name (``_id`` = the key,
idempotent upsert from the executors). Checks read the table back without Spark (delta-rs +
DuckDB) and assert the key is unique and never null.
"""


from collections.abc import Callable, Iterator

import dagster as dg
import duckdb
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from journey_assets import lake as delta_lake
from journey_assets.assets.ingestion import TOPIC_ASSET_KEY, read_topic_events
from journey_assets.resources import KafkaResource, LakeResource, MongoResource, SparkResource
from journey_assets.serving import write_frame
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
        kinds={"spark", "delta", "mongodb"},
        group_name=DIMENSIONS_GROUP,
        metadata={"key": DIMENSION_KEYS[name]},
    )
    for name in (PRODUCT_CATALOG, CATEGORY_HIERARCHY, USER_DIMENSION)
]


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
    events = read_topic_events(session, kafka.connection, kafka.topic).cache()
    try:
        n_events = events.count()
        context.log.info(f"{n_events:,} valid events in topic {kafka.topic}")
        for asset_key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            name = asset_key.path[-1]
            key = DIMENSION_KEYS[name]
            path = lake.dimension_path(name)
            delta_lake.overwrite_table(_BUILDERS[name](events), path)
            version = delta_lake.table_version(session, path)
            # write once, read the stored version back
            table = delta_lake.read_table(session, path, version)
            rows = table.count()
            written = write_frame(table.withColumn("_id", F.col(key)), mongo.target,
                                  name).written
            yield dg.MaterializeResult(
                asset_key=asset_key,
                metadata={
                    "rows": rows,
                    "mongo_documents_written": written,
                    "source_events": n_events,
                    "path": dg.MetadataValue.path(path),
                    "delta_version": version,
                    "preview": dg.MetadataValue.md(_preview(table)),
                },
            )
    finally:
        events.unpersist()


def key_check_result(path: str, key: str) -> dg.AssetCheckResult:
    """Is ``key`` unique and non-null in the latest version of the Delta table at ``path``?"""
    dataset = delta_lake.read_table_arrow(path)  # noqa: F841 (DuckDB reads it by name)
    with duckdb.connect() as con:
        rows, distinct, nulls = con.execute(
            f"SELECT count(*), count(DISTINCT {key}), count(*) FILTER (WHERE {key} IS NULL) "
            "FROM dataset",
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
