"""Sessions (``user_session_analytics``) and the daily ordered ``conversion_funnel``.

One set of definitions, two executions:

* **streaming**: ``session_state_updates`` keeps each open ``user_session`` as Spark state
  (``applyInPandasWithState``, event-time timeout; sessions are stored in buckets by a hash of
  their id) and emits its current document whenever it changes, and its final one when ``gap``
  of event time has passed its last event (once the watermark says so).
  ``summarize_session`` computes a document from the session's events.
* **batch**: ``session_metrics`` computes the same columns with Spark expressions over unique
  events (the lake), ``lake_sessions`` for the sessions that start in any date range.

Definitions (also in the README):

* A session is all unique events (by event_id) of one ``user_session``; it starts at its first
  event and its day (``session_date``) is that event's UTC date, even when it runs past
  midnight or for more than a day.
* ``ordered_step``: how far the session got through view -> cart -> purchase in order: 1 if it
  has a view, 2 if it also has a cart at or after its first view, 3 if it also has a purchase at
  or after that cart (the earliest such cart). Ties in time count as in order.
* The funnel of a day counts the sessions that start that day. ``sessions_with_<stage>``:
  sessions that have the stage at all; ``view_to_cart_rate`` = sessions with a view and a cart /
  sessions with a view; ``cart_to_purchase_rate`` = with a cart and a purchase / with a cart;
  ``view_to_purchase_rate`` = with a view and a purchase / with a view (0 when the denominator
  is 0, so every rate is in [0, 1]). ``ordered_steps``: for each step k, ``sessions`` that reached
  it in order, ``conversion_from_previous`` = n_k / n_(k-1), ``conversion_overall`` = n_k / n_1,
  ``drop_off`` = n_(k-1) - n_k (the first step: 1, 1, 0). ``revenue``: the day's purchases.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from journey_assets.schema import (
    EVENT_DATE,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    PRICE,
    PRODUCT_ID,
    USER_ID,
    USER_SESSION,
)
from journey_assets.transforms import state_compat

SESSION_DATE = "session_date"
ORDERED_STEP = "ordered_step"
CLOSED = "closed"
#: Rows of ``session_state_updates``: a session's document, or an event late for its session.
KIND = "kind"
SESSION_ROW = "session"
LATE_ROW = "late"
LATE_FOR_SESSION = "late_for_session"
FUNNEL_STEPS = ("view", "cart", "purchase")

#: Per session, what it adds to its day's funnel counters (``funnel_contributions``).
FUNNEL_COUNTS = ("sessions", "sessions_with_view", "sessions_with_cart",
                 "sessions_with_purchase", "sessions_with_view_and_cart",
                 "sessions_with_cart_and_purchase", "sessions_with_view_and_purchase",
                 "ordered_cart", "ordered_purchase", "revenue_cents")

_US = 1_000_000

# Workers unpickling the state function import this module first: the fix is in place before
# they read a micro-batch (see state_compat).
state_compat.install()


# -- the engagement score (one formula for the streaming function and the batch UDF) ---------
def quality_formula(event_count: Any, duration_s: Any, unique_products: Any, carts: Any,
                    purchases: Any) -> np.ndarray:
    """Engagement score in [0, 1]: depth (events, products), time spent, buying intent."""
    depth = 1.0 - np.exp(-np.asarray(event_count, dtype=float) / 8.0)
    breadth = np.minimum(np.asarray(unique_products, dtype=float) / 5.0, 1.0)
    dwell = np.log1p(np.maximum(np.asarray(duration_s, dtype=float), 0.0)) / np.log1p(3600.0)
    intent = np.where(np.asarray(purchases) > 0, 1.0,
                      np.where(np.asarray(carts) > 0, 0.5, 0.0))
    return np.round(0.25 * depth + 0.15 * breadth + 0.2 * np.minimum(dwell, 1.0)
                    + 0.4 * intent, 4)


@pandas_udf(DoubleType())  # type: ignore[call-overload]
def session_quality_score(event_count: pd.Series, duration_s: pd.Series,
                          unique_products: pd.Series, carts: pd.Series,
                          purchases: pd.Series) -> pd.Series:
    """``quality_formula`` over Arrow batches (a nested Spark expression would be clumsy; a
    row-at-a-time Python UDF is ~4x slower here)."""
    return pd.Series(quality_formula(event_count, duration_s, unique_products, carts,
                                     purchases))


# -- batch: Spark expressions over unique events ---------------------------------------------
def _count_of(event_type: str) -> Column:
    return F.sum(F.when(F.col(EVENT_TYPE) == event_type, 1).otherwise(0))


def _times_of(event_type: str) -> Column:
    return F.collect_list(F.when(F.col(EVENT_TYPE) == event_type, F.col("_us")))


def session_metrics(events: DataFrame, with_quality_score: bool = True) -> DataFrame:
    """One row per user_session over unique events (events without a session are skipped)."""
    purchase_price = F.when(F.col(EVENT_TYPE) == "purchase", F.col(PRICE)).otherwise(F.lit(0.0))
    sessions = (
        events.where(F.col(USER_SESSION).isNotNull())
        .withColumn("_us", F.unix_micros(EVENT_TIME))
        .groupBy(USER_SESSION)
        .agg(
            F.min(USER_ID).alias(USER_ID),
            F.min(EVENT_TIME).alias("session_start"),
            F.max(EVENT_TIME).alias("session_end"),
            F.count(F.lit(1)).alias("event_count"),
            _count_of("view").alias("views"),
            _count_of("cart").alias("carts"),
            _count_of("remove_from_cart").alias("removes"),
            _count_of("purchase").alias("purchases"),
            F.round(F.sum(purchase_price), 2).alias("revenue"),
            F.countDistinct(PRODUCT_ID).alias("unique_products"),
            F.min(F.when(F.col(EVENT_TYPE) == "view", F.col("_us"))).alias("_view"),
            _times_of("cart").alias("_carts"),
            _times_of("purchase").alias("_purchases"),
        )
        .withColumn("_cart", F.array_min(F.filter("_carts", lambda t: t >= F.col("_view"))))
        .withColumn("_purchase",
                    F.array_min(F.filter("_purchases", lambda t: t >= F.col("_cart"))))
        .withColumn(ORDERED_STEP, F.when(F.col("_view").isNull(), 0)
                    .when(F.col("_cart").isNull(), 1)
                    .when(F.col("_purchase").isNull(), 2).otherwise(3))
        .drop("_view", "_carts", "_purchases", "_cart", "_purchase")
        .withColumn("duration_s", F.unix_timestamp("session_end") - F.unix_timestamp("session_start"))
        .withColumn("converted", F.col("purchases") > 0)
        .withColumn(SESSION_DATE, F.date_format("session_start", "yyyy-MM-dd"))
    )
    if with_quality_score:
        sessions = sessions.withColumn("session_quality_score", session_quality_score(
            "event_count", "duration_s", "unique_products", "carts", "purchases"))
    return sessions


def lake_sessions(spark: SparkSession, events_path: str, first_day: str, last_day: str,
                  version: int | None = None) -> DataFrame:
    """Sessions that start in ``[first_day, last_day]``, complete: a session is read whole from
    the lake however long it runs (its events are found by user_session in every partition)."""
    from journey_assets.transforms.events import read_event_lake

    events = read_event_lake(spark, events_path, version=version)
    touched = (events.where(F.col(EVENT_DATE).between(F.lit(first_day).cast("date"),
                                                      F.lit(last_day).cast("date")))
               .select(USER_SESSION).where(F.col(USER_SESSION).isNotNull()).distinct())
    return (session_metrics(events.join(touched, USER_SESSION, "left_semi"))
            .where(F.col(SESSION_DATE).between(first_day, last_day)))


def session_documents(sessions: DataFrame) -> DataFrame:
    return sessions.select(F.col(USER_SESSION).alias("_id"), "*")


# -- the funnel: per-session contributions, per-day counters, documents ----------------------
def funnel_contributions(prefix: str = "", sign: int = 1) -> list[Column]:
    """What a session row adds to its day's counters (``FUNNEL_COUNTS``), times ``sign``.

    ``prefix`` reads the session's previous values (``prev_``) in a streaming update row.
    """
    def has(column: str) -> Column:
        return F.col(prefix + column) > 0

    def count(condition: Column) -> Column:
        return F.when(condition, sign).otherwise(0).cast("long")

    step = F.col(prefix + ORDERED_STEP)
    values = {
        "sessions": F.lit(sign).cast("long"),
        "sessions_with_view": count(has("views")),
        "sessions_with_cart": count(has("carts")),
        "sessions_with_purchase": count(has("purchases")),
        "sessions_with_view_and_cart": count(has("views") & has("carts")),
        "sessions_with_cart_and_purchase": count(has("carts") & has("purchases")),
        "sessions_with_view_and_purchase": count(has("views") & has("purchases")),
        "ordered_cart": count(step >= 2),
        "ordered_purchase": count(step >= 3),
        "revenue_cents": (F.round(F.col(prefix + "revenue") * 100) * sign).cast("long"),
    }
    return [values[name].alias(name) for name in FUNNEL_COUNTS]


def funnel_counts(sessions: DataFrame) -> DataFrame:
    """Per ``session_date``: the sums of ``funnel_contributions`` (one row a day)."""
    return (sessions.select(F.col(SESSION_DATE).alias("date"), *funnel_contributions())
            .groupBy("date").agg(*[F.sum(c).alias(c) for c in FUNNEL_COUNTS]))


def _ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 6) if denominator > 0 else 0.0


def funnel_document(day: str, counts: Mapping[str, int]) -> dict[str, Any]:
    """The ``conversion_funnel`` document of one day from its counters."""
    c = {name: int(counts.get(name, 0) or 0) for name in FUNNEL_COUNTS}
    reached = [c["sessions_with_view"], c["ordered_cart"], c["ordered_purchase"]]
    steps = []
    for k, (step, n) in enumerate(zip(FUNNEL_STEPS, reached, strict=True)):
        previous = reached[k - 1] if k else n
        steps.append({"step": step, "sessions": n,
                      "conversion_from_previous": _ratio(n, previous),
                      "conversion_overall": _ratio(n, reached[0]),
                      "drop_off": previous - n})
    return {
        "_id": day, "date": day,
        **{name: c[name] for name in FUNNEL_COUNTS if name != "revenue_cents"},
        "revenue": round(c["revenue_cents"] / 100, 2),
        "view_to_cart_rate": _ratio(c["sessions_with_view_and_cart"], c["sessions_with_view"]),
        "cart_to_purchase_rate": _ratio(c["sessions_with_cart_and_purchase"],
                                        c["sessions_with_cart"]),
        "view_to_purchase_rate": _ratio(c["sessions_with_view_and_purchase"],
                                        c["sessions_with_view"]),
        "ordered_steps": steps,
    }


def funnel_documents(counts: DataFrame) -> list[dict[str, Any]]:
    """Funnel documents from ``funnel_counts`` (one small row a day, so collected)."""
    return [funnel_document(r["date"], r.asDict()) for r in counts.collect()]


def funnel_rates(doc: Mapping[str, Any]) -> list[float]:
    """Every rate of a funnel document (the asset check's and the tests' view)."""
    rates = [doc[k] for k in ("view_to_cart_rate", "cart_to_purchase_rate",
                              "view_to_purchase_rate")]
    for step in doc.get("ordered_steps", []):
        rates += [step["conversion_from_previous"], step["conversion_overall"]]
    return rates


# -- streaming: one state per open user_session ---------------------------------------------
#: A session's events in its state: [event_id, event_us, event_type, product_id, price, user_id]
_EVENT_FIELDS = (EVENT_ID, "event_us", EVENT_TYPE, PRODUCT_ID, PRICE, USER_ID)
#: One bucket of sessions (``BucketState``, pickled): see _update_bucket.
STATE_SCHEMA = StructType([StructField("bucket", BinaryType())])
#: A stable 64-bit hash of user_session (Spark's xxhash64), the key of a tombstone.
SESSION_HASH = "_session_hash"
_SUMMARY_FIELDS = [
    StructField(USER_ID, LongType()),
    StructField("start_us", LongType()),
    StructField("end_us", LongType()),
    StructField("event_count", LongType()),
    StructField("views", LongType()),
    StructField("carts", LongType()),
    StructField("removes", LongType()),
    StructField("purchases", LongType()),
    StructField("revenue", DoubleType()),
    StructField("unique_products", LongType()),
    StructField(ORDERED_STEP, IntegerType()),
]
#: The previous document's fields the funnel needs (to take its contribution back).
_PREV_FIELDS = ("start_us", "views", "carts", "purchases", "revenue", ORDERED_STEP)
#: What a session row carries (the state function writes it as one JSON text, parsed by
#: Spark: a pandas frame of three text columns costs a fraction of one of 22 typed columns,
#: and the function runs once per changed session).
PAYLOAD_SCHEMA = StructType([
    *_SUMMARY_FIELDS,
    StructField("session_quality_score", DoubleType()),
    StructField(CLOSED, BooleanType()),
    *[StructField(f"prev_{f.name}", f.dataType) for f in _SUMMARY_FIELDS
      if f.name in _PREV_FIELDS],
])
#: The state function's output: kind, user_session, and the payload (a late row's payload is
#: the late event).
OUTPUT_SCHEMA = StructType([
    StructField(KIND, StringType()),
    StructField(USER_SESSION, StringType()),
    StructField("payload", StringType()),
])


def summarize_session(events: Iterable[list[Any]]) -> dict[str, Any]:
    """A session's document fields from its unique events (rows of ``_EVENT_FIELDS``)."""
    rows = sorted(events, key=lambda e: (e[1], e[0]))
    counts = {"view": 0, "cart": 0, "remove_from_cart": 0, "purchase": 0}
    revenue = 0.0
    step, reached_at = 0, 0
    for _eid, _time, event_type, _pid, price, _uid in rows:
        counts[event_type] = counts.get(event_type, 0) + 1
        if event_type == "purchase":
            revenue += price
    # view -> cart -> purchase in order: the earliest view, then the earliest cart at or
    # after it, then the earliest purchase at or after that cart.
    for k, wanted in enumerate(FUNNEL_STEPS):
        times = [us for _e, us, t, *_ in rows if t == wanted and (k == 0 or us >= reached_at)]
        if not times:
            break
        step, reached_at = k + 1, min(times)
    return {
        USER_ID: min(e[5] for e in rows),
        "start_us": rows[0][1], "end_us": rows[-1][1],
        "event_count": len(rows), "views": counts["view"], "carts": counts["cart"],
        "removes": counts["remove_from_cart"], "purchases": counts["purchase"],
        "revenue": round(revenue, 2),
        "unique_products": len({e[3] for e in rows}),
        ORDERED_STEP: step,
    }


def _session_payload(summary: dict[str, Any], closed: bool,
                     previous: dict[str, Any] | None) -> dict[str, Any]:
    """A session row's payload, without its quality score (``_with_scores`` adds them)."""
    payload = {**summary, CLOSED: closed}
    if previous is not None:
        payload.update({f"prev_{name}": previous[name] for name in _PREV_FIELDS})
    return payload


def _with_scores(payloads: list[dict[str, Any]]) -> list[str]:
    """The payloads as JSON, each with its ``session_quality_score``: one vectorised
    ``quality_formula`` for all of them (numpy on one session at a time costs ~0.2 ms)."""
    if not payloads:
        return []
    column = {name: np.array([p[name] for p in payloads], dtype=np.int64)
              for name in ("event_count", "start_us", "end_us", "unique_products", "carts",
                           "purchases")}
    duration_s = column["end_us"] // _US - column["start_us"] // _US
    scores = quality_formula(column["event_count"], duration_s, column["unique_products"],
                             column["carts"], column["purchases"]).tolist()
    return [json.dumps({**p, "session_quality_score": score})
            for p, score in zip(payloads, scores, strict=True)]


class BucketState:
    """The sessions of one state bucket, in a layout whose cost is not paid per session.

    * ``open``: ``{user_session: (end_us, session_hash, events_json)}``, each open session's
      last event time, hash and unique events (a JSON list of ``_EVENT_FIELDS`` rows). Only the
      sessions a batch touches or closes are decoded; the rest stay opaque text.
    * tombstones of closed sessions: two int64 arrays, ``tomb_hashes`` (sorted) and
      ``tomb_until`` (event time in ms until which the tombstone is kept), looked up with a
      binary search; a day of them is a few MB read without a Python loop.

    Stored as one pickled value (the bucket's state), as pyspark pickles any state.
    """

    def __init__(self, value: bytes | None = None) -> None:
        if value is None:
            self.open: dict[str, tuple[int, int, str]] = {}
            self.tomb_hashes = np.empty(0, np.int64)
            self.tomb_until = np.empty(0, np.int64)
        else:
            self.open, hashes, until = pickle.loads(value)
            self.tomb_hashes = np.frombuffer(hashes, np.int64)
            self.tomb_until = np.frombuffer(until, np.int64)

    def dumps(self) -> bytes:
        return pickle.dumps((self.open, self.tomb_hashes.tobytes(), self.tomb_until.tobytes()),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def empty(self) -> bool:
        return not self.open and not self.tomb_hashes.size

    def closed(self, hashes: list[int]) -> list[bool]:
        """Whether each session (by hash) has a tombstone."""
        if not self.tomb_hashes.size:
            return [False] * len(hashes)
        probe = np.asarray(hashes, np.int64)
        at = np.minimum(np.searchsorted(self.tomb_hashes, probe), self.tomb_hashes.size - 1)
        return (self.tomb_hashes[at] == probe).tolist()

    def replace_tombstones(self, watermark_ms: int, added: list[tuple[int, int]]) -> bool:
        """Forget the tombstones the watermark has passed, add new ones; True if any changed."""
        keep = self.tomb_until >= watermark_ms
        if keep.all() and not added:
            return False
        new = np.asarray(added, np.int64).reshape(-1, 2)
        hashes = np.concatenate([self.tomb_hashes[keep], new[:, 0]])
        until = np.concatenate([self.tomb_until[keep], new[:, 1]])
        order = np.argsort(hashes, kind="stable")
        self.tomb_hashes, self.tomb_until = hashes[order], until[order]
        return True

    def next_timeout_ms(self, gap_ms: int) -> int:
        moments = []
        if self.open:
            moments.append(min(entry[0] for entry in self.open.values()) // 1000 + gap_ms)
        if self.tomb_until.size:
            moments.append(int(self.tomb_until.min()))
        return min(moments)


def _update_bucket(key: tuple[int], batches: Iterator[pd.DataFrame], state: GroupState,
                   gap_ms: int, tombstone_ms: int) -> Iterator[pd.DataFrame]:
    """applyInPandasWithState function over one bucket of user_sessions (``BucketState``).

    Each open session keeps its unique events. A session closes once the watermark passes its
    last event + ``gap_ms``: its final document is emitted and it leaves a tombstone, kept
    ``tombstone_ms`` more of event time, so that a later event of it is reported as late (a
    ``late`` row, dead-lettered as ``late_for_session``) instead of starting a second,
    partial document that would replace the final one. The bucket's timeout is its earliest
    closing or forgetting moment.

    Sessions share a bucket (``session_state_updates``) because pyspark's cost per group (Arrow
    slices, pandas frames, state (de)serialisation) is several milliseconds: per session it
    would dominate every batch (measured: 4.5-5.5 ms a session against 0.4-0.6 ms in
    buckets). A batch's Python work is the sessions it touches or closes; the rest of the
    bucket is carried as opaque bytes (``BucketState``).
    """
    bucket = BucketState(state.get[0] if state.exists else None)
    watermark_ms = state.getCurrentWatermarkMs()
    late_ids: list[str] = []
    late_events: list[str] = []
    session_ids: list[str] = []
    sessions: list[dict[str, Any]] = []
    # Forget the tombstones the watermark has passed (last event + gap + tombstone_ms) first:
    # an event of such a session starts a new document.
    changed = bucket.replace_tombstones(watermark_ms, [])

    if not state.hasTimedOut:
        arriving: dict[str, list[list[Any]]] = {}
        hash_of: dict[str, int] = {}
        for frame in batches:
            columns = [frame[USER_SESSION].tolist(), frame[SESSION_HASH].tolist(),
                       *(frame[name].tolist() for name in _EVENT_FIELDS)]
            for sid, h, eid, us, event_type, pid, price, uid in zip(*columns, strict=True):
                arriving.setdefault(sid, []).append(
                    [eid, int(us), event_type, int(pid), float(price), int(uid)])
                hash_of[sid] = int(h)
        unseen = [sid for sid in arriving if sid not in bucket.open]
        late = {sid for sid, is_closed in zip(unseen, bucket.closed([hash_of[s] for s in unseen]),
                                             strict=True) if is_closed}
        for sid, new in arriving.items():
            if sid in late:
                late_ids += [sid] * len(new)
                late_events += [json.dumps(dict(zip(_EVENT_FIELDS, event, strict=True)))
                                for event in new]
                continue
            entry = bucket.open.get(sid)
            known = {e[0]: e for e in json.loads(entry[2])} if entry is not None else {}
            merged = dict(known)
            for event in new:
                merged.setdefault(event[0], event)
            if len(merged) == len(known):  # only repeats of events it has: nothing changed
                continue
            previous = summarize_session(known.values()) if known else None
            summary = summarize_session(merged.values())
            bucket.open[sid] = (summary["end_us"], hash_of[sid],
                                json.dumps(list(merged.values())))
            changed = True
            session_ids.append(sid)
            sessions.append(_session_payload(summary, False, previous))
    # Close the sessions the watermark has passed (last event + gap).
    closes_before_us = (watermark_ms - gap_ms) * 1000  # end_us // 1000 + gap < watermark
    closing = [sid for sid, entry in bucket.open.items() if entry[0] < closes_before_us]
    tombstones = []
    for sid in closing:
        end_us, h, events_json = bucket.open.pop(sid)
        summary = summarize_session(json.loads(events_json))
        tombstones.append((h, end_us // 1000 + gap_ms + tombstone_ms))
        session_ids.append(sid)
        sessions.append(_session_payload(summary, True, summary))
    if tombstones:
        changed = bucket.replace_tombstones(watermark_ms, tombstones) or changed
    if bucket.empty():
        if state.exists:
            state.remove()
    else:
        if changed:
            state.update((bucket.dumps(),))
        state.setTimeoutTimestamp(max(bucket.next_timeout_ms(gap_ms), watermark_ms + 1))
    if session_ids or late_ids:
        yield pd.DataFrame({KIND: [SESSION_ROW] * len(session_ids) + [LATE_ROW] * len(late_ids),
                            USER_SESSION: session_ids + late_ids,
                            "payload": _with_scores(sessions) + late_events})


def session_state_updates(events: DataFrame, gap_ms: int, tombstone_ms: int,
                          buckets: int = 64) -> DataFrame:
    """Streaming: valid, keyed events with a watermark -> session update rows.

    A ``session`` row is a session's current document (``closed`` once ``gap_ms`` of event
    time has passed its last event) with its previous funnel fields (``prev_*``); a ``late``
    row is an event that arrived after its session closed. Events older than the watermark
    are dropped by Spark before the state (counted as late rows in the query's progress).
    The state is kept in ``buckets`` groups by a hash of user_session (fixed by the
    checkpoint: changing it needs a new one).
    """
    keyed = (events.where(F.col(USER_SESSION).isNotNull())
             .withColumn(SESSION_HASH, F.xxhash64(USER_SESSION))
             .select(F.pmod(F.col(SESSION_HASH), F.lit(buckets)).alias("_bucket"),
                     USER_SESSION, SESSION_HASH, EVENT_TIME, EVENT_ID,
                     F.unix_micros(EVENT_TIME).alias("event_us"),
                     EVENT_TYPE, PRODUCT_ID, PRICE, USER_ID))
    rows = keyed.groupBy("_bucket").applyInPandasWithState(
        partial(_update_bucket, gap_ms=gap_ms, tombstone_ms=tombstone_ms),
        OUTPUT_SCHEMA, STATE_SCHEMA, "update", GroupStateTimeout.EventTimeTimeout)
    return rows.select(
        KIND, USER_SESSION, F.from_json("payload", PAYLOAD_SCHEMA).alias("_p"),
        F.when(F.col(KIND) == LATE_ROW, F.col("payload")).alias("late_event"),
    ).select(KIND, USER_SESSION, "_p.*", "late_event")


def _session_columns(prefix: str = "") -> list[Column]:
    start = F.timestamp_micros(F.col(f"{prefix}start_us"))
    return [F.date_format(start, "yyyy-MM-dd").alias(f"{prefix}{SESSION_DATE}")]


#: Column of ``streamed_session_documents``: the session was emitted by an earlier batch, so
#: its document exists (``serving.write_frame(stored_column=...)``); not part of the document.
STORED = "_stored"


def streamed_session_documents(updates: DataFrame) -> DataFrame:
    """``user_session_analytics`` documents of the ``session`` rows (batch's columns + closed),
    with ``STORED``. One row per session: the state emits a session once per batch."""
    start, end = F.timestamp_micros(F.col("start_us")), F.timestamp_micros(F.col("end_us"))
    return updates.where(F.col(KIND) == SESSION_ROW).select(
        F.col(USER_SESSION).alias("_id"), USER_SESSION, USER_ID,
        start.alias("session_start"), end.alias("session_end"),
        "event_count", "views", "carts", "removes", "purchases", "revenue", "unique_products",
        ORDERED_STEP,
        ((F.col("end_us") / _US).cast("long") - (F.col("start_us") / _US).cast("long"))
        .alias("duration_s"),
        (F.col("purchases") > 0).alias("converted"),
        *_session_columns(), "session_quality_score", CLOSED,
        F.col("prev_start_us").isNotNull().alias(STORED))


def funnel_deltas(updates: DataFrame) -> DataFrame:
    """Per day: what a micro-batch's session rows change in the funnel counters (the new
    contribution of each session minus its previous one; a session whose start moved to
    another day moves between days)."""
    sessions = updates.where(F.col(KIND) == SESSION_ROW)
    new = sessions.select(*_session_columns(), *funnel_contributions())
    old = (sessions.where(F.col("prev_start_us").isNotNull())
           .select(*_session_columns("prev_"), *funnel_contributions("prev_", -1)))
    return (new.unionByName(old.withColumnRenamed(f"prev_{SESSION_DATE}", SESSION_DATE))
            .groupBy(F.col(SESSION_DATE).alias("date"))
            .agg(*[F.sum(c).alias(c) for c in FUNNEL_COUNTS]))
