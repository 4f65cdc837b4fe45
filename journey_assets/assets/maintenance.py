"""Lake maintenance: OPTIMIZE (compaction) and VACUUM of the Delta tables, daily.

Streaming commits add small files (one per partition per micro-batch); OPTIMIZE rewrites them
into larger ones (a new table version, same rows), VACUUM deletes the files that no version
within the retention needs. The retention (default 7 days, ``LakeMaintenanceConfig``) is the
time-travel horizon: a batch asset's recorded ``lake_version`` stays reproducible for that long.
Both run concurrently with the streaming writer (Delta's optimistic concurrency: compaction
does not conflict with appends).
"""

import dagster as dg

from journey_assets import lake as delta_lake
from journey_assets.resources import LakeResource, SparkResource
from journey_assets.transforms.dimensions import (
    CATEGORY_HIERARCHY,
    PRODUCT_CATALOG,
    USER_DIMENSION,
)

LAKE_MAINTENANCE = "lake_maintenance"
LAKE_MAINTENANCE_JOB = "lake_maintenance_job"
#: Daily at 03:30 UTC, away from the 6-hourly batch runs.
LAKE_MAINTENANCE_CRON = "30 3 * * *"


class LakeMaintenanceConfig(dg.Config):
    #: VACUUM keeps the files any version of the last ``retention_hours`` needs (>= 168:
    #: Delta refuses shorter retentions unless its safety check is turned off).
    retention_hours: int = delta_lake.DEFAULT_VACUUM_RETENTION_HOURS


def lake_tables(lake: LakeResource) -> dict[str, str]:
    return {
        "events": lake.events_path,
        "dead_letters": lake.dead_letters_path,
        **{name: lake.dimension_path(name)
           for name in (PRODUCT_CATALOG, CATEGORY_HIERARCHY, USER_DIMENSION)},
    }


@dg.asset(name=LAKE_MAINTENANCE, group_name="lake", kinds={"spark", "delta"},
          description="OPTIMIZE and VACUUM every Delta table of the lake.")
def lake_maintenance(context: dg.AssetExecutionContext, config: LakeMaintenanceConfig,
                     spark: SparkResource, lake: LakeResource) -> dg.MaterializeResult:
    session = spark.get_session()
    done: dict[str, dict] = {}
    for name, path in lake_tables(lake).items():
        if not delta_lake.is_table(session, path):
            context.log.info(f"{name}: no table yet at {path}")
            continue
        done[name] = delta_lake.optimize_and_vacuum(session, path, config.retention_hours)
        context.log.info(f"{name}: {done[name]}")
    return dg.MaterializeResult(metadata={
        "tables": dg.MetadataValue.json(done),
        "retention_hours": config.retention_hours,
        "files_removed_by_compaction": sum(d["files_removed"] for d in done.values()),
    })


lake_maintenance_job = dg.define_asset_job(
    LAKE_MAINTENANCE_JOB, selection=[LAKE_MAINTENANCE],
    description="Compact and vacuum the Delta lake.")
lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_daily", job=lake_maintenance_job, cron_schedule=LAKE_MAINTENANCE_CRON,
    execution_timezone="UTC", description="OPTIMIZE + VACUUM of the lake, daily.")
