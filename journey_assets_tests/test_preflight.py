"""`journey stream` against a missing topic, a dead broker or a dead MongoDB: one line saying
so, exit 1, within seconds, no traceback (and no password), before Spark starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from journey_assets.settings import Settings

FREE_PORT = "127.0.0.1:1"  # nothing listens on port 1 here


def _stream(settings: Settings, **env: str) -> tuple[int, str, float]:
    full = {**os.environ, "JOURNEY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "JOURNEY_MONGO_URI": settings.mongo_uri, "JOURNEY_TOPIC": settings.topic,
            "JOURNEY_DATA_DIR": str(settings.data_dir), **env}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "journey_assets.cli", "stream", "--mode",
                           "available-now"], env=full, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.mark.parametrize(("env", "expected"), [
    ({"JOURNEY_TOPIC": f"no_such_topic_{uuid.uuid4().hex[:6]}"}, "does not exist on"),
    ({"JOURNEY_KAFKA_BOOTSTRAP": FREE_PORT}, "no Kafka broker answers at 127.0.0.1:1"),
    ({"JOURNEY_MONGO_URI": f"mongodb://app:pw-123@{FREE_PORT}/"},
     "MongoDB at 127.0.0.1:1 does not answer"),
], ids=["missing-topic", "dead-broker", "dead-mongodb"])
def test_stream_fails_with_one_line(settings: Settings, fresh_topic: str, env: dict[str, str],
                                    expected: str) -> None:
    code, output, seconds = _stream(Settings(**{**settings.__dict__, "topic": fresh_topic}),
                                    **env)
    assert code == 1, output[-2000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], output
    assert "Traceback" not in output and "pw-123" not in output
    assert seconds < 60


def _checkpoint(root, offsets: str, commits: str = 'v1\n{"nextBatchWatermarkMs":0}') -> str:
    query = root / "events"
    (query / "offsets").mkdir(parents=True)
    (query / "commits").mkdir()
    (query / "metadata").write_text('{"id":"5b7c0f3e-9d1b-4c4a-8f65-0d3c2a1e9b77"}')
    (query / "offsets" / "0").write_text('v1\n{"batchWatermarkMs":0}\n{"t":{"0":10}}')
    (query / "offsets" / "1").write_text(offsets)
    (query / "offsets" / ".1.crc").write_bytes(b"\x00crc")  # Hadoop's checksum files are skipped
    (query / "commits" / "0").write_text(commits)
    return str(query)


def test_checkpoints_in_spark_format_pass(tmp_path) -> None:
    from journey_assets.streaming.preflight import check_checkpoints

    query = _checkpoint(tmp_path, 'v1\n{"batchWatermarkMs":5}\n{"t":{"0":20}}')
    check_checkpoints([query, str(tmp_path / "not_started")])


@pytest.mark.parametrize(("offsets", "problem"), [
    ("", "offsets/1 does not start with a version line"),
    ("v1", "offsets/1 is truncated"),
    ('v1\n{"batchWatermarkMs":5}\n{"t":{"0":2', "offsets/1 holds a line that is not JSON"),
    ('{"t":{"0":20}}', "offsets/1 does not start with a version line"),
])
def test_a_corrupt_checkpoint_is_one_line_with_the_way_out(tmp_path, offsets: str,
                                                           problem: str) -> None:
    from journey_assets.streaming.preflight import PreflightError, check_checkpoints

    query = _checkpoint(tmp_path, offsets)
    with pytest.raises(PreflightError) as failure:
        check_checkpoints([query])
    message = str(failure.value)
    assert f"the streaming checkpoint {query} is corrupt ({problem})" in message
    assert f"mv {query} {query}.corrupt" in message and "\n" not in message


def test_a_query_failure_is_summarized_by_its_innermost_error() -> None:
    from journey_assets.streaming.pipeline import failure_summary

    python_side = RuntimeError(
        "An exception was raised by the Python Proxy. Return Message: Traceback (most recent "
        "call last):\n  File \"sinks.py\", line 9, in __call__\n"
        "pymongo.errors.ServerSelectionTimeoutError: 127.0.0.1:27417: timed out\n")
    assert failure_summary(python_side) == \
        "ServerSelectionTimeoutError: 127.0.0.1:27417: timed out"
    java_side = RuntimeError(
        "[STREAM_FAILED] Query terminated with exception: Job aborted\n"
        "org.apache.spark.SparkException: Job aborted due to stage failure: boom\n"
        "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages\n"
        "Caused by: java.lang.IllegalStateException: offsets/7 is not a valid offset log\n")
    assert failure_summary(java_side) == \
        "IllegalStateException: offsets/7 is not a valid offset log"
    assert failure_summary(RuntimeError("one line only")) == "one line only"
    # A MongoDB server killed mid-write (seen in the fault matrix): a module-qualified name.
    killed = RuntimeError(
        "An exception was raised by the Python Proxy. Return Message: Traceback (most recent "
        "call last):\n  File \"serving.py\", line 9, in _insert_new\n"
        "pymongo.errors.AutoReconnect: 127.0.0.1:27517: [Errno 111] Connection refused\n")
    assert failure_summary(killed) == \
        "AutoReconnect: 127.0.0.1:27517: [Errno 111] Connection refused"


def test_benches_need_only_the_servers(settings: Settings) -> None:
    """bench/ scripts create their own topics: the check is the broker and MongoDB alone,
    and a dead one ends the script with one line, not a traceback."""
    from journey_assets.streaming.preflight import require_servers

    require_servers(settings.kafka, settings.mongo_uri)  # no topic needed
    with pytest.raises(SystemExit) as dead:
        require_servers(FREE_PORT, settings.mongo_uri)
    assert str(dead.value).startswith("error: no Kafka broker answers at 127.0.0.1:1")
