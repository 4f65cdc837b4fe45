"""One writer per checkpoint: a lease file next to the streaming checkpoints.

Spark does not stop two drivers from running the same queries on one checkpoint folder (two
``journey stream``, the catch-up job next to the continuous run, a retry racing the sensor):
both would commit batches and write the lake. Whoever starts the queries first takes the
lease ``<checkpoint root>/_lease.json`` (owner, host, pid, heartbeat, expiry) and renews it
every ``ttl_s / 3`` seconds from a daemon thread; a second process finds a live lease and
stops with one line naming the holder. A lease whose holder died is taken over: at once when
the holder ran on this host and its pid is gone (a killed ``journey stream``), otherwise once
its heartbeat is ``ttl_s`` old (a lost pod).

Taking a lease is an exclusive create of the file; taking over an expired one is an atomic
rename followed by a re-read after a short pause, so of two racing takers one wins and the
other reports the winner. That needs a POSIX file system (local disk, NFS, a Kubernetes
volume), which is where the checkpoints live.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from journey_assets.local.stack import pid_alive

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live process holds the checkpoint's lease; the message names it."""


def _now() -> float:
    return time.time()


def _is_live(held: dict[str, Any]) -> bool:
    if held.get("expires_at", 0) <= _now():
        return False
    if held.get("host") == socket.gethostname():
        return pid_alive(int(held.get("pid", 0)))
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class CheckpointLease:
    def __init__(self, checkpoint_root: str | Path, owner: str, ttl_s: float = DEFAULT_TTL_S):
        self.path = Path(checkpoint_root) / LEASE_FILE
        self.owner = owner
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, acquired_at: float) -> dict[str, Any]:
        now = _now()
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                "token": self.token, "acquired_at": acquired_at, "heartbeat_at": now,
                "expires_at": now + self.ttl_s}

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_atomically(self, record: dict[str, Any]) -> None:
        staging = self.path.with_name(f".{LEASE_FILE}.{self.token}")
        staging.write_text(json.dumps(record))
        os.replace(staging, self.path)

    def _refuse(self, held: dict[str, Any]) -> LeaseHeld:
        return LeaseHeld(
            f"the streaming checkpoints in {self.path.parent} are in use by "
            f"{held.get('owner')} (pid {held.get('pid')} on {held.get('host')}, since "
            f"{_iso(held.get('acquired_at', 0))}, last heartbeat "
            f"{_now() - held.get('heartbeat_at', 0):.0f} s ago); stop it first, or wait "
            f"{max(0.0, held.get('expires_at', 0) - _now()):.0f} s if it has died")

    def acquire(self) -> None:
        """Take the lease or raise ``LeaseHeld``; then keep it alive until ``release``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = self._record(_now())
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = self._read()
            if held is not None and _is_live(held):
                raise self._refuse(held) from None
            self._write_atomically(record)  # the holder died: take over
            time.sleep(0.2)  # a racing taker's rename lands in this pause...
            mine = self._read()
            if mine is None or mine.get("token") != self.token:  # ... and it won
                raise self._refuse(mine or {}) from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record))
        self._thread = threading.Thread(target=self._heartbeat, args=(record["acquired_at"],),
                                        name="checkpoint-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self, acquired_at: float) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            current = self._read()
            if current is not None and current.get("token") != self.token:
                return  # taken over after we stalled past the expiry: stop renewing
            self._write_atomically(self._record(acquired_at))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self._read()
        if current is not None and current.get("token") == self.token:
            self.path.unlink(missing_ok=True)


@contextmanager
def checkpoint_lease(checkpoint_root: str | Path, owner: str,
                     ttl_s: float = DEFAULT_TTL_S) -> Iterator[CheckpointLease]:
    """Hold the checkpoints' lease for the duration of the block (``LeaseHeld`` if taken)."""
    lease = CheckpointLease(checkpoint_root, owner, ttl_s)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
