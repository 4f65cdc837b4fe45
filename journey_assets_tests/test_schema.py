"""Schema parity: Python (validate_record / event_id) and Spark (validate_columns / event_id_col)
must give the same verdict, the same reason and the same event_id for every record."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import functions as F

from journey_assets.schema import (
    CSV_COLUMNS,
    RAW_SCHEMA,
    TIME_FORMAT_PY,
    event_id,
    validate_record,
)
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.events import REASON, parse_text_events, with_event_keys

EDGE_PRICES = ["0", "0.0", "0.00", "1e3", "1E-2", ".5", "5.", "-0.0", "-0", "1.005", "2.675",
               "0.0000005", "0.0000015", "0.0000025", "123456789.123456", "99999999.99",
               "-1e-9", "+5", "5 ", " 5", "1,5", "NaN", "inf", "abc", "", "1.2.3",
               "0x1A", "1e", "e5", "٣"]
EDGE_TIMES = ["2019-10-01 00:00:00 UTC", " 2019-10-01 00:00:00 UTC", "2019-10-31 23:59:59 UTC", "2019-02-30 00:00:00 UTC",
              "2019-10-01 24:00:00 UTC", "2019-10-01T00:00:00Z", "2019-10-01 00:00:00",
              "2020-02-29 12:00:00 UTC", "not a time", "", "1999-12-31 23:59:59 UTC",
              "2000-01-01 00:00:00 UTC", "9999-12-31 23:55:00 UTC", "2100-01-01 00:00:00 UTC",
              "0001-01-01 00:00:00 UTC"]
EDGE_IDS = ["1004856", "0", "-5", "007", "9223372036854775807", "1.0", "1e3", "abc", " 12", ""]


def _edge_records() -> list[dict[str, str | None]]:
    base = next(iter(generate_records(SyntheticConfig(n_events=10, seed=1))))
    out = []
    for price in EDGE_PRICES:
        out.append(base | {"price": price or None})
    for ts in EDGE_TIMES:
        out.append(base | {"event_time": ts or None})
    for value, field in itertools.product(EDGE_IDS, ("product_id", "category_id", "user_id")):
        out.append(base | {field: value or None})
    for event_type in ("view", "purchase", "VIEW", "click", "", "remove_from_cart"):
        out.append(base | {"event_type": event_type or None})
    for field in ("category_code", "brand", "user_session"):
        out.append(base | {field: None})
        out.append(base | {field: "   "})
        out.append(base | {field: "ünïcode.ç"})
    return out


@pytest.fixture(scope="module")
def records() -> list[dict[str, str | None]]:
    generated = list(generate_records(SyntheticConfig(n_events=400, seed=31, invalid_fraction=0.1)))
    return generated + _edge_records()


def test_validation_and_event_id_parity(spark, records):
    rows = [(i, *(r[c] for c in CSV_COLUMNS)) for i, r in enumerate(records)]
    raw = spark.createDataFrame(rows, ["_i", *RAW_SCHEMA.fieldNames()])
    parsed = parse_text_events(raw.select("_i", *CSV_COLUMNS), source=F.col("_i").cast("string"))
    keyed = with_event_keys(parsed.where(F.col(REASON).isNull()).select("source", *CSV_COLUMNS))
    spark_reason = {int(r["source"]): r[REASON] for r in parsed.select("source", REASON).collect()}
    spark_id = {int(r["source"]): r["event_id"] for r in keyed.select("source", "event_id").collect()}

    mismatches = []
    for i, record in enumerate(records):
        event, reason = validate_record(record)
        if reason != spark_reason[i]:
            mismatches.append((record, "reason", reason, spark_reason[i]))
        elif event is not None and event_id(event) != spark_id.get(i):
            mismatches.append((record, "event_id", event_id(event), spark_id.get(i)))
    assert not mismatches, mismatches[:10]
    # The sample really exercises both sides: many valid rows and every kind of rejection.
    reasons = {validate_record(r)[1] for r in records}
    assert {None, "missing_user_id", "unparsable_event_time", "unknown_event_type",
            "negative_price", "non_numeric_price", "non_integer_user_id",
            "event_time_out_of_range"} <= reasons


# Edge cases where the Python and Spark rules once diverged (both now reject all four).
EDGE_CASES = [
    pytest.param({"event_time": "2019-10-1 0:0:0 UTC"}, id="unpadded-time"),
    pytest.param({"event_time": "2019-02-30 00:00:00 UTC"}, id="impossible-date"),
    pytest.param({"event_time": "2019-10-01 24:00:00 UTC"}, id="hour-24"),
    pytest.param({"user_id": "99999999999999999999"}, id="id-beyond-int64"),
    pytest.param({"price": "1e13"}, id="price-overflows-micros"),
    pytest.param({"price": "1e400"}, id="infinite-price"),
    pytest.param({"price": "999999999.99"}, id="largest-accepted-price"),
    pytest.param({"event_time": "9999-12-31 23:55:00 UTC"}, id="year-9999"),
    pytest.param({"event_time": "0001-01-01 00:00:00 UTC"}, id="year-0001"),
    pytest.param({"event_time": "2100-01-01 00:00:00 UTC"}, id="clock-skew-2100"),
]


@pytest.mark.parametrize("change", EDGE_CASES)
def test_edge_cases_agree(spark, change):
    base = next(iter(generate_records(SyntheticConfig(n_events=10, seed=1))))
    record = base | change
    raw = spark.createDataFrame([tuple(record[c] for c in CSV_COLUMNS)], RAW_SCHEMA)
    parsed = parse_text_events(raw)
    # The reason alone first: a rejected year-0001 time cannot become a Python datetime.
    [(spark_reason,)] = parsed.select(REASON).collect()
    event, reason = validate_record(record)
    assert reason == spark_reason
    if event is not None:
        [row] = parsed.select(*CSV_COLUMNS).collect()
        assert all(row[c] is not None for c in ("user_id", "product_id", "category_id", "price"))
        [keyed] = with_event_keys(parsed.where(F.col(REASON).isNull()).select(*CSV_COLUMNS)).collect()
        assert event_id(event) == keyed["event_id"]


@pytest.mark.parametrize(("ahead", "reason"), [
    (timedelta(hours=23), None), (timedelta(days=1), None),
    (timedelta(days=1, seconds=1), "event_time_out_of_range"),
], ids=["23h-ahead", "1d-ahead", "1d1s-ahead"])
def test_event_time_is_bounded_by_the_receipt_time(spark, ahead: timedelta,
                                                   reason: str | None) -> None:
    """The upper bound is the record's own receipt time (its Kafka timestamp), in both."""
    received = datetime(2019, 10, 1, 12, 0, tzinfo=UTC)
    base = next(iter(generate_records(SyntheticConfig(n_events=10, seed=1))))
    record = base | {"event_time": (received + ahead).strftime(TIME_FORMAT_PY)}
    raw = spark.createDataFrame([tuple(record[c] for c in CSV_COLUMNS)], RAW_SCHEMA)
    [row] = parse_text_events(raw, received_at=F.lit(received)).select(REASON).collect()
    assert validate_record(record, received_at=received)[1] == reason == row[REASON]
