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
    is_purchase = F.col(EVENT_TYPE) == F.lit("purchase")
    is_cart = F.col(EVENT_TYPE) == F.lit("cart")

    base = window.groupBy(USER_ID).agg(
        F.count(F.lit(1)).alias("frequency"),
        F.coalesce(F.sum(F.when(is_purchase, F.col(PRICE))), F.lit(0.0)).alias("monetary"),
        F.avg(PRICE).alias("avg_price"),
        F.countDistinct(CATEGORY_ID).alias("category_diversity"),
        F.countDistinct(EVENT_DATE).alias("active_days"),
        F.datediff(F.lit(end.isoformat()).cast("date"), F.max(EVENT_DATE)).alias("recency_days"),
    )

    # Fixed pivot values: no extra pass to discover them, and every column exists even when a
    # type is absent from the window.
    counts = window.groupBy(USER_ID).pivot(EVENT_TYPE, list(EVENT_TYPES)).count()
    counts = counts.select(
        USER_ID,
        *(F.coalesce(F.col(t), F.lit(0)).cast("long").alias(col)
          for t, col in EVENT_COUNT_COLUMNS.items()),
    )

    per_session = (
        window.where(F.col(USER_SESSION).isNotNull())
        .groupBy(USER_ID, USER_SESSION)
        .agg(
            (F.unix_timestamp(F.max(EVENT_TIME)) - F.unix_timestamp(F.min(EVENT_TIME)))
            .alias("duration_s"),
            F.max(is_cart.cast("int")).alias("has_cart"),
            F.max(is_purchase.cast("int")).alias("has_purchase"),
        )
    )
    sessions = per_session.groupBy(USER_ID).agg(
        F.count(F.lit(1)).alias("sessions"),
        F.avg("duration_s").cast("double").alias("avg_session_duration_s"),
        F.sum("has_cart").alias("_cart_sessions"),
        F.sum(((F.col("has_cart") == 1) & (F.col("has_purchase") == 0)).cast("int"))
        .alias("_abandoned_sessions"),
    )

    joined = base.join(counts, USER_ID, "left").join(sessions, USER_ID, "left")
    return joined.select(
        F.col(USER_ID),
        F.lit(end.isoformat()).alias(AS_OF),
        F.lit(lookback_days).alias(LOOKBACK_DAYS),
        F.col("recency_days").cast("int").alias("recency_days"),
        F.col("frequency").cast("long").alias("frequency"),
        F.col("monetary").cast("double").alias("monetary"),
        *(F.col(c) for c in EVENT_COUNT_COLUMNS.values()),
        F.coalesce(F.col("sessions"), F.lit(0)).cast("long").alias("sessions"),
        F.coalesce(F.col("avg_session_duration_s"), F.lit(0.0)).alias("avg_session_duration_s"),
        F.when(F.coalesce(F.col("_cart_sessions"), F.lit(0)) > 0,
               F.col("_abandoned_sessions") / F.col("_cart_sessions"))
        .otherwise(F.lit(0.0)).cast("double").alias("cart_abandonment_rate"),
        F.col("category_diversity").cast("long").alias("category_diversity"),
        F.col("avg_price").cast("double").alias("avg_price"),
        F.col("active_days").cast("long").alias("active_days"),
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
