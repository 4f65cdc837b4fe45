"""`journey stack up` is idempotent and `down` leaves no process behind (a second stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from journey_assets.local.artifacts import StackError
from journey_assets.local.stack import LocalStack, port_open

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line and "ps -eo" not in line]


def test_up_twice_then_down_leaves_nothing(tmp_path: Path, local_stack: LocalStack) -> None:
    # Its own home and ports, sharing the cached jars and FerretDB build of the main stack.
    stack = LocalStack(tmp_path, kafka_port=19092, kafka_controller_port=19093,
                       mongo_port=27117, artifacts_home=local_stack.artifacts_home)
    try:
        first = stack.up()
        assert all("started" in line for line in first)
        pids = [svc.pid() for svc in stack.services]
        second = stack.up()
        assert all("already running" in line for line in second)
        assert [svc.pid() for svc in stack.services] == pids
        assert port_open(19092) and port_open(27117)
    finally:
        stack.down()
    assert not port_open(19092) and not port_open(27117)
    assert all(svc.pid() is None for svc in stack.services)
    assert _processes_under(tmp_path) == []


def test_taken_port_is_one_clear_error(tmp_path: Path, local_stack: LocalStack) -> None:
    # The main stack's FerretDB already holds 27017.
    stack = LocalStack(tmp_path, kafka_port=19192, kafka_controller_port=19193,
                       artifacts_home=local_stack.artifacts_home)
    with pytest.raises(StackError, match=r"port 127\.0\.0\.1:27017 is taken"):
        stack._up_mongo()


def test_cli_reports_a_taken_port_without_a_traceback(tmp_path: Path,
                                                     local_stack: LocalStack) -> None:
    env = {**os.environ, "JOURNEY_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "journey_assets.cli", "stack", "up"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: port 127.0.0.1:9092 is taken")
    assert "Traceback" not in proc.stderr
