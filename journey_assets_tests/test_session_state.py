"""The sessions query's state function, driven directly (no Spark): what it emits and keeps
batch by batch, against the plain-Python definitions of ``session_truth``."""

from __future__ import annotations

import json
import random
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from journey_assets.transforms.sessions import (
    LATE_ROW,
    SESSION_HASH,
    SESSION_ROW,
    BucketState,
    _update_bucket,
    summarize_session,
)
from journey_assets_tests.session_truth import truth_sessions

GAP_MS = 30 * 60_000
TOMBSTONE_MS = 24 * 3_600_000
T0 = datetime(2019, 10, 1, tzinfo=UTC)


class FakeGroupState:
    """The part of pyspark's GroupState the function uses."""

    def __init__(self) -> None:
        self.value: tuple[bytes] | None = None
        self.hasTimedOut = False
        self.watermark_ms = 0
        self.timeout_ms: int | None = None

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple[bytes]:
        assert self.value is not None
        return self.value

    def update(self, value: tuple[bytes]) -> None:
        self.value = value

    def remove(self) -> None:
        self.value = None

    def setTimeoutTimestamp(self, ms: int) -> None:
        assert ms > self.watermark_ms, "Spark refuses a timeout at or before the watermark"
        self.timeout_ms = ms

    def getCurrentWatermarkMs(self) -> int:
        return self.watermark_ms


def _frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_session": [e["user_session"] for e in events],
        # Spark's xxhash64 in the query; any stable 64-bit hash here.
        SESSION_HASH: [zlib.crc32(e["user_session"].encode()) for e in events],
        "event_id": [e["event_id"] for e in events],
        "event_us": [int(e["event_time"].timestamp() * 1_000_000) for e in events],
        "event_type": [e["event_type"] for e in events],
        "product_id": [e["product_id"] for e in events],
        "price": [e["price"] for e in events],
        "user_id": [e["user_id"] for e in events],
    })


def _run(state: FakeGroupState, events: list[dict[str, Any]], watermark: datetime,
         timed_out: bool = False) -> list[dict[str, Any]]:
    state.watermark_ms = int(watermark.timestamp() * 1000)
    state.hasTimedOut = timed_out
    frames = [] if timed_out else [_frame(events)]
    out = list(_update_bucket((0,), iter(frames), state, GAP_MS, TOMBSTONE_MS))
    return [row for frame in out for row in frame.to_dict("records")]


def _event(session: str, minutes: float, kind: str, n: int, price: float = 5.0) -> dict[str, Any]:
    return {"user_session": session, "event_id": f"{session}-{n}",
            "event_time": T0 + timedelta(minutes=minutes), "event_type": kind,
            "product_id": n % 3, "price": price, "user_id": 7}


def test_summary_equals_the_plain_python_definition_on_random_sessions() -> None:
    rng = random.Random(5)
    for trial in range(300):
        events = [_event("s", rng.randrange(0, 90), rng.choice(
            ("view", "cart", "remove_from_cart", "purchase")), n, round(rng.uniform(1, 50), 2))
            for n in range(rng.randint(1, 9))]
        rows = [[e["event_id"], int(e["event_time"].timestamp() * 1e6), e["event_type"],
                 e["product_id"], e["price"], e["user_id"]] for e in events]
        got = summarize_session(rows)
        want = truth_sessions(events)["s"]
        for field in ("event_count", "views", "carts", "removes", "purchases",
                      "unique_products", "ordered_step", "user_id"):
            assert got[field] == want[field], (trial, field, events)
        assert abs(got["revenue"] - want["revenue"]) < 1e-9


def test_open_update_close_tombstone_late_and_expiry() -> None:
    state = FakeGroupState()
    first = [_event("a", 0, "view", 0), _event("a", 5, "cart", 1), _event("b", 1, "view", 2)]
    rows = _run(state, first, watermark=T0 - timedelta(minutes=10))
    assert {(r["kind"], r["user_session"]) for r in rows} == {(SESSION_ROW, "a"),
                                                            (SESSION_ROW, "b")}
    a = json.loads(next(r["payload"] for r in rows if r["user_session"] == "a"))
    assert (a["event_count"], a["ordered_step"], a["closed"]) == (2, 2, False)
    assert "prev_start_us" not in a  # a new session takes nothing back from the funnel
    # The earliest closing moment: b's last event + gap (b ended before a).
    assert state.timeout_ms == int((T0 + timedelta(minutes=1)).timestamp() * 1000) + GAP_MS

    # A repeat changes nothing and emits nothing; a new event re-emits with the previous values.
    assert _run(state, [first[0]], watermark=T0) == []
    rows = _run(state, [_event("a", 20, "purchase", 3, 9.5)], watermark=T0)
    (row,) = rows
    a = json.loads(row["payload"])
    assert (a["event_count"], a["ordered_step"], a["revenue"]) == (3, 3, 9.5)
    assert (a["prev_ordered_step"], a["prev_revenue"]) == (2, 0.0)

    # The watermark passes b's end + gap: b closes (its final document), a stays open.
    rows = _run(state, [], watermark=T0 + timedelta(minutes=32), timed_out=True)
    assert [(r["user_session"], json.loads(r["payload"])["closed"]) for r in rows] == [
        ("b", True)]
    # An event of b now is late for its session: a late row, the state keeps the tombstone.
    rows = _run(state, [_event("b", 40, "view", 4)], watermark=T0 + timedelta(minutes=32))
    assert [(r["kind"], r["user_session"]) for r in rows] == [(LATE_ROW, "b")]
    assert json.loads(rows[0]["payload"])["event_id"] == "b-4"
    stored = BucketState(state.get[0])
    assert set(stored.open) == {"a"}
    assert stored.closed([zlib.crc32(b"b"), zlib.crc32(b"a")]) == [True, False]
    # b's tombstone is kept until its last event + gap + tombstone time.
    b_end_ms = int((T0 + timedelta(minutes=1)).timestamp() * 1000)
    assert stored.tomb_until.tolist() == [b_end_ms + GAP_MS + TOMBSTONE_MS]

    # a closes; a day later both tombstones expire and the state is removed.
    rows = _run(state, [], watermark=T0 + timedelta(minutes=51), timed_out=True)
    assert [(r["user_session"], json.loads(r["payload"])["closed"]) for r in rows] == [
        ("a", True)]
    assert _run(state, [], watermark=T0 + timedelta(days=1, hours=1), timed_out=True) == []
    assert not state.exists


def test_many_tombstones_late_events_expiry_and_new_sessions_in_one_bucket() -> None:
    state = FakeGroupState()
    # 300 sessions of two events, ending one minute apart; all close at 5 h.
    opened = [_event(f"s{i}", i, kind, n) for i in range(300)
              for n, kind in enumerate(("view", "cart"))]
    for event in opened:
        event["event_id"] = f"{event['user_session']}-{event['event_id']}"
    _run(state, opened, watermark=T0 - timedelta(minutes=10))
    rows = _run(state, [], watermark=T0 + timedelta(hours=5, minutes=31), timed_out=True)
    assert sorted(r["user_session"] for r in rows) == sorted(f"s{i}" for i in range(300))
    assert all(json.loads(r["payload"])["closed"] for r in rows)
    assert not BucketState(state.get[0]).open

    # Every 7th closed session gets an event (late), plus two new sessions (documents).
    late = [_event(f"s{i}", 400, "view", 9) for i in range(0, 300, 7)]
    fresh = [_event("new1", 400, "view", 9), _event("new2", 401, "cart", 9)]
    rows = _run(state, late + fresh, watermark=T0 + timedelta(hours=6))
    assert sorted(r["user_session"] for r in rows if r["kind"] == LATE_ROW) == sorted(
        f"s{i}" for i in range(0, 300, 7))
    assert sorted(r["user_session"] for r in rows if r["kind"] == SESSION_ROW) == [
        "new1", "new2"]

    # A day later the first 100 tombstones (the earliest sessions) are forgotten: an event of
    # such a session opens a new document; one of a remembered session is still late.
    s_end_ms = int((T0 + timedelta(minutes=100)).timestamp() * 1000)
    watermark = datetime.fromtimestamp((s_end_ms + GAP_MS + TOMBSTONE_MS) / 1000, UTC)
    rows = _run(state, [_event("s5", 24 * 60 + 200, "view", 10),
                        _event("s250", 24 * 60 + 200, "view", 10)], watermark=watermark)
    assert [(r["kind"], r["user_session"]) for r in rows
            if r["user_session"] in ("s5", "s250")] == [(SESSION_ROW, "s5"), (LATE_ROW, "s250")]
    stored = BucketState(state.get[0])
    # 200 remembered, plus new1 and new2, closed in this batch; s5 is open again.
    assert stored.tomb_hashes.size == 300 - 100 + 2
    assert set(stored.open) == {"s5"}
    assert list(stored.tomb_hashes) == sorted(stored.tomb_hashes)
