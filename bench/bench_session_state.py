"""The sessions query's cost per micro-batch, against the state it keeps.

    .local/venv/bin/python bench/bench_session_state.py [--states 10000 200000] [--batches 6]
    .local/venv/bin/python bench/bench_session_state.py --function-only

**The state function alone** (``--function-only``, or first in a full run): the real
``_update_bucket`` over the 64 buckets, one micro-batch of 3,000 events (15 s at 200 events/s;
600 sessions of five events, half of them already open), over synthetic states: the open
sessions of the last 40 minutes at REES46's density or at 200 events/s, and a day of
tombstones at either rate. Prints the seconds per batch for each state (in one process, so
side by side).

**The query**:
The sessions query keeps, in 64 buckets, every open session (its events) and, for a
day of event time after they close, tombstones (``session_tombstone_hours``). A day at 200
events/s leaves millions of them. For each state size S, in one Spark session and side by
side, the query (``transforms.sessions.session_state_updates``, the pipeline's watermark and
RocksDB state store) reads one Parquet file per micro-batch, into a fresh checkpoint:

1. one batch opens S sessions (two events each), three hours of event time before the rest;
2. the next batches move the watermark past them: they close (S final documents) and stay as S
   tombstones;
3. ``--batches`` measured batches of ``--events-per-batch`` events (15 s of event time at 200
   events/s, sessions of about five events), with the S tombstones in the state.

Prints per size: the seconds to open and to close the S sessions (and per session), the
measured batches' median and longest duration, and where a middle batch's time goes (Spark's
``durationMs``); then the ratio of the largest size's median batch to the smallest's (goal:
within 1.3x: a batch's work follows the sessions it touches, not the state). Nothing is
written to MongoDB: this is the state's cost alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame

from journey_assets.resources.spark import build_spark_session
from journey_assets.schema import (
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    PRICE,
    PRODUCT_ID,
    USER_ID,
    USER_SESSION,
)
from journey_assets.settings import Settings
from journey_assets.streaming.pipeline import StreamOptions
from journey_assets.transforms.sessions import (
    KIND,
    SESSION_HASH,
    BucketState,
    _update_bucket,
    session_state_updates,
)

T0 = datetime(2019, 10, 1, tzinfo=UTC)
TYPES = ("view", "view", "view", "cart", "purchase")


def _events(prefix: str, sessions: int, per_session: int, start: datetime,
            span: timedelta) -> pd.DataFrame:
    n = sessions * per_session
    step = span / max(n, 1)
    return pd.DataFrame({
        USER_SESSION: [f"{prefix}-{i // per_session}" for i in range(n)],
        EVENT_TIME: [start + step * i for i in range(n)],
        EVENT_ID: [f"{prefix}-{i}" for i in range(n)],
        EVENT_TYPE: [TYPES[i % per_session % len(TYPES)] for i in range(n)],
        PRODUCT_ID: [i % 997 for i in range(n)],
        PRICE: [float(i % 50) + 0.5 for i in range(n)],
        USER_ID: [i // per_session for i in range(n)],
    })


def _write_batches(folder: Path, state_size: int, batches: int, per_batch: int) -> int:
    """One Parquet file per micro-batch, in order (the file source takes the oldest first)."""
    frames = [_events("old", state_size, 2, T0, timedelta(hours=1)),
              # Two batches that move the watermark past the old sessions (it lags a batch).
              _events("mark1", 10, 1, T0 + timedelta(hours=3), timedelta(seconds=1)),
              _events("mark2", 10, 1, T0 + timedelta(hours=3, seconds=2), timedelta(seconds=1))]
    for k in range(batches):
        start = T0 + timedelta(hours=3, seconds=15 * (k + 1))
        # Sessions of five events, 15 s of event time per batch; a session spans batches.
        frames.append(_events(f"new{k}", per_batch // 5, 5, start, timedelta(seconds=15)))
    now = time.time() - len(frames)
    for k, frame in enumerate(frames):
        path = folder / f"batch-{k:04d}.parquet"
        frame.to_parquet(path, index=False, coerce_timestamps="us")
        os.utime(path, (now + k, now + k))
    return len(frames)


def _run(spark, folder: Path, checkpoint: Path, options: StreamOptions) -> list[dict]:
    sample = spark.read.parquet(str(folder / "batch-0001.parquet"))
    events = (spark.readStream.schema(sample.schema).option("maxFilesPerTrigger", 1)
              .parquet(str(folder)).withWatermark(EVENT_TIME, options.watermark))
    rows = session_state_updates(
        events, gap_ms=int(options.session_gap_minutes * 60_000),
        tombstone_ms=int(options.session_tombstone_hours * 3_600_000))

    def sink(batch: DataFrame, _batch_id: int) -> None:
        batch.groupBy(KIND).count().collect()

    query = (rows.writeStream.outputMode("update").foreachBatch(sink)
             .option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start())
    query.awaitTermination()
    return [p for p in query.recentProgress if p.get("numInputRows", 0) or p["batchId"] == 0]


class _BucketCall:
    """What the state function reads and sets of pyspark's GroupState, for one call."""

    def __init__(self, value: bytes, watermark_ms: int) -> None:
        self.value: bytes | None = value
        self.watermark_ms = watermark_ms
        self.hasTimedOut = False

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple[bytes | None]:
        return (self.value,)

    def update(self, value: tuple[bytes]) -> None:
        self.value = value[0]

    def remove(self) -> None:
        self.value = None

    def setTimeoutTimestamp(self, ms: int) -> None:
        pass

    def getCurrentWatermarkMs(self) -> int:
        return self.watermark_ms


def _synthetic_buckets(open_events: int, tombstones: int, watermark_ms: int,
                       options: StreamOptions, buckets: int = 64) -> list[BucketState]:
    """Open sessions of five events whose last event is within the gap (+10 min) of the
    watermark (15 s worth of them close in the batch), and tombstones spread over a day."""
    gap_ms = int(options.session_gap_minutes * 60_000)
    rng = random.Random(7)
    states = [BucketState() for _ in range(buckets)]
    for i in range(open_events // 5):
        end_ms = watermark_ms - gap_ms - 15_000 + rng.randrange(gap_ms + 15_000 + 600_000)
        events = [[f"o{i}-{k}", (end_ms - 60_000 * (4 - k)) * 1000, TYPES[k], k, 9.5, i]
                  for k in range(5)]
        states[i % buckets].open[f"o{i}"] = (end_ms * 1000, i, json.dumps(events))
    day_ms = 24 * 3_600_000
    for k, state in enumerate(states):
        n = tombstones // buckets
        hashes = [rng.getrandbits(56) * buckets + k for _ in range(n)]
        until = [watermark_ms - 15_000 + rng.randrange(day_ms) for _ in range(n)]
        state.replace_tombstones(0, list(zip(hashes, until, strict=True)))
    return states


def _function_batch_seconds(open_events: int, tombstones: int, options: StreamOptions,
                            buckets: int = 64) -> float:
    watermark_ms = int((T0 + timedelta(days=2)).timestamp() * 1000)
    states = [s.dumps() for s in _synthetic_buckets(open_events, tombstones, watermark_ms,
                                                     options, buckets)]
    # 3,000 events: 300 open sessions get five more, 300 new sessions start.
    rows = []
    for i in range(600):
        sid, h = (f"o{i * 7}", i * 7) if i < 300 else (f"n{i}", 10**9 + i)
        for k in range(5):
            rows.append((h % buckets, sid, h, f"{sid}-x{k}", watermark_ms * 1000 + k,
                         TYPES[k], k, 3.0, i))
    frame = pd.DataFrame(rows, columns=["_bucket", USER_SESSION, SESSION_HASH, EVENT_ID,
                                        "event_us", EVENT_TYPE, PRODUCT_ID, PRICE, USER_ID])
    groups = dict(tuple(frame.groupby("_bucket")))
    gap_ms = int(options.session_gap_minutes * 60_000)
    tombstone_ms = int(options.session_tombstone_hours * 3_600_000)
    started = time.perf_counter()
    for b, value in enumerate(states):
        call = _BucketCall(value, watermark_ms)
        frames = [groups[b]] if b in groups else []
        call.hasTimedOut = not frames
        for _out in _update_bucket((b,), iter(frames), call, gap_ms, tombstone_ms):
            pass
    return time.perf_counter() - started


def _function_only(options: StreamOptions) -> None:
    cases = [("40k open events (REES46, 40 min)", 40_000, 0),
             ("480k open events (200 events/s, 40 min)", 480_000, 0),
             ("480k open + 300k tombstones (a day of REES46)", 480_000, 300_000),
             ("480k open + 3.75M tombstones (a day at 200 events/s)", 480_000, 3_750_000)]
    print("the state function alone, one 3,000-event batch over 64 buckets:")
    for label, open_events, tombstones in cases:
        seconds = _function_batch_seconds(open_events, tombstones, options)
        print(f"  {label}: {seconds:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, nargs="+", default=[10_000, 200_000],
                        help="sessions opened and closed before the measured batches")
    parser.add_argument("--batches", type=int, default=6, help="measured micro-batches")
    parser.add_argument("--events-per-batch", type=int, default=3_000)
    parser.add_argument("--function-only", action="store_true",
                        help="time the state function alone (no Spark)")
    args = parser.parse_args()
    _function_only(StreamOptions())
    if args.function_only:
        return

    settings = Settings()
    spark = build_spark_session(
        "local[2]", "bench_session_state", shuffle_partitions=4,
        driver_memory=settings.spark_driver_memory, streaming=True)
    spark.sparkContext.setLogLevel("ERROR")
    options = StreamOptions()
    results = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench_session_state-"))
    try:
        for size in args.states:
            folder = scratch / f"in-{size}"
            folder.mkdir()
            files = _write_batches(folder, size, args.batches, args.events_per_batch)
            print(f"state {size:,} sessions: {files} micro-batches...", flush=True)
            progress = _run(spark, folder, scratch / f"checkpoint-{size}", options)
            seconds = [p["durationMs"]["triggerExecution"] / 1000 for p in progress]
            state_rows = [sum(s.get("numRowsTotal", 0) for s in p.get("stateOperators", []))
                          for p in progress]
            measured = seconds[3:]
            results[size] = statistics.median(measured)
            print(f"  open {size:,} sessions: {seconds[0]:.1f} s "
                  f"({seconds[0] / size * 1000:.2f} ms a session); close them: "
                  f"{sum(seconds[1:3]):.1f} s ({sum(seconds[1:3]) / size * 1000:.2f} ms a "
                  f"session)")
            print(f"  measured batches ({args.events_per_batch:,} events, state rows (buckets) "
                  f"{state_rows[3]:,} -> {state_rows[-1]:,}): median {results[size]:.2f} s, "
                  f"longest {max(measured):.2f} s; each: "
                  + " ".join(f"{s:.2f}" for s in measured), flush=True)
            median_batch = progress[3 + measured.index(sorted(measured)[len(measured) // 2])]
            parts = {k: v for k, v in median_batch["durationMs"].items() if v >= 50}
            print("  where a middle batch's time goes (ms): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    small, large = min(results), max(results)
    print(f"median batch with {large:,} vs {small:,} sessions in the state: "
          f"{results[large]:.2f} / {results[small]:.2f} s = "
          f"{results[large] / results[small]:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
