"""Time partitions of the batch assets: one partition per as_of day."""

from __future__ import annotations

import dagster as dg

from journey_assets.settings import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Daily partitions from ``Settings.partitions_start`` (JOURNEY_PARTITIONS_START).

    A partition key is an as_of day D (ISO date); it becomes available once D is over, and the
    assets of partition D read events up to and including D (plus D's future for churn labels).
    """
    return dg.DailyPartitionsDefinition(start_date=settings.partitions_start, timezone="UTC")
