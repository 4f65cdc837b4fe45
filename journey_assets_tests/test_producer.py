"""The producer against the real broker, read back by an independent kafka-python consumer."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, TopicPartition

from journey_assets.schema import CSV_COLUMNS, CSV_HEADER, validate_record
from journey_assets.sources.producer import CONFLUENT, KAFKA_PYTHON, LIVE, produce
from journey_assets.sources.rees46 import read_rees46
from journey_assets.sources.synthetic import SyntheticConfig, generate_records


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[int, int, bytes | None, dict]]:
    """(partition, offset, key, value) of every message, read from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5_000, auto_offset_reset="earliest")
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = []
    try:
        for msg in consumer:
            out.append((msg.partition, msg.offset, msg.key, json.loads(msg.value)))
            if len(out) >= expected:
                # Drain anything beyond what we expect (there must be nothing).
                extra = consumer.poll(timeout_ms=1_000)
                out.extend((m.partition, m.offset, m.key, json.loads(m.value))
                           for batch in extra.values() for m in batch)
                break
    finally:
        consumer.close()
    return out


def _expected_value(record: dict) -> dict:
    """What the wire should carry, built here by hand: typed if valid, raw text if not."""
    if validate_record(record)[1] is not None:
        return dict(record)
    typed = dict(record)
    for name in ("product_id", "category_id", "user_id"):
        typed[name] = int(record[name])
    typed["price"] = float(record["price"])
    return typed


def _topic(settings, label: str) -> str:
    return f"{settings.topic}_{label}_{uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize(("client", "n"), [(CONFLUENT, 10_000), (KAFKA_PYTHON, 3_000)])
def test_produced_events_arrive_complete_typed_and_keyed(settings, client, n):
    records = list(generate_records(SyntheticConfig(n_events=n, seed=13, invalid_fraction=0.01)))
    topic = _topic(settings, client.replace("-", "_"))
    summary = produce(records, settings.kafka_bootstrap, topic, client=client, progress=False)

    n_invalid = sum(validate_record(r)[1] is not None for r in records)
    assert (summary.read, summary.sent, summary.invalid, summary.rejected, summary.failed) == (
        n, n, n_invalid, 0, 0)
    assert sum(summary.end_offsets.values()) == n and len(summary.end_offsets) == 3

    messages = _consume_all(settings.kafka_bootstrap, topic, n)
    assert len(messages) == n
    # Same content: the multiset of values equals the hand-built expectation.
    got = Counter(json.dumps(v, sort_keys=True) for _, _, _, v in messages)
    want = Counter(json.dumps(_expected_value(r), sort_keys=True) for r in records)
    assert got == want
    # Keys are the user_id (absent only where the record has none); one partition per user.
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for part, _, key, value in messages:
        assert key == (str(value["user_id"]).encode() if value["user_id"] is not None else None)
        if key is not None:
            partitions_of[key.decode()].add(part)
    assert all(len(p) == 1 for p in partitions_of.values())
    # Per-user order: within its partition a user's events come in input order.
    by_user_in = defaultdict(list)
    for r in records:
        if r["user_id"] is not None:
            by_user_in[r["user_id"]].append(json.dumps(_expected_value(r), sort_keys=True))
    by_user_out = defaultdict(list)
    for _, _, key, value in sorted(messages, key=lambda m: (m[0], m[1])):
        if key is not None:
            by_user_out[key.decode()].append(json.dumps(value, sort_keys=True))
    assert by_user_out == by_user_in
    # Typed on the wire: numbers are JSON numbers, the time keeps its REES46 text form.
    valid = next(v for _, _, _, v in messages if isinstance(v["user_id"], int))
    assert isinstance(valid["price"], float) and isinstance(valid["category_id"], int)
    assert valid["event_time"].endswith(" UTC")


def test_both_clients_partition_a_user_alike(settings):
    records = list(generate_records(SyntheticConfig(n_events=600, seed=17, duplicate_fraction=0)))
    placement = {}
    for client in (CONFLUENT, KAFKA_PYTHON):
        topic = _topic(settings, f"part_{client.replace('-', '_')}")
        produce(records, settings.kafka_bootstrap, topic, client=client, progress=False)
        placement[client] = {m[2]: m[0] for m in _consume_all(settings.kafka_bootstrap, topic, 600)}
    assert placement[CONFLUENT] == placement[KAFKA_PYTHON]


def test_live_mode_restamps_and_rate_throttles(settings):
    records = list(generate_records(SyntheticConfig(n_events=600, seed=19)))
    topic = _topic(settings, "live")
    before = datetime.now(UTC).replace(microsecond=0)
    summary = produce(records, settings.kafka_bootstrap, topic, mode=LIVE, rate=1_000,
                      progress=False)
    after = datetime.now(UTC)
    assert summary.sent == 600
    assert summary.seconds >= 0.55  # 600 events at 1,000/s cannot take less than 0.6 s
    for _, _, _, value in _consume_all(settings.kafka_bootstrap, topic, 600):
        stamped = datetime.strptime(value["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        assert before <= stamped <= after


def test_malformed_csv_lines_are_rejected_and_reported(settings, tmp_path):
    good = list(generate_records(SyntheticConfig(n_events=300, seed=23)))
    lines = [",".join("" if r[c] is None else r[c] for c in CSV_COLUMNS) for r in good]
    lines.insert(10, "too,few,columns")
    lines.insert(100, "2019-10-01 00:00:00 UTC,view,1,2,,,3.0,4,s,extra")
    path = tmp_path / "with_bad_lines.csv"
    path.write_text(CSV_HEADER + "\n" + "\n".join(lines) + "\n")
    topic = _topic(settings, "csv")
    summary = produce(read_rees46(path), settings.kafka_bootstrap, topic, progress=False)
    assert (summary.read, summary.sent, summary.rejected) == (302, 300, 2)
    assert [d.line for d in summary.rejections] == [12, 102]
    assert any("rejected" in line and ":12 " in line for line in summary.lines())
    assert len(_consume_all(settings.kafka_bootstrap, topic, 300)) == 300


def test_malformed_csv_lines_land_in_dead_letter_events(settings, mongo_db, tmp_path):
    """The kafka_replay job over a CSV with malformed lines: one dead_letter_events document
    per bad line (file, line number, raw text, reason), and a second replay of the same file
    rewrites the same documents instead of adding more."""
    import dataclasses

    from journey_assets.assets.ingestion import kafka_replay
    from journey_assets.resources import build_resources
    from journey_assets.schema import MALFORMED_CSV

    good = list(generate_records(SyntheticConfig(n_events=200, seed=29)))
    lines = [",".join("" if r[c] is None else r[c] for c in CSV_COLUMNS) for r in good]
    bad = {5: "too,few,columns", 60: "2019-10-01 00:00:00 UTC,view,1,2,,,3.0,4,s,extra",
           120: '2019-10-01 00:00:00 UTC,view,"1,2,,,3.0,4,s'}
    for index in sorted(bad):
        lines.insert(index, bad[index])
    path = tmp_path / "with_bad_lines.csv"
    path.write_text(CSV_HEADER + "\n" + "\n".join(lines) + "\n")
    # Line numbers by plain counting (the header is line 1).
    expected = {n: text for n, text in enumerate(path.read_text().splitlines(), start=1)
                if text in bad.values()}
    assert len(expected) == 3

    run_settings = dataclasses.replace(settings, topic=_topic(settings, "dead_letters"))
    config = {"ops": {"replay_events": {"config": {"source": "csv", "path": str(path),
                                                   "events": None}}}}
    for _ in range(2):  # the replay of the same file: same _ids, no duplicates
        result = kafka_replay.execute_in_process(run_config=config,
                                                 resources=build_resources(run_settings))
        assert result.success
    docs = list(mongo_db["dead_letter_events"].find({"source.file": str(path)}))
    assert len(docs) == len(expected) == len({d["_id"] for d in docs})
    by_line = {d["source"]["line"]: d for d in docs}
    assert set(by_line) == set(expected)
    for line, text in expected.items():
        doc = by_line[line]
        assert doc["raw"] == text and doc["reason"] == MALFORMED_CSV
        assert doc["_id"] == f"{path}:{line}" and doc["received_at"] is not None
    [mat] = [m for m in result.get_asset_materialization_events()]
    assert mat.materialization.metadata["dead_lettered"].value == 3
