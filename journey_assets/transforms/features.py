"""User features as of a day: one row per user active in the lookback window.

``as_of`` is a calendar day D; a snapshot sees the events of the ``lookback_days`` days ending
with D (``event_date`` in [D - lookback + 1, D]) and nothing after it, so a model trained on
features of D can be labelled with what happens after D without leakage.
"""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from journey_assets.schema import (
    CATEGORY_ID,
    EVENT_DATE,
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


def build_user_features(events: DataFrame, as_of: str | date,
                        lookback_days: int = DEFAULT_LOOKBACK_DAYS) -> DataFrame:
    """Per-user RFM, engagement and session features over the lookback window ending at as_of.

    Columns: user_id, as_of (ISO day), lookback_days and ``FEATURE_COLUMNS``:
    recency_days (days from the last active day to as_of), frequency (events), monetary (sum of
    purchase prices), the event counts by type (a Spark pivot), sessions (distinct non-null
    user_session), avg_session_duration_s (mean of last - first event time per session),
    cart_abandonment_rate (share of sessions with a cart event but no purchase among sessions
    with a cart event, 0 without any), category_diversity (distinct category_id), avg_price
    (over all events), active_days (distinct event dates).
    """
    start, end = window_bounds(as_of, lookback_days)
    window = events_in_window(events, start, end).select(
        USER_ID, USER_SESSION, EVENT_TIME, EVENT_DATE, EVENT_TYPE, PRICE, CATEGORY_ID
    )
    # One event-level shuffle: pivot per (user, session) with the event types as columns (fixed
    # values: no discovery pass, every column exists), then roll sessions up per user. Distinct
    # categories and days travel as per-session sets, cheaper than countDistinct's Expand.
    per_session = window.groupBy(USER_ID, USER_SESSION).pivot(EVENT_TYPE, list(EVENT_TYPES)).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(PRICE).alias("price"),
        F.min(EVENT_TIME).alias("first"),
        F.max(EVENT_TIME).alias("last"),
        F.collect_set(CATEGORY_ID).alias("cats"),
        F.collect_set(EVENT_DATE).alias("days"),
    )

    def per_type(agg: str) -> list:
        return [F.col(f"{t}_{agg}") for t in EVENT_TYPES]

    def union(agg: str, element_type: str):
        """Distinct union of one set-valued aggregate over the event-type columns."""
        empty = F.array().cast(f"array<{element_type}>")
        return F.array_distinct(F.flatten(F.array(
            *(F.coalesce(c, empty) for c in per_type(agg)))))

    session = per_session.select(
        USER_ID,
        F.col(USER_SESSION).isNotNull().alias("_real"),
        *(F.coalesce(F.col(f"{t}_n"), F.lit(0)).alias(f"_n_{t}") for t in EVENT_TYPES),
        F.aggregate(F.array(*(F.coalesce(c, F.lit(0.0)) for c in per_type("price"))),
                    F.lit(0.0), lambda acc, x: acc + x).alias("_price"),
        F.coalesce(F.col("purchase_price"), F.lit(0.0)).alias("_monetary"),
        (F.unix_timestamp(F.greatest(*per_type("last")))
         - F.unix_timestamp(F.least(*per_type("first")))).alias("_duration_s"),
        union("cats", "bigint").alias("_cats"),
        union("days", "date").alias("_days"),
    )
    real = F.col("_real")
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
        F.array_distinct(F.flatten(F.collect_list("_cats"))).alias("_cats"),
        F.array_distinct(F.flatten(F.collect_list("_days"))).alias("_days"),
    )
    frequency = sum((F.col(c) for c in EVENT_COUNT_COLUMNS.values()), F.lit(0))
    return users.select(
        F.col(USER_ID),
        F.lit(end.isoformat()).alias(AS_OF),
        F.lit(lookback_days).alias(LOOKBACK_DAYS),
        F.datediff(F.lit(end.isoformat()).cast("date"), F.array_max("_days"))
        .cast("int").alias("recency_days"),
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
        F.size("_days").cast("long").alias("active_days"),
    )


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
