"""User features as of a day: one row per user active in the lookback window.

``as_of`` is a calendar day D; a snapshot sees the events of the ``lookback_days`` days ending
with D (``event_date`` in [D - lookback + 1, D]) and nothing after it, so a model trained on
features of D can be labelled with what happens after D without leakage.
"""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from journey_assets.schema import (
    CATEGORY_ID,
    EVENT_DATE,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    EVENT_TYPES,
    PRICE,
    USER_ID,
    USER_SESSION,
)

AS_OF = "as_of"
LOOKBACK_DAYS = "lookback_days"
DEFAULT_LOOKBACK_DAYS = 30

#: Pivoted event counts: event_type -> feature column.
EVENT_COUNT_COLUMNS: dict[str, str] = {
    "view": "views",
    "cart": "carts",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchases",
}

#: Numeric features, in the order models consume them.
FEATURE_COLUMNS: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "views",
    "carts",
    "remove_from_cart",
    "purchases",
    "sessions",
    "avg_session_duration_s",
    "cart_abandonment_rate",
    "category_diversity",
    "avg_price",
    "active_days",
)


def to_date(day: str | date) -> date:
    return day if isinstance(day, date) else date.fromisoformat(day)


def window_bounds(as_of: str | date, lookback_days: int) -> tuple[date, date]:
    """First and last event_date (inclusive) a snapshot of ``as_of`` looks at."""
    if lookback_days < 1:
        raise ValueError(f"lookback_days must be >= 1, got {lookback_days}")
    end = to_date(as_of)
    return end - timedelta(days=lookback_days - 1), end


def events_in_window(events: DataFrame, start: date, end: date) -> DataFrame:
    """Events with event_date in [start, end]; on a partitioned lake this prunes partitions."""
    return events.where(
        (F.col(EVENT_DATE) >= F.lit(start.isoformat()).cast("date"))
        & (F.col(EVENT_DATE) <= F.lit(end.isoformat()).cast("date"))
    )


def read_lake_window(spark: SparkSession, path: str, start: date, end: date,
                     version: int | None = None) -> DataFrame:
    """The lake's events with event_date in [start, end] (partition-pruned), as of table
    ``version`` (None: the latest). The Delta table holds each event once (insert-only by
    event_id); ``build_user_features`` still drops duplicate event_ids of other inputs."""
    from journey_assets.lake import read_table

    return events_in_window(read_table(spark, path, version), start, end)


#: Up to this lookback the active days travel as a bitmask (bit i = as_of - i) in one long.
_BITMASK_DAYS = 63
#: event_type -> a one-byte code for the shuffle (a string per event costs more to move).
_TYPE_CODES = {t: i for i, t in enumerate(EVENT_TYPES)}


def build_user_features(events: DataFrame, as_of: str | date,
                        lookback_days: int = DEFAULT_LOOKBACK_DAYS,
                        unique: bool = False) -> DataFrame:
    """Per-user RFM, engagement and session features over the lookback window ending at as_of.

    ``events``: enriched events. Rows sharing an ``event_id`` count once (when the column is
    present) unless ``unique=True`` says the input holds each event once already (the Delta
    events table, insert-only by event_id): then event_id is neither read nor shuffled.
    Columns: user_id, as_of (ISO day), lookback_days and ``FEATURE_COLUMNS``:
    recency_days (days from the last active day to as_of), frequency (events), monetary (sum of
    purchase prices), the event counts by type, sessions (distinct non-null user_session),
    avg_session_duration_s (mean of last - first event time per session),
    cart_abandonment_rate (share of sessions with a cart event but no purchase among sessions
    with a cart event, 0 without any), category_diversity (distinct category_id), avg_price
    (over all events), active_days (distinct event dates).
    """
    start, end = window_bounds(as_of, lookback_days)
    end_day = F.lit(end.isoformat()).cast("date")
    window = events_in_window(events, start, end)
    dedupe = not unique and EVENT_ID in events.columns
    # Only the needed columns, narrowed to fixed-width values before the one shuffle: the
    # session UUID (36 characters) as a 64-bit hash (a collision would need two sessions of
    # one user out of 2^64), event_type as a byte, time as epoch seconds, the day as its
    # offset from as_of (0 = as_of).
    slim = window.select(
        F.col(USER_ID),
        F.when(F.col(USER_SESSION).isNotNull(), F.xxhash64(USER_SESSION)).alias("_s"),
        F.col(EVENT_TIME).cast("long").alias("_t"),
        F.datediff(end_day, F.col(EVENT_DATE)).alias("_d"),
        _type_code(F.col(EVENT_TYPE)).alias("_k"),
        F.col(PRICE),
        F.col(CATEGORY_ID),
        *([F.xxhash64(EVENT_ID).alias("_e")] if dedupe else []),
    )
    # A single event-level shuffle, hash-partitioned by user_id: the dedupe (user, session,
    # event: the event id fixes user and session), the per-session and the per-user
    # aggregations all group by keys that contain user_id, so Spark reuses this partitioning
    # instead of shuffling three times.
    slim = slim.repartition(USER_ID)
    if dedupe:
        slim = slim.dropDuplicates([USER_ID, "_s", "_e"])
    is_purchase = F.col("_k") == F.lit(_TYPE_CODES["purchase"])
    bitmask = lookback_days <= _BITMASK_DAYS
    # Distinct days as a bitmask OR-ed together (no sets), distinct categories as per-session
    # sets (cheaper than countDistinct's Expand).
    days = (F.bit_or(F.expr("shiftleft(1L, _d)")) if bitmask
            else F.collect_set("_d"))
    session = slim.groupBy(USER_ID, "_s").agg(
        *(F.sum((F.col("_k") == F.lit(code)).cast("long")).alias(f"_n_{t}")
          for t, code in _TYPE_CODES.items()),
        F.sum(PRICE).alias("_price"),
        F.coalesce(F.sum(F.when(is_purchase, F.col(PRICE))), F.lit(0.0)).alias("_monetary"),
        (F.max("_t") - F.min("_t")).alias("_duration_s"),
        F.min("_d").alias("_recency"),
        F.collect_set(CATEGORY_ID).alias("_cats"),
        days.alias("_days"),
    )
    real = F.col("_s").isNotNull()
    has_cart = F.col("_n_cart") > 0
    has_purchase = F.col("_n_purchase") > 0
    users = session.groupBy(USER_ID).agg(
        *(F.sum(f"_n_{t}").alias(col) for t, col in EVENT_COUNT_COLUMNS.items()),
        F.sum("_price").alias("_price"),
        F.sum("_monetary").alias("monetary"),
        F.sum(real.cast("long")).alias("sessions"),
        F.avg(F.when(real, F.col("_duration_s"))).alias("avg_session_duration_s"),
        F.sum((real & has_cart).cast("long")).alias("_cart_sessions"),
        F.sum((real & has_cart & ~has_purchase).cast("long")).alias("_abandoned_sessions"),
        F.min("_recency").alias("_recency"),
        F.array_distinct(F.flatten(F.collect_list("_cats"))).alias("_cats"),
        (F.bit_or("_days") if bitmask
         else F.array_distinct(F.flatten(F.collect_list("_days")))).alias("_days"),
    )
    active_days = F.bit_count("_days") if bitmask else F.size("_days")
    frequency = sum((F.col(c) for c in EVENT_COUNT_COLUMNS.values()), F.lit(0))
    return users.select(
        F.col(USER_ID),
        F.lit(end.isoformat()).alias(AS_OF),
        F.lit(lookback_days).alias(LOOKBACK_DAYS),
        F.col("_recency").cast("int").alias("recency_days"),
        frequency.cast("long").alias("frequency"),
        F.col("monetary").cast("double").alias("monetary"),
        *(F.col(c).cast("long").alias(c) for c in EVENT_COUNT_COLUMNS.values()),
        F.col("sessions").cast("long").alias("sessions"),
        F.coalesce(F.col("avg_session_duration_s"), F.lit(0.0)).cast("double")
        .alias("avg_session_duration_s"),
        F.when(F.col("_cart_sessions") > 0,
               F.col("_abandoned_sessions") / F.col("_cart_sessions"))
        .otherwise(F.lit(0.0)).cast("double").alias("cart_abandonment_rate"),
        F.size("_cats").cast("long").alias("category_diversity"),
        (F.col("_price") / frequency).cast("double").alias("avg_price"),
        active_days.cast("long").alias("active_days"),
    )


def _type_code(event_type: Column) -> Column:
    code = F.lit(None).cast("byte")
    for name, value in _TYPE_CODES.items():
        code = F.when(event_type == F.lit(name), F.lit(value).cast("byte")).otherwise(code)
    return code


def user_funnel(features: DataFrame) -> dict[str, float]:
    """Users who viewed / carted / purchased in the window, and the step rates."""
    row = features.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum((F.col("views") > 0).cast("long")).alias("users_with_view"),
        F.sum((F.col("carts") > 0).cast("long")).alias("users_with_cart"),
        F.sum((F.col("purchases") > 0).cast("long")).alias("users_with_purchase"),
    ).first()
    users = int(row["users"] or 0)
    viewed = int(row["users_with_view"] or 0)
    carted = int(row["users_with_cart"] or 0)
    bought = int(row["users_with_purchase"] or 0)

    def rate(num: int, den: int) -> float:
        return round(num / den, 4) if den else 0.0

    return {
        "users": users,
        "users_with_view": viewed,
        "users_with_cart": carted,
        "users_with_purchase": bought,
        "view_to_cart_rate": rate(carted, viewed),
        "cart_to_purchase_rate": rate(bought, carted),
        "view_to_purchase_rate": rate(bought, viewed),
    }
