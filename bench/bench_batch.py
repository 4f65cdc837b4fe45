"""Batch benchmark: user features + segments + churn over N generated events, and the same
user features computed by DuckDB on the same lake in the same run.

    .local/venv/bin/python bench/bench_batch.py --events 1000000 4000000

Per size: generate a synthetic CSV, load it into the Delta events table (parse, validate, enrich,
dedupe: reported, not counted; ``--keep --reuse --workdir DIR`` skips it on later runs), then
time with Spark (local[2]), doing what the assets do with the assets' default configuration:
  features  build_user_features for as_of over the raw lake window, written to Parquet (the
            feature store snapshot)
  segments  fit_segments (k in a range, silhouette, on a user sample) + assign every user
  churn     train_test_snapshots (one feature build + labels; the test snapshot is as_of's
            feature-store snapshot), RandomForest fit, evaluation, scoring of as_of
Each phase prints wall seconds, the JVM's CPU seconds, its peak RSS and the 1-minute load
average at its end (the machine is shared: load above 2 means the figures are pessimistic).
and with DuckDB: the same user features (SQL over the same Delta table read by delta-rs), checked
against Spark's (user count, sums). The feature build runs ``--repeat`` times on each side: the
first run is cold (Spark: JIT, code generation, the Delta snapshot), the best later run is the
steady state of a long-lived session; both ratios are printed, with Spark's own floor (the same
columns scanned and shuffled once by user and session). MongoDB writes are not included: they belong to the sink,
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

from pyspark.sql import functions as F

from journey_assets.assets.batch import ChurnConfig, FeatureConfig, SegmentConfig
from journey_assets.ml import churn as churn_ml
from journey_assets.ml import segments as segment_ml
from journey_assets.resources.spark import BATCH_DRIVER_MEMORY, SparkResource, build_spark_session
from journey_assets.schema import (
    CATEGORY_ID,
    EVENT_TIME,
    EVENT_TYPE,
    PRICE,
    RAW_SCHEMA,
    USER_ID,
    USER_SESSION,
)
from journey_assets.sources.synthetic import SyntheticConfig, generate_records, write_csv
from journey_assets.transforms.events import (
    enrich_events,
    parse_text_events,
    valid_events,
    write_event_lake,
)
from journey_assets.transforms.features import (
    build_user_features,
    read_lake_window,
    window_bounds,
)

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


def jvm_cpu_seconds() -> float:
    """User + system CPU seconds of the Spark JVM(s) so far (/proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in jvm_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / ticks


def timed(label: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    """Wall seconds, JVM CPU seconds, JVM peak RSS and the 1-minute load average at the end
    (the machine is shared: CPU seconds / wall > 2 cannot happen, load > 2 means contention)."""
    reset_jvm_peak()
    cpu0 = jvm_cpu_seconds()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    cpu = jvm_cpu_seconds() - cpu0
    load = os.getloadavg()[0]
    results[label] = {"seconds": seconds, "jvm_peak_mb": jvm_peak_mb(), "jvm_cpu_s": cpu,
                      "load1": load}
    jvm = results[label]["jvm_peak_mb"]
    print(f"  {label:<18} {seconds:8.1f} s   JVM cpu {cpu:7.1f} s   JVM peak "
          f"{jvm or float('nan'):7.0f} MB   load {load:5.2f}", flush=True)
    return value


# -- DuckDB features ----------------------------------------------------------------------
DUCKDB_FEATURES = """
WITH ev AS (
    SELECT * FROM lake
    WHERE event_date BETWEEN DATE '{start}' AND DATE '{end}'
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
    """The same features in DuckDB over the same Delta table (read by delta-rs as an Arrow
    dataset: DuckDB pushes the date filter and the column list into the scan). No dedupe on
    either side: the table is insert-only by event_id."""
    import duckdb

    from journey_assets.lake import read_table_arrow

    start, end = window_bounds(as_of, lookback)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("lake", read_table_arrow(lake))
    return con.execute(DUCKDB_FEATURES.format(start=start, end=end)).df()


# -- the run ------------------------------------------------------------------------------
def run(n_events: int, args: argparse.Namespace, spark, workdir: Path) -> dict[str, Any]:
    print(f"\n== {n_events:,} events over {args.days} days (seed {args.seed})", flush=True)
    results: dict[str, Any] = {}
    csv_path = workdir / f"events_{n_events}.csv"
    lake = str(workdir / f"lake_{n_events}")
    config = SyntheticConfig(n_events=n_events, seed=args.seed, days=args.days)
    if args.reuse and (Path(lake) / "_delta_log").exists():
        # Same seed and size -> same lake: skip the (uncounted) generation and load.
        print(f"  reusing the lake {lake}", flush=True)
    else:
        timed("generate_csv", lambda: write_csv(generate_records(config), csv_path), results)

        def load() -> None:
            raw = spark.read.csv(str(csv_path), header=True, schema=RAW_SCHEMA)
            enriched = enrich_events(valid_events(parse_text_events(raw))) \
                .dropDuplicates(["event_id"])
            write_event_lake(enriched, lake)

        timed("load_lake", load, results)
    first = date.fromisoformat(config.start)
    last = first + timedelta(days=args.days - 1)
    as_of = (last - timedelta(days=args.horizon)).isoformat()
    print(f"  as_of {as_of}, lookback {args.lookback} d, horizon {args.horizon} d", flush=True)
    features_dir = str(workdir / f"features_{n_events}")

    def features() -> int:
        # As the user_feature_engineering asset: the lake's window, each event once.
        start, end = window_bounds(as_of, args.lookback)
        events = read_lake_window(spark, lake, start, end)
        build_user_features(events, as_of, args.lookback, unique=True) \
            .write.mode("overwrite").parquet(features_dir)
        return spark.read.parquet(features_dir).count()

    def spark_floor() -> None:
        # Spark's own floor for this build: the same columns scanned and one shuffle by the
        # finest key the features need (user, session), nothing else.
        start, end = window_bounds(as_of, args.lookback)
        read_lake_window(spark, lake, start, end) \
            .select(USER_ID, F.xxhash64(USER_SESSION).alias("_s"), EVENT_TIME, EVENT_TYPE,
                    PRICE, CATEGORY_ID) \
            .groupBy(USER_ID, "_s").agg(F.count("*"), F.max(EVENT_TIME), F.sum(PRICE),
                                         F.max(CATEGORY_ID), F.max(EVENT_TYPE)) \
            .write.format("noop").mode("overwrite").save()

    # The first run of each side pays its start-up (Spark: JIT, code generation, the Delta
    # snapshot); the later ones are the steady state of a long-lived session. Both printed.
    users = timed("spark_features", features, results)
    for i in range(2, args.repeat + 1):
        timed(f"spark_features#{i}", features, results)
    for i in range(1, args.repeat + 1):
        timed(f"spark_floor#{i}", spark_floor, results)
    snapshot = spark.read.parquet(features_dir)

    def segments() -> int:
        features = snapshot.cache()  # as the customer_segments asset does
        d = SegmentConfig()
        result = segment_ml.fit_segments(features, range(args.k_min, args.k_max + 1),
                                         use_pca=d.use_pca, pca_k=d.pca_k, seed=d.seed,
                                         max_iter=args.max_iter,
                                         max_fit_users=args.max_fit_users)
        counts = segment_ml.assign_segments(result.model, features).groupBy("segment").count()
        print(f"    k={result.k} silhouettes "
              f"{ {k: round(v, 3) for k, v in result.silhouettes.items()} } "
              f"names {result.names}", flush=True)
        n = counts.count()
        features.unpersist()
        return n

    timed("spark_segments", segments, results)

    def churn() -> dict[str, Any]:
        # What the churn_predictions asset does (journey_assets/assets/batch.py).
        plan = churn_ml.plan_snapshots(as_of, args.horizon, first, last, args.lookback)
        t0 = time.perf_counter()
        events = read_lake_window(spark, lake, *plan.read_span)
        train, test = churn_ml.train_test_snapshots(events, plan, args.lookback, snapshot,
                                                    unique=True)
        print(f"    snapshots: train {train.count():,} test {test.count():,} users "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        model = churn_ml.fit_churn_model(train, args.num_trees, args.max_depth, ChurnConfig().seed,
                                         args.max_train_users)
        print(f"    fit {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        metrics = churn_ml.evaluate(model, test)
        print(f"    evaluate {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        scored = churn_ml.score(model, churn_ml.eligible(snapshot)) \
            .where("churn_prediction = 1").count()
        print(f"    score {time.perf_counter() - t0:.1f} s", flush=True)
        train.unpersist()
        test.unpersist()
        print(f"    train {plan.train_as_of} test {plan.test_as_of}: AUC-ROC "
              f"{metrics['auc_roc']:.3f} AUC-PR {metrics['auc_pr']:.3f} (base rate "
              f"{metrics['base_rate']:.3f}, lift {metrics['auc_pr_lift']:.2f}x, top-decile "
              f"precision {metrics['precision_top_decile']:.3f}) precision "
              f"{metrics['precision']:.3f} recall {metrics['recall']:.3f} "
              f"churn rate {metrics['test_churn_rate']:.3f}; predicted churners {scored}",
              flush=True)
        return metrics

    results["churn_metrics"] = timed("spark_churn", churn, results)
    spark_total = sum(results[k]["seconds"] for k in ("spark_features", "spark_segments",
                                                      "spark_churn"))
    print(f"  spark features+segments+churn: {spark_total:.1f} s for {users:,} users", flush=True)

    duck = timed("duckdb_features", lambda: duckdb_features(lake, as_of, args.lookback), results)
    for i in range(2, args.repeat + 1):
        timed(f"duckdb_features#{i}", lambda: duckdb_features(lake, as_of, args.lookback), results)
    spark_sum = snapshot.agg({"monetary": "sum", "frequency": "sum"}).first()
    same = (len(duck) == users
            and abs(duck["monetary"].sum() - spark_sum["sum(monetary)"]) < 1e-6 * max(
                1.0, spark_sum["sum(monetary)"])
            and int(duck["frequency"].sum()) == int(spark_sum["sum(frequency)"]))

    def best(label: str) -> float:
        runs = [results[label]["seconds"]] + [results[f"{label}#{i}"]["seconds"]
                                              for i in range(2, args.repeat + 1)]
        return min(runs[1:] or runs)

    cold = results["spark_features"]["seconds"] / results["duckdb_features"]["seconds"]
    warm_spark, warm_duck = best("spark_features"), best("duckdb_features")
    floor = min(results[f"spark_floor#{i}"]["seconds"] for i in range(1, args.repeat + 1))
    ratio = warm_spark / warm_duck
    print(f"  features, first run: spark {results['spark_features']['seconds']:.1f} s vs duckdb "
          f"{results['duckdb_features']['seconds']:.1f} s -> spark/duckdb = {cold:.1f}x "
          f"(same result: {same})", flush=True)
    print(f"  features, warm (best of runs 2..{args.repeat}): spark {warm_spark:.2f} s vs duckdb "
          f"{warm_duck:.2f} s -> spark/duckdb = {ratio:.1f}x; Spark's floor (scan + one "
          f"shuffle by user and session) {floor:.2f} s = {floor / warm_duck:.1f}x duckdb",
          flush=True)
    print(f"  python driver peak RSS so far: {python_peak_mb():.0f} MB", flush=True)
    results.update(users=users, spark_total=spark_total, ratio=ratio, cold_ratio=cold,
                   floor_ratio=floor / warm_duck, same=same)
    if not args.keep:
        csv_path.unlink(missing_ok=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    churn_defaults, segment_defaults, spark_defaults = ChurnConfig(), SegmentConfig(), \
        SparkResource()
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 4_000_000])
    # 60 days: churn needs lookback + 2 x horizon (58) for full-lookback snapshots.
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    # Defaults are the assets' own (Dagster config classes, SparkResource): the bench measures
    # what a materialization does.
    parser.add_argument("--lookback", type=int, default=FeatureConfig().lookback_days)
    parser.add_argument("--horizon", type=int, default=churn_defaults.horizon_days)
    parser.add_argument("--k-min", type=int, default=segment_defaults.k_min)
    parser.add_argument("--k-max", type=int, default=segment_defaults.k_max)
    parser.add_argument("--max-iter", type=int, default=segment_defaults.max_iter)
    parser.add_argument("--max-fit-users", type=int, default=segment_defaults.max_fit_users)
    parser.add_argument("--num-trees", type=int, default=churn_defaults.num_trees)
    parser.add_argument("--max-depth", type=int, default=churn_defaults.max_depth)
    parser.add_argument("--max-train-users", type=int, default=churn_defaults.max_train_users)
    parser.add_argument("--shuffle-partitions", type=int, default=spark_defaults.shuffle_partitions)
    parser.add_argument("--driver-memory", default=BATCH_DRIVER_MEMORY)
    parser.add_argument("--repeat", type=int, default=3,
                        help="feature-build runs per side: the first is cold, the rest warm")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated CSV and lake")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the lake of a previous --keep run in --workdir")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_batch_"))
    workdir.mkdir(parents=True, exist_ok=True)
    spark = build_spark_session(app_name="bench_batch", master=spark_defaults.master,
                                shuffle_partitions=args.shuffle_partitions,
                                driver_memory=args.driver_memory)
    summary = []
    try:
        for n in args.events:
            summary.append((n, run(n, args, spark, workdir)))
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nevents      users    features  segments  churn    total   JVM peak  duckdb  "
          "ratio cold/warm (floor)")
    for n, r in summary:
        peak = max((r[k]["jvm_peak_mb"] or 0) for k in ("spark_features", "spark_segments",
                                                        "spark_churn"))
        print(f"{n:>9,} {r['users']:>8,} {r['spark_features']['seconds']:8.1f} s "
              f"{r['spark_segments']['seconds']:7.1f} s {r['spark_churn']['seconds']:6.1f} s "
              f"{r['spark_total']:6.1f} s {peak:7.0f} MB {r['duckdb_features']['seconds']:5.1f} s "
              f"{r['cold_ratio']:5.1f}x/{r['ratio']:.1f}x ({r['floor_ratio']:.1f}x)  AUC "
              f"{r['churn_metrics']['auc_roc']:.3f}")


if __name__ == "__main__":
    main()
