"""Dimension tables derived from the events: pure DataFrame -> DataFrame functions.

Input everywhere: valid typed events (``transforms.events.valid_events``). Exact duplicate rows
(identical in all nine fields) count once. Every choice is deterministic (ties broken by
value), so the same events always give the same tables.

* ``build_product_catalog``: one row per product_id.
* ``build_category_hierarchy``: one row per category_id, levels split from the dotted code.
* ``build_user_dimension``: one row per user_id with synthetic demographics drawn from a hash
  of the user_id (SHA-256, salted per attribute) - no random state, identical in any engine;
  ``user_demographics`` is the plain Python twin used by tests and ad-hoc code.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from journey_assets.schema import (
    BRAND,
    CATEGORY_CODE,
    CATEGORY_ID,
    CATEGORY_L1,
    CSV_COLUMNS,
    EVENT_TIME,
    EVENT_TYPE,
    PRICE,
    PRODUCT_ID,
    USER_ID,
    category_l1_col,
)

PRODUCT_CATALOG = "product_catalog"
CATEGORY_HIERARCHY = "category_hierarchy"
USER_DIMENSION = "user_dimension"
#: The key column of each dimension (unique, non-null; the MongoDB ``_id``).
DIMENSION_KEYS = {PRODUCT_CATALOG: PRODUCT_ID, CATEGORY_HIERARCHY: CATEGORY_ID,
                  USER_DIMENSION: USER_ID}

# -- synthetic demographics: (value, weight in 1/10000) per attribute --------------------------
SEGMENTS = (("mass_market", 4500), ("value_seeker", 3000), ("premium", 1800), ("business", 700))
AGE_GROUPS = (("18-24", 1600), ("25-34", 3000), ("35-44", 2400), ("45-54", 1600),
              ("55-64", 900), ("65+", 500))
GENDERS = (("female", 5000), ("male", 4700), ("unspecified", 300))
COUNTRY_CITIES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("Russia", 6000, ("Moscow", "Saint Petersburg", "Novosibirsk", "Yekaterinburg", "Kazan",
                      "Nizhny Novgorod", "Samara", "Rostov-on-Don")),
    ("Ukraine", 1200, ("Kyiv", "Kharkiv", "Odesa", "Dnipro", "Lviv")),
    ("Kazakhstan", 1000, ("Almaty", "Astana", "Shymkent", "Karaganda")),
    ("Belarus", 800, ("Minsk", "Gomel", "Brest", "Grodno")),
    ("Uzbekistan", 500, ("Tashkent", "Samarkand", "Bukhara")),
    ("Armenia", 500, ("Yerevan", "Gyumri")),
)
REGISTRATION_FIRST = date(2015, 1, 1)
REGISTRATION_LAST = date(2019, 9, 30)
_REGISTRATION_SPAN = (REGISTRATION_LAST - REGISTRATION_FIRST).days + 1
_BUCKETS = 10_000


# -- helpers ------------------------------------------------------------------------------
def unique_events(events: DataFrame) -> DataFrame:
    """Rows identical in all nine fields are one event."""
    return events.dropDuplicates(list(CSV_COLUMNS))


def _ranked_first(df: DataFrame, key: str, order: list[Column]) -> DataFrame:
    w = Window.partitionBy(key).orderBy(*order)
    return df.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") == 1).drop("_rn")


# -- product catalog ----------------------------------------------------------------------
def build_product_catalog(events: DataFrame) -> DataFrame:
    """product_id, category_id, category_code, category_l1, brand, typical_price (median price),
    min/max price, popularity (unique events), views/carts/purchases, popularity_rank (1 = most
    events, ties by product_id), first_seen/last_seen.

    A product seen with several category/brand values takes the most frequent combination
    (ties: latest seen, then smallest values).
    """
    unique = unique_events(events)
    attrs = (
        unique.groupBy(PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, BRAND)
        .agg(F.count(F.lit(1)).alias("_n"), F.max(EVENT_TIME).alias("_last"))
    )
    attrs = _ranked_first(attrs, PRODUCT_ID, [
        F.col("_n").desc(), F.col("_last").desc(), F.col(CATEGORY_ID).asc(),
        F.col(CATEGORY_CODE).asc_nulls_last(), F.col(BRAND).asc_nulls_last(),
    ]).select(PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, BRAND)

    def count_of(event_type: str) -> Column:
        return F.count(F.when(F.col(EVENT_TYPE) == event_type, True))

    stats = unique.groupBy(PRODUCT_ID).agg(
        F.median(PRICE).alias("typical_price"),
        F.min(PRICE).alias("min_price"),
        F.max(PRICE).alias("max_price"),
        F.count(F.lit(1)).alias("popularity"),
        count_of("view").alias("views"),
        count_of("cart").alias("carts"),
        count_of("purchase").alias("purchases"),
        F.min(EVENT_TIME).alias("first_seen"),
        F.max(EVENT_TIME).alias("last_seen"),
    )
    rank = F.row_number().over(Window.orderBy(F.col("popularity").desc(), F.col(PRODUCT_ID).asc()))
    return (
        attrs.join(stats, on=PRODUCT_ID)
        .withColumn(CATEGORY_L1, category_l1_col())
        .withColumn("popularity_rank", rank)
        .select(PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, CATEGORY_L1, BRAND, "typical_price",
                "min_price", "max_price", "popularity", "popularity_rank", "views", "carts",
                "purchases", "first_seen", "last_seen")
    )


# -- category hierarchy -------------------------------------------------------------------
def build_category_hierarchy(events: DataFrame) -> DataFrame:
    """category_id, category_code (most frequent non-null code of the id, else null),
    category_l1 ("unknown" without a code), category_l2, category_l3 (null where the code is
    shallower), depth (0 without a code), products, events.
    """
    unique = unique_events(events)
    codes = (
        unique.where(F.col(CATEGORY_CODE).isNotNull())
        .groupBy(CATEGORY_ID, CATEGORY_CODE).agg(F.count(F.lit(1)).alias("_n"))
    )
    codes = _ranked_first(codes, CATEGORY_ID, [F.col("_n").desc(), F.col(CATEGORY_CODE).asc()])
    stats = unique.groupBy(CATEGORY_ID).agg(
        F.countDistinct(PRODUCT_ID).alias("products"), F.count(F.lit(1)).alias("events"),
    )
    parts = F.split(F.col(CATEGORY_CODE), r"\.")
    depth = F.when(F.col(CATEGORY_CODE).isNull(), F.lit(0)).otherwise(F.size(parts))
    return (
        stats.join(codes.select(CATEGORY_ID, CATEGORY_CODE), on=CATEGORY_ID, how="left")
        .select(
            CATEGORY_ID,
            CATEGORY_CODE,
            category_l1_col().alias(CATEGORY_L1),
            F.when(depth >= 2, parts.getItem(1)).alias("category_l2"),
            F.when(depth >= 3, parts.getItem(2)).alias("category_l3"),
            depth.alias("depth"),
            "products",
            "events",
        )
    )


# -- user dimension -----------------------------------------------------------------------
def _bucket_py(salt: str, user_id: int, modulo: int = _BUCKETS) -> int:
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return int(digest[:8], 16) % modulo


def _bucket_col(salt: str, modulo: int = _BUCKETS) -> Column:
    digest = F.sha2(F.concat(F.lit(f"{salt}:"), F.col(USER_ID).cast("string")), 256)
    return (F.conv(F.substring(digest, 1, 8), 16, 10).cast("long") % F.lit(modulo)).cast("int")


def _pick_py(choices: tuple[tuple[str, int], ...], bucket: int) -> str:
    upper = 0
    for value, weight in choices:
        upper += weight
        if bucket < upper:
            return value
    return choices[-1][0]


def _pick_col(choices: tuple[tuple[str, int], ...], bucket: Column) -> Column:
    expr, upper = None, 0
    for value, weight in choices[:-1]:
        upper += weight
        expr = F.when(bucket < upper, F.lit(value)) if expr is None else expr.when(bucket < upper, F.lit(value))
    return expr.otherwise(F.lit(choices[-1][0]))  # type: ignore[union-attr]


_COUNTRIES = tuple((country, weight) for country, weight, _ in COUNTRY_CITIES)


def user_demographics(user_id: int) -> dict[str, object]:
    """Plain-Python twin of the hash-derived columns of ``build_user_dimension``
    (registration_date before clamping to the first event)."""
    country = _pick_py(_COUNTRIES, _bucket_py("country", user_id))
    cities = next(c for name, _, c in COUNTRY_CITIES if name == country)
    return {
        "segment": _pick_py(SEGMENTS, _bucket_py("segment", user_id)),
        "country": country,
        "city": cities[_bucket_py("city", user_id, len(cities))],
        "age_group": _pick_py(AGE_GROUPS, _bucket_py("age", user_id)),
        "gender": _pick_py(GENDERS, _bucket_py("gender", user_id)),
        "registration_date": REGISTRATION_FIRST
        + timedelta(days=_bucket_py("registration", user_id, _REGISTRATION_SPAN)),
    }


def build_user_dimension(events: DataFrame) -> DataFrame:
    """user_id, segment, registration_date, country, city, age_group, gender, first_seen.

    Demographics are a pure function of the user_id (see ``user_demographics``); the
    registration date is drawn in 2015-01-01..2019-09-30 and never later than the user's first
    event.
    """
    users = events.groupBy(USER_ID).agg(F.min(EVENT_TIME).alias("first_seen"))
    country = _pick_col(_COUNTRIES, _bucket_col("country"))
    city = None
    for name, _, cities in COUNTRY_CITIES:
        pick = F.element_at(F.array(*(F.lit(c) for c in cities)), _bucket_col("city", len(cities)) + 1)
        city = F.when(country == name, pick) if city is None else city.when(country == name, pick)
    drawn = F.date_add(F.lit(REGISTRATION_FIRST), _bucket_col("registration", _REGISTRATION_SPAN))
    return users.select(
        USER_ID,
        _pick_col(SEGMENTS, _bucket_col("segment")).alias("segment"),
        F.least(drawn, F.to_date("first_seen")).alias("registration_date"),
        country.alias("country"),
        city.alias("city"),  # type: ignore[union-attr]
        _pick_col(AGE_GROUPS, _bucket_col("age")).alias("age_group"),
        _pick_col(GENDERS, _bucket_col("gender")).alias("gender"),
        "first_seen",
    )
