"""The fault matrix's other faults: retention deleting unread offsets, two drivers on one
checkpoint, the lake's disk full, and the broker and the MongoDB server killed and restarted
(on a private stack). SIGKILLs at the write points, a deleted or corrupt checkpoint and a frozen
MongoDB are in test_streaming_fault.py; every one of them records its outcome in the run's
``faults injected N, survived N, events lost 0, duplicated 0`` line (conftest.FaultTally).

Each ends with the final lake and MongoDB state equal to the independent computation (plain
Python over the produced records), or, for retention, with exactly the deleted range recorded in
the data-quality ledger and everything else stored once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.assets.streaming import no_offsets_skipped
from journey_assets.local.stack import LocalStack
from journey_assets.resources import build_resources
from journey_assets.resources.kafka import ensure_topic
from journey_assets.schema import event_id, validate_record
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.lease import LEASE_FILE
from journey_assets.streaming.ledger import DATA_QUALITY_LEDGER
from journey_assets_tests.conftest import FaultTally
from journey_assets_tests.test_streaming import (  # noqa: F401 (fixtures)
    assert_ledger_holds,
    compute_truth,
    send_malformed,
    stream_db,
    stream_settings,
)
from journey_assets_tests.test_streaming_fault import (
    MAX_OFFSETS,
    _assert_final_state,
    _committed,
    _env,
    _lake_ids,
    _run_to_end,
    _start,
)


def _records(seed: int, n: int = 5_000) -> list[dict]:
    return list(generate_records(SyntheticConfig(n_events=n, seed=seed, days=1,
                                                 duplicate_fraction=0.02,
                                                 invalid_fraction=0.01)))


def _unique_valid(records: list[dict]) -> set[str]:
    return {event_id(ev) for ev, _reason in map(validate_record, records) if ev is not None}


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str,
              timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"stopped before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_retention_deleting_unread_offsets_is_recorded_exactly(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    """Offsets deleted before they were read (what retention does on a long outage) are
    skipped (failOnDataLoss=false) and the ledger records exactly that range."""
    records = _records(seed=31, n=1_500)
    first, unread, rest = records[:500], records[500:900], records[900:]
    ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1)
    produce(first, stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1,
            progress=False)
    _run_to_end(stream_settings, tmp_path / "first.log")

    produce(unread + rest, stream_settings.kafka_bootstrap, stream_settings.topic,
            partitions=1, progress=False)
    # Advance the log start offset past `unread`, as retention deleting old segments does.
    deleted_to = len(first) + len(unread)
    admin = AdminClient({"bootstrap.servers": stream_settings.kafka_bootstrap})
    [future] = admin.delete_records(
        [TopicPartition(stream_settings.topic, 0, deleted_to)]).values()
    assert future.result(timeout=30).low_watermark == deleted_to
    fault_tally.inject("retention deleted unread offsets")
    _run_to_end(stream_settings, tmp_path / "after.log")

    docs = list(stream_db[DATA_QUALITY_LEDGER].find())
    ranges = sorted((e["skipped_range"][0], e["skipped_range"][1])
                    for d in docs for e in d["offsets"] if e["skipped"])
    merged: list[list[int]] = []
    for lo, hi in ranges:  # the range may be cut across micro-batches
        if merged and merged[-1][1] == lo:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    assert merged == [[len(first), deleted_to]]
    result = no_offsets_skipped(mongo=build_resources(stream_settings)["mongo"])
    assert not result.passed
    assert result.metadata["skipped_offsets"].value == len(unread)

    # Everything else is stored once: the lake holds the unique valid events of the records
    # that were read, nothing of the deleted ones unless a read record repeats it.
    expected = _unique_valid(first + rest)
    lake = _lake_ids(stream_settings)
    lost = len(expected - set(lake))
    duplicated = len(lake) - len(set(lake)) + len(set(lake) - expected)
    fault_tally.outcome("retention deleted unread offsets", lost, duplicated)
    assert set(lake) == expected and len(lake) == len(expected)
    assert {d["_id"] for d in stream_db.enriched_events.find({}, {"_id": 1})} == expected
    assert sum(d["inserted"] for d in docs) == len(expected)


@pytest.mark.slow
def test_two_drivers_on_one_checkpoint_one_runs_one_line_for_the_other(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    records = _records(seed=37)
    ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1)
    produce(records, stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1,
            progress=False)
    truth = compute_truth(records, send_malformed(stream_settings.kafka_bootstrap,
                                                  stream_settings.topic))
    checkpoints = Path(stream_settings.data_dir) / "checkpoints"
    first_log = tmp_path / "first.log"
    first = _start(stream_settings, first_log)
    try:
        _wait_for(lambda: (checkpoints / LEASE_FILE).exists(), first, first_log,
                  "lease taken")
        fault_tally.inject("two drivers on one checkpoint")
        second = subprocess.run(
            [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "available-now"],
            env=_env(stream_settings), capture_output=True, text=True, timeout=300)
        assert first.wait(timeout=900) == 0, first_log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            _stop(first)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "are in use by" in lines[0], second.stderr[-2000:]
    _assert_final_state(stream_settings, stream_db, truth, fault_tally,
                        "two drivers on one checkpoint")


@pytest.mark.slow
def test_lake_disk_full_fails_one_line_and_a_restart_completes(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    """The lake's volume fills up (ENOSPC) mid-run: the run fails with one line naming it,
    and once space is freed a restart ends with the state of an uninterrupted run."""
    volume = tmp_path / "volume"  # the lake and the checkpoints (logs stay outside)
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(volume)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small volume here: {mounted.stderr.strip()}")
    stream_settings = dataclasses.replace(stream_settings, data_dir=volume)
    try:
        records = _records(seed=41, n=6_000)
        ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1)
        produce(records, stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1,
                progress=False)
        truth = compute_truth(records, send_malformed(stream_settings.kafka_bootstrap,
                                                      stream_settings.topic))
        checkpoints = volume / "checkpoints"
        log = tmp_path / "full.log"
        filler = volume / "filler"
        proc = _start(stream_settings, log)
        try:
            _wait_for(lambda: _committed(checkpoints / "events") >= 1, proc, log,
                      "micro-batch committed")
            # Fill the volume: the next write of the lake or a checkpoint gets ENOSPC.
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"],
                           capture_output=True)
            fault_tally.inject("lake disk full")
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                _stop(proc)
        text = log.read_text()
        assert code == 1, (code, text[-3000:])
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0], text[-3000:]
        assert _committed(checkpoints / "events") * MAX_OFFSETS < len(records)

        filler.unlink()
        _run_to_end(stream_settings, tmp_path / "freed.log")
        _assert_final_state(stream_settings, stream_db, truth, fault_tally, "lake disk full")
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True)


def _produce_into(out: list, records: list[dict], settings: Settings) -> None:
    """Produce at 100 events/s (20 s for 2,000): long enough to be cut by a kill."""
    out.append(produce(records, settings.kafka_bootstrap, settings.topic, partitions=1,
                       rate=100, progress=False))


def _supervise(proc_box: list[subprocess.Popen], settings: Settings, log: Path,
               stop: threading.Event) -> None:
    """What the streaming sensor does: start the run again whenever it ends."""
    restarts = 0
    while not stop.is_set():
        if proc_box[0].poll() is not None:
            restarts += 1
            proc_box[0] = _start_continuous(settings, log.with_suffix(f".{restarts}.log"))
        time.sleep(1)


def _start_continuous(settings: Settings, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "continuous",
         "--trigger-seconds", "2", "--max-offsets", str(MAX_OFFSETS), "--stall-timeout", "120"],
        env=_env(settings), stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)


@pytest.mark.slow
def test_broker_and_mongodb_killed_and_restarted_lose_and_double_nothing(
        local_stack: LocalStack, tmp_path: Path, settings: Settings,
        fault_tally: FaultTally) -> None:
    """On a private stack, with a continuous run kept alive as the sensor does: the Kafka
    broker SIGKILLed while a producer is sending and the run is reading, then restarted; then
    the MongoDB server SIGKILLed mid-run and restarted. After each, the run is caught up and
    the final state must equal the independent computation."""
    stack = LocalStack(tmp_path / "stack", kafka_port=19592, kafka_controller_port=19593,
                       mongo_port=27517, artifacts_home=local_stack.artifacts_home)
    stack.up()
    private = dataclasses.replace(
        settings, kafka_bootstrap="127.0.0.1:19592", mongo_uri="mongodb://127.0.0.1:27517/",
        mongo_db="journey_fault_matrix", topic="customer_events_fault_matrix",
        data_dir=tmp_path / "data")
    checkpoints = Path(private.data_dir) / "checkpoints"
    records = _records(seed=43, n=6_000)
    # Per phase: records in the topic before the fault, and records sent while it strikes.
    waves = [(records[:2_000], records[2_000:4_000]), (records[4_000:4_200], records[4_200:])]
    try:
        ensure_topic(private.kafka_bootstrap, private.topic, partitions=1)
        malformed = send_malformed(private.kafka_bootstrap, private.topic)
        sent: list[dict] = []
        for phase, fault in enumerate(("broker killed mid-run and mid-produce",
                                       "mongodb killed mid-run and mid-produce")):
            before, during = waves[phase]
            produce(before, private.kafka_bootstrap, private.topic, partitions=1,
                    progress=False)
            sent += before + during
            truth = compute_truth(sent, malformed)
            log = tmp_path / f"phase{phase}.log"
            done = _committed(checkpoints / "events")
            box = [_start_continuous(private, log)]
            stop = threading.Event()
            supervisor = threading.Thread(target=_supervise, args=(box, private, log, stop))
            try:
                _wait_for(lambda d=done: _committed(checkpoints / "events") > d, box[0], log,
                          "micro-batch committed")
                produced: list = []
                producer = threading.Thread(target=_produce_into,
                                            args=(produced, during, private))
                producer.start()
                time.sleep(3)  # the producer is mid-send, the run mid-read
                supervisor.start()
                victim = stack.kafka if phase == 0 else stack.mongo
                os.killpg(victim.pid(), signal.SIGKILL)
                fault_tally.inject(fault)
                assert producer.is_alive(), "the producer finished before the fault"
                time.sleep(15)
                stack.up()  # restarts the killed service on its own data
                producer.join(timeout=600)
                assert produced and produced[0].sent == len(during), produced
            finally:
                stop.set()
                if supervisor.is_alive():
                    supervisor.join()
                _stop(box[0])
            _run_to_end(private, tmp_path / f"phase{phase}_catchup.log")
            with MongoClient(private.mongo_uri, tz_aware=True) as client:
                _assert_final_state(private, client[private.mongo_db], truth, fault_tally,
                                    fault)
    finally:
        stack.down()
