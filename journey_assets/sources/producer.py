"""Produce raw event records into the Kafka topic (``journey simulate``, the ``kafka_replay`` asset).

* Values are JSON. A record that passes ``schema.validate_record`` is written *typed* (ids and
  price as JSON numbers, ``event_time`` as ``YYYY-MM-DD HH:MM:SS UTC``); a record that fails is
  still sent, with its raw text values, so that the streaming job dead-letters it with its
  topic/partition/offset (the producer never drops an event silently).
* CSV lines that are not rows at all (``rees46.DeadLetter``) cannot be sent as records: they
  are counted as ``rejected``, reported in the summary and, given a ``DeadLetterWriter``,
  written to ``dead_letter_events`` with file, line, raw text and reason.
* Keyed by ``user_id`` (one user's events stay in one partition, in order), with the
  Java-compatible murmur2 partitioner in both clients so a user lands in the same partition
  whichever client wrote it.
* Idempotent producer with ``acks=all``: retries never duplicate or reorder a partition.
* ``replay`` keeps event_time, ``live`` re-stamps valid events to the current second.
  ``rate`` throttles to that many events/s; ``rate=None`` sends as fast as possible.
* ``client="confluent"`` (librdkafka, fast) or ``"kafka-python"`` (pure Python fallback).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from journey_assets.resources.kafka import end_offsets, ensure_topic
from journey_assets.schema import CSV_COLUMNS, TIME_FORMAT_PY, check_texts, record_texts
from journey_assets.settings import KafkaConnection, kafka_connection
from journey_assets.sources.rees46 import DeadLetter, DeadLetterWriter

REPLAY = "replay"
LIVE = "live"
CONFLUENT = "confluent"
KAFKA_PYTHON = "kafka-python"
MAX_REPORTED_REJECTIONS = 20

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_esc = json.encoder.encode_basestring  # the C string escaper json.dumps itself uses


@dataclass
class ProduceSummary:
    read: int = 0                 # items taken from the input (records and malformed lines)
    sent: int = 0                 # records handed to Kafka and acknowledged
    invalid: int = 0              # of those, records failing validation (sent raw, for the DLQ)
    rejected: int = 0             # malformed CSV lines: not sendable, reported below
    dead_lettered: int = 0        # of those, written to dead_letter_events
    failed: int = 0               # delivery failures reported by the client
    seconds: float = 0.0
    client: str = CONFLUENT
    topic: str = ""
    mode: str = REPLAY
    end_offsets: dict[int, int] = field(default_factory=dict)
    rejections: list[DeadLetter] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, Any]:
        return {
            "read": self.read, "sent": self.sent, "invalid": self.invalid,
            "rejected": self.rejected, "dead_lettered": self.dead_lettered,
            "failed": self.failed,
            "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_second, 1),
            "client": self.client, "topic": self.topic, "mode": self.mode,
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
        }

    def lines(self) -> list[str]:
        out = [
            f"topic {self.topic} ({self.client}, {self.mode}): read {self.read:,}, sent "
            f"{self.sent:,} ({self.invalid:,} invalid, sent raw for the dead-letter queue), "
            f"rejected {self.rejected:,} ({self.dead_lettered:,} to dead_letter_events), failed {self.failed:,} in {self.seconds:.2f} s "
            f"= {self.events_per_second:,.0f} events/s",
        ]
        if self.end_offsets:
            out.append("end offsets: " + ", ".join(f"p{p}={o}" for p, o in
                                                    sorted(self.end_offsets.items())))
        out.extend(f"rejected {d.file}:{d.line} {d.reason} ({d.detail}): {d.raw[:120]}"
                   for d in self.rejections)
        if self.rejected > len(self.rejections):
            out.append(f"... and {self.rejected - len(self.rejections)} more rejected lines")
        return out


def _json_text(value: str | None) -> str:
    return "null" if value is None else _esc(value)


def encode_record(record: Mapping[str, Any], live_time: str | None = None) -> tuple[bytes | None, bytes, bool]:
    """``(key, value, valid)`` of one raw record as it goes on the wire."""
    texts = record_texts(record)
    _reason, typed = check_texts(texts)
    if typed is None:
        raw = dict(zip(CSV_COLUMNS, texts, strict=True))
        key = texts[7]
        return (key.encode() if key else None), _dumps(raw).encode(), False
    ts, product_id, category_id, price, user_id = typed
    if live_time is None:
        text = texts[0]
        # A 23-character text that parsed is already canonical (zero-padded); reuse it.
        live_time = text if len(text) == 23 else ts.strftime(TIME_FORMAT_PY)  # type: ignore[arg-type]
    user = str(user_id)
    # Hand-built JSON (same output as json.dumps of the typed dict, ~3x cheaper): ids are
    # ints, the price a float (repr, as json.dumps writes it), texts escaped by json's escaper.
    value = (
        f'{{"event_time":{_esc(live_time)},"event_type":{_esc(texts[1])},'
        f'"product_id":{product_id},"category_id":{category_id},'
        f'"category_code":{_json_text(texts[4])},"brand":{_json_text(texts[5])},'
        f'"price":{price!r},"user_id":{user},'
        f'"user_session":{_json_text(texts[8])}}}'
    )
    return user.encode(), value.encode(), True


class _Sender:
    """The part that differs between the two clients."""

    delivered: int
    failed: int

    def send(self, key: bytes | None, value: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _ConfluentSender(_Sender):
    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []
        self.producer = Producer({
            **kafka.librdkafka_options(),
            "client.id": "journey-producer",
            "enable.idempotence": True,   # implies acks=all, bounded in-flight, safe retries
            "acks": "all",
            "partitioner": "murmur2_random",  # same partitions as the Java / kafka-python clients
            "linger.ms": 20,
            "batch.size": 1_000_000,
            # No compression: kafka-python consumers (tests, tools) lack lz4/snappy/zstd codecs.
            "compression.type": "none",
            "queue.buffering.max.messages": 500_000,
            # Reports only for failures: a Python callback per delivered message would cost
            # ~15% of the throughput; delivered = handed - failed once flush() returns.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        })
        self.handed = 0

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(err))

    def send(self, key: bytes | None, value: bytes) -> None:
        try:
            self.producer.produce(self.topic, value=value, key=key)
        except BufferError:  # local queue full: let librdkafka drain it, then retry once more
            while True:
                self.producer.poll(0.05)
                try:
                    self.producer.produce(self.topic, value=value, key=key)
                    break
                except BufferError:
                    continue
        self.handed += 1
        if self.handed % 1000 == 0:  # serve (error) callbacks now and then, not per message
            self.producer.poll(0)

    def flush(self) -> None:
        while self.producer.flush(10.0) > 0:
            pass
        self.delivered = self.handed - self.failed

    def close(self) -> None:
        self.flush()


class _KafkaPythonSender(_Sender):
    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []
        self.producer = KafkaProducer(
            **kafka.python_options(),
            client_id="journey-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            batch_size=512 * 1024,
            max_in_flight_requests_per_connection=5,
        )

    def _ok(self, _meta) -> None:
        self.delivered += 1

    def _err(self, exc) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(repr(exc))

    def send(self, key: bytes | None, value: bytes) -> None:
        self.producer.send(self.topic, key=key, value=value).add_callback(self._ok).add_errback(self._err)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def _sender(client: str, kafka: KafkaConnection, topic: str) -> _Sender:
    if client == CONFLUENT:
        return _ConfluentSender(kafka, topic)
    if client == KAFKA_PYTHON:
        return _KafkaPythonSender(kafka, topic)
    raise ValueError(f"unknown Kafka client {client!r}: {CONFLUENT} or {KAFKA_PYTHON}")


def _stderr_progress(summary: ProduceSummary, rate: float) -> None:
    print(f"  read {summary.read:,}  sent {summary.sent:,}  rejected {summary.rejected:,}  "
          f"{rate:,.0f} events/s",
          file=sys.stderr, flush=True)


def produce(
    records: Iterable[Mapping[str, Any] | DeadLetter],
    kafka: KafkaConnection | str,
    topic: str,
    *,
    rate: float | None = None,
    mode: str = REPLAY,
    partitions: int = 3,
    progress: bool | Callable[[ProduceSummary, float], None] = True,
    client: str = CONFLUENT,
    dead_letters: DeadLetterWriter | None = None,
) -> ProduceSummary:
    """Send every record to ``topic`` (created with ``partitions`` if missing); see module doc.

    ``dead_letters``: where malformed CSV lines go (flushed before returning); without it they
    are only counted and reported.

    ``progress``: True prints a line per second with events/s to stderr, a callable receives
    ``(summary_so_far, current_events_per_s)`` instead, False is silent.
    """
    if mode not in (REPLAY, LIVE):
        raise ValueError(f"mode must be {REPLAY!r} or {LIVE!r}, not {mode!r}")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for as fast as possible)")
    report = _stderr_progress if progress is True else (progress or None)
    kafka = kafka_connection(kafka)
    ensure_topic(kafka, topic, partitions)
    summary = ProduceSummary(client=client, topic=topic, mode=mode)
    sender = _sender(client, kafka, topic)

    started = time.perf_counter()
    last_report, sent_at_report = started, 0
    live_second, live_text = -1, ""
    handed = 0
    try:
        for item in records:
            summary.read += 1
            if isinstance(item, DeadLetter):
                summary.rejected += 1
                if len(summary.rejections) < MAX_REPORTED_REJECTIONS:
                    summary.rejections.append(item)
                if dead_letters is not None:
                    dead_letters.add(item)
                continue
            live_time = None
            if mode == LIVE:
                now = int(time.time())
                if now != live_second:
                    live_second = now
                    live_text = datetime.fromtimestamp(now, UTC).strftime(TIME_FORMAT_PY)
                live_time = live_text
            key, value, valid = encode_record(item, live_time)
            sender.send(key, value)
            handed += 1
            if not valid:
                summary.invalid += 1
            if handed % 1024 == 0 or rate is not None:
                now_pc = time.perf_counter()
                if rate is not None:  # throttle: stay on the schedule handed/rate
                    ahead = handed / rate - (now_pc - started)
                    if ahead > 0:
                        time.sleep(ahead)
                        now_pc = time.perf_counter()
                if report and now_pc - last_report >= 1.0:
                    summary.sent = handed
                    report(summary, (handed - sent_at_report) / (now_pc - last_report))
                    last_report, sent_at_report = now_pc, handed
        sender.flush()
    finally:
        sender.close()
        if dead_letters is not None:
            dead_letters.flush()
            summary.dead_lettered = dead_letters.written
    summary.seconds = time.perf_counter() - started
    summary.sent = sender.delivered
    summary.failed = sender.failed
    summary.end_offsets = end_offsets(kafka, topic)
    return summary


SYNTHETIC = "synthetic"
CSV = "csv"


def source_records(
    source: str, *, path: str | None = None, events: int | None = None, seed: int = 42,
    start: str = "2019-10-01", days: int = 30, invalid_fraction: float = 0.0,
) -> Iterable[Mapping[str, Any] | DeadLetter]:
    """The input of a replay: the synthetic generator, or a REES46 CSV (first ``events`` lines)."""
    import itertools

    from journey_assets.sources.rees46 import read_rees46
    from journey_assets.sources.synthetic import SyntheticConfig, generate_records

    if source == SYNTHETIC:
        config = SyntheticConfig(n_events=events or 100_000, seed=seed, start=start, days=days,
                                 invalid_fraction=invalid_fraction)
        return generate_records(config)
    if source == CSV:
        if not path:
            raise ValueError("source 'csv' needs a path")
        rows = read_rees46(path)
        return itertools.islice(rows, events) if events else rows
    raise ValueError(f"unknown source {source!r}: {SYNTHETIC} or {CSV}")
