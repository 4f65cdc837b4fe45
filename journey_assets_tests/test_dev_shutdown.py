"""Ctrl-C in `journey dev` (what `make dev` runs): SIGINT to its process group, as a terminal
sends it, once the supervisor's streaming run is active. Within 30 s no process it started
remains - `dagster dev`, its webserver, daemon and code servers, the run worker and its Spark
JVM - while the local stack keeps running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pymongo import MongoClient

from journey_assets.local.stack import LocalStack, kafka_ready, mongo_ready
from journey_assets.settings import Settings

RUNS_QUERY = """{ runsOrError { __typename ... on Runs { results { runId jobName status } } } }"""


def _processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of the live processes whose environment holds ``marker``."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found[int(proc.name)] = (
                        (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def _runs(port: int) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": RUNS_QUERY}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]["runsOrError"]["results"]


@pytest.mark.slow  # dagster dev, a dimension build and a streaming run: ~2-3 min
def test_ctrl_c_stops_journey_dev_and_everything_it_started(
        tmp_path: Path, settings: Settings, local_stack: LocalStack) -> None:
    home = tmp_path / "dagster_home"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(home), "JOURNEY_HOME": str(local_stack.home),
           "JOURNEY_DATA_DIR": str(tmp_path / "data"), "JOURNEY_TOPIC": f"{settings.topic}_dev",
           "JOURNEY_MONGO_DB": f"{settings.mongo_db}_dev"}
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen([sys.executable, "-m", "journey_assets.cli", "dev", "--port",
                            str(port), "--seed-events", "3000"],
                           env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)  # its own group, as in a terminal
    try:
        deadline = time.monotonic() + 420
        streaming = None
        while streaming is None:
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()[-3000:]
            time.sleep(3)
            try:
                streaming = next((r for r in _runs(port) if r["jobName"] == "streaming_job"
                                  and r["status"] == "STARTED"), None)
            except OSError:
                continue
        # Active: its queries have committed a micro-batch of the seeded events.
        while not list((tmp_path / "data").rglob("checkpoints/events/commits/0")):
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()[-3000:]
            time.sleep(2)
        started = _processes_with(str(home))
        # dagster dev, webserver, daemon, code server(s), run worker, its Spark JVM.
        assert any(c.startswith("java") or "/java " in c for c in started.values()), started
        assert len(started) >= 5, started

        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        time.sleep(30)
        left = _processes_with(str(home))
        assert not left, left
        assert dev.poll() is not None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        for pid in _processes_with(str(home)):  # a leak must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        with MongoClient(settings.mongo_uri) as client:
            client.drop_database(env["JOURNEY_MONGO_DB"])
    # The stack is left up for `journey stack down`.
    assert kafka_ready(local_stack.kafka.port) and mongo_ready(local_stack.mongo.port)
    assert "stopped; the local stack keeps running" in (tmp_path / "dev.log").read_text()
