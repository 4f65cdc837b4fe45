"""Automation of the batch analytics: a partitioned job and its 6-hourly schedule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

BATCH_JOB = "batch_analytics_job"
BATCH_SCHEDULE = "batch_analytics_every_6h"
#: Every 6 hours, as the original deployment's CronJob ran.
BATCH_CRON = "0 */6 * * *"


def build_batch_job(assets: Sequence[dg.AssetsDefinition],
                    partitions: dg.PartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    """All batch assets of one as_of partition in one run (they share one Spark session)."""
    return dg.define_asset_job(BATCH_JOB, selection=dg.AssetSelection.assets(*assets),
                               partitions_def=partitions,
                               description="Features, segments, churn, time series and "
                                           "statistics for one as_of day.")


def build_batch_schedule(job: dg.UnresolvedAssetJobDefinition,
                         partitions: dg.DailyPartitionsDefinition) -> dg.ScheduleDefinition:
    """Every 6 hours, (re)materialize the latest complete day.

    ``build_schedule_from_partitioned_job`` only ticks at the partitions' own (daily) cadence,
    hence a plain schedule. Re-running a partition is idempotent (each asset replaces its Mongo
    partition), so the four runs a day refresh the latest day with late-arriving events.
    Backfills of older days go through the UI / ``dagster job backfill`` on the same job.
    """

    @dg.schedule(name=BATCH_SCHEDULE, cron_schedule=BATCH_CRON, job=job,
                 execution_timezone="UTC",
                 description="Batch analytics for the latest complete day, every 6 hours.")
    def batch_analytics_every_6h(context: dg.ScheduleEvaluationContext):
        # The latest complete day (UTC) at the tick's scheduled time, not the wall clock, so a
        # late tick still requests the day it was meant for.
        now = context.scheduled_execution_time or datetime.now(UTC)
        day = now.astimezone(UTC).date() - timedelta(days=1)
        if day < partitions.start.astimezone(UTC).date():
            return dg.SkipReason("no complete day yet since the partitions' start date")
        key = day.isoformat()
        tick = context.scheduled_execution_time.isoformat()
        return dg.RunRequest(run_key=f"{key}@{tick}", partition_key=key,
                             tags={"as_of": key})

    return batch_analytics_every_6h
