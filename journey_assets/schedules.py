"""Automation of the batch analytics: a partitioned job and its 6-hourly schedule.

The schedule follows the data, not the wall clock: each tick reads the lake's span, adds the
data's days to the dynamic partitions (``partitions.as_of_partitions``) and requests the lake's
last complete day. Replayed 2019 data thus gets 2019 runs; an empty lake gives a SkipReason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

import dagster as dg

from journey_assets.partitions import data_days, last_complete_day

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
                         partitions: dg.DynamicPartitionsDefinition,
                         span_of: Callable[[dg.ScheduleEvaluationContext],
                                           tuple[date, date] | None],
                         floor: str | None = None,
                         required_resource_keys: set[str] | None = None
                         ) -> dg.ScheduleDefinition:
    """Every 6 hours, (re)materialize the lake's last complete day.

    ``span_of(context)``: the lake's (first, last) event day, None when empty (it may use
    ``required_resource_keys`` through ``context.resources``). A schedule
    cannot return dynamic-partition requests (sensors can), so the tick adds the missing keys
    itself through the instance before requesting the run (adding is idempotent). Re-running
    a partition is idempotent too (each asset replaces its Mongo partition), so the four runs
    a day refresh the latest day with late events. Older days: backfills on the same job.
    """

    @dg.schedule(name=BATCH_SCHEDULE, cron_schedule=BATCH_CRON, job=job,
                 execution_timezone="UTC", required_resource_keys=required_resource_keys,
                 description="Batch analytics for the lake's last complete day, every 6 hours.")
    def batch_analytics_every_6h(context: dg.ScheduleEvaluationContext):
        span = span_of(context)
        if span is None:
            return dg.SkipReason("the event lake has no events yet: nothing to analyse")
        first, last = span
        now = context.scheduled_execution_time or datetime.now(UTC)
        day = last_complete_day(first, last, now.astimezone(UTC))
        if day is None:
            return dg.SkipReason(f"no complete day in the lake yet (it spans {first} .. {last})")
        keys = data_days(first, day, floor)
        if not keys:
            return dg.SkipReason(f"the lake's complete days end at {day}, before the "
                                 f"partitions' start {floor}")
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [k for k in keys if k not in known]
        if new:
            context.instance.add_dynamic_partitions(partitions.name, new)
        key = keys[-1]
        tick = now.isoformat()
        return dg.RunRequest(run_key=f"{key}@{tick}", partition_key=key,
                             tags={"as_of": key, "lake_span": f"{first}..{last}"})

    return batch_analytics_every_6h
