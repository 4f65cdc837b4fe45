"""Daily event-type series with moving averages and growth, and the hour-of-day profile."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from journey_assets.schema import EVENT_DATE, EVENT_TIME, EVENT_TYPE, EVENT_TYPES
from journey_assets.transforms.features import events_in_window

DATE = "date"
EVENT_COUNT = "event_count"
HOUR = "hour"


def daily_event_counts(events: DataFrame, start: date, end: date,
                       first_day: date | None = None) -> DataFrame:
    """One row per day in [max(start, first_day), end] x event_type, 0 where nothing happened.

    The data's own calendar: ``first_day`` is the lake's first event date, and days before it
    do not exist for the series (no zero rows there: the lake had not started, which is not a
    day without events). Days from it on with no events are real zeros: a moving average over
    rows must see every calendar day of the data, otherwise a quiet day would silently stretch
    the window. Empty when the range holds no day of the data.
    """
    spark: SparkSession = events.sparkSession
    if first_day is not None and first_day > start:
        start = first_day
    if start > end:  # the whole range lies before the data: no day exists yet
        return spark.createDataFrame([], f"{DATE} date, {EVENT_TYPE} string, {EVENT_COUNT} long")
    days = spark.sql(
        f"SELECT explode(sequence(DATE'{start.isoformat()}', DATE'{end.isoformat()}')) AS {DATE}"
    )
    types = spark.createDataFrame([(t,) for t in EVENT_TYPES], [EVENT_TYPE])
    counts = (
        events_in_window(events, start, end)
        .groupBy(F.col(EVENT_DATE).alias(DATE), F.col(EVENT_TYPE))
        .agg(F.count(F.lit(1)).alias(EVENT_COUNT))
    )
    return (
        days.crossJoin(types)
        .join(counts, [DATE, EVENT_TYPE], "left")
        .select(DATE, EVENT_TYPE, F.coalesce(F.col(EVENT_COUNT), F.lit(0)).cast("long")
                .alias(EVENT_COUNT))
    )


def with_trends(daily: DataFrame) -> DataFrame:
    """Add ma_7d / ma_3d (trailing, current day included) and dod_growth.

    The averages run over the rows present: on the data's first days (``daily_event_counts``
    with ``first_day``) they average the days that exist so far, like pandas
    ``rolling(7, min_periods=1).mean()``: ma_7d on the third day is (c1 + c2 + c3) / 3, not / 7.
    dod_growth = (count - previous day's count) / previous day's count; null on the first day
    and when the previous day had no events (growth from zero is undefined).
    """
    by_type = Window.partitionBy(EVENT_TYPE).orderBy(DATE)
    prev = F.lag(EVENT_COUNT, 1).over(by_type)
    return daily.select(
        F.col(DATE),
        F.col(EVENT_TYPE),
        F.col(EVENT_COUNT),
        F.avg(EVENT_COUNT).over(by_type.rowsBetween(-6, Window.currentRow)).alias("ma_7d"),
        F.avg(EVENT_COUNT).over(by_type.rowsBetween(-2, Window.currentRow)).alias("ma_3d"),
        F.when(prev > 0, (F.col(EVENT_COUNT) - prev) / prev).alias("dod_growth"),
    )


def hourly_event_pivot(events: DataFrame) -> DataFrame:
    """Hour of day (UTC, 0-23) x event_type counts: one row per hour, one column per type."""
    return (
        events.groupBy(F.hour(EVENT_TIME).alias(HOUR))
        .pivot(EVENT_TYPE, list(EVENT_TYPES))
        .count()
        .select(HOUR, *(F.coalesce(F.col(t), F.lit(0)).cast("long").alias(t) for t in EVENT_TYPES))
        .orderBy(HOUR)
    )
