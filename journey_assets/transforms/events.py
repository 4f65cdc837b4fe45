"""Parse, validate and enrich events: pure DataFrame -> DataFrame functions.

The streaming job applies them to each Kafka micro-batch and the batch side to files; the same
functions, hence the same numbers (Kappa: one codebase).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from journey_assets.schema import (
    CATEGORY_L1,
    CSV_COLUMNS,
    EVENT_DATE,
    EVENT_ID,
    EVENT_TIME,
    MALFORMED_JSON,
    PRICE_TIER,
    PRODUCT_ID,
    RAW_SCHEMA,
    USER_ID,
    category_l1_col,
    event_id_col,
    price_tier_col,
    validate_columns,
)

REASON = "reason"
RAW = "raw"
SOURCE = "source"
RECEIVED_AT = "received_at"
_CORRUPT = "_corrupt_record"
_JSON_SCHEMA = StructType([*RAW_SCHEMA.fields, StructField(_CORRUPT, StringType(), True)])

#: Columns of a parsed frame besides the nine typed event fields.
PARSED_EXTRA = (REASON, RAW, SOURCE, RECEIVED_AT)


def _parse_struct(raw_text: Column, parsed: Column, malformed: Column, source: Column,
                  received_at: Column, df: DataFrame) -> DataFrame:
    reason, typed = validate_columns(parsed, received_at)
    reason = F.when(malformed, F.lit(MALFORMED_JSON)).otherwise(reason)
    return df.select(
        reason.alias(REASON),
        raw_text.alias(RAW),
        source.alias(SOURCE),
        received_at.alias(RECEIVED_AT),
        *(typed[name].alias(name) for name in CSV_COLUMNS),
    )


def parse_kafka_events(kafka_rows: DataFrame) -> DataFrame:
    """Rows of Spark's Kafka source -> one row per record: typed fields, or a rejection reason.

    ``source`` identifies the record (topic/partition/offset), ``received_at`` is the Kafka
    timestamp: both deterministic, so a replayed record yields the same dead letter.
    """
    value = F.col("value").cast("string")
    parsed = F.from_json(value, _JSON_SCHEMA,
                         {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    frame = kafka_rows.select(
        value.alias("_value"),
        parsed.alias("_parsed"),
        F.struct(F.col("topic"), F.col("partition"), F.col("offset")).alias("_source"),
        F.col("timestamp").alias("_ts"),
    )
    # Invalid UTF-8 anywhere in the payload is malformed, as a CSV line's is: the JSON reader
    # would otherwise keep the record with U+FFFD in place of the bad bytes.
    malformed = (
        F.col("_value").isNull() | (F.trim(F.col("_value")) == "")
        | ~F.is_valid_utf8(F.col("_value"))
        | F.col("_parsed").isNull() | F.col(f"_parsed.{_CORRUPT}").isNotNull()
    )
    return _parse_struct(F.col("_value"), F.col("_parsed"), malformed,
                         F.col("_source"), F.col("_ts"), frame)


def parse_text_events(text_rows: DataFrame, source: Column | None = None,
                      received_at: Column | None = None) -> DataFrame:
    """A frame with the nine fields as text (CSV read with ``RAW_SCHEMA``, or Python records)
    -> the same shape as ``parse_kafka_events``."""
    fields = F.struct(*(F.col(name).cast("string").alias(name) for name in CSV_COLUMNS))
    frame = text_rows.select(
        fields.alias("_parsed"),
        (source if source is not None else F.lit(None).cast("string")).alias("_source"),
        (received_at if received_at is not None else F.current_timestamp()).alias("_ts"),
    )
    return _parse_struct(F.to_json(F.col("_parsed")), F.col("_parsed"), F.lit(False),
                         F.col("_source"), F.col("_ts"), frame)


def valid_events(parsed: DataFrame) -> DataFrame:
    """The typed nine fields of the records that passed validation."""
    return parsed.where(F.col(REASON).isNull()).select(*CSV_COLUMNS)


def dead_letter_id_col() -> Column:
    """Deterministic dead-letter ``_id``: the hash of the record's source position."""
    return F.sha2(F.to_json(F.col(SOURCE)), 256)


def dead_letters(parsed: DataFrame) -> DataFrame:
    """Rejected records as ``dead_letter_events`` rows (``_id`` from their source position)."""
    return parsed.where(F.col(REASON).isNotNull()).select(
        dead_letter_id_col().alias("_id"),
        F.col(RAW), F.col(REASON), F.col(RECEIVED_AT), F.col(SOURCE),
    )


#: Column of ``triage_events`` holding the dead-letter ``_id`` (null for valid records).
DEAD_LETTER_ID = "dead_letter_id"
#: Columns of ``triage_events`` that belong to the dead letters only.
DEAD_LETTER_COLUMNS = (DEAD_LETTER_ID, REASON, RAW, SOURCE, RECEIVED_AT)
#: Column of ``triage_events`` with every record's source position (Kafka: a struct of
#: topic, partition, offset), for the data-quality ledger's offset ranges.
POSITION = "position"


def triage_events(parsed: DataFrame) -> DataFrame:
    """Both outputs of a parsed batch in one frame, so one pass (one Spark job) yields them.

    Every row carries the nine typed fields with the keys of ``with_event_keys`` (meaningful
    where ``reason`` is null) and the dead-letter columns ``DEAD_LETTER_COLUMNS`` (set only
    where ``reason`` is set: the raw payload of a valid record is not shipped). Split by
    ``reason``; ``valid_events`` + ``with_event_keys`` and ``dead_letters`` give the same rows
    separately. ``POSITION`` keeps every record's source position. The typed fields of a rejected record are nulled first, so no derivation (ANSI
    casts in the event id, say) ever sees an out-of-range value.
    """
    rejected = F.col(REASON).isNotNull()
    marked = parsed.select(
        *(F.when(~rejected, F.col(name)).alias(name) for name in CSV_COLUMNS), F.col(REASON),
        F.when(rejected, dead_letter_id_col()).alias(DEAD_LETTER_ID),
        # BSON and Arrow text must be valid UTF-8: bad bytes of a payload become U+FFFD.
        F.when(rejected, F.make_valid_utf8(F.col(RAW))).alias(RAW),
        F.when(rejected, F.to_json(F.col(SOURCE))).alias(SOURCE),
        F.when(rejected, F.col(RECEIVED_AT)).alias(RECEIVED_AT),
        F.col(SOURCE).alias(POSITION),
    )
    return with_event_keys(marked)


def dead_letter_rows(triaged: DataFrame) -> DataFrame:
    """The rejected rows of a ``triage_events`` frame as ``dead_letter_events`` rows."""
    return triaged.where(F.col(REASON).isNotNull()).select(
        F.col(DEAD_LETTER_ID).alias("_id"), *DEAD_LETTER_COLUMNS[1:])


def with_event_keys(events: DataFrame) -> DataFrame:
    """Add event_id (hash of the nine fields), event_date, category_l1 and price_tier."""
    return events.select(
        "*",
        event_id_col().alias(EVENT_ID),
        F.to_date(F.col(EVENT_TIME)).alias(EVENT_DATE),
        category_l1_col().alias(CATEGORY_L1),
        price_tier_col().alias(PRICE_TIER),
    )


#: Dimension columns joined onto each event (dimension table -> {source column: event column}).
PRODUCT_DIMENSION_FIELDS = {"typical_price": "product_typical_price",
                            "popularity": "product_popularity"}
USER_DIMENSION_FIELDS = {"segment": "user_segment", "country": "user_country",
                         "city": "user_city", "age_group": "user_age_group",
                         "gender": "user_gender", "registration_date": "user_registration_date"}


def _dimension_columns(dim: DataFrame, key: str, fields: dict[str, str]) -> DataFrame:
    present = [(src, dst) for src, dst in fields.items() if src in dim.columns]
    return dim.select(F.col(key), *(F.col(src).alias(dst) for src, dst in present))


def join_dimensions(events: DataFrame, products: DataFrame | None = None,
                    users: DataFrame | None = None) -> DataFrame:
    """Broadcast left joins with the small dimension tables (those that exist yet).

    Dimension tables are small (one row per product / user), so broadcasting them avoids a
    shuffle of the large event side; works the same on a stream and on a static frame.
    """
    if products is not None:
        dim = _dimension_columns(products, PRODUCT_ID, PRODUCT_DIMENSION_FIELDS)
        events = events.join(F.broadcast(dim), on=PRODUCT_ID, how="left")
    if users is not None:
        dim = _dimension_columns(users, USER_ID, USER_DIMENSION_FIELDS)
        events = events.join(F.broadcast(dim), on=USER_ID, how="left")
    return events


def enrich_events(events: DataFrame, products: DataFrame | None = None,
                  users: DataFrame | None = None) -> DataFrame:
    """Keys and derived fields (``with_event_keys``), then ``join_dimensions``."""
    return join_dimensions(with_event_keys(events), products, users)


#: The columns of the events table (``with_event_keys`` over the nine fields).
LAKE_COLUMNS = (*CSV_COLUMNS, EVENT_ID, EVENT_DATE, CATEGORY_L1, PRICE_TIER)


def write_event_lake(events: DataFrame, path: str, app_id: str | None = None,
                     version: int | None = None) -> None:
    """Insert events (``with_event_keys`` columns) into the Delta events table, insert-only
    by event_id: events the table holds already, and repeats within ``events``, are skipped.
    ``app_id``/``version``: an idempotent commit (see ``lake.insert_new_rows``)."""
    from journey_assets import lake

    unique = events.select(*LAKE_COLUMNS).dropDuplicates([EVENT_ID])
    lake.insert_new_rows(events.sparkSession, path, unique, EVENT_ID, EVENT_DATE, app_id,
                         version, lake.EVENTS_TABLE_PROPERTIES)


def read_event_lake(spark, path: str, start_date: str | None = None,
                    end_date: str | None = None, version: int | None = None) -> DataFrame:
    """The lake's events (unique by event_id: the table is written insert-only), pruned to
    ``[start_date, end_date]`` by partition, as of table ``version`` (None: the latest)."""
    from journey_assets import lake

    df = lake.read_table(spark, path, version)
    if start_date is not None:
        df = df.where(F.col(EVENT_DATE) >= F.lit(start_date).cast("date"))
    if end_date is not None:
        df = df.where(F.col(EVENT_DATE) <= F.lit(end_date).cast("date"))
    return df
