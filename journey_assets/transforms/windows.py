"""Windowed event aggregations (``event_aggregations``): pure DataFrame -> DataFrame functions.

Both window kinds are rows of ONE grouping (``explode_windows``), hence one streaming
aggregation (Spark allows a single aggregation per update-mode query) and one read of the
topic. The same two functions give the batch truth for a static frame.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from journey_assets.schema import CATEGORY_L1, EVENT_TIME, EVENT_TYPE, PRICE, USER_ID

TUMBLING_5M = "tumbling_5m"
SLIDING_10M_5M = "sliding_10m_5m"
#: window_type -> (length, slide) in seconds.
WINDOW_SPECS: dict[str, tuple[int, int]] = {TUMBLING_5M: (300, 300), SLIDING_10M_5M: (600, 300)}

WINDOW_TYPE = "window_type"
WINDOW_START = "window_start"
WINDOW_END = "window_end"
GROUP_KEYS = (WINDOW_TYPE, WINDOW_START, WINDOW_END, EVENT_TYPE, CATEGORY_L1)
_SLIDE = "5 minutes"
_SLIDING_LENGTH = "10 minutes"
#: The internal sliding-window struct; it carries the watermark so Spark can evict state.
SLIDING_WINDOW = "_sliding_window"


def explode_windows(events: DataFrame) -> DataFrame:
    """One row per (event, window holding it): 1 tumbling + 2 sliding windows per event.

    Built on Spark's own 10/5-minute sliding ``window()`` (whose struct keeps the event-time
    watermark, so the streaming aggregation can drop finished groups): an event lies in the
    first half of exactly one of its two sliding windows, and that half is its tumbling window.
    """
    windowed = events.select("*", F.window(F.col(EVENT_TIME), _SLIDING_LENGTH, _SLIDE)
                             .alias(SLIDING_WINDOW))
    start = F.col(f"{SLIDING_WINDOW}.start")
    first_half = F.col(EVENT_TIME) < start + F.expr(f"INTERVAL {_SLIDE}")
    types = F.when(first_half, F.array(F.lit(SLIDING_10M_5M), F.lit(TUMBLING_5M))).otherwise(
        F.array(F.lit(SLIDING_10M_5M)))
    return (
        windowed.select("*", F.explode(types).alias(WINDOW_TYPE))
        .withColumn(WINDOW_START, start)
        .withColumn(WINDOW_END, F.when(F.col(WINDOW_TYPE) == TUMBLING_5M,
                                       start + F.expr(f"INTERVAL {_SLIDE}"))
                    .otherwise(F.col(f"{SLIDING_WINDOW}.end")))
    )


def aggregate_windows(windowed: DataFrame) -> DataFrame:
    """Metrics per window x event_type x category_l1 (revenue = sum of purchase prices).

    ``unique_users`` is exact: the size of the group's set of user ids. Count-distinct is not
    a streaming aggregate, but ``collect_set`` is, and its state (8 bytes a user, evicted with
    the window) is smaller than a HyperLogLog++ sketch precise enough for the 2% contract
    (13 KB a group at rsd 0.01, which made each streaming trigger ~3x slower).
    """
    purchase_price = F.when(F.col(EVENT_TYPE) == "purchase", F.col(PRICE)).otherwise(F.lit(0.0))
    return windowed.groupBy(SLIDING_WINDOW, *GROUP_KEYS).agg(
        F.count(F.lit(1)).alias("event_count"),
        F.size(F.collect_set(USER_ID)).alias("unique_users"),
        F.sum(purchase_price).alias("revenue"),
        F.avg(F.col(PRICE)).alias("avg_price"),
        F.min(F.col(PRICE)).alias("min_price"),
        F.max(F.col(PRICE)).alias("max_price"),
    )


def aggregation_id_col() -> Column:
    """Deterministic ``_id``: window_type + window_start + event_type + category_l1."""
    return F.sha2(F.concat_ws(
        "|", F.col(WINDOW_TYPE), F.unix_timestamp(F.col(WINDOW_START)).cast("string"),
        F.col(EVENT_TYPE), F.col(CATEGORY_L1)), 256)


def aggregation_documents(aggregates: DataFrame) -> DataFrame:
    """Rows shaped as ``event_aggregations`` documents (rounded money, deterministic _id)."""
    return aggregates.select(
        aggregation_id_col().alias("_id"),
        *GROUP_KEYS,
        "event_count", "unique_users",
        F.round("revenue", 2).alias("revenue"),
        F.round("avg_price", 4).alias("avg_price"),
        "min_price", "max_price",
    )
