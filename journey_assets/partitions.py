"""Partitions of the batch assets: one per as_of day *of the data*, not of the wall clock.

The set is dynamic: the batch schedule adds every day from the lake's first event day
(not before ``Settings.partitions_start``) to its last complete day (``last_complete_day``),
so the UI offers the days that have data - a replayed October 2019 shows its 31 days, not
every day from 2019 to today - and a day appears once the lake holds it.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg

from journey_assets.settings import Settings

AS_OF_PARTITIONS = "as_of_days"
#: How long after a day ends (in event time) events of it may still arrive: the lake's last
#: day counts as complete once the clock is this far past its end.
DEFAULT_LATENESS = timedelta(hours=1)


def as_of_partitions(settings: Settings | None = None) -> dg.DynamicPartitionsDefinition:
    """The dynamic as_of-day partitions (keys are ISO days, added by the batch schedule)."""
    del settings  # one set per instance; the floor (partitions_start) applies when adding keys
    return dg.DynamicPartitionsDefinition(name=AS_OF_PARTITIONS)


def last_complete_day(first: date, last: date, now: datetime,
                      lateness: timedelta = DEFAULT_LATENESS) -> date | None:
    """The latest day of the lake whose events are all in, or None when there is none yet.

    A day before the lake's last event day is complete: the data has moved past it (the log
    is replayed in event-time order). The last day itself is complete once the clock is past
    its end plus ``lateness`` - live data of today is not, a replayed 2019 month is. A replay
    still running counts its current last day as complete; the next ticks re-materialize it
    while it stays the latest (runs are idempotent).
    """
    day_over = datetime.combine(last + timedelta(days=1), datetime.min.time(),
                                tzinfo=now.tzinfo) + lateness
    complete = last if now >= day_over else last - timedelta(days=1)
    return complete if complete >= first else None


def data_days(first: date, last_complete: date, floor: str | date | None = None) -> list[str]:
    """ISO keys of every day from max(first, floor) to last_complete (inclusive)."""
    start = first
    if floor is not None:
        start = max(start, floor if isinstance(floor, date) else date.fromisoformat(floor))
    return [(start + timedelta(days=i)).isoformat()
            for i in range((last_complete - start).days + 1)]
