"""Fault tolerance: SIGKILL the streaming process mid-replay, restart, compare the final state.

The stream runs as a real subprocess (`journey stream --mode available-now` with a small
maxOffsetsPerTrigger, so the replay spans many micro-batches). It is killed (whole process
group, JVM included, no chance to clean up) once a few batches are committed, then started
again on the same checkpoints. The final MongoDB state must equal the independent computation,
i.e. what an uninterrupted run produces: nothing lost, nothing duplicated.

The topic has ONE partition so event-time order on the wire is exact and no event is ever
behind the 10-minute watermark: the expected windows then do not depend on where batches cut.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo.database import Database

from journey_assets.resources.kafka import ensure_topic
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets_tests.test_streaming import (  # noqa: F401 (fixtures)
    assert_matches_truth,
    compute_truth,
    send_malformed,
    stream_db,
    stream_settings,
)

MAX_OFFSETS = 1_000


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


@pytest.mark.slow  # two Spark process starts: ~4 min on 2 shared cores
def test_sigkill_mid_replay_then_restart_equals_uninterrupted(
        stream_settings: Settings, stream_db: Database, tmp_path: Path) -> None:  # noqa: F811
    config = SyntheticConfig(n_events=5_000, seed=11, days=1, duplicate_fraction=0.02,
                             invalid_fraction=0.01)
    records = list(generate_records(config))
    ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=1)
    assert produce(records, stream_settings.kafka_bootstrap, stream_settings.topic,
                   partitions=1, progress=False).sent == len(records)
    truth = compute_truth(records, send_malformed(stream_settings.kafka_bootstrap,
                                                  stream_settings.topic))
    checkpoints = Path(stream_settings.data_dir) / "checkpoints"

    first = _start(stream_settings, tmp_path / "first.log")
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

    second = _start(stream_settings, tmp_path / "second.log")
    try:
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert _committed(checkpoints / "events") > done_before
    assert_matches_truth(stream_db, truth)
