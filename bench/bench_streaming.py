"""Streaming benchmark: sustained events/s Kafka -> Spark -> MongoDB, and event-to-aggregate
latency in continuous mode.

    .local/venv/bin/python bench/bench_streaming.py [--events 200000] [--max-offsets 50000]
        [--latency-rate 2000] [--latency-seconds 60] [--trigger-seconds 1]
    .local/venv/bin/python bench/bench_streaming.py --bounds --events 300000

1. Throughput: ``--events`` synthetic events are produced into a fresh topic first, then an
   available-now run drains it (``--max-offsets`` per micro-batch). Prints events/s over the
   whole run and the share of wall time spent in each sink (MongoDB per collection, the lake,
   the session/funnel recomputation). FerretDB (the local MongoDB) is 10-100x slower than
   MongoDB at writes, so the Mongo share is reported separately.
2. Latency: a continuous run (processing-time trigger) while this script produces live events
   (event_time = now) at each of ``--latency-rates`` for ``--latency-seconds``; a poller reads
   the tumbling-window documents of event_aggregations every 0.25 s. An event counts as visible
   when its group's event_count reaches its position in that group; latency = first poll that
   sees it - its send time. Each rate runs with the sessions query and without it
   (``--sessions both``). Prints p50/p95/max and the trace: p95 per 10 s of send time (a
   periodic burst of work shows as a spike there).
3. ``--bounds``: instead of 1 and 2, the pipeline against the bounds its components set, in
   one run on one topic (``bench_stream_bounds.py``): the Spark floor (Kafka -> parse ->
   no-op), floor + the windowed aggregation, floor + the session state, the whole pipeline,
   the MongoDB server's insert ceiling for the same documents alone, the lake's commits
   alone, and the ratio of the pipeline to the bound they set together.
Uses the JOURNEY_* environment for Kafka/Mongo; throw-away topic, database and data dir.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer
from pymongo import MongoClient

from journey_assets.local.stack import LocalStack
from journey_assets.resources.kafka import ensure_topic
from journey_assets.resources.spark import build_spark_session
from journey_assets.schema import TIME_FORMAT_PY, category_l1, event_id, validate_record
from journey_assets.serving import upsert_documents
from journey_assets.settings import Settings
from journey_assets.sources.producer import encode_record, produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.pipeline import StreamOptions, run_stream, target_from
from journey_assets.streaming.preflight import require_servers


def _settings(base: Settings, name: str, data_dir: Path) -> Settings:
    tag = uuid.uuid4().hex[:6]
    # Own topic, database and checkpoints per run (a checkpoint of an earlier run would bring
    # its offsets and its aggregation state).
    return replace(base, topic=f"bench_stream_{name}_{tag}", mongo_db=f"bench_stream_{name}_{tag}",
                   data_dir=data_dir / f"{name}_{tag}")


def throughput(base: Settings, spark, data_dir: Path, events: int, max_offsets: int,
               days: int) -> None:
    settings = _settings(base, "tput", data_dir)
    ensure_topic(settings.kafka_bootstrap, settings.topic, partitions=3)
    records = generate_records(SyntheticConfig(n_events=events, seed=1, days=days))
    sent = produce(records, settings.kafka_bootstrap, settings.topic, progress=False)
    print(f"produced {sent.sent:,} events over {days} day(s) in {sent.seconds:.1f} s", flush=True)
    busy_ms: dict[str, int] = defaultdict(int)

    def on_progress(query: str, rec: dict) -> None:
        busy_ms[query] += int(rec["duration_ms"] or 0)
        print(f"  [{query}] batch {rec['batch_id']}: {rec['input_rows']} rows, "
              f"{rec['duration_ms']} ms", flush=True)

    stack = LocalStack()
    pids = {"spark JVM": int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()),
            "FerretDB": stack.mongo.pid(), "Kafka": stack.kafka.pid()}
    pids = {name: pid for name, pid in pids.items() if pid}
    before = {name: _process_cpu_seconds(pid) for name, pid in pids.items()}
    cpu0 = time.process_time()
    summary = run_stream(spark, target_from(settings),
                         StreamOptions(mode="available-now", max_offsets_per_trigger=max_offsets),
                         on_progress=on_progress)
    wall = summary.seconds
    rows = summary.input_rows.get("events", 0)
    print(f"THROUGHPUT available-now: {rows:,} events in {wall:.1f} s = {rows / wall:,.0f} "
          f"events/s Kafka -> MongoDB+lake, all five collections (driver cpu "
          f"{time.process_time() - cpu0:.1f} s)")
    used = {name: _process_cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    used["python driver"] = time.process_time() - cpu0
    print(f"  CPU seconds during the run (the machine had {os.cpu_count()} x {wall:.0f} s = "
          f"{os.cpu_count() * wall:.0f}): "
          + ", ".join(f"{name} {sec:.0f} ({sec / rows * 1e6:,.0f} us/event)"
                      for name, sec in sorted(used.items(), key=lambda kv: -kv[1])))
    secs = summary.sinks["seconds"]
    docs = summary.sinks["documents"]
    for name, s in sorted(secs.items()):
        n = docs.get(name)
        rate = f", {n / s:,.0f} docs/s" if n and s else ""
        print(f"    {name:<32} {s:7.1f} s{f', {n:,} docs' if n else ''}{rate}")
    # What each query spent blocked on MongoDB (FerretDB here), and its rate without that.
    blocked = {
        "events": secs.get("mongo.enriched_events", 0.0)
        + secs.get("mongo.dead_letter_events", 0.0),
        "aggregations": secs.get("mongo.event_aggregations", 0.0),
        "sessions": secs.get("mongo.user_session_analytics", 0.0)
        + secs.get("mongo.conversion_funnel", 0.0),
    }
    for query, ms in sorted(busy_ms.items()):
        busy = ms / 1000
        spark_only = max(busy - blocked.get(query, 0.0), 1e-9)
        print(f"  query {query:<13} busy {busy:6.1f} s, blocked on MongoDB {blocked.get(query, 0):6.1f} s"
              f" -> {rows / busy:,.0f} events/s, {rows / spark_only:,.0f} events/s without MongoDB")
    sink_ceiling(settings)
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sink_ceiling(settings: Settings, limit: int = 100_000) -> None:
    """What the MongoDB server alone takes for the enriched_events documents of the run: the
    same documents inserted again into an empty collection, nothing else running. With the
    local stack's FerretDB, its CPU seconds per document bound what any pipeline on this
    machine can push into it: 2 cores / (CPU per document)."""
    db = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]
    docs = list(db.enriched_events.find({}, limit=limit))
    if not docs:
        return
    scratch = db["sink_ceiling"]
    scratch.drop()
    pid = LocalStack().mongo.pid()
    cpu0 = _process_cpu_seconds(pid) if pid else None
    start = time.perf_counter()
    upsert_documents(db, scratch.name, docs)
    wall = time.perf_counter() - start
    line = (f"SINK CEILING: {len(docs):,} enriched_events documents re-inserted alone in "
            f"{wall:.1f} s = {len(docs) / wall:,.0f} docs/s (one client)")
    if pid and cpu0 is not None:
        per_doc = (_process_cpu_seconds(pid) - cpu0) / len(docs)
        line += (f"; FerretDB CPU {per_doc * 1e6:,.0f} us/document -> at most "
                 f"{os.cpu_count() / per_doc:,.0f} docs/s with every core of this machine on it")
    print(line, flush=True)
    scratch.drop()


def latency(base: Settings, spark, data_dir: Path, rate: float, seconds: float,
            trigger_seconds: float, warmup_seconds: float,
            options: StreamOptions) -> dict[str, float] | None:
    settings = _settings(base, "latency", data_dir)
    ensure_topic(settings.kafka_bootstrap, settings.topic, partitions=3)
    records = list(generate_records(SyntheticConfig(
        n_events=int(rate * (seconds + warmup_seconds)), seed=2, days=1, duplicate_fraction=0.0)))
    # group -> (send time, measured?) in order; events of the warm-up (JIT, first jobs, Python
    # workers) are sent at the same rate and counted in their groups, but not measured.
    sent_at: dict[tuple, list[tuple[float, bool]]] = defaultdict(list)
    seen: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
    unique_ids: set[str] = set()
    stop = threading.Event()
    started = threading.Event()

    def produce_live() -> None:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
        started.wait()
        time.sleep(5)  # let the first (empty) triggers pass
        t0 = time.monotonic()
        t0_wall = time.time()
        for i, rec in enumerate(records):
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            wall = time.time()
            stamp = datetime.fromtimestamp(int(wall), UTC)
            key, value, valid = encode_record(rec, stamp.strftime(TIME_FORMAT_PY))
            producer.produce(settings.topic, key=key, value=value)
            producer.poll(0)
            if valid:
                ev, _ = validate_record(rec)
                ev["event_time"] = stamp
                # Re-stamped to the second, a session's repeated views of one product become
                # exact duplicates, which the pipeline rightly counts once: expect unique ones.
                key = event_id(ev)
                if key in unique_ids:
                    continue
                unique_ids.add(key)
                group = (int(stamp.timestamp()) // 300 * 300, ev["event_type"],
                         category_l1(ev["category_code"]))
                sent_at[group].append((wall, wall - t0_wall >= warmup_seconds))
        producer.flush()
        took = time.monotonic() - t0
        print(f"  producer: {len(records):,} events in {took:.1f} s "
              f"({len(records) / took:,.0f}/s; asked {rate:,.0f}/s)", flush=True)
        # Let both queries take the last events (the events query triggers less often).
        time.sleep(max(4 * trigger_seconds, options.events_trigger) + 10)
        stop.set()

    def poll_mongo() -> None:
        db = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]
        started.wait()
        while not stop.is_set():
            now = time.time()
            for doc in db.event_aggregations.find({"window_type": "tumbling_5m"},
                                                  {"window_start": 1, "event_type": 1,
                                                   "category_l1": 1, "event_count": 1}):
                group = (int(doc["window_start"].timestamp()), doc["event_type"], doc["category_l1"])
                seen[group].append((now, doc["event_count"]))
            time.sleep(0.25)

    threads = [threading.Thread(target=produce_live, daemon=True),
               threading.Thread(target=poll_mongo, daemon=True)]
    for t in threads:
        t.start()

    def on_progress(query: str, rec: dict) -> None:
        started.set()
        if rec["input_rows"]:
            print(f"  [{query}] batch {rec['batch_id']}: {rec['input_rows']} rows, "
                  f"{rec['duration_ms']} ms {rec['durations_ms']}", flush=True)

    summary = run_stream(spark, target_from(settings), options, on_progress=on_progress,
                         should_stop=stop.is_set)
    for name, sec in sorted(summary.sinks["seconds"].items()):
        n = summary.sinks["documents"].get(name)
        print(f"    {name:<32} {sec:7.1f} s{f', {n:,} docs' if n else ''}")
    db = MongoClient(settings.mongo_uri)[settings.mongo_db]
    counted = sum(d["event_count"] for d in db.event_aggregations.find({"window_type": "tumbling_5m"}))
    print(f"  sent {sum(len(v) for v in sent_at.values()):,} unique valid events "
          f"({sum(m for v in sent_at.values() for _, m in v):,} after the warm-up); tumbling windows "
          f"count {counted:,} at the end; enriched_events {db.enriched_events.count_documents({}):,}")
    latencies = []
    by_bucket: dict[int, list[float]] = defaultdict(list)
    first_sent = min((t for times in sent_at.values() for t, m in times if m), default=0.0)
    missing = 0
    for group, times in sent_at.items():
        obs = sorted(seen.get(group, []))
        for i, (t_sent, measured) in enumerate(times):
            if not measured:
                continue
            visible = next((t for t, count in obs if count >= i + 1 and t >= t_sent), None)
            if visible is None:
                missing += 1
            else:
                latencies.append(visible - t_sent)
                by_bucket[int((t_sent - first_sent) // 10)].append(visible - t_sent)
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
    latencies.sort()
    sessions = ("alone (no events, no sessions query)" if not options.history
                else "with the sessions query" if options.sessions
                else "without the sessions query")
    if not latencies:
        print(f"LATENCY: no event became visible ({missing} sent)")
        return None
    p50 = statistics.median(latencies)
    p95 = _p95(latencies)
    trace = [_p95(sorted(by_bucket[k])) for k in sorted(by_bucket)]
    others = ((f", events query every {options.events_trigger:.0f} s" if options.history
               else "")
              + (f", sessions every {options.sessions_trigger:.0f} s" if options.sessions
                 else ""))
    print(f"LATENCY continuous {sessions} (trigger {trigger_seconds} s{others}, "
          f"{rate:,.0f} events/s for {seconds:.0f} s after a {warmup_seconds:.0f} s warm-up): "
          f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s over "
          f"{len(latencies):,} events ({missing} never seen)")
    print("  p95 per 10 s of send time: " + " ".join(f"{v:.1f}" for v in trace), flush=True)
    return {"rate": rate, "variant": sessions, "p50": p50, "p95": p95,
            "max": latencies[-1], "worst_10s_p95": max(trace), "missing": missing}


def _p95(ordered: list[float]) -> float:
    return ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None,
                        help="events of the throughput run (default 200,000; 300,000 with "
                             "--bounds)")
    parser.add_argument("--max-offsets", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=1,
                        help="event-time span of the throughput data (REES46: ~1.4M events/day)")
    parser.add_argument("--latency-rates", type=float, nargs="+", default=[200, 1_000])
    parser.add_argument("--sessions", choices=["both", "on", "off"], default="both",
                        help="latency runs with the sessions query, without it, or both")
    parser.add_argument("--aggregations-alone", action="store_true",
                        help="also a latency run of the aggregations query alone (no events "
                             "or sessions query): the latency floor of this machine")
    parser.add_argument("--latency-seconds", type=float, default=60,
                        help="measured seconds of live events (after the warm-up)")
    parser.add_argument("--warmup-seconds", type=float, default=30,
                        help="live events sent first and not measured (JIT, first jobs)")
    parser.add_argument("--trigger-seconds", type=float, default=1.0)
    parser.add_argument("--sessions-trigger-seconds", type=float, default=None,
                        help="trigger of the sessions query (default: the pipeline's)")
    parser.add_argument("--events-trigger-seconds", type=float, default=None,
                        help="trigger of the events query (default: the pipeline's)")
    parser.add_argument("--scheduler-mode", choices=["FAIR", "FIFO"], default="FAIR")
    parser.add_argument("--shuffle-partitions", type=int, default=2,
                        help="= state store partitions of the aggregation (fixed per checkpoint)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark configuration (repeatable), to try a setting")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--bounds", action="store_true",
                        help="print the pipeline against its components' bounds instead "
                             "(bench_stream_bounds.py; --events, --days)")
    args = parser.parse_args()
    if args.bounds:
        from bench_stream_bounds import run_bounds  # this script's directory is on sys.path

        run_bounds(args.events or 300_000, args.days)
        return
    extra_conf = {"spark.scheduler.mode": args.scheduler_mode}
    extra_conf.update(item.split("=", 1) for item in args.conf)

    base = Settings.from_env()
    require_servers(base.kafka, base.mongo_uri)
    # The streaming job's own session (journey stream, the streaming asset): its heap, not batch's.
    spark = build_spark_session(master=base.spark_master, app_name="bench_streaming",
                                shuffle_partitions=args.shuffle_partitions,
                                driver_memory=base.spark_driver_memory, extra_conf=extra_conf,
                                streaming=True)
    heap = spark.conf.get("spark.driver.memory")
    print(f"load average at start: {os.getloadavg()}; master {base.spark_master}; "
          f"driver heap {heap}; conf {extra_conf}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        if not args.skip_throughput:
            throughput(base, spark, Path(tmp), args.events or 200_000, args.max_offsets,
                       args.days)
        results = []
        flags = {"both": (True, False), "on": (True,), "off": (False,)}[args.sessions]
        variants = [(sessions, True) for sessions in flags]
        if args.aggregations_alone:
            variants.append((False, False))
        for rate in [] if args.skip_latency else args.latency_rates:
            for sessions, history in variants:
                options = StreamOptions(mode="continuous", trigger_seconds=args.trigger_seconds,
                                        events_trigger_seconds=args.events_trigger_seconds,
                                        sessions_trigger_seconds=args.sessions_trigger_seconds,
                                        sessions=sessions, history=history, poll_seconds=0.5)
                results.append(latency(base, spark, Path(tmp), rate, args.latency_seconds,
                                       args.trigger_seconds, args.warmup_seconds, options))
        for r in filter(None, results):
            print(f"SUMMARY {r['rate']:>6,.0f} events/s, {r['variant']}: p50 {r['p50']:.2f} s, "
                  f"p95 {r['p95']:.2f} s ({r['p95'] / args.trigger_seconds:.1f} triggers), "
                  f"worst 10 s p95 {r['worst_10s_p95']:.2f} s, max {r['max']:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load average at end: {os.getloadavg()}; peak driver (python) RSS {peak:.0f} MB")
    spark.stop()


if __name__ == "__main__":
    main()
