"""The independent side for sessions and the funnel: plain Python over typed, unique events.

Written from the definitions in the README (not from the project's code): a session is all
events of one user_session; the ordered funnel is a left-to-right scan of its events sorted by
time (a view, then a cart, then a purchase; ties in time count as in order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

STEPS = ("view", "cart", "purchase")


def _ordered_step(events: list[Mapping[str, Any]]) -> int:
    rank = {t: i for i, t in enumerate(STEPS)}
    step = 0
    for ev in sorted(events, key=lambda e: (e["event_time"], rank.get(e["event_type"], 9))):
        if step < len(STEPS) and ev["event_type"] == STEPS[step]:
            step += 1
    return step


def truth_sessions(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    by_session: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ev in events:
        if ev["user_session"] is not None:
            by_session[ev["user_session"]].append(ev)
    out = {}
    for sid, evs in by_session.items():
        times = [e["event_time"] for e in evs]
        count: dict[str, int] = defaultdict(int)
        for e in evs:
            count[e["event_type"]] += 1
        out[sid] = {
            "user_id": min(e["user_id"] for e in evs),
            "session_start": min(times), "session_end": max(times),
            "duration_s": int((max(times) - min(times)).total_seconds()),
            "event_count": len(evs), "views": count["view"], "carts": count["cart"],
            "removes": count["remove_from_cart"], "purchases": count["purchase"],
            "revenue": round(sum(e["price"] for e in evs if e["event_type"] == "purchase"), 2),
            "unique_products": len({e["product_id"] for e in evs}),
            "converted": count["purchase"] > 0,
            "ordered_step": _ordered_step(evs),
            "session_date": min(times).strftime("%Y-%m-%d"),
        }
    return out


def _rate(num: int, den: int) -> float:
    return num / den if den else 0.0


def truth_funnel(sessions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    days: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in sessions.values():
        days[s["session_date"]].append(s)
    out = {}
    for day, ss in days.items():
        view = [s for s in ss if s["views"]]
        cart = [s for s in ss if s["carts"]]
        reached = [sum(s["ordered_step"] >= k for s in ss) for k in (1, 2, 3)]
        steps = []
        for k, name in enumerate(STEPS):
            prev = reached[k - 1] if k else reached[0]
            steps.append({"step": name, "sessions": reached[k],
                          "conversion_from_previous": _rate(reached[k], prev),
                          "conversion_overall": _rate(reached[k], reached[0]),
                          "drop_off": prev - reached[k]})
        out[day] = {
            "sessions": len(ss), "sessions_with_view": len(view),
            "sessions_with_cart": len(cart),
            "sessions_with_purchase": sum(1 for s in ss if s["purchases"]),
            "view_to_cart_rate": _rate(sum(1 for s in view if s["carts"]), len(view)),
            "cart_to_purchase_rate": _rate(sum(1 for s in cart if s["purchases"]), len(cart)),
            "view_to_purchase_rate": _rate(sum(1 for s in view if s["purchases"]), len(view)),
            "revenue": round(sum(s["revenue"] for s in ss), 2),
            "ordered_steps": steps,
        }
    return out


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def assert_sessions_equal(got: Mapping[str, Mapping[str, Any]],
                          want: Mapping[str, Mapping[str, Any]]) -> None:
    assert set(got) == set(want), (set(got) ^ set(want))
    for sid, w in want.items():
        doc = got[sid]
        for field in ("user_id", "duration_s", "event_count", "views", "carts", "removes",
                      "purchases", "unique_products", "converted", "ordered_step",
                      "session_date"):
            assert doc[field] == w[field], (sid, field, doc[field], w[field])
        assert _utc(doc["session_start"]) == w["session_start"], sid
        assert _utc(doc["session_end"]) == w["session_end"], sid
        assert doc["revenue"] == pytest.approx(w["revenue"], abs=0.005), sid
        assert 0.0 <= doc["session_quality_score"] <= 1.0
        # Internal columns (the sink's "_stored" marker) never reach a document.
        assert [k for k in doc if k.startswith("_") and k != "_id"] == [], sid


def assert_funnel_equal(got: Mapping[str, Mapping[str, Any]],
                        want: Mapping[str, Mapping[str, Any]]) -> None:
    assert set(got) == set(want)
    for day, w in want.items():
        doc = got[day]
        for field in ("sessions", "sessions_with_view", "sessions_with_cart",
                      "sessions_with_purchase"):
            assert doc[field] == w[field], (day, field)
        for field in ("view_to_cart_rate", "cart_to_purchase_rate", "view_to_purchase_rate"):
            assert doc[field] == pytest.approx(w[field], abs=1e-6), (day, field)
        assert doc["revenue"] == pytest.approx(w["revenue"], abs=0.005), day
        assert len(doc["ordered_steps"]) == 3
        for got_step, want_step in zip(doc["ordered_steps"], w["ordered_steps"], strict=True):
            assert got_step["step"] == want_step["step"]
            assert got_step["sessions"] == want_step["sessions"], (day, want_step)
            assert got_step["drop_off"] == want_step["drop_off"], (day, want_step)
            for k in ("conversion_from_previous", "conversion_overall"):
                assert got_step[k] == pytest.approx(want_step[k], abs=1e-6), (day, k)
        assert all(0.0 <= r <= 1.0 for r in funnel_rates_of(doc)), day


def funnel_rates_of(doc: Mapping[str, Any]) -> list[float]:
    rates = [doc["view_to_cart_rate"], doc["cart_to_purchase_rate"], doc["view_to_purchase_rate"]]
    for step in doc["ordered_steps"]:
        rates += [step["conversion_from_previous"], step["conversion_overall"]]
    return rates
