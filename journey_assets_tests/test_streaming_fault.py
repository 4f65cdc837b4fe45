"""Fault tolerance: SIGKILL the streaming process mid-replay and at each write point of the
streaming path, restart, compare the final lake and MongoDB state; a deleted checkpoint.

The stream runs as a real subprocess (`journey stream --mode available-now` with a small
maxOffsetsPerTrigger, so the replay spans many micro-batches). It is killed (whole process
group, JVM included, no chance to clean up) once a few batches are committed, then started
again on the same checkpoints. The final MongoDB state must equal the independent computation,
i.e. what an uninterrupted run produces: nothing lost, nothing duplicated.

The topic has ONE partition so event-time order on the wire is exact and no event is ever
behind the 10-minute watermark: the expected windows then do not depend on where batches cut.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.lake import read_table_arrow
from journey_assets.local.stack import LocalStack
from journey_assets.resources.kafka import ensure_topic
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.pipeline import SESSIONS_QUERY, target_from
from journey_assets.streaming.preflight import check_checkpoints
from journey_assets_tests.conftest import FaultTally
from journey_assets_tests.test_streaming import (  # noqa: F401 (fixtures)
    assert_matches_truth,
    compute_truth,
    send_malformed,
    stream_db,
    stream_settings,
)

MAX_OFFSETS = 2_000


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "JOURNEY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "JOURNEY_MONGO_URI": settings.mongo_uri,
        "JOURNEY_MONGO_DB": settings.mongo_db,
        "JOURNEY_TOPIC": settings.topic,
        "JOURNEY_DATA_DIR": str(settings.data_dir),
        "JOURNEY_SPARK_MASTER": "local[2]",
    }


def _start(settings: Settings, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "available-now",
           "--max-offsets", str(MAX_OFFSETS)]
    # Own process group: SIGKILL reaches the Spark JVM too (a real crash of the whole pod).
    return subprocess.Popen(cmd, env=_env(settings), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _committed(checkpoint: Path) -> int:
    commits = checkpoint / "commits"
    return len([p for p in commits.iterdir() if p.name.isdigit()]) if commits.exists() else 0


def _run_to_end(settings: Settings, log: Path, timeout: float = 600) -> None:
    proc = _start(settings, log)
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _lake_ids(settings: Settings, version: int | None = None) -> list[str]:
    """The events table's event_ids, read without Spark (delta-rs): the independent side."""
    table = read_table_arrow(target_from(settings).events_path, version)
    return sorted(table.to_table(columns=["event_id"]).column("event_id").to_pylist())


def _produce_case(settings: Settings, seed: int):
    config = SyntheticConfig(n_events=5_000, seed=seed, days=1, duplicate_fraction=0.02,
                             invalid_fraction=0.01)
    records = list(generate_records(config))
    ensure_topic(settings.kafka_bootstrap, settings.topic, partitions=1)
    assert produce(records, settings.kafka_bootstrap, settings.topic,
                   partitions=1, progress=False).sent == len(records)
    return records, compute_truth(records, send_malformed(settings.kafka_bootstrap,
                                                          settings.topic))


def _assert_final_state(settings: Settings, db: Database, truth,
                        tally: FaultTally | None = None, fault: str = "") -> None:
    """The final lake and MongoDB state equal the independent computation; with ``tally``,
    the fault's lost and doubled events are counted first (the fault matrix's summary)."""
    if tally is not None:
        lake = _lake_ids(settings)
        stored = {d["_id"] for d in db.enriched_events.find({}, {"_id": 1})}
        counted = sum(d["event_count"] for d in db.event_aggregations.find(
            {"window_type": "tumbling_5m"}, {"event_count": 1}))
        lost = len(set(truth.events) - set(lake)) + len(set(truth.events) - stored)
        duplicated = len(lake) - len(set(lake)) + max(0, counted - len(truth.events))
        tally.outcome(fault, lost, duplicated)
    assert_matches_truth(db, truth)
    assert _lake_ids(settings) == sorted(truth.events)
    dead = read_table_arrow(target_from(settings).dead_letters_path).to_table(columns=["_id"])
    assert dead.num_rows == truth.dead_letters


@pytest.mark.slow  # two Spark process starts: ~4 min on 2 shared cores
def test_sigkill_mid_replay_then_restart_equals_uninterrupted(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    records, truth = _produce_case(stream_settings, seed=11)
    checkpoints = Path(stream_settings.data_dir) / "checkpoints"

    first = _start(stream_settings, tmp_path / "first.log")
    fault_tally.inject("sigkill mid-replay")
    try:
        # Generous: the machine is shared, a micro-batch can take a minute under load.
        deadline = time.monotonic() + 900
        while _committed(checkpoints / "events") < 1 or _committed(checkpoints / "aggregations") < 2:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no micro-batch committed in 900 s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done_before = _committed(checkpoints / "events")
    assert done_before * MAX_OFFSETS < len(records), "killed too late to prove anything"
    partial = stream_db.enriched_events.count_documents({})
    assert partial < len(truth.events)

    _run_to_end(stream_settings, tmp_path / "second.log")
    assert _committed(checkpoints / "events") > done_before
    _assert_final_state(stream_settings, stream_db, truth, fault_tally, "sigkill mid-replay")


#: Where the streaming process kills itself (JOURNEY_FAULT, see streaming/sinks.fault_point):
#: during the Delta commit of batch 1, between the Delta commit and the MongoDB write of batch 1,
#: during the MongoDB write of the enriched events (first chunk of the first batch); in the
#: sessions query, after batch 1's state store commit and before its MongoDB writes.
FAULT_POINTS = ("lake_commit:1", "after_lake:1", "mongo_write:enriched_events",
                "after_session_state:1")


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_sigkill_at_a_write_point_then_restart_equals_uninterrupted(
        fault: str, stream_settings: Settings, stream_db: Database,  # noqa: F811
        tmp_path: Path, fault_tally: FaultTally) -> None:
    _records, truth = _produce_case(stream_settings, seed=13)
    fault_tally.inject(f"sigkill at {fault}")
    log = tmp_path / "killed.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "available-now",
         "--max-offsets", str(MAX_OFFSETS)],
        env={**_env(stream_settings), "JOURNEY_FAULT": fault}, stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the fault {fault} never fired:\n{log.read_text()[-3000:]}"
    if fault.startswith("after_lake"):
        # The lake holds batch 1, MongoDB does not have all of it yet.
        assert len(_lake_ids(stream_settings)) > stream_db.enriched_events.count_documents({})
    if fault.startswith("after_session_state"):
        # Batch 1's state is committed (state store version 2: RocksDB's 2.zip, or 2.delta /
        # 2.changelog), the batch is not.
        sessions = Path(target_from(stream_settings).checkpoint(SESSIONS_QUERY))
        assert [p for p in (sessions / "state").rglob("2.*") if p.suffix != ".crc"]
        assert not (sessions / "commits" / "1").exists()

    _run_to_end(stream_settings, tmp_path / "restart.log")
    _assert_final_state(stream_settings, stream_db, truth, fault_tally, f"sigkill at {fault}")


@pytest.mark.slow
def test_deleted_checkpoint_keeps_lake_history_and_doubles_nothing(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    _records, truth = _produce_case(stream_settings, seed=17)
    _run_to_end(stream_settings, tmp_path / "first.log")
    _assert_final_state(stream_settings, stream_db, truth)
    events_path = target_from(stream_settings).events_path
    version_before = DeltaTable(events_path).version()

    shutil.rmtree(Path(stream_settings.data_dir) / "checkpoints")
    fault_tally.inject("deleted checkpoint")
    _run_to_end(stream_settings, tmp_path / "again.log")  # re-reads the whole topic

    # nothing doubled
    _assert_final_state(stream_settings, stream_db, truth, fault_tally, "deleted checkpoint")
    # History kept: every earlier version still reads as it did (no file of it was removed).
    assert _lake_ids(stream_settings, version_before) == sorted(truth.events)
    operations = {h["operation"] for h in DeltaTable(events_path).history()}
    assert operations <= {"CREATE TABLE", "MERGE", "WRITE"}, operations


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_and_moving_it_aside_recovers(
        stream_settings: Settings, stream_db: Database, tmp_path: Path,  # noqa: F811
        fault_tally: FaultTally) -> None:
    _records, truth = _produce_case(stream_settings, seed=19)
    _run_to_end(stream_settings, tmp_path / "first.log")
    checkpoints = Path(stream_settings.data_dir) / "checkpoints"
    queries = target_from(stream_settings).query_checkpoints()
    assert len(queries) == 3 and all(Path(q, "metadata").exists() for q in queries)
    check_checkpoints(queries)  # Spark's own checkpoints pass the check
    events = checkpoints / "events"
    newest = max((p for p in (events / "offsets").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
    newest.write_text(newest.read_text()[:40])  # a copy cut short
    fault_tally.inject("corrupt checkpoint")

    proc = subprocess.run(
        [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "available-now"],
        env=_env(stream_settings), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: the streaming checkpoint {events} is corrupt "
                               f"(offsets/{newest.name} ")
    assert f"mv {events} {events}.corrupt" in lines[0]

    # The documented way out.
    events.rename(events.parent / "events.corrupt")
    _run_to_end(stream_settings, tmp_path / "after.log")
    _assert_final_state(stream_settings, stream_db, truth, fault_tally, "corrupt checkpoint")


@pytest.mark.slow
def test_frozen_mongodb_trips_the_watchdog_and_a_restart_completes(
        local_stack: LocalStack, tmp_path: Path, settings: Settings,
        fault_tally: FaultTally) -> None:
    """MongoDB frozen (SIGSTOP) for longer than the timeouts, on a private stack: the stream
    fails with one line instead of hanging, and once the server is thawed a restart ends with
    the state of an uninterrupted run."""
    stack = LocalStack(tmp_path / "stack", kafka_port=19492, kafka_controller_port=19493,
                       mongo_port=27417, artifacts_home=local_stack.artifacts_home)
    stack.up()
    private = dataclasses.replace(
        settings, kafka_bootstrap="127.0.0.1:19492", mongo_uri="mongodb://127.0.0.1:27417/",
        mongo_db="journey_watchdog", topic="customer_events_watchdog",
        data_dir=tmp_path / "data")
    try:
        records = list(generate_records(SyntheticConfig(
            n_events=6_000, seed=23, days=1, duplicate_fraction=0.02, invalid_fraction=0.01)))
        ensure_topic(private.kafka_bootstrap, private.topic, partitions=1)
        half = len(records) // 2
        produce(records[:half], private.kafka_bootstrap, private.topic, partitions=1,
                progress=False)
        truth = compute_truth(records, send_malformed(private.kafka_bootstrap, private.topic))
        checkpoints = Path(private.data_dir) / "checkpoints"
        log = tmp_path / "frozen.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "journey_assets.cli", "stream", "--mode", "continuous",
             "--stall-timeout", "90", "--max-offsets", str(MAX_OFFSETS)],
            env=_env(private), stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        mongo_pid = stack.mongo.pid()
        try:
            deadline = time.monotonic() + 600
            while _committed(checkpoints / "events") < 1:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no micro-batch committed in 600 s"
                time.sleep(0.5)
            os.kill(mongo_pid, signal.SIGSTOP)
            fault_tally.inject("frozen mongodb")
            produce(records[half:], private.kafka_bootstrap, private.topic, partitions=1,
                    progress=False)
            code = proc.wait(timeout=400)
        finally:
            os.kill(mongo_pid, signal.SIGCONT)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text()
        assert code == 1, (code, text[-3000:])
        # The watchdog (90 s) or the client (its monitor finds the server gone in ~10 s and
        # cancels the write) ends it, in one line that names the cause.
        (error,) = [line for line in text.splitlines() if line.startswith("error: ")]
        watchdog = "query has been in micro-batch" in error and "stall_timeout_seconds=90" in error
        client = any(k in error for k in ("Timeout", "timed out", "Cancelled", "AutoReconnect"))
        assert watchdog or client, error

        _run_to_end(private, tmp_path / "thawed.log")
        with MongoClient(private.mongo_uri, tz_aware=True) as client:
            _assert_final_state(private, client[private.mongo_db], truth, fault_tally,
                                "frozen mongodb")
    finally:
        stack.down()
