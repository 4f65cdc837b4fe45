"""One writer per checkpoint: the lease, and `journey stream` refusing a held checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journey_assets.settings import Settings
from journey_assets.streaming.lease import LEASE_FILE, CheckpointLease, LeaseHeld
from journey_assets.streaming.pipeline import target_from


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(root: Path, **fields: object) -> None:
    now = time.time()
    record = {"owner": "someone", "host": socket.gethostname(), "pid": os.getpid(),
              "token": "planted", "acquired_at": now - 100, "heartbeat_at": now - 1,
              "expires_at": now + 60, **fields}
    root.mkdir(parents=True, exist_ok=True)
    (root / LEASE_FILE).write_text(json.dumps(record))


def test_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = CheckpointLease(tmp_path, "first run", ttl_s=3)
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"in use by first run \(pid \d+ on "):
        CheckpointLease(tmp_path, "second run").acquire()
    time.sleep(2.5)  # past a heartbeat: the lease is renewed, still held after its first ttl
    time.sleep(1.0)
    with pytest.raises(LeaseHeld):
        CheckpointLease(tmp_path, "second run").acquire()
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    second = CheckpointLease(tmp_path, "second run")
    second.acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["owner"] == "second run"
    second.release()


@pytest.mark.parametrize(("fields", "taken_over"), [
    ({"pid": 0}, None),  # replaced below by a dead pid of this host
    ({"host": "another-pod", "expires_at": time.time() - 1}, True),
    ({"host": "another-pod"}, False),
], ids=["dead-pid-same-host", "expired-other-host", "live-other-host"])
def test_a_dead_holder_is_taken_over(tmp_path: Path, fields: dict[str, object],
                                     taken_over: bool | None) -> None:
    if taken_over is None:
        fields, taken_over = {"pid": _dead_pid()}, True
    _plant(tmp_path, **fields)
    lease = CheckpointLease(tmp_path, "new run")
    if taken_over:
        lease.acquire()
        assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == lease.token
        lease.release()
    else:
        with pytest.raises(LeaseHeld, match="in use by someone"):
            lease.acquire()


def test_journey_stream_refuses_a_held_checkpoint(settings: Settings, fresh_topic: str,
                                                  tmp_path: Path) -> None:
    own = Settings(**{**settings.__dict__, "topic": fresh_topic, "data_dir": tmp_path})
    holder = CheckpointLease(target_from(own).checkpoint_root, "the continuous run (test)")
    holder.acquire()
    try:
        env = {**os.environ, "JOURNEY_KAFKA_BOOTSTRAP": own.kafka_bootstrap,
               "JOURNEY_MONGO_URI": own.mongo_uri, "JOURNEY_TOPIC": own.topic,
               "JOURNEY_DATA_DIR": str(own.data_dir)}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "journey_assets.cli", "stream", "--mode",
                               "available-now"], env=env, capture_output=True, text=True,
                              timeout=120)
        output = proc.stdout + proc.stderr
        lines = [line for line in output.splitlines() if line.strip()]
        assert proc.returncode == 1, output[-2000:]
        assert len(lines) == 1 and "in use by the continuous run (test)" in lines[0], output
        assert f"pid {os.getpid()}" in lines[0]
        assert time.monotonic() - start < 60  # refused before Spark starts
    finally:
        holder.release()


def test_the_streaming_op_fails_on_a_held_checkpoint(settings: Settings, fresh_topic: str,
                                                     tmp_path: Path) -> None:
    import dagster as dg

    from journey_assets.assets.streaming import STREAMING_OP, streaming_pipeline
    from journey_assets.resources import build_resources

    own = Settings(**{**settings.__dict__, "topic": fresh_topic, "data_dir": tmp_path})
    holder = CheckpointLease(target_from(own).checkpoint_root, "streaming_job run (test)")
    holder.acquire()
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                [streaming_pipeline], instance=instance, resources=build_resources(own),
                run_config={"ops": {STREAMING_OP: {"config": {"mode": "available-now"}}}},
                raise_on_error=False)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "in use by streaming_job run (test)" in failure.step_failure_data.error.message
    finally:
        holder.release()
