"""Sessions as streaming state and the ordered funnel, against plain Python, trigger by trigger.

Events go through the real broker in waves (event-time order, one partition, so the
watermark is exact); each wave is an available-now run of several micro-batches. After every
run - each closes sessions - every session document and every day's funnel must equal the
independent computation (``session_truth``) over the events sent so far. The data has a
session across midnight, one active for 26 hours (events 20 minutes apart), purchases
without a cart, a purchase before the view, duplicates, an event late for its (closed)
session, and one older than the watermark.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.assets.streaming import funnel_rates_within_0_1
from journey_assets.resources import build_resources
from journey_assets.resources.kafka import ensure_topic
from journey_assets.schema import TIME_FORMAT_PY, event_id
from journey_assets.settings import Settings
from journey_assets.streaming.pipeline import StreamOptions, run_stream, target_from
from journey_assets.transforms.sessions import funnel_counts, funnel_documents, lake_sessions
from journey_assets_tests.session_truth import (
    assert_funnel_equal,
    assert_sessions_equal,
    funnel_rates_of,
    truth_funnel,
    truth_sessions,
)
from journey_assets_tests.test_streaming import assert_ledger_holds

T0 = datetime(2019, 10, 1, 6, 0, tzinfo=UTC)
GAP = timedelta(minutes=30)
WATERMARK = timedelta(minutes=10)


def _event(session: str, user: int, at: datetime, kind: str, product: int = 1,
           price: float = 10.0) -> dict[str, Any]:
    return {"event_time": at, "event_type": kind, "product_id": product, "category_id": 7,
            "category_code": "electronics.phone", "brand": "acme", "price": price,
            "user_id": user, "user_session": session}


def _record(ev: dict[str, Any]) -> dict[str, str]:
    """The wire form: every field as text (what the simulator sends)."""
    return {k: ("" if v is None else v.strftime(TIME_FORMAT_PY) if isinstance(v, datetime)
                else str(v)) for k, v in ev.items()}


def planted_events() -> list[dict[str, Any]]:
    ev = []
    # across midnight Oct 1 -> Oct 2: view, cart, view, purchase
    for minutes, kind in ((0, "view"), (15, "cart"), (30, "view"), (50, "purchase")):
        ev.append(_event("s-midnight", 1, datetime(2019, 10, 1, 23, 40, tzinfo=UTC)
                         + timedelta(minutes=minutes), kind, price=25.5))
    # 26 hours of activity, an event every 20 minutes (under the gap): one session
    for k in range(79):
        kind = "cart" if k == 40 else "purchase" if k == 60 else "view"
        ev.append(_event("s-long", 2, T0 + timedelta(hours=2, minutes=20 * k), kind,
                         product=k % 5, price=3.25))
    # purchase without a cart
    ev.append(_event("s-nocart", 3, T0 + timedelta(minutes=5), "view"))
    ev.append(_event("s-nocart", 3, T0 + timedelta(minutes=9), "purchase", price=99.99))
    # purchase before the view, then a cart: ordered step 2, still "with purchase"
    for minutes, kind in ((10, "purchase"), (12, "view"), (14, "cart")):
        ev.append(_event("s-order", 4, T0 + timedelta(minutes=minutes), kind, price=5.0))
    # a cart only, and a remove
    ev.append(_event("s-cartonly", 5, T0 + timedelta(minutes=20), "cart"))
    ev.append(_event("s-cartonly", 5, T0 + timedelta(minutes=21), "remove_from_cart"))
    return ev


def random_events(seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for s in range(70):
        at = T0 + timedelta(seconds=rng.randrange(0, 40 * 3600))
        user = 100 + s % 40
        for _ in range(rng.randint(1, 7)):
            kind = rng.choices(("view", "cart", "remove_from_cart", "purchase"),
                               (6, 2, 1, 1))[0]
            out.append(_event(f"r{s}", user, at, kind, product=rng.randrange(20),
                              price=round(rng.uniform(1, 200), 2)))
            at += timedelta(seconds=rng.randrange(1, 25 * 60))
    return out


def _send(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for ev in events:
        producer.send(topic, value=json.dumps(_record(ev)).encode())
    producer.flush()
    producer.close()


@pytest.fixture
def session_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    suffix = uuid.uuid4().hex[:6]
    own = dataclasses.replace(settings, topic=f"{settings.topic}_ss{suffix}",
                              mongo_db=f"{settings.mongo_db}_ss{suffix}", data_dir=tmp_path)
    ensure_topic(own.kafka_bootstrap, own.topic, partitions=1)
    yield own
    MongoClient(own.mongo_uri).drop_database(own.mongo_db)


def _docs(db: Database, collection: str) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d for d in db[collection].find()}


def test_sessions_and_funnel_equal_plain_python_after_every_trigger(
        spark, session_settings: Settings) -> None:
    events = sorted(planted_events() + random_events(), key=lambda e: e["event_time"])
    end = events[-1]["event_time"]
    cuts = [T0 + timedelta(hours=h) for h in (4, 12, 20, 30)] + [end + timedelta(seconds=1)]
    waves = [[e for e in events if lo <= e["event_time"] < hi]
             for lo, hi in zip([T0 - timedelta(days=1), *cuts[:-1]], cuts, strict=True)]
    assert all(waves)
    # Extras: exact repeats (each of wave 2's first 8 events twice, so in one micro-batch or
    # the next); an event of s-nocart after it closed (late for its session); an event of a
    # new session older than the watermark (dropped by Spark, counted as a late row).
    late_for_session = _event("s-nocart", 3, cuts[1] - timedelta(minutes=1), "view")
    too_late = _event("s-toolate", 9, cuts[1] - timedelta(hours=3), "view")
    waves[1] = [*waves[1], late_for_session]
    waves[2] = [too_late, *[e for e in waves[2][:8] for _ in (0, 1)], *waves[2][8:]]

    target = target_from(session_settings)
    options = StreamOptions(mode="available-now", max_offsets_per_trigger=40)
    client: MongoClient = MongoClient(session_settings.mongo_uri, tz_aware=True)
    db = client[session_settings.mongo_db]
    sent: dict[str, dict[str, Any]] = {}
    excluded = {event_id(late_for_session), event_id(too_late)}
    max_time = T0 - timedelta(days=1)
    late_rows = 0
    for k, wave in enumerate(waves):
        _send(session_settings.kafka_bootstrap, session_settings.topic, wave)
        for ev in wave:
            sent.setdefault(event_id(ev), ev)
            max_time = max(max_time, ev["event_time"])
        progress: list[dict[str, Any]] = []
        summary = run_stream(spark, target, options, on_progress=lambda _q, rec, out=progress:
                             out.append(rec))
        assert summary.batches["sessions"] >= 2, summary.batches  # several micro-batches
        late_rows += sum(p["late_rows_dropped"] for p in progress if p["query"] == "sessions")

        counted = [e for i, e in sent.items() if i not in excluded]
        want = truth_sessions(counted)
        got = _docs(db, "user_session_analytics")
        assert_sessions_equal(got, want)
        watermark = max_time - WATERMARK
        for sid, w in want.items():  # closed once the watermark passed last event + gap
            assert got[sid]["closed"] == (w["session_end"] + GAP < watermark), (k, sid)
        assert_funnel_equal(_docs(db, "conversion_funnel"), truth_funnel(want))
        # Every event (the late ones too) is in the lake once; the ledger balances.
        assert_ledger_holds(db, len(sent))

    long_session = got["s-long"]
    assert long_session["duration_s"] == 78 * 20 * 60 and long_session["closed"]
    assert got["s-midnight"]["session_date"] == "2019-10-01"
    assert "s-toolate" not in got and late_rows == 1
    late = db.dead_letter_events.find_one({"_id": f"late_for_session:{event_id(late_for_session)}"})
    assert late is not None and late["reason"] == "late_for_session"
    assert late["source"] == {"query": "sessions", "user_session": "s-nocart"}
    for doc in db.conversion_funnel.find():
        assert all(0.0 <= r <= 1.0 for r in funnel_rates_of(doc))
    # The asset check agrees, and catches a day whose rates are out of range.
    mongo = build_resources(session_settings)["mongo"]
    assert funnel_rates_within_0_1(mongo=mongo).passed
    bad = {**db.conversion_funnel.find_one({"_id": "2019-10-01"}), "_id": "2019-09-30",
           "cart_to_purchase_rate": 1.5}
    db.conversion_funnel.insert_one(bad)
    result = funnel_rates_within_0_1(mongo=mongo)
    assert not result.passed and result.metadata["first_bad_days"].value == ["2019-09-30"]
    db.conversion_funnel.delete_one({"_id": "2019-09-30"})
    assert any(d["cart_to_purchase_rate"] < d["sessions_with_purchase"] / d["sessions_with_cart"]
               for d in db.conversion_funnel.find() if d["sessions_with_cart"])

    # The same definitions in batch over the lake (which has every event, the late ones too).
    everything = truth_sessions(sent.values())
    days = sorted({s["session_date"] for s in everything.values()})
    batch = lake_sessions(spark, target.events_path, days[0], days[-1]).cache()
    assert_sessions_equal({r["user_session"]: r.asDict() for r in batch.collect()}, everything)
    batch_funnel = {d["_id"]: d for d in funnel_documents(funnel_counts(batch))}
    assert_funnel_equal(batch_funnel, truth_funnel(everything))
    # One day only: the sessions that start that day, whole (s-long runs into Oct 2).
    one_day = lake_sessions(spark, target.events_path, "2019-10-01", "2019-10-01").collect()
    assert {r["user_session"] for r in one_day} == {
        s for s, v in everything.items() if v["session_date"] == "2019-10-01"}
    assert next(r for r in one_day if r["user_session"] == "s-long")["event_count"] == 79
    batch.unpersist()
    client.close()
