"""The synthetic generator: statistics within the tolerances documented in sources/synthetic.py.

Everything is recomputed here with pandas from the emitted rows (never from generator internals).
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from journey_assets.schema import CSV_COLUMNS, CSV_HEADER, validate_record
from journey_assets.sources.synthetic import SyntheticConfig, generate_records, write_csv

N = 100_000


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str | None]]:
    return list(generate_records(SyntheticConfig(n_events=N, seed=11)))


@pytest.fixture(scope="module")
def frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    df["ts"] = pd.to_datetime(df["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True)
    df["price_f"] = df["price"].astype(float)
    return df


def test_exact_count_fields_and_validity(rows):
    assert len(rows) == N
    assert all(tuple(r) == CSV_COLUMNS for r in rows[:1000])
    reasons = Counter(validate_record(r)[1] for r in rows)
    assert reasons == {None: N}


def test_deterministic_for_a_seed():
    cfg = SyntheticConfig(n_events=5_000, seed=3)
    assert list(generate_records(cfg)) == list(generate_records(cfg))
    other = list(generate_records(SyntheticConfig(n_events=5_000, seed=4)))
    assert other != list(generate_records(cfg))


def test_event_mix_close_to_the_real_file(frame):
    mix = frame["event_type"].value_counts(normalize=True)
    assert 0.945 <= mix["view"] <= 0.975
    assert 0.015 <= mix["cart"] <= 0.03
    assert 0.012 <= mix["purchase"] <= 0.025
    assert 0.0005 <= mix["remove_from_cart"] <= 0.006


def test_null_rates_and_taxonomy(frame):
    assert 0.25 <= frame["category_code"].isna().mean() <= 0.35
    assert 0.10 <= frame["brand"].isna().mean() <= 0.18
    assert frame["user_session"].isna().mean() < 0.001
    codes = frame["category_code"].dropna().unique()
    assert len(codes) >= 20
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+){1,2}", c) for c in codes)
    # A category_id has one code (or none) and a product one category, brand and price.
    assert frame.groupby("category_id")["category_code"].nunique(dropna=False).max() == 1
    per_product = frame.groupby("product_id")[["category_id", "brand", "price"]].nunique(dropna=False)
    assert per_product.max().max() == 1
    assert all(len(c) == 19 for c in frame["category_id"].unique())


def test_price_levels_per_category(frame):
    medians = frame.groupby("category_code")["price_f"].median()
    assert medians["computers.notebook"] > 5 * medians["electronics.audio.headphone"]
    assert (frame["price_f"] > 0).all()


def test_popularity_is_skewed(frame):
    counts = frame["product_id"].value_counts()
    top = counts.iloc[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.08  # top 1% of products get far more than 1% of events
    assert frame["category_code"].value_counts().index[0] == "electronics.smartphone"


def test_duplicates(frame):
    n_dup = round(N * 0.01)
    extra = len(frame) - len(frame.drop_duplicates(subset=list(CSV_COLUMNS)))
    assert n_dup <= extra <= n_dup * 1.1
    dup_rows = frame[frame.duplicated(subset=list(CSV_COLUMNS))]
    assert (dup_rows["event_type"] == "cart").mean() > 0.1  # carts are copied more often


def test_time_order_and_window(frame):
    ts = frame["ts"]
    assert ts.is_monotonic_increasing
    assert ts.min() >= pd.Timestamp("2019-10-01", tz="UTC")
    assert ts.max() < pd.Timestamp("2019-10-31", tz="UTC")
    assert ts.dt.date.nunique() == 30


def test_sessions_split_at_30_minute_pauses(frame):
    df = frame.dropna(subset=["user_session"]).sort_values(["user_id", "ts"], kind="stable")
    same_user = df["user_id"].eq(df["user_id"].shift())
    new_session = df["user_session"].ne(df["user_session"].shift()) & same_user
    gap = df["ts"].diff().dt.total_seconds()
    assert gap[new_session].min() >= 1800
    assert gap[same_user & ~new_session].max() < 1800
    # A session belongs to one user; sessions have several events on average.
    assert df.groupby("user_session")["user_id"].nunique().max() == 1
    assert 3.0 <= len(df) / df["user_session"].nunique() <= 7.0
    assert 10 <= len(frame) / frame["user_id"].nunique() <= 25


def test_purchases_mostly_after_a_cart_but_not_always(frame):
    carts = set(zip(frame.loc[frame.event_type == "cart", "user_session"],
                    frame.loc[frame.event_type == "cart", "product_id"], strict=True))
    purchases = frame[frame.event_type == "purchase"]
    with_cart = np.mean([(s, p) in carts for s, p in
                         zip(purchases.user_session, purchases.product_id, strict=True)])
    assert 0.3 <= with_cart <= 0.9


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = pd.Series(score).rank().to_numpy()
    pos, neg = label.sum(), len(label) - label.sum()
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_churn_is_planted_and_learnable(frame):
    as_of = pd.Timestamp("2019-10-24", tz="UTC")
    past = frame[frame.ts < as_of]
    future = frame[frame.ts >= as_of]
    last_seen = past.groupby("user_id")["ts"].max()
    recency = (as_of - last_seen).dt.total_seconds().to_numpy() / 86400
    buyers_after = set(future.loc[future.event_type == "purchase", "user_id"])
    churned = ~last_seen.index.isin(buyers_after)
    # Churners exist and so do returning buyers.
    assert 0.5 < churned.mean() < 0.99
    seen_after = set(future["user_id"])
    returning = last_seen.index.isin(seen_after).mean()
    assert 0.1 < returning < 0.7
    # Recency alone already separates them, but not perfectly (the label is not leaked).
    assert 0.7 <= _auc(recency, churned) <= 0.97


def test_invalid_rows_on_request():
    n = 20_000
    rows = list(generate_records(SyntheticConfig(n_events=n, seed=5, invalid_fraction=0.03)))
    assert len(rows) == n
    reasons = Counter(validate_record(r)[1] for r in rows)
    assert n - reasons[None] == round(n * 0.03)
    assert {"missing_user_id", "missing_product_id", "unparsable_event_time",
            "unknown_event_type", "negative_price", "non_numeric_price"} <= set(reasons)


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_write_csv_round_trip(tmp_path, name):
    records = list(generate_records(SyntheticConfig(n_events=3_000, seed=9, invalid_fraction=0.01)))
    path = tmp_path / name
    assert write_csv(records, path) == len(records)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        assert fh.readline().rstrip("\n") == CSV_HEADER
        fh.seek(0)
        back = [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(fh)]
    assert back == records
