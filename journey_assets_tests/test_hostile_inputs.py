"""Hostile input through the real broker and a real run: every crafted record ends in
``enriched_events`` xor ``dead_letter_events`` with the reason the table below expects, the run
does not fail, and a second run changes nothing.

The table is the contract for odd input: typed fields (time, type, ids, price) must parse
under the schema's rules or the record is a dead letter with the rule's reason; text fields
(category_code, brand, user_session) keep any JSON value as its JSON text (a number, a boolean,
an object); a payload that is not one JSON object is ``malformed_json``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaProducer
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.resources.kafka import ensure_topic
from journey_assets.schema import (
    EVENT_TIME_OUT_OF_RANGE,
    MALFORMED_JSON,
    NEGATIVE_PRICE,
    NON_NUMERIC_PRICE,
    PRICE_OUT_OF_RANGE,
    UNKNOWN_EVENT_TYPE,
    UNPARSABLE_EVENT_TIME,
    event_id,
    missing,
    non_integer,
    validate_record,
)
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.pipeline import StreamOptions, run_stream, target_from
from journey_assets_tests.test_streaming import assert_ledger_holds

ACCEPTED = "accepted"
FIRST_USER = 777_000_000


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    expected: str                  # ACCEPTED or a dead-letter reason
    user_id: int | None = None     # how its enriched event is found (its own user), if any
    stored: dict[str, Any] = dataclasses.field(default_factory=dict)  # fields as stored


def _event(i: int, **changes: Any) -> dict[str, Any]:
    base = {"event_time": "2019-10-01 10:00:00 UTC", "event_type": "view",
            "product_id": 1004856, "category_id": 2053013555631882655,
            "category_code": "electronics.smartphone", "brand": "samsung", "price": 130.76,
            "user_id": FIRST_USER + i, "user_session": f"hostile-{i}"}
    return {**base, **changes}


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, expected: str, payload: bytes | None = None, *,
            stored: dict[str, Any] | None = None, **changes: Any) -> None:
        i = len(cases)
        event = _event(i, **changes)
        body = payload if payload is not None else json.dumps(event).encode()
        user = event["user_id"] if isinstance(event["user_id"], int) else None
        cases.append(Case(name, body, expected, user, stored or {}))

    big = 1_000_000 - 400  # the record stays under Kafka's default 1 MiB message limit
    add("brand near 1 MB", ACCEPTED, brand="b" * big, stored={"brand": "b" * big})
    add("session near 1 MB", ACCEPTED, user_session="s" * big)
    add("garbage near 1 MB", MALFORMED_JSON, b"x" * big)
    add("invalid UTF-8 inside a text value", MALFORMED_JSON,
        json.dumps(_event(3)).encode().replace(b"samsung", b"sam\xff\xfesung"))
    add("invalid UTF-8 payload", MALFORMED_JSON, b"\xc3\x28\xa0\xa1")
    add("NUL escaped in a text value", ACCEPTED, brand="sam\u0000sung",
        stored={"brand": "sam\u0000sung"})
    add("raw NUL byte inside a string", MALFORMED_JSON,
        json.dumps(_event(6)).encode().replace(b"samsung", b"sam\x00sung"))
    add("lone surrogate escaped in a text value", ACCEPTED, brand="x\ud800y")
    nested = {"$where": "sleep(1)", "a": [1, {"b": None}]}
    for field, reason in (("event_time", UNPARSABLE_EVENT_TIME),
                          ("event_type", UNKNOWN_EVENT_TYPE),
                          ("product_id", non_integer("product_id")),
                          ("category_id", non_integer("category_id")),
                          ("price", NON_NUMERIC_PRICE),
                          ("user_id", non_integer("user_id")),
                          ("category_code", ACCEPTED), ("brand", ACCEPTED),
                          ("user_session", ACCEPTED)):
        add(f"object in {field}", reason, **{field: nested})
        add(f"array in {field}", reason, **{field: [1, "two", None]})
    add("number in event_type", UNKNOWN_EVENT_TYPE, event_type=5)
    add("boolean in event_type", UNKNOWN_EVENT_TYPE, event_type=True)
    add("number in brand", ACCEPTED, brand=12, stored={"brand": "12"})
    add("boolean in category_code", ACCEPTED, category_code=False,
        stored={"category_code": "false"})
    add("ids as strings", ACCEPTED, product_id="1004856", category_id="2053013555631882655")
    add("user_id at the 64-bit maximum", ACCEPTED, user_id=2**63 - 1)
    add("product_id just beyond 64 bits", non_integer("product_id"), product_id=2**63)
    add("category_id far beyond 64 bits", non_integer("category_id"), category_id=10**40)
    add("user_id just below the 64-bit minimum", non_integer("user_id"), user_id=-(2**63) - 1)
    add("fractional product_id", non_integer("product_id"), product_id=1.5)
    add("price NaN (bare)", NON_NUMERIC_PRICE,
        json.dumps(_event(len(cases), price=float("nan"))).encode())
    add("price Infinity (bare)", NON_NUMERIC_PRICE,
        json.dumps(_event(len(cases), price=float("inf"))).encode())
    add("price -Infinity (bare)", NON_NUMERIC_PRICE,
        json.dumps(_event(len(cases), price=float("-inf"))).encode())
    # A JSON number beyond a double is no number to the JSON reader; as text it parses to +inf.
    add("price 1e400 (bare number)", NON_NUMERIC_PRICE,
        json.dumps(_event(len(cases))).encode().replace(b"130.76", b"1e400"))
    add("price '1e400' as text", PRICE_OUT_OF_RANGE, price="1e400")
    add("price 'NaN' as text", NON_NUMERIC_PRICE, price="NaN")
    add("negative price", NEGATIVE_PRICE, price=-0.01)
    add("year 0001", EVENT_TIME_OUT_OF_RANGE, event_time="0001-01-01 00:00:00 UTC")
    add("year 9999", EVENT_TIME_OUT_OF_RANGE, event_time="9999-12-31 23:59:59 UTC")
    add("year 2100 (clock skew)", EVENT_TIME_OUT_OF_RANGE, event_time="2100-01-01 00:00:00 UTC")
    add("Feb 30", UNPARSABLE_EVENT_TIME, event_time="2019-02-30 10:00:00 UTC")
    add("hour 24", UNPARSABLE_EVENT_TIME, event_time="2019-10-01 24:00:00 UTC")
    add("time without zone", UNPARSABLE_EVENT_TIME, event_time="2019-10-01 10:00:00")
    add("top-level array", MALFORMED_JSON, json.dumps([_event(len(cases))]).encode())
    add("top-level number", MALFORMED_JSON, b"42")
    add("top-level string", MALFORMED_JSON, b'"an event"')
    add("top-level null", MALFORMED_JSON, b"null")
    add("empty object", missing("event_time"), b"{}")
    add("every value empty", missing("event_time"),
        json.dumps({k: "" for k in _event(0)}).encode())
    add("blank event_type", missing("event_type"), event_type="   ")
    add("event_type in capitals", UNKNOWN_EVENT_TYPE, event_type="VIEW")
    i = len(cases)
    add("duplicate key: the last value counts", ACCEPTED,
        json.dumps(_event(i)).encode()[:-1] + b', "event_type": "purchase"}',
        stored={"event_type": "purchase"})
    add("case-variant keys are other keys", missing("event_time"),
        json.dumps({k.upper(): v for k, v in _event(len(cases)).items()}).encode())
    add("nesting 200 deep in brand", ACCEPTED,
        json.dumps(_event(len(cases))).encode().replace(b'"samsung"', b"[" * 200 + b"]" * 200))
    add("nesting 5,000 deep in brand", MALFORMED_JSON,
        json.dumps(_event(len(cases))).encode().replace(b'"samsung"', b"[" * 5000 + b"]" * 5000))
    add("unknown extra fields", ACCEPTED, extra={"deep": [1, 2, {"x": "y"}]}, _id="not-mine")
    add("emoji and right-to-left text", ACCEPTED, brand="\U0001f600 \u05e9\u05dc\u05d5\u05dd",
        stored={"brand": "\U0001f600 \u05e9\u05dc\u05d5\u05dd"})
    return cases


def _snapshot(db: Database) -> dict[str, list]:
    return {name: sorted(json.dumps(d, sort_keys=True, default=str)
                         for d in db[name].find({}, {"received_at": 0}))
            for name in ("enriched_events", "dead_letter_events", "event_aggregations",
                         "user_session_analytics", "conversion_funnel")}


@pytest.mark.slow  # two available-now runs over ~50 MB of records
def test_hostile_records_are_accepted_or_dead_lettered_and_nothing_crashes(
        spark, settings: Settings, capsys) -> None:
    suffix = uuid.uuid4().hex[:6]
    own = dataclasses.replace(settings, topic=f"{settings.topic}_hostile_{suffix}",
                              mongo_db=f"{settings.mongo_db}_hostile_{suffix}")
    own = dataclasses.replace(own, data_dir=settings.data_dir / f"hostile_{suffix}")
    cases = _cases()
    assert len(cases) >= 40
    ensure_topic(own.kafka_bootstrap, own.topic, partitions=1)
    normal = list(generate_records(SyntheticConfig(n_events=400, seed=5, days=1)))
    produce(normal[:200], own.kafka_bootstrap, own.topic, partitions=1, progress=False)
    producer = KafkaProducer(bootstrap_servers=own.kafka_bootstrap, acks="all",
                             max_request_size=2 * 1024 * 1024)
    offsets = {}
    for case in cases:
        offsets[case.name] = producer.send(own.topic, key=b"hostile",
                                           value=case.payload).get(timeout=30).offset
    producer.flush()
    producer.close()
    produce(normal[200:], own.kafka_bootstrap, own.topic, partitions=1, progress=False)

    client: MongoClient = MongoClient(own.mongo_uri, tz_aware=True)
    db = client[own.mongo_db]
    try:
        target = target_from(own)
        run_stream(spark, target, StreamOptions(mode="available-now"))  # raises on a failure
        dead = {d["source"]["offset"]: d for d in db.dead_letter_events.find(
            {"source.topic": own.topic})}
        wrong = []
        dead_lettered = accepted = 0
        for case in cases:
            letter = dead.get(offsets[case.name])
            stored = (list(db.enriched_events.find({"user_id": case.user_id}))
                      if case.user_id is not None and case.user_id >= FIRST_USER else [])
            if case.expected == ACCEPTED:
                ok = letter is None and len(stored) == 1 and all(
                    stored[0].get(k) == v for k, v in case.stored.items())
                accepted += ok
            else:
                ok = letter is not None and letter["reason"] == case.expected and not stored
                dead_lettered += ok
            if not ok:
                wrong.append((case.name, case.expected, letter and letter["reason"],
                              [(repr(d.get("brand"))[:40], d.get("event_type")) for d in stored]))
        assert not wrong, wrong
        # The normal events around them all arrived (their ids by the schema's Python twin).
        valid = {event_id(ev) for ev, _ in map(validate_record, normal) if ev is not None}
        assert db.enriched_events.count_documents({"_id": {"$in": sorted(valid)}}) == len(valid)

        # The ledger balances on every batch; its dead letters by reason and its lake inserts
        # match what MongoDB holds.
        ledger = assert_ledger_holds(db, db.enriched_events.count_documents({}))
        reasons = Counter(d["reason"] for d in db.dead_letter_events.find(
            {"reason": {"$ne": "late_for_session"}}, {"reason": 1}))  # the sessions query's
        assert sum((Counter(d["dead_lettered"]) for d in ledger), Counter()) == reasons

        before = _snapshot(db)
        run_stream(spark, target, StreamOptions(mode="available-now"))
        assert _snapshot(db) == before
        with capsys.disabled():
            print(f"\nbad inputs tried {len(cases)}, dead-lettered {dead_lettered}, "
                  f"accepted {accepted}, crashed 0")
    finally:
        client.drop_database(own.mongo_db)
        client.close()
