"""User features: Spark ``build_user_features`` against an independent pandas computation.

The pandas side starts again from the raw records (``schema.validate_record``, dedupe by
``event_id``) so the two share no code path beyond the schema's rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from journey_assets.lake import read_table_arrow
from journey_assets.schema import RAW_SCHEMA, event_id, validate_record
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.events import (
    enrich_events,
    parse_text_events,
    valid_events,
    write_event_lake,
)
from journey_assets.transforms.features import (
    EVENT_COUNT_COLUMNS,
    FEATURE_COLUMNS,
    build_user_features,
    read_lake_window,
    user_funnel,
    window_bounds,
)

INT_FEATURES = ("recency_days", "frequency", "views", "carts", "remove_from_cart", "purchases",
                "sessions", "category_diversity", "active_days")


# -- shared helpers (also used by the other batch test modules) ---------------------------
def spark_events(spark, records: Iterable[Mapping[str, str | None]]):
    """Raw text records -> the enriched, deduplicated event frame the lake holds."""
    raw = pd.DataFrame(list(records), columns=RAW_SCHEMA.fieldNames())
    frame = spark.createDataFrame(raw.astype(object).where(raw.notna(), None), schema=RAW_SCHEMA)
    return enrich_events(valid_events(parse_text_events(frame))).dropDuplicates(["event_id"])


def reference_events(records: Iterable[Mapping[str, str | None]]) -> pd.DataFrame:
    """Valid, unique events in pandas (plain-Python validation and hashing)."""
    unique: dict[str, dict] = {}
    for rec in records:
        event, _ = validate_record(rec)
        if event is not None:
            unique[event_id(event)] = event
    ev = pd.DataFrame(list(unique.values()))
    ev["event_date"] = ev["event_time"].dt.date
    return ev


def pandas_user_features(ev: pd.DataFrame, as_of: date, lookback_days: int) -> pd.DataFrame:
    """The feature definitions of ``build_user_features``, written again in pandas."""
    start = as_of - timedelta(days=lookback_days - 1)
    w = ev[(ev["event_date"] >= start) & (ev["event_date"] <= as_of)].copy()
    w["purchase_price"] = np.where(w["event_type"] == "purchase", w["price"], 0.0)
    by_user = w.groupby("user_id")
    out = pd.DataFrame({
        "frequency": by_user.size(),
        "monetary": by_user["purchase_price"].sum(),
        "avg_price": by_user["price"].mean(),
        "category_diversity": by_user["category_id"].nunique(),
        "active_days": by_user["event_date"].nunique(),
        "recency_days": by_user["event_date"].max().map(lambda d: (as_of - d).days),
    })
    for event_type, column in EVENT_COUNT_COLUMNS.items():
        out[column] = (w["event_type"] == event_type).groupby(w["user_id"]).sum()
    s = w[w["user_session"].notna()]
    sessions = s.groupby(["user_id", "user_session"]).agg(
        first=("event_time", "min"), last=("event_time", "max"),
        has_cart=("event_type", lambda t: bool((t == "cart").any())),
        has_purchase=("event_type", lambda t: bool((t == "purchase").any())),
    ).reset_index()
    sessions["duration_s"] = (sessions["last"] - sessions["first"]).dt.total_seconds()
    sessions["abandoned"] = sessions["has_cart"] & ~sessions["has_purchase"]
    per_user = sessions.groupby("user_id").agg(
        sessions=("duration_s", "size"), avg_session_duration_s=("duration_s", "mean"),
        cart_sessions=("has_cart", "sum"), abandoned=("abandoned", "sum"),
    )
    out = out.join(per_user, how="left")
    out["sessions"] = out["sessions"].fillna(0)
    out["avg_session_duration_s"] = out["avg_session_duration_s"].fillna(0.0)
    cart_sessions = out["cart_sessions"].fillna(0)
    out["cart_abandonment_rate"] = np.where(
        cart_sessions > 0, out["abandoned"].fillna(0) / cart_sessions.where(cart_sessions > 0, 1),
        0.0)
    return out[list(FEATURE_COLUMNS)].sort_index()


def assert_features_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same users, and every feature column equal per user (floats to 1e-9 relative)."""
    actual = actual.set_index("user_id").sort_index() if "user_id" in actual else actual
    assert list(actual.index) == list(expected.index), "different user sets"
    for column in FEATURE_COLUMNS:
        a = actual[column].to_numpy(dtype=float)
        e = expected[column].to_numpy(dtype=float)
        if column in INT_FEATURES:
            mismatch = np.flatnonzero(a != e)
        else:
            mismatch = np.flatnonzero(~np.isclose(a, e, rtol=1e-9, atol=1e-9))
        assert len(mismatch) == 0, (
            f"{column}: {len(mismatch)} users differ, e.g. user {actual.index[mismatch[0]]}: "
            f"spark {a[mismatch[0]]} vs pandas {e[mismatch[0]]}")


# -- tests --------------------------------------------------------------------------------
def _record(ts: str, event_type: str, user: int, session: str | None, price: float = 10.0,
            product: int = 1, category: int = 100) -> dict[str, str | None]:
    return {"event_time": f"{ts} UTC", "event_type": event_type, "product_id": str(product),
            "category_id": str(category), "category_code": "electronics.phone", "brand": None,
            "price": str(price), "user_id": str(user), "user_session": session}


HANDMADE = [
    # user 1: two sessions in the window; s1 carts and buys, s2 carts and abandons.
    _record("2019-10-08 10:00:00", "view", 1, "s1", 50.0, 1, 100),
    _record("2019-10-08 10:01:00", "cart", 1, "s1", 50.0, 1, 100),
    _record("2019-10-08 10:05:00", "purchase", 1, "s1", 50.0, 1, 100),
    _record("2019-10-08 10:05:00", "purchase", 1, "s1", 50.0, 1, 100),  # exact duplicate
    _record("2019-10-09 12:00:00", "view", 1, "s2", 20.0, 2, 200),
    _record("2019-10-09 12:00:30", "cart", 1, "s2", 20.0, 2, 200),
    _record("2019-10-09 12:02:00", "remove_from_cart", 1, "s2", 20.0, 2, 200),
    # ...and events outside the window that must not count.
    _record("2019-10-03 09:00:00", "purchase", 1, "s0", 999.0, 3, 300),  # before the window
    _record("2019-10-11 09:00:00", "purchase", 1, "s3", 999.0, 3, 300),  # after as_of
    # user 2: one view without a session id on the window's first day; user 3: only on as_of.
    _record("2019-10-04 23:59:59", "view", 2, None, 5.0, 4, 100),
    _record("2019-10-10 00:00:00", "view", 3, "s9", 5.0, 4, 100),
]


def test_handmade_features_by_hand(spark):
    features = build_user_features(spark_events(spark, HANDMADE), "2019-10-10", 7) \
        .toPandas().set_index("user_id")
    assert set(features.index) == {1, 2, 3}
    u1 = features.loc[1]
    assert u1["as_of"] == "2019-10-10" and u1["lookback_days"] == 7
    assert (u1["frequency"], u1["views"], u1["carts"], u1["purchases"],
            u1["remove_from_cart"]) == (6, 2, 2, 1, 1)
    assert u1["monetary"] == 50.0 and u1["recency_days"] == 1 and u1["active_days"] == 2
    assert u1["sessions"] == 2 and u1["avg_session_duration_s"] == (300 + 120) / 2
    assert u1["cart_abandonment_rate"] == 0.5 and u1["category_diversity"] == 2
    assert u1["avg_price"] == pytest.approx((50 * 3 + 20 * 3) / 6)  # the duplicate counts once
    u2 = features.loc[2]
    assert (u2["frequency"], u2["sessions"], u2["recency_days"]) == (1, 0, 6)
    assert u2["avg_session_duration_s"] == 0.0 and u2["cart_abandonment_rate"] == 0.0


def test_handmade_window_excludes_outside_events(spark):
    # user 3's only event is on 2019-10-10: present as of that day, absent a day earlier.
    events = spark_events(spark, HANDMADE)
    users_10 = {r.user_id for r in build_user_features(events, "2019-10-10", 7).collect()}
    users_09 = {r.user_id for r in build_user_features(events, "2019-10-09", 7).collect()}
    assert users_10 == {1, 2, 3} and users_09 == {1, 2}


@pytest.fixture(scope="module")
def synthetic(spark):
    records = list(generate_records(SyntheticConfig(n_events=12_000, seed=11, days=20,
                                                    duplicate_fraction=0.02,
                                                    invalid_fraction=0.01)))
    return spark_events(spark, records).cache(), reference_events(records)


@pytest.mark.parametrize(("as_of", "lookback"), [("2019-10-15", 7), ("2019-10-20", 30)])
def test_features_equal_pandas_on_synthetic(synthetic, as_of, lookback):
    events, reference = synthetic
    spark_features = build_user_features(events, as_of, lookback)
    actual = spark_features.toPandas()
    expected = pandas_user_features(reference, date.fromisoformat(as_of), lookback)
    assert len(expected) > 300
    assert_features_equal(actual, expected)

    funnel = user_funnel(spark_features)
    assert funnel["users"] == len(expected)
    assert funnel["users_with_cart"] == int((expected["carts"] > 0).sum())
    assert funnel["users_with_purchase"] == int((expected["purchases"] > 0).sum())


def test_replayed_lake_writes_store_each_event_once(synthetic, spark, tmp_path):
    """The Delta events table is insert-only by event_id: a replayed write (the same events
    again) adds nothing, and the features built from it equal pandas on the unique events."""
    events, reference = synthetic
    lake = str(tmp_path / "lake")
    write_event_lake(events, lake)
    write_event_lake(events.sample(fraction=0.3, seed=1), lake)  # replayed
    stored = read_table_arrow(lake).to_table(columns=["event_id"]).column("event_id")
    assert len(stored) == len(set(stored.to_pylist())) == events.select("event_id").distinct().count()
    as_of, lookback = date(2019, 10, 20), 30
    start, end = window_bounds(as_of, lookback)
    actual = build_user_features(read_lake_window(spark, lake, start, end), as_of,
                                 lookback).toPandas()
    assert_features_equal(actual, pandas_user_features(reference, as_of, lookback))


def test_features_drop_duplicate_events_of_any_input(synthetic, spark):
    """A frame that holds some events twice (not the Delta lake, which is unique by event_id):
    ``build_user_features`` counts each event once; with ``unique=True`` (the lake's promise)
    it skips that work and gives the same result on unique input."""
    events, reference = synthetic
    as_of, lookback = date(2019, 10, 20), 30
    doubled = events.unionByName(events.sample(fraction=0.3, seed=1))
    assert doubled.count() > events.count()
    expected = pandas_user_features(reference, as_of, lookback)
    assert_features_equal(build_user_features(doubled, as_of, lookback).toPandas(), expected)
    assert_features_equal(build_user_features(events, as_of, lookback, unique=True).toPandas(),
                          expected)
