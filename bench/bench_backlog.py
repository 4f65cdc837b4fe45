"""Backlog independence: the driver's memory and a micro-batch's duration do not grow with the
backlog the streaming job starts on.

    .local/venv/bin/python bench/bench_backlog.py [--backlogs 1000000 5000000]

For each backlog: a fresh topic filled with that many synthetic events at REES46 density
(about 1.4M events a day), then ``journey stream --mode available-now`` with default options
(the default ``maxOffsetsPerTrigger``) in its own process group. Sampled every 0.5 s: the peak
RSS of the driver (the Python process and the Spark driver JVM, which in local mode also hosts
the executor threads; Python workers are the executors' and are not counted). From the run's
progress lines: the longest micro-batch of each query. Prints both per backlog and the ratios
of the largest backlog to the smallest (goal: within 1.3x).

``--batches N`` stops each run (SIGTERM to its process group) once N events micro-batches have
completed, so both backlogs are compared over the same amount of work when draining the
larger one whole takes longer than the time at hand; 0 (default) drains every backlog.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient

from journey_assets.resources.kafka import ensure_topic
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.preflight import require_servers

EVENTS_PER_DAY = 1_400_000
_BATCH = re.compile(r"^\[(\w+)\] batch (\d+): (\d+) rows in, (\d+) ms")


@dataclass
class BacklogRun:
    events: int
    seconds: float
    driver_python_mb: float
    driver_jvm_mb: float
    longest_batch_s: dict[str, float]
    batches: dict[str, int]
    heap_peak_mb: float = 0.0
    gc_seconds: float = 0.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_jvm(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"java")
    except OSError:
        return False


def _jvm_heap(pid: int) -> tuple[float, float] | None:
    """(heap in use MB, GC seconds so far) of a JVM, from ``jstat -gc`` next to its java."""
    try:
        jstat = Path(os.readlink(f"/proc/{pid}/exe")).with_name("jstat")
        out = subprocess.run([str(jstat), "-gc", str(pid)], capture_output=True, text=True,
                             timeout=10).stdout.split("\n")
        row = dict(zip(out[0].split(), map(float, out[1].split()), strict=True))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    used_kb = row["S0U"] + row["S1U"] + row["EU"] + row["OU"]
    return used_kb / 1024, row["GCT"]


def _events_batches(log: Path) -> int:
    try:
        return sum(1 for line in log.read_text().splitlines()
                   if (m := _BATCH.match(line)) and m.group(1) == "events" and int(m.group(3)))
    except OSError:
        return 0


def run_backlog(base: Settings, events: int, work: Path, stop_after: int = 0) -> BacklogRun:
    tag = uuid.uuid4().hex[:6]
    settings = Settings(**{**base.__dict__, "topic": f"bench_backlog_{tag}",
                           "mongo_db": f"bench_backlog_{tag}", "data_dir": work / tag})
    days = max(1, math.ceil(events / EVENTS_PER_DAY))
    ensure_topic(settings.kafka_bootstrap, settings.topic, partitions=3)
    sent = produce(generate_records(SyntheticConfig(n_events=events, seed=3, days=days)),
                   settings.kafka_bootstrap, settings.topic, progress=False)
    print(f"backlog {sent.sent:,} events over {days} day(s) in {settings.topic}", flush=True)
    env = {**os.environ, "JOURNEY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "JOURNEY_MONGO_URI": settings.mongo_uri, "JOURNEY_MONGO_DB": settings.mongo_db,
           "JOURNEY_TOPIC": settings.topic, "JOURNEY_DATA_DIR": str(settings.data_dir)}
    log = work / f"{tag}.log"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "journey_assets.cli", "stream",
                             "--mode", "available-now"], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    peaks = {"python": 0.0, "jvm": 0.0, "heap": 0.0, "gc": 0.0}

    def sample() -> None:
        ticks = 0
        while proc.poll() is None:
            ticks += 1
            if stop_after and _events_batches(log) >= stop_after:
                os.killpg(proc.pid, signal.SIGTERM)
                break
            peaks["python"] = max(peaks["python"], _rss_mb(proc.pid))
            jvms = [c for c in _children(proc.pid) if _is_jvm(c)]
            peaks["jvm"] = max(peaks["jvm"], sum(_rss_mb(c) for c in jvms))
            if jvms and ticks % 4 == 0 and (heap := _jvm_heap(jvms[0])) is not None:
                peaks["heap"] = max(peaks["heap"], heap[0])
                peaks["gc"] = heap[1]
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sampler.join()
    code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0 and not stop_after:
        raise SystemExit(f"journey stream failed ({code}):\n{log.read_text()[-3000:]}")
    longest: dict[str, float] = {}
    batches: dict[str, int] = {}
    for line in log.read_text().splitlines():
        match = _BATCH.match(line)
        if match and int(match.group(3)) > 0 and not (
                stop_after and batches.get(match.group(1), 0) >= stop_after):
            query, ms = match.group(1), int(match.group(4))
            longest[query] = max(longest.get(query, 0.0), ms / 1000)
            batches[query] = batches.get(query, 0) + 1
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
    run = BacklogRun(sent.sent, seconds, peaks["python"], peaks["jvm"], longest, batches,
                     peaks["heap"], peaks["gc"])
    print(f"  {run.events:,} events: {seconds:.0f} s, driver peak RSS python "
          f"{run.driver_python_mb:,.0f} MB + JVM {run.driver_jvm_mb:,.0f} MB (heap in use at "
          f"most {run.heap_peak_mb:,.0f} MB, {run.gc_seconds:.1f} s in GC), longest batch "
          + ", ".join(f"{q} {s:.1f} s ({batches[q]} batches)" for q, s in sorted(longest.items())),
          flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--batches", type=int, default=0,
                        help="stop each run after this many events micro-batches (0: drain)")
    args = parser.parse_args()
    base = Settings.from_env()
    require_servers(base.kafka, base.mongo_uri)
    work = Path(tempfile.mkdtemp(prefix="bench_backlog_"))
    try:
        runs = [run_backlog(base, n, work, args.batches)
                for n in sorted(args.backlogs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = runs[0], runs[-1]
    print(f"BACKLOG {small.events:,} vs {large.events:,} events (default options):")
    small_rss = small.driver_python_mb + small.driver_jvm_mb
    large_rss = large.driver_python_mb + large.driver_jvm_mb
    print(f"  driver peak RSS {small_rss:,.0f} MB vs {large_rss:,.0f} MB: "
          f"ratio {large_rss / small_rss:.2f} (goal <= 1.3)")
    for query in sorted(small.longest_batch_s):
        a, b = small.longest_batch_s[query], large.longest_batch_s.get(query, 0.0)
        print(f"  longest {query} micro-batch {a:.1f} s vs {b:.1f} s: ratio {b / a:.2f} "
              f"(goal <= 1.3)")


if __name__ == "__main__":
    main()
