"""The streaming pipeline against the bounds its components set, side by side on one topic.

    .local/venv/bin/python bench/bench_stream_bounds.py [--events 300000] [--days 1]
    .local/venv/bin/python bench/bench_streaming.py --bounds --events 300000   (the same)

One topic of ``--events`` synthetic events (REES46-like), one Spark session (local[2]), each
run available-now with the default ``maxOffsetsPerTrigger`` over the whole topic:

1. floor: Kafka -> the project's parse and triage -> Spark's no-op sink (what reading and
   parsing alone cost);
2. floor + the windowed aggregation (the stateful query, watermark, dedup) -> no-op sink;
2b. floor + the session state (the sessions query's ``applyInPandasWithState``) -> no-op sink;
3. the whole pipeline (``run_stream``: lake, MongoDB, aggregations, sessions);
4. the MongoDB server's insert ceiling for the pipeline's documents alone: every document the
   run wrote, inserted again into empty collections, unordered bulk batches, nothing else
   running;
5. the lake's insert-only commits of the same rows alone;
6. (printed apart, not in the bound) the server's cost, alone, of the re-writes update mode
   makes: as many documents as the run wrote beyond the final ones, written again by the
   serving layer (on FerretDB, replaces by _id, 25 to a command).

The bound: the component costs together on this machine's cores, as seconds run alone one
after the other (floor + aggregation + sessions + MongoDB ceiling + the lake's insert-only
commits of the same rows: each of the three queries reads and parses the topic); the pipeline runs them concurrently on the same 2 cores, so it cannot beat their
sum by much, and should come close to it. Prints each figure and the ratio pipeline / bound.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from pymongo import MongoClient

from journey_assets import lake
from journey_assets.resources.kafka import ensure_topic
from journey_assets.resources.spark import build_spark_session
from journey_assets.schema import EVENT_DATE, EVENT_ID
from journey_assets.serving import upsert_documents
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.pipeline import (
    StreamOptions,
    kafka_source,
    run_stream,
    session_updates,
    target_from,
    windowed_aggregates,
)
from journey_assets.streaming.preflight import require_servers
from journey_assets.transforms.events import LAKE_COLUMNS, parse_kafka_events, triage_events
from journey_assets.transforms.windows import aggregation_documents

COLLECTIONS = ("enriched_events", "dead_letter_events", "event_aggregations",
               "user_session_analytics", "conversion_funnel")


def _noop_run(spark, frame, checkpoint: str, name: str) -> float:
    """Seconds to drain the topic through ``frame`` into Spark's no-op sink."""
    start = time.perf_counter()
    query = (frame.writeStream.queryName(name).format("noop")
             .option("checkpointLocation", checkpoint)
             .outputMode("append" if name == "floor" else "update")
             .trigger(availableNow=True).start())
    query.awaitTermination()
    return time.perf_counter() - start


def _mongo_ceiling(settings: Settings, written: dict[str, int]
                   ) -> tuple[float, int, float, int]:
    """Seconds to insert every document of the run again, alone, into empty collections;
    then seconds to write again, alone, as many documents as the run wrote beyond the final
    ones (update mode re-writes a changed session or window: the server's cost of those
    re-writes, which the insert ceiling does not include)."""
    client = MongoClient(settings.mongo_uri, tz_aware=True)
    db = client[settings.mongo_db]
    scratch = client[f"{settings.mongo_db}_ceiling"]
    seconds, total, rewrite_seconds, rewrites = 0.0, 0, 0.0, 0
    try:
        for name in COLLECTIONS:
            docs = list(db[name].find({}))
            start = time.perf_counter()
            upsert_documents(scratch, name, docs, keep_existing=True)
            seconds += time.perf_counter() - start
            total += len(docs)
        for name in COLLECTIONS:
            docs = list(scratch[name].find({}))
            extra = written.get(f"mongo.{name}", 0) - len(docs)
            if not docs or extra <= 0:
                continue
            again = [docs[i % len(docs)] for i in range(extra)]
            start = time.perf_counter()
            # As the pipeline re-writes them: replaced by _id, no insert tried first.
            upsert_documents(scratch, name, again, stored=True)
            rewrite_seconds += time.perf_counter() - start
            rewrites += extra
    finally:
        client.drop_database(scratch.name)
        client.close()
    return seconds, total, rewrite_seconds, rewrites


def _lake_cost(spark, events_path: str, scratch: Path) -> float:
    """Seconds for the lake's insert-only commits of the run's rows, in 50k-row batches."""
    rows = lake.read_table(spark, events_path).select(*LAKE_COLUMNS).persist()
    try:
        n = rows.count()
        parts = max(1, n // 50_000)
        start = time.perf_counter()
        for i, part in enumerate(rows.randomSplit([1.0] * parts, seed=1)):
            lake.insert_new_rows(spark, str(scratch / "events"), part, EVENT_ID, EVENT_DATE,
                                 "bench", i)
        return time.perf_counter() - start
    finally:
        rows.unpersist()


def run_bounds(events: int = 300_000, days: int = 1) -> None:
    """Print every figure and the ratio, in one run on one fresh topic of ``events`` events
    (also ``bench_streaming.py --bounds``)."""
    base = Settings.from_env()
    require_servers(base.kafka, base.mongo_uri)
    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="bench_bounds_"))
    settings = replace(base, topic=f"bench_bounds_{tag}", mongo_db=f"bench_bounds_{tag}",
                       data_dir=work / "data")
    ensure_topic(settings.kafka_bootstrap, settings.topic, partitions=3)
    sent = produce(generate_records(SyntheticConfig(n_events=events, seed=1, days=days)),
                   settings.kafka_bootstrap, settings.topic, progress=False)
    n = sent.sent
    print(f"topic {settings.topic}: {n:,} events over {days} day(s)", flush=True)
    spark = build_spark_session(
        shuffle_partitions=2, driver_memory=base.spark_driver_memory, streaming=True)
    target = target_from(settings)
    options = StreamOptions(mode="available-now")
    try:
        source = kafka_source(spark, target, options)
        floor = _noop_run(spark, triage_events(parse_kafka_events(source)),
                          str(work / "ck_floor"), "floor")
        print(f"1. floor (Kafka -> parse -> no-op):        {floor:7.1f} s  "
              f"{n / floor:9,.0f} events/s", flush=True)
        source = kafka_source(spark, target, options)
        aggregation = _noop_run(
            spark, aggregation_documents(windowed_aggregates(source, options.watermark)),
            str(work / "ck_aggregation"), "aggregation")
        print(f"2. floor + windowed aggregation:           {aggregation:7.1f} s  "
              f"{n / aggregation:9,.0f} events/s  (cost per event {aggregation / floor:.2f}x "
              f"the floor's)", flush=True)
        source = kafka_source(spark, target, options)
        sessions = _noop_run(spark, session_updates(source, options), str(work / "ck_sessions"),
                             "sessions")
        print(f"2b. floor + session state:                 {sessions:7.1f} s  "
              f"{n / sessions:9,.0f} events/s", flush=True)
        summary = run_stream(spark, target, options)
        pipeline = summary.seconds
        print(f"3. whole pipeline (lake + MongoDB + all):  {pipeline:7.1f} s  "
              f"{n / pipeline:9,.0f} events/s", flush=True)
        for name, seconds in sorted(summary.sinks["seconds"].items()):
            print(f"     inside the pipeline: {name:<32} {seconds:6.1f} s")
        mongo, docs, rewrite_s, rewrites = _mongo_ceiling(settings,
                                                          summary.sinks["documents"])
        print(f"4. MongoDB server ceiling, {docs:,} docs alone: {mongo:7.1f} s  "
              f"{docs / mongo:9,.0f} docs/s", flush=True)
        lake_s = _lake_cost(spark, target.events_path, work / "lake_alone")
        print(f"5. lake insert-only commits alone:         {lake_s:7.1f} s", flush=True)
        bound = floor + aggregation + sessions + mongo + lake_s
        print(f"BOUND (1 + 2 + 2b + 4 + 5, run one after the other): {bound:.1f} s = "
              f"{n / bound:,.0f} events/s")
        print(f"RATIO pipeline / bound: {bound / pipeline:.2f} (goal >= 0.8); aggregation "
              f"cost per event {aggregation / floor:.2f}x the floor (goal <= 2)")
        # Not part of the bound above: what the update-mode re-writes cost the server alone.
        print(f"6. MongoDB server, the run's {rewrites:,} re-writes (beyond the final "
              f"documents) alone: {rewrite_s:.1f} s; bound + re-writes {bound + rewrite_s:.1f} s"
              f", pipeline / that {(bound + rewrite_s) / pipeline:.2f}")
    finally:
        spark.stop()
        MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=1)
    args = parser.parse_args()
    run_bounds(args.events, args.days)


if __name__ == "__main__":
    main()
