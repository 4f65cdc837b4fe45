"""The REES46 event: the one source of truth for field names, types and validation rules.

Two executions of the same rules live here side by side so that they cannot drift apart:
``validate_record`` (plain Python: CSV reader, producer, tests) and ``validate_columns``
(Spark: the streaming and batch parse). ``event_id`` / ``event_id_col`` likewise hash the nine
fields identically in Python and in Spark, so an event keeps its ``_id`` wherever it is computed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# -- fields -------------------------------------------------------------------------------
EVENT_TIME = "event_time"
EVENT_TYPE = "event_type"
PRODUCT_ID = "product_id"
CATEGORY_ID = "category_id"
CATEGORY_CODE = "category_code"
BRAND = "brand"
PRICE = "price"
USER_ID = "user_id"
USER_SESSION = "user_session"

#: CSV header order of the Kaggle files, and the order in which fields are hashed.
CSV_COLUMNS: tuple[str, ...] = (
    EVENT_TIME, EVENT_TYPE, PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, BRAND, PRICE, USER_ID,
    USER_SESSION,
)
CSV_HEADER = ",".join(CSV_COLUMNS)

REQUIRED_FIELDS: tuple[str, ...] = (EVENT_TIME, EVENT_TYPE, PRODUCT_ID, CATEGORY_ID, PRICE, USER_ID)
INTEGER_FIELDS: tuple[str, ...] = (PRODUCT_ID, CATEGORY_ID, USER_ID)
NULLABLE_FIELDS: tuple[str, ...] = (CATEGORY_CODE, BRAND, USER_SESSION)

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "remove_from_cart", "purchase")

#: Text form of event_time in the files and on the wire.
TIME_FORMAT_PY = "%Y-%m-%d %H:%M:%S UTC"
TIME_FORMAT_SPARK = "yyyy-MM-dd HH:mm:ss 'UTC'"

# Derived fields (enrichment contract).
EVENT_ID = "event_id"
EVENT_DATE = "event_date"
CATEGORY_L1 = "category_l1"
PRICE_TIER = "price_tier"
UNKNOWN_CATEGORY = "unknown"
PRICE_TIERS: tuple[tuple[str, float], ...] = (("Budget", 20.0), ("Mid-Range", 100.0))
TOP_PRICE_TIER = "Premium"

#: The typed event (what the parse produces for valid records).
EVENT_SCHEMA = StructType([
    StructField(EVENT_TIME, TimestampType(), False),
    StructField(EVENT_TYPE, StringType(), False),
    StructField(PRODUCT_ID, LongType(), False),
    StructField(CATEGORY_ID, LongType(), False),
    StructField(CATEGORY_CODE, StringType(), True),
    StructField(BRAND, StringType(), True),
    StructField(PRICE, DoubleType(), False),
    StructField(USER_ID, LongType(), False),
    StructField(USER_SESSION, StringType(), True),
])

#: How raw JSON / CSV text is read before validation: every field as text, so that a bad
#: value becomes a reason instead of a silent null.
RAW_SCHEMA = StructType([StructField(name, StringType(), True) for name in CSV_COLUMNS])

# -- rejection reasons --------------------------------------------------------------------
MALFORMED_JSON = "malformed_json"
MALFORMED_CSV = "malformed_csv"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNPARSABLE_EVENT_TIME = "unparsable_event_time"
NON_NUMERIC_PRICE = "non_numeric_price"
NEGATIVE_PRICE = "negative_price"
PRICE_OUT_OF_RANGE = "price_out_of_range"
EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
#: Plausible event times: from EARLIEST_EVENT_TIME to the time the record was received (its
#: Kafka timestamp; now for files) + MAX_EVENT_TIME_AHEAD. Anything else is a dead letter: a
#: year-9999 event would break the window arithmetic of the aggregations, a clock-skewed
#: year-2100 event would move the watermark past every real event.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME_AHEAD = timedelta(days=1)
#: Prices at or above this are rejected: no real product costs that much, and the event id
#: hashes the price in micro-units, which must fit a signed 64-bit integer.
MAX_PRICE = 1e9
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def missing(field: str) -> str:
    return f"missing_{field}"


def non_integer(field: str) -> str:
    return f"non_integer_{field}"


_INTEGER_RE = r"^-?[0-9]+$"
# Exactly the REES46 form, zero-padded: strptime alone would also take "2019-10-1 0:0:0 UTC".
_TIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC$"
_NUMBER_RE = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
_INTEGER_PY = re.compile(_INTEGER_RE)
_NUMBER_PY = re.compile(_NUMBER_RE)
_TIME_PY = re.compile(_TIME_RE)
# The hash separator: a control character that never occurs in REES46 text.
_SEP = "\x1f"
_NULL = "\\N"


# -- Python side --------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejection:
    reason: str
    raw: str


def as_text(value: Any) -> str | None:
    """The text a value has on the wire (None and blank mean absent)."""
    if type(value) is str:  # the common case (CSV rows, decoded JSON strings): no conversion
        return value if value and not value.isspace() else None
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    text = str(value)
    return text if text.strip() != "" else None


def parse_time(text: str) -> datetime | None:
    if not _TIME_PY.match(text):
        return None
    try:
        # On the strict pattern this equals strptime(TIME_FORMAT_PY) and is ~25x cheaper.
        return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


def format_time(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime(TIME_FORMAT_PY)


#: Positions in ``CSV_COLUMNS`` order (what ``record_texts`` returns) for ``check_texts``.
_REQUIRED_AT = tuple((name, CSV_COLUMNS.index(name)) for name in REQUIRED_FIELDS)
_INTEGER_AT = tuple((name, CSV_COLUMNS.index(name)) for name in INTEGER_FIELDS)
_TIME_AT, _TYPE_AT, _PRICE_AT = (CSV_COLUMNS.index(n) for n in (EVENT_TIME, EVENT_TYPE, PRICE))


def record_texts(record: Mapping[str, Any]) -> list[str | None]:
    """The nine fields of a raw record as wire text, in ``CSV_COLUMNS`` order."""
    # Non-blank strings (nearly every value) are taken as they are without a call to as_text.
    return [v if type(v) is str and v and not v.isspace() else as_text(v)
            for v in map(record.get, CSV_COLUMNS)]


def check_texts(texts: list[str | None], received_at: datetime | None = None,
                ) -> tuple[str | None, tuple[datetime, int, int, float, int] | None]:
    """The rules over the nine texts: ``(reason, None)`` or ``(None, (time, product_id,
    category_id, price, user_id))``. It runs once per event in the producer, where its cost is
    the producer's throughput: positions are precomputed, typed values built once.
    ``received_at`` (default: now) bounds the event time from above."""
    for name, at in _REQUIRED_AT:
        if texts[at] is None:
            return missing(name), None
    if texts[_TYPE_AT] not in EVENT_TYPES:
        return UNKNOWN_EVENT_TYPE, None
    ts = parse_time(texts[_TIME_AT])  # type: ignore[arg-type]
    if ts is None:
        return UNPARSABLE_EVENT_TIME, None
    if not EARLIEST_EVENT_TIME <= ts <= (received_at or datetime.now(UTC)) + MAX_EVENT_TIME_AHEAD:
        return EVENT_TIME_OUT_OF_RANGE, None
    ints = []
    for name, at in _INTEGER_AT:
        value: str = texts[at]  # type: ignore[assignment]
        if not _INTEGER_PY.match(value) or not _INT64_MIN <= (number := int(value)) <= _INT64_MAX:
            return non_integer(name), None
        ints.append(number)
    text_price: str = texts[_PRICE_AT]  # type: ignore[assignment]
    if not _NUMBER_PY.match(text_price):
        return NON_NUMERIC_PRICE, None
    price = float(text_price)
    if price < 0:
        return NEGATIVE_PRICE, None
    if not price < MAX_PRICE:
        return PRICE_OUT_OF_RANGE, None
    product_id, category_id, user_id = ints
    return None, (ts, product_id, category_id, price, user_id)


def validate_record(record: Mapping[str, Any], received_at: datetime | None = None,
                    ) -> tuple[dict[str, Any] | None, str | None]:
    """Check one raw record (CSV row or decoded JSON) against the rules.

    Returns ``(event, None)`` with typed values, or ``(None, reason)``. The same rules, in the
    same order, are ``validate_columns`` in Spark. ``received_at``: when the record arrived
    (its Kafka timestamp; default now), the upper bound of a plausible event time.
    """
    texts = record_texts(record)
    reason, typed = check_texts(texts, received_at)
    if typed is None:
        return None, reason
    ts, product_id, category_id, price, user_id = typed
    event = {
        EVENT_TIME: ts,
        EVENT_TYPE: texts[1],
        PRODUCT_ID: product_id,
        CATEGORY_ID: category_id,
        CATEGORY_CODE: texts[4],
        BRAND: texts[5],
        PRICE: price,
        USER_ID: user_id,
        USER_SESSION: texts[8],
    }
    return event, None


def _price_micros(price: float) -> int:
    # round() is half-even on the exact binary value, like Spark's bround.
    return round(price * 1_000_000)


def _epoch_seconds(ts: datetime) -> int:
    return int((ts - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() // 1)


def event_id(event: Mapping[str, Any]) -> str:
    """SHA-256 over the nine typed fields: equal for rows identical in all nine fields."""
    parts = [
        str(_epoch_seconds(event[EVENT_TIME])),
        event[EVENT_TYPE],
        str(event[PRODUCT_ID]),
        str(event[CATEGORY_ID]),
        event[CATEGORY_CODE] if event[CATEGORY_CODE] is not None else _NULL,
        event[BRAND] if event[BRAND] is not None else _NULL,
        str(_price_micros(event[PRICE])),
        str(event[USER_ID]),
        event[USER_SESSION] if event[USER_SESSION] is not None else _NULL,
    ]
    return hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()


def category_l1(category_code: str | None) -> str:
    if not category_code:
        return UNKNOWN_CATEGORY
    return category_code.split(".", 1)[0]


def price_tier(price: float) -> str:
    for name, upper in PRICE_TIERS:
        if price < upper:
            return name
    return TOP_PRICE_TIER


# -- Spark side ---------------------------------------------------------------------------
def _blank_to_null(c: Column) -> Column:
    return F.when(F.trim(c) == "", F.lit(None)).otherwise(c)


def validate_columns(raw: Column | None = None, received_at: Column | None = None,
                     ) -> tuple[Column, dict[str, Column]]:
    """Spark twin of ``validate_record`` over a struct of text fields (``RAW_SCHEMA``).

    Returns ``(reason, typed)``: a column that is null for a valid record and the rejection
    reason otherwise, and the typed field expressions (meaningful where reason is null).
    ``received_at`` (default: the current timestamp) bounds the event time from above.
    """
    def field(name: str) -> Column:
        c = raw[name] if raw is not None else F.col(name)
        return _blank_to_null(c)

    time_text = field(EVENT_TIME)
    ts = F.when(time_text.rlike(_TIME_RE),
                F.try_to_timestamp(time_text, F.lit(TIME_FORMAT_SPARK)))
    price_text = field(PRICE)
    price = price_text.try_cast(DoubleType())
    reason = None
    checks: list[tuple[Column, str]] = [
        *((field(name).isNull(), missing(name)) for name in REQUIRED_FIELDS),
        (~field(EVENT_TYPE).isin(*EVENT_TYPES), UNKNOWN_EVENT_TYPE),
        (ts.isNull(), UNPARSABLE_EVENT_TIME),
        ((ts < F.lit(EARLIEST_EVENT_TIME))
         | (ts > (received_at if received_at is not None else F.current_timestamp())
            + F.make_dt_interval(F.lit(MAX_EVENT_TIME_AHEAD.days), F.lit(0), F.lit(0),
                                 F.lit(MAX_EVENT_TIME_AHEAD.seconds))),
         EVENT_TIME_OUT_OF_RANGE),
        *(
            (~field(name).rlike(_INTEGER_RE) | field(name).try_cast(LongType()).isNull(),
             non_integer(name))
            for name in INTEGER_FIELDS
        ),
        (~price_text.rlike(_NUMBER_RE), NON_NUMERIC_PRICE),
        (price < 0, NEGATIVE_PRICE),
        # try_cast gives +inf for "1e400", like Python's float(); NaN never passes the regex.
        (~(price < MAX_PRICE), PRICE_OUT_OF_RANGE),
    ]
    for condition, why in checks:
        reason = F.when(condition, F.lit(why)) if reason is None else reason.when(condition, F.lit(why))
    typed = {
        EVENT_TIME: ts,
        EVENT_TYPE: field(EVENT_TYPE),
        PRODUCT_ID: field(PRODUCT_ID).try_cast(LongType()),
        CATEGORY_ID: field(CATEGORY_ID).try_cast(LongType()),
        CATEGORY_CODE: field(CATEGORY_CODE),
        BRAND: field(BRAND),
        PRICE: price,
        USER_ID: field(USER_ID).try_cast(LongType()),
        USER_SESSION: field(USER_SESSION),
    }
    return reason, typed  # type: ignore[return-value]


def event_id_col() -> Column:
    """Spark twin of ``event_id`` over the typed columns."""
    def nullable(name: str) -> Column:
        return F.coalesce(F.col(name), F.lit(_NULL))

    parts = [
        F.unix_timestamp(F.col(EVENT_TIME)).cast("string"),
        F.col(EVENT_TYPE),
        F.col(PRODUCT_ID).cast("string"),
        F.col(CATEGORY_ID).cast("string"),
        nullable(CATEGORY_CODE),
        nullable(BRAND),
        F.bround(F.col(PRICE) * F.lit(1_000_000.0), 0).cast("long").cast("string"),
        F.col(USER_ID).cast("string"),
        nullable(USER_SESSION),
    ]
    return F.sha2(F.concat_ws(_SEP, *parts), 256)


def category_l1_col(code: Column | None = None) -> Column:
    code = F.col(CATEGORY_CODE) if code is None else code
    return F.when(code.isNull() | (code == ""), F.lit(UNKNOWN_CATEGORY)).otherwise(
        F.split(code, r"\.").getItem(0)
    )


def price_tier_col(price: Column | None = None) -> Column:
    price = F.col(PRICE) if price is None else price
    expr = None
    for name, upper in PRICE_TIERS:
        expr = F.when(price < upper, F.lit(name)) if expr is None else expr.when(price < upper, F.lit(name))
    return expr.otherwise(F.lit(TOP_PRICE_TIER))  # type: ignore[union-attr]
