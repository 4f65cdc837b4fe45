"""Batch benchmark: user features + segments + churn over N generated events, and the same
user features computed by DuckDB on the same lake in the same run.

    .local/venv/bin/python bench/bench_batch.py --events 1000000 4000000

Per size: generate a synthetic CSV, load it into the Parquet lake (parse, validate, enrich,
dedupe: reported, not counted), then time with Spark (local[2]):
  features  build_user_features for as_of, written to Parquet (the feature store snapshot)
  segments  fit_segments (k in a range, silhouette) + assign every user
  churn     two labelled snapshots, RandomForest fit, evaluation, scoring of as_of
and with DuckDB: the same user features (SQL over the same lake, dedupe by event_id), checked
against Spark's (user count, sums). MongoDB writes are not included: they belong to the sink,
whose speed differs by orders of magnitude between FerretDB and MongoDB.

Peak memory: the driver's Python RSS (getrusage) and the Spark JVM's peak RSS per phase
(VmHWM from /proc, reset between phases through /proc/<pid>/clear_refs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from journey_assets.ml import churn as churn_ml
from journey_assets.ml import segments as segment_ml
from journey_assets.resources.spark import build_spark_session
from journey_assets.schema import RAW_SCHEMA
from journey_assets.sources.synthetic import SyntheticConfig, generate_records, write_csv
from journey_assets.transforms.events import (
    enrich_events,
    parse_text_events,
    read_event_lake,
    valid_events,
    write_event_lake,
)
from journey_assets.transforms.features import build_user_features, window_bounds

# -- memory -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (from /proc: no psutil dependency)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def jvm_pids() -> list[int]:
    pids = []
    for pid in _children(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                pids.append(pid)
        except OSError:
            pass
    return pids


def jvm_peak_mb() -> float | None:
    """Peak RSS (VmHWM) of the Spark JVM(s) since the last reset, in MB."""
    total, found = 0, False
    for pid in jvm_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    found = True
        except OSError:
            pass
    return total / 1024 if found else None


def reset_jvm_peak() -> None:
    for pid in jvm_pids():
        # "5" resets the peak RSS counter (Linux >= 4.0)
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def python_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    reset_jvm_peak()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    results[label] = {"seconds": seconds, "jvm_peak_mb": jvm_peak_mb()}
    jvm = results[label]["jvm_peak_mb"]
    print(f"  {label:<18} {seconds:8.1f} s   JVM peak {jvm or float('nan'):7.0f} MB", flush=True)
    return value


# -- DuckDB features ----------------------------------------------------------------------
DUCKDB_FEATURES = """
WITH ev AS (
    SELECT * FROM read_parquet('{lake}/*/*.parquet', hive_partitioning = true)
    WHERE event_date BETWEEN DATE '{start}' AND DATE '{end}'
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1
), sessions AS (
    SELECT user_id,
           count(*) AS sessions,
           avg(epoch(last_t) - epoch(first_t)) AS avg_session_duration_s,
           sum(has_cart) AS cart_sessions,
           sum(CASE WHEN has_cart = 1 AND has_purchase = 0 THEN 1 ELSE 0 END) AS abandoned
    FROM (SELECT user_id, user_session, min(event_time) AS first_t, max(event_time) AS last_t,
                 max(CASE WHEN event_type = 'cart' THEN 1 ELSE 0 END) AS has_cart,
                 max(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS has_purchase
          FROM ev WHERE user_session IS NOT NULL GROUP BY user_id, user_session)
    GROUP BY user_id
)
SELECT b.user_id,
       date_diff('day', max_date, DATE '{end}') AS recency_days,
       frequency, monetary, views, carts, remove_from_cart, purchases,
       coalesce(s.sessions, 0) AS sessions,
       coalesce(s.avg_session_duration_s, 0) AS avg_session_duration_s,
       CASE WHEN coalesce(s.cart_sessions, 0) > 0 THEN s.abandoned / s.cart_sessions ELSE 0 END
           AS cart_abandonment_rate,
       category_diversity, avg_price, active_days
FROM (SELECT user_id, count(*) AS frequency,
             coalesce(sum(CASE WHEN event_type = 'purchase' THEN price END), 0) AS monetary,
             count(*) FILTER (WHERE event_type = 'view') AS views,
             count(*) FILTER (WHERE event_type = 'cart') AS carts,
             count(*) FILTER (WHERE event_type = 'remove_from_cart') AS remove_from_cart,
             count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
             count(DISTINCT category_id) AS category_diversity, avg(price) AS avg_price,
             count(DISTINCT event_date) AS active_days, max(event_date) AS max_date
      FROM ev GROUP BY user_id) b
LEFT JOIN sessions s USING (user_id)
"""


def duckdb_features(lake: str, as_of: str, lookback: int):
    import duckdb

    start, end = window_bounds(as_of, lookback)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(DUCKDB_FEATURES.format(lake=lake, start=start, end=end)).df()


# -- the run ------------------------------------------------------------------------------
def run(n_events: int, args: argparse.Namespace, spark, workdir: Path) -> dict[str, Any]:
    print(f"\n== {n_events:,} events over {args.days} days (seed {args.seed})", flush=True)
    results: dict[str, Any] = {}
    csv_path = workdir / f"events_{n_events}.csv"
    lake = str(workdir / f"lake_{n_events}")
    config = SyntheticConfig(n_events=n_events, seed=args.seed, days=args.days)
    timed("generate_csv", lambda: write_csv(generate_records(config), csv_path), results)

    def load() -> None:
        raw = spark.read.csv(str(csv_path), header=True, schema=RAW_SCHEMA)
        enriched = enrich_events(valid_events(parse_text_events(raw))).dropDuplicates(["event_id"])
        write_event_lake(enriched, lake)

    timed("load_lake", load, results)
    first = date.fromisoformat(config.start)
    last = first + timedelta(days=args.days - 1)
    as_of = (last - timedelta(days=args.horizon)).isoformat()
    print(f"  as_of {as_of}, lookback {args.lookback} d, horizon {args.horizon} d", flush=True)
    features_dir = str(workdir / f"features_{n_events}")

    def features() -> int:
        start, end = window_bounds(as_of, args.lookback)
        events = read_event_lake(spark, lake, start.isoformat(), end.isoformat())
        build_user_features(events, as_of, args.lookback).write.mode("overwrite") \
            .parquet(features_dir)
        return spark.read.parquet(features_dir).count()

    users = timed("spark_features", features, results)
    snapshot = spark.read.parquet(features_dir)

    def segments() -> int:
        result = segment_ml.fit_segments(snapshot, range(args.k_min, args.k_max + 1),
                                         max_fit_users=args.max_fit_users)
        counts = segment_ml.assign_segments(result.model, snapshot).groupBy("segment").count()
        print(f"    k={result.k} silhouettes "
              f"{ {k: round(v, 3) for k, v in result.silhouettes.items()} } "
              f"names {result.names}", flush=True)
        return counts.count()

    timed("spark_segments", segments, results)

    def churn() -> dict[str, Any]:
        plan = churn_ml.plan_snapshots(as_of, args.horizon, first, last)

        def labelled(day: date):
            start, _ = window_bounds(day, args.lookback)
            events = read_event_lake(spark, lake, start.isoformat(),
                                     (day + timedelta(days=args.horizon)).isoformat())
            return churn_ml.labelled_snapshot(events, day, args.lookback, args.horizon).cache()

        train, test = labelled(plan.train_as_of), labelled(plan.test_as_of)
        model = churn_ml.fit_churn_model(train, args.num_trees, args.max_depth)
        metrics = churn_ml.evaluate(model, test)
        scored = churn_ml.score(model, snapshot).where("churn_prediction = 1").count()
        train.unpersist()
        test.unpersist()
        print(f"    train {plan.train_as_of} test {plan.test_as_of}: AUC-ROC "
              f"{metrics['auc_roc']:.3f} AUC-PR {metrics['auc_pr']:.3f} precision "
              f"{metrics['precision']:.3f} recall {metrics['recall']:.3f} "
              f"churn rate {metrics['test_churn_rate']:.3f}; predicted churners {scored}",
              flush=True)
        return metrics

    results["churn_metrics"] = timed("spark_churn", churn, results)
    spark_total = sum(results[k]["seconds"] for k in ("spark_features", "spark_segments",
                                                      "spark_churn"))
    print(f"  spark features+segments+churn: {spark_total:.1f} s for {users:,} users", flush=True)

    duck = timed("duckdb_features", lambda: duckdb_features(lake, as_of, args.lookback), results)
    spark_sum = snapshot.agg({"monetary": "sum", "frequency": "sum"}).first()
    same = (len(duck) == users
            and abs(duck["monetary"].sum() - spark_sum["sum(monetary)"]) < 1e-6 * max(
                1.0, spark_sum["sum(monetary)"])
            and int(duck["frequency"].sum()) == int(spark_sum["sum(frequency)"]))
    ratio = results["spark_features"]["seconds"] / results["duckdb_features"]["seconds"]
    print(f"  features: spark {results['spark_features']['seconds']:.1f} s vs duckdb "
          f"{results['duckdb_features']['seconds']:.1f} s -> spark/duckdb = {ratio:.1f}x "
          f"(same result: {same})", flush=True)
    print(f"  python driver peak RSS so far: {python_peak_mb():.0f} MB", flush=True)
    results.update(users=users, spark_total=spark_total, ratio=ratio, same=same)
    if not args.keep:
        csv_path.unlink(missing_ok=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lookback", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--k-min", type=int, default=3)
    parser.add_argument("--k-max", type=int, default=6)
    parser.add_argument("--max-fit-users", type=int, default=200_000)
    parser.add_argument("--num-trees", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated CSV and lake")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_batch_"))
    workdir.mkdir(parents=True, exist_ok=True)
    spark = build_spark_session(app_name="bench_batch", shuffle_partitions=8,
                                driver_memory=args.driver_memory)
    summary = []
    try:
        for n in args.events:
            summary.append((n, run(n, args, spark, workdir)))
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nevents      users    features  segments  churn    total   JVM peak  duckdb  ratio")
    for n, r in summary:
        peak = max((r[k]["jvm_peak_mb"] or 0) for k in ("spark_features", "spark_segments",
                                                        "spark_churn"))
        print(f"{n:>9,} {r['users']:>8,} {r['spark_features']['seconds']:8.1f} s "
              f"{r['spark_segments']['seconds']:7.1f} s {r['spark_churn']['seconds']:6.1f} s "
              f"{r['spark_total']:6.1f} s {peak:7.0f} MB {r['duckdb_features']['seconds']:5.1f} s "
              f"{r['ratio']:5.1f}x  AUC {r['churn_metrics']['auc_roc']:.3f}")


if __name__ == "__main__":
    main()
