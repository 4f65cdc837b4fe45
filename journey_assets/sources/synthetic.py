"""A deterministic, REES46-like synthetic clickstream.

The generator plans the whole month with numpy (users, sessions, event times, products and
event types as arrays) and then only formats rows in a tight Python loop, which is what makes
it fast (see ``bench/bench_producer.py``). Same seed, same config -> the same rows, byte for byte.

How the data is shaped (the numbers are the defaults; tests check them within tolerances):

* **Users** have an arrival day ``a`` (uniform over ``[-days, days)``: half existed before the
  window), a visit rate ``r`` (log-normal, heavy tail) and an activity decay. ``LOYAL_SHARE`` of
  users are *loyal* (no decay: they keep returning); the others *fade*: their session intensity
  is ``r * exp(-(t - a) / tau)`` with ``tau`` log-normal around ``FADE_TAU_DAYS`` days. Session
  starts are the points of that non-homogeneous Poisson process inside the window (every
  user has at least one session), modulated by a time-of-day profile.
* **Churn is planted** through that decay: a fading user's sessions, and with them purchases,
  thin out and stop, so "no purchase in the N days after as_of" follows from the past recency
  (long since the last visit), frequency (few recent sessions) and monetary value. Buying
  propensity (a log-normal multiplier on cart and purchase probabilities) is higher for loyal
  users, so past purchases also predict future ones. Nothing reveals the label directly.
* **Sessions** are ``1 + geometric`` events long (mean ~4.5), with in-session gaps of
  seconds to minutes (log-normal, median ~40 s, capped at 25 min). Two visits of one user less
  than 30 minutes apart are merged into one session, so consecutive ``user_session`` UUIDs of a
  user are always separated by a pause of 30+ minutes.
* **Products** have Zipf-like popularity inside a category and categories have Zipf-like
  weights (``electronics.smartphone`` on top, as in the real file). A session focuses on one
  category (85% of its views), sometimes re-views the previous product. ~30% of events carry a
  category without a ``category_code`` and ~14% a product without ``brand`` (event-weighted).
  Prices are per product, log-normal around a per-category level.
* **Event types**: a session contains at most one cart (more likely in longer sessions and for
  buying users); a cart is followed by a purchase of the same product about half the time, or
  sometimes by ``remove_from_cart``; a few sessions end in a purchase without a cart. Overall
  mix: view ~95.8%, cart ~2.2%, purchase ~1.8%, remove_from_cart ~0.3%.
* **Duplicates**: ``duplicate_fraction`` of the output rows are exact copies of another row
  (cart rows ten times as likely to be copied, as in the real file), emitted right after it.
* **Invalid rows** (``invalid_fraction``) replace valid ones and fail ``schema.validate_record``
  for one of several reasons (missing user_id / product_id, unparsable time, unknown
  event_type, negative or non-numeric price).
* A few rows (``NULL_SESSION_RATE``) have no ``user_session``, as in the real file.

Rows come out in exact event-time order (the output is never more disordered than that).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from journey_assets.schema import CSV_COLUMNS

# -- shape constants (documented above; tests check the outcomes) ---------------------------
LOYAL_SHARE = 0.35
FADE_TAU_DAYS = 5.0
MEAN_SESSION_EVENTS = 4.5
SESSION_PAUSE_S = 30 * 60
MAX_IN_SESSION_GAP_S = 25 * 60
FOCUS_SHARE = 0.85
REVIEW_SHARE = 0.2
NULL_CODE_SHARE = 0.30
NULL_BRAND_SHARE = 0.14
NULL_SESSION_RATE = 0.0001
CART_RATE = 0.028            # per-event chance that a view turns into a cart (times buyer propensity)
PURCHASE_AFTER_CART = 0.6
REMOVE_AFTER_CART = 0.4
PURCHASE_WITHOUT_CART = 0.045  # per session (times buyer propensity)
DUPLICATE_CART_WEIGHT = 10.0

EVENT_TYPE_NAMES = ("view", "cart", "remove_from_cart", "purchase")
VIEW, CART, REMOVE, PURCHASE = range(4)

# Dotted codes as in the real file, with a typical price level (USD) and a brand family.
_CODED_CATEGORIES: tuple[tuple[str, float, str], ...] = (
    ("electronics.smartphone", 280.0, "phone"),
    ("electronics.audio.headphone", 55.0, "audio"),
    ("electronics.video.tv", 420.0, "tv"),
    ("computers.notebook", 650.0, "computer"),
    ("electronics.clocks", 180.0, "phone"),
    ("appliances.kitchen.washer", 320.0, "appliance"),
    ("appliances.environment.vacuum", 150.0, "appliance"),
    ("appliances.kitchen.refrigerators", 520.0, "appliance"),
    ("electronics.tablet", 260.0, "phone"),
    ("apparel.shoes", 70.0, "apparel"),
    ("auto.accessories.player", 60.0, "auto"),
    ("computers.desktop", 700.0, "computer"),
    ("appliances.kitchen.microwave", 110.0, "appliance"),
    ("furniture.living_room.sofa", 480.0, "furniture"),
    ("electronics.audio.subwoofer", 140.0, "audio"),
    ("appliances.iron", 45.0, "appliance"),
    ("computers.peripherals.printer", 190.0, "computer"),
    ("apparel.shoes.sneakers", 85.0, "apparel"),
    ("kids.toys", 30.0, "kids"),
    ("appliances.kitchen.kettle", 35.0, "appliance"),
    ("appliances.environment.air_heater", 60.0, "appliance"),
    ("electronics.camera.photo", 520.0, "audio"),
    ("sport.bicycle", 330.0, "sport"),
    ("construction.tools.drill", 95.0, "tools"),
    ("appliances.personal.hair_cutter", 40.0, "appliance"),
    ("computers.components.videocards", 380.0, "computer"),
    ("furniture.bedroom.bed", 390.0, "furniture"),
    ("apparel.costume", 40.0, "apparel"),
    ("electronics.telephone", 25.0, "phone"),
    ("appliances.kitchen.hob", 290.0, "appliance"),
    ("accessories.bag", 35.0, "apparel"),
    ("country_yard.lawn_mower", 250.0, "tools"),
    ("kids.carriage", 210.0, "kids"),
    ("appliances.kitchen.blender", 55.0, "appliance"),
    ("computers.peripherals.mouse", 18.0, "computer"),
    ("medicine.tools.tonometer", 45.0, "kids"),
    ("stationery.cartrige", 25.0, "computer"),
    ("appliances.sewing_machine", 160.0, "appliance"),
    ("furniture.kitchen.table", 150.0, "furniture"),
    ("auto.accessories.videoregister", 70.0, "auto"),
    ("sport.trainer", 280.0, "sport"),
    ("electronics.video.projector", 450.0, "tv"),
    ("computers.peripherals.monitor", 210.0, "computer"),
    ("appliances.kitchen.coffee_machine", 240.0, "appliance"),
    ("construction.tools.saw", 110.0, "tools"),
    ("apparel.jeans", 45.0, "apparel"),
    ("kids.swing", 60.0, "kids"),
    ("electronics.audio.acoustic", 120.0, "audio"),
    ("appliances.environment.water_heater", 170.0, "appliance"),
    ("auto.accessories.compressor", 45.0, "auto"),
)
N_UNCODED_CATEGORIES = 40

_BRANDS: dict[str, tuple[str, ...]] = {
    "phone": ("samsung", "apple", "xiaomi", "huawei", "oppo", "vivo", "honor", "meizu", "nokia"),
    "audio": ("sony", "jbl", "samsung", "apple", "sennheiser", "xiaomi", "pioneer", "canon"),
    "tv": ("samsung", "lg", "sony", "philips", "xiaomi", "hisense", "artel", "epson"),
    "computer": ("acer", "asus", "lenovo", "hp", "apple", "dell", "msi", "logitech", "canon"),
    "appliance": ("bosch", "lg", "samsung", "indesit", "beko", "philips", "redmond", "tefal",
                  "polaris", "vitek", "braun", "artel", "elenberg"),
    "apparel": ("nike", "adidas", "puma", "reebok", "skechers", "respect", "baden"),
    "auto": ("pioneer", "kenwood", "alpine", "nakamichi", "xiaomi", "inspector"),
    "furniture": ("brw", "lorena", "sv-mebel", "stolline", "askona", "ikea"),
    "kids": ("lego", "chicco", "tutti", "omron", "mattel", "hasbro", "tomy"),
    "sport": ("stels", "forward", "kettler", "torneo", "oxygen", "stern"),
    "tools": ("bosch", "makita", "dewalt", "metabo", "interskol", "huter", "champion"),
    "generic": ("lucente", "cordiant", "ariston", "karcher", "vitek", "maxwell", "sokolov",
                "casio", "triangle", "nokian", "pirelli", "michelin", "elari", "rondell"),
}

# Share of session starts per hour of day (UTC), peaking in the (Russian) afternoon/evening.
_DIURNAL = np.array([0.35 + math.exp(-(((h + 0.5) - 15.0) / 4.5) ** 2) for h in range(24)])


@dataclass(frozen=True)
class SyntheticConfig:
    n_events: int = 100_000
    seed: int = 42
    start: str = "2019-10-01"          # first day (UTC)
    days: int = 30                      # events spread over this many days
    n_users: int | None = None          # default derived from n_events (about n_events/15)
    n_products: int | None = None       # default derived
    duplicate_fraction: float = 0.01    # exact duplicate rows (identical in all nine fields)
    invalid_fraction: float = 0.0       # rows failing schema.validate_record (varied reasons)

    def users(self) -> int:
        return self.n_users if self.n_users is not None else max(10, self.n_events // 15)

    def products(self) -> int:
        if self.n_products is not None:
            return self.n_products
        return int(min(200_000, max(200, self.n_events // 200)))


@dataclass(frozen=True)
class _Catalog:
    product_ids: list[str]
    category_ids: list[str]
    category_codes: list[str | None]
    brands: list[str | None]
    prices: list[str]
    weights: np.ndarray          # event share of each product (sums to 1)
    category_of: np.ndarray      # category index of each product (products sorted by category)
    category_weights: np.ndarray
    within_cdf: np.ndarray       # category index + cumulative share inside the category


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _unique_ints(rng: np.random.Generator, n: int, low: int, span: int) -> np.ndarray:
    """``n`` distinct integers in ``[low, low + span)``, in random order."""
    out = np.unique(rng.integers(0, span, size=int(n * 1.3) + 16))
    while len(out) < n:  # practically never: span is much larger than n
        out = np.unique(np.concatenate([out, rng.integers(0, span, size=n)]))
    rng.shuffle(out)
    return out[:n] + low


def _greedy_share(rng: np.random.Generator, weights: np.ndarray, share: float) -> np.ndarray:
    """A random subset of items whose weights add up to about ``share`` of the total."""
    picked = np.zeros(len(weights), dtype=bool)
    total = 0.0
    for i in rng.permutation(len(weights)):
        if total + weights[i] <= share + weights[i] / 2:
            picked[i] = True
            total += weights[i]
        if total >= share:
            break
    return picked


def _build_catalog(rng: np.random.Generator, n_products: int) -> _Catalog:
    n_coded = len(_CODED_CATEGORIES)
    n_cat = n_coded + N_UNCODED_CATEGORIES
    # Category weights: coded categories carry 70% of events (Zipf, smartphones first), the
    # uncoded ones 30%, which fixes the event-weighted null rate of category_code.
    coded_w = _zipf(n_coded, 1.0) * (1.0 - NULL_CODE_SHARE)
    uncoded_w = rng.permutation(_zipf(N_UNCODED_CATEGORIES, 0.9)) * NULL_CODE_SHARE
    cat_w = np.concatenate([coded_w, uncoded_w])
    cat_ids = _unique_ints(rng, n_cat, 2_053_013_552_000_000_000, 10**15)
    cat_price = np.concatenate([
        np.array([c[1] for c in _CODED_CATEGORIES]),
        np.exp(rng.normal(math.log(40.0), 1.0, N_UNCODED_CATEGORIES)),
    ])
    cat_family = [c[2] for c in _CODED_CATEGORIES] + ["generic"] * N_UNCODED_CATEGORIES

    # Products per category roughly follow category weight (at least one each).
    raw = cat_w ** 0.7
    per_cat = np.maximum(1, np.floor(raw / raw.sum() * max(n_products - n_cat, 0)).astype(int))
    per_cat[0] += max(0, n_products - int(per_cat.sum()))
    category_of = np.repeat(np.arange(n_cat), per_cat)
    n = len(category_of)

    within = np.empty(n)
    within_cdf = np.empty(n)
    offsets = np.concatenate([[0], np.cumsum(per_cat)])
    for c in range(n_cat):
        share = _zipf(int(per_cat[c]), 1.05)
        within[offsets[c]:offsets[c + 1]] = share
        cdf = np.cumsum(share)
        cdf[-1] = 1.0
        within_cdf[offsets[c]:offsets[c + 1]] = c + cdf * (1 - 1e-12)
    weights = within * cat_w[category_of]
    weights /= weights.sum()

    no_brand = _greedy_share(rng, weights, NULL_BRAND_SHARE)
    product_ids = _unique_ints(rng, n, 1_000_000, 59_000_000)
    price = cat_price[category_of] * np.exp(rng.normal(0.0, 0.45, n))
    price = np.maximum(0.5, np.round(price, 2))
    brand_pick = rng.random(n)
    brands: list[str | None] = []
    for i in range(n):
        family = _BRANDS[cat_family[category_of[i]]]
        if no_brand[i]:
            brands.append(None)
        else:  # popular brands first: a skewed pick
            brands.append(family[int(len(family) * brand_pick[i] ** 2.0)])
    codes = [c[0] for c in _CODED_CATEGORIES] + [None] * N_UNCODED_CATEGORIES
    return _Catalog(
        product_ids=[str(int(p)) for p in product_ids],
        category_ids=[str(int(cat_ids[c])) for c in category_of],
        category_codes=[codes[c] for c in category_of],
        brands=brands,
        prices=[f"{p:.2f}" for p in price],
        weights=weights,
        category_of=category_of,
        category_weights=cat_w,
        within_cdf=within_cdf,
    )


@dataclass
class _Plan:
    """Every event of the output, in event-time order (arrays), plus per-row extras."""
    times: np.ndarray        # int64 seconds since the window start
    users: np.ndarray        # user index
    sessions: np.ndarray     # session index (-1: null user_session)
    products: np.ndarray     # product index
    types: np.ndarray        # index into EVENT_TYPE_NAMES
    copies: np.ndarray       # extra exact copies emitted right after the row
    invalid: np.ndarray      # 0 valid, else 1 + corruption kind
    n_sessions: int


def _plan(config: SyntheticConfig, catalog: _Catalog, rng: np.random.Generator) -> _Plan:
    n_dup = round(config.n_events * config.duplicate_fraction)
    n_base = config.n_events - n_dup
    days = float(config.days)
    window_s = int(config.days * 86400)
    n_users = config.users()

    # -- users: arrival, visit rate, decay, buying propensity --------------------------------
    arrival = rng.uniform(-days, days, n_users)
    loyal = rng.random(n_users) < LOYAL_SHARE
    tau = np.where(loyal, 1e6, FADE_TAU_DAYS * np.exp(rng.normal(0.0, 0.6, n_users)))
    heterogeneity = np.exp(rng.normal(0.0, 1.0, n_users))
    buyer = np.exp(rng.normal(-0.5, 1.0, n_users)) * np.where(loyal, 1.6, 0.7)
    buyer /= buyer.mean()
    # Expected sessions in the window per unit rate: integral of exp(-(t-a)/tau) over it.
    s0 = np.maximum(arrival, 0.0) - arrival
    s1 = days - arrival
    e0, e1 = np.exp(-s0 / tau), np.exp(-s1 / tau)
    mass = tau * (e0 - e1)
    n_sessions_target = max(n_users, n_base / MEAN_SESSION_EVENTS)
    rate = (n_sessions_target - n_users) / float((heterogeneity * mass).sum())
    per_user = 1 + rng.poisson(rate * heterogeneity * mass)

    # Session starts: points of the decaying intensity, by inverse CDF (i.i.d. given count).
    s_user = np.repeat(np.arange(n_users), per_user)
    u = rng.random(len(s_user))
    e0s, e1s, taus = e0[s_user], e1[s_user], tau[s_user]
    offset = -taus * np.log(e0s - u * (e0s - e1s))
    start_day = arrival[s_user] + offset
    start_day = np.clip(start_day, 0.0, days - 1e-9)
    # Time of day follows the diurnal profile (keeps the day, redistributes within it).
    day = np.floor(start_day)
    cdf = np.concatenate([[0.0], np.cumsum(_DIURNAL) / _DIURNAL.sum()])
    frac = np.interp(start_day - day, cdf, np.arange(25) / 24.0)
    s_start = ((day + frac) * 86400).astype(np.int64)

    # -- sessions in (user, start) order, with lengths adjusted to the exact event count -----
    order = np.lexsort((s_start, s_user))
    s_user, s_start = s_user[order], s_start[order]
    n_s = len(s_user)
    k = rng.geometric(1.0 / MEAN_SESSION_EVENTS, n_s).astype(np.int64)
    diff = n_base - int(k.sum())
    if diff > 0:
        np.add.at(k, rng.integers(0, n_s, diff), 1)
    while diff < 0:
        candidates = np.flatnonzero(k > 1)
        if len(candidates) == 0:
            raise ValueError("n_events too small for the number of users")
        take = rng.choice(candidates, size=min(-diff, len(candidates)), replace=False)
        k[take] -= 1
        diff += len(take)

    # In-session gaps (seconds) for every event; a session's first event has gap 0.
    n = n_base
    first = np.concatenate([[0], np.cumsum(k)[:-1]])
    gaps = np.clip(np.exp(rng.normal(math.log(40.0), 1.1, n)), 1, MAX_IN_SESSION_GAP_S)
    gaps = gaps.astype(np.int64)
    gaps[first] = 0
    duration = np.add.reduceat(gaps, first) if n_s else np.zeros(0, np.int64)
    join_gap = np.clip(np.exp(rng.normal(math.log(40.0), 1.1, n_s)), 1,
                       MAX_IN_SESSION_GAP_S).astype(np.int64)

    # Visits of a user less than 30 min after the previous one ends continue that session.
    same_prev = np.concatenate([[False], s_user[1:] == s_user[:-1]])
    merged = np.zeros(n_s, dtype=bool)
    start = s_start.copy()
    while True:
        prev_end = np.concatenate([[0], (start + duration)[:-1]])
        merged |= same_prev & (s_start < prev_end + SESSION_PAUSE_S)
        new_start = np.where(merged, prev_end + join_gap, s_start)
        if np.array_equal(new_start, start):
            break
        start = new_start
    gaps[first[merged]] = join_gap[merged]
    group = np.cumsum(~merged) - 1                 # session (group) of each planned visit
    g_first_visit = np.flatnonzero(~merged)
    n_groups = len(g_first_visit)
    g_user = s_user[g_first_visit]
    g_start = start[g_first_visit]
    g_first = first[g_first_visit]                 # first event index of each session
    g_k = np.add.reduceat(k, g_first_visit)

    e_group = np.repeat(group, k)
    cum = np.cumsum(gaps)
    times = g_start[e_group] + cum - cum[g_first[e_group]]
    times = np.minimum(times, window_s - 1)        # rare: a session running past the window end
    pos = np.arange(n) - g_first[e_group]

    # -- products: session focus category, global popularity, re-views ------------------------
    focus = np.searchsorted(np.cumsum(catalog.category_weights), rng.random(n_groups) * (1 - 1e-12))
    focus = np.minimum(focus, len(catalog.category_weights) - 1)
    in_focus = np.searchsorted(catalog.within_cdf, focus[e_group] + rng.random(n) * (1 - 1e-9))
    global_cdf = np.cumsum(catalog.weights)
    anywhere = np.searchsorted(global_cdf, rng.random(n) * global_cdf[-1])
    product = np.where(rng.random(n) < FOCUS_SHARE, in_focus, anywhere)
    product = np.minimum(product, len(catalog.weights) - 1)
    review = (rng.random(n) < REVIEW_SHARE) & (pos > 0)
    source = np.maximum.accumulate(np.where(review, 0, np.arange(n)))
    product = product[source]

    # -- event types: one cart per session at most, purchases mostly after it -----------------
    types = np.zeros(n, dtype=np.int8)
    b = buyer[g_user]
    p_cart = 1.0 - (1.0 - np.minimum(0.5, CART_RATE * b)) ** (g_k - 1)
    has_cart = (g_k >= 2) & (rng.random(n_groups) < p_cart)
    cart_pos = 1 + (rng.random(n_groups) * np.maximum(g_k - 1, 1)).astype(np.int64)
    room = g_k - 1 - cart_pos                     # events after the cart
    after = cart_pos + 1 + (rng.random(n_groups) * np.maximum(room, 1)).astype(np.int64)
    p_buy = np.minimum(0.95, PURCHASE_AFTER_CART * np.sqrt(b))
    bought = has_cart & (room > 0) & (rng.random(n_groups) < p_buy)
    removed = has_cart & (room > 0) & ~bought & (rng.random(n_groups) < REMOVE_AFTER_CART)
    direct = ~has_cart & (g_k >= 2) & (rng.random(n_groups) < np.minimum(0.9, PURCHASE_WITHOUT_CART * b))

    cart_at = g_first[has_cart] + cart_pos[has_cart]
    types[cart_at] = CART
    product[cart_at] = product[cart_at - 1]      # the cart is of the product just viewed
    buy_at = g_first[bought] + after[bought]
    types[buy_at] = PURCHASE
    product[buy_at] = product[g_first[bought] + cart_pos[bought]]
    rem_at = g_first[removed] + after[removed]
    types[rem_at] = REMOVE
    product[rem_at] = product[g_first[removed] + cart_pos[removed]]
    direct_at = g_first[direct] + g_k[direct] - 1
    types[direct_at] = PURCHASE
    product[direct_at] = product[direct_at - 1]

    sessions = e_group.copy()
    sessions[rng.random(n) < NULL_SESSION_RATE] = -1

    # -- event-time order (stable: a session's events keep their order) ------------------------
    order = np.argsort(times, kind="stable")
    times, sessions, product, types = times[order], sessions[order], product[order], types[order]
    users = g_user[e_group][order]

    # -- invalid rows and exact duplicates ----------------------------------------------------
    invalid = np.zeros(n, dtype=np.int8)
    n_invalid = min(n, round(config.n_events * config.invalid_fraction))
    if n_invalid:
        bad = rng.choice(n, size=n_invalid, replace=False)
        invalid[bad] = 1 + rng.integers(0, len(_CORRUPTIONS), n_invalid)
    copies = np.zeros(n, dtype=np.int64)
    if n_dup:
        w = np.where(types == CART, DUPLICATE_CART_WEIGHT, 1.0) * (invalid == 0)
        copies = np.bincount(rng.choice(n, size=n_dup, p=w / w.sum()), minlength=n)
    return _Plan(times, users, sessions, product, types, copies, invalid, n_groups)


def _corrupt_missing_user(rec: dict[str, str | None]) -> None:
    rec["user_id"] = None


def _corrupt_missing_product(rec: dict[str, str | None]) -> None:
    rec["product_id"] = None


def _corrupt_time(rec: dict[str, str | None]) -> None:
    rec["event_time"] = (rec["event_time"] or "").replace(" ", "T", 1).replace(" UTC", "Z")


def _corrupt_type(rec: dict[str, str | None]) -> None:
    rec["event_type"] = "click"


def _corrupt_negative_price(rec: dict[str, str | None]) -> None:
    rec["price"] = "-" + (rec["price"] or "1.00")


def _corrupt_price_text(rec: dict[str, str | None]) -> None:
    rec["price"] = (rec["price"] or "1.00").replace(".", ",") + " USD"


_CORRUPTIONS = (_corrupt_missing_user, _corrupt_missing_product, _corrupt_time, _corrupt_type,
                _corrupt_negative_price, _corrupt_price_text)


def generate_records(config: SyntheticConfig) -> Iterator[dict[str, str | None]]:
    """Raw records: text values keyed by schema.CSV_COLUMNS (as a CSV row would give them, None for empty)."""
    if config.n_events <= 0:
        return
    rng = np.random.Generator(np.random.PCG64(config.seed))
    catalog = _build_catalog(rng, config.products())
    plan = _plan(config, catalog, rng)

    user_ids = [str(int(x)) for x in _unique_ints(rng, config.users(), 512_000_000, 60_000_000)]
    session_bytes = rng.bytes(16 * plan.n_sessions)
    session_ids: list[str | None] = [None] * plan.n_sessions

    origin = datetime.fromisoformat(config.start).replace(tzinfo=UTC)
    day_prefix = [(origin + timedelta(days=d)).strftime("%Y-%m-%d ") for d in range(config.days + 1)]
    clock = [f"{h:02d}:{m:02d}:{s:02d} UTC" for h in range(24) for m in range(60) for s in range(60)]
    type_names = EVENT_TYPE_NAMES
    pids, cids, codes = catalog.product_ids, catalog.category_ids, catalog.category_codes
    brands, prices = catalog.brands, catalog.prices

    chunk = 65_536
    for lo in range(0, len(plan.times), chunk):
        hi = lo + chunk
        for t, u, s, p, ty, c, bad in zip(
            plan.times[lo:hi].tolist(), plan.users[lo:hi].tolist(),
            plan.sessions[lo:hi].tolist(), plan.products[lo:hi].tolist(),
            plan.types[lo:hi].tolist(), plan.copies[lo:hi].tolist(),
            plan.invalid[lo:hi].tolist(), strict=True,
        ):
            if s < 0:
                sid = None
            else:
                sid = session_ids[s]
                if sid is None:
                    sid = str(uuid.UUID(bytes=session_bytes[16 * s:16 * s + 16], version=4))
                    session_ids[s] = sid
            rec = {
                "event_time": day_prefix[t // 86400] + clock[t % 86400],
                "event_type": type_names[ty],
                "product_id": pids[p],
                "category_id": cids[p],
                "category_code": codes[p],
                "brand": brands[p],
                "price": prices[p],
                "user_id": user_ids[u],
                "user_session": sid,
            }
            if bad:
                _CORRUPTIONS[bad - 1](rec)
            yield rec
            for _ in range(c):
                yield dict(rec)


def write_csv(records: Iterable[Mapping[str, str | None]], path: str | Path) -> int:
    """Write records as a REES46 CSV (exact header; ``.gz`` suffix -> gzip). Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = gzip.open(path, "wb", compresslevel=5) if path.suffix == ".gz" else open(path, "wb")  # noqa: SIM115
    count = 0
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for rec in records:
            writer.writerow(["" if (v := rec.get(name)) is None else v for name in CSV_COLUMNS])
            count += 1
    return count
