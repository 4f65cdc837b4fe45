"""Scale benchmark of the batch assets at REES46 size, MongoDB writes included.

    .local/venv/bin/python bench/bench_scale.py                      # ~1M users, full size
    .local/venv/bin/python bench/bench_scale.py --events 300000      # a quick smoke run

What it does: generate a synthetic REES46-density month (``--events`` over the scored
window: by default 14M events in the 30-day lookback, about 1M users), load it into the
Delta events table, then materialize the real Dagster assets ``user_feature_engineering``,
``customer_segments`` and ``churn_predictions`` for one as_of (the lake's last complete day
minus the churn horizon) against the configured MongoDB (``JOURNEY_MONGO_URI``; a database of
its own, dropped at the end unless ``--keep``), and then the same partition again: a
re-materialization must leave the same document count, no duplicate and no stale document (a
planted stale document per collection must be gone). Churn trains and tests on full-lookback
snapshots, so the lake spans lookback + 2 x horizon days (58 by default): ``--events`` is the
count in the 30-day window, the lake holds proportionally more.

Prints per asset and pass: wall seconds, Spark JVM peak RSS, the driver's peak RSS, and the
documents per collection.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pymongo.collection import Collection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import jvm_peak_mb, python_peak_mb, reset_jvm_peak

from journey_assets.assets.batch import (
    CHURN_PREDICTIONS,
    CUSTOMER_SEGMENTS,
    USER_FEATURES,
    build_batch_definitions,
)
from journey_assets.partitions import AS_OF_PARTITIONS
from journey_assets.resources import build_resources
from journey_assets.schema import RAW_SCHEMA
from journey_assets.settings import Settings
from journey_assets.sources.synthetic import (
    SyntheticConfig,
    generate_records,
    write_csv,
)
from journey_assets.transforms.events import (
    enrich_events,
    parse_text_events,
    valid_events,
    write_event_lake,
)

COLLECTIONS = (USER_FEATURES, CUSTOMER_SEGMENTS, CHURN_PREDICTIONS)


def _write_csv(config: SyntheticConfig, path: Path) -> None:
    write_csv(generate_records(config), path)


def load_lake(spark, config: SyntheticConfig, workdir: Path, lake: str) -> float:
    csv_path = workdir / "events.csv"
    began = time.perf_counter()
    # In a child process: the generator's memory must not count in the driver's peak RSS.
    child = multiprocessing.get_context("spawn").Process(target=_write_csv,
                                                         args=(config, csv_path))
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"generating {csv_path} failed (exit code {child.exitcode})")
    raw = spark.read.csv(str(csv_path), header=True, schema=RAW_SCHEMA)
    write_event_lake(enrich_events(valid_events(parse_text_events(raw))), lake)
    csv_path.unlink(missing_ok=True)
    return time.perf_counter() - began


def partition_documents(collection: Collection, as_of: str) -> int:
    """The partition's documents, counted through a cursor of ids: on FerretDB a count command
    over 1.1M documents took minutes, and one run's FerretDB was OOM-killed (19.8 GB) in one."""
    return sum(1 for _ in collection.find({"as_of": as_of}, {"_id": 1}, batch_size=10_000))


def materialize_pass(label: str, assets: dict[str, Any], resources: dict[str, Any],
                     instance: dg.DagsterInstance, as_of: str, run_config: dict[str, Any],
                     db) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in COLLECTIONS:
        reset_jvm_peak()
        began = time.perf_counter()
        # One asset per run: its run config names its own op only.
        config = {"ops": {name: run_config["ops"][name]}} if name in run_config["ops"] else {}
        result = dg.materialize([assets[name]], resources=resources, partition_key=as_of,
                                instance=instance, run_config=config, raise_on_error=True)
        seconds = time.perf_counter() - began
        [mat] = [e.materialization for e in result.get_asset_materialization_events()]
        docs = partition_documents(db[name], as_of)
        out[name] = {"seconds": seconds, "jvm_peak_mb": jvm_peak_mb(), "documents": docs,
                     "metadata": {k: v.value for k, v in mat.metadata.items()
                                  if isinstance(v.value, int | float | str)}}
        print(f"  {label:<8} {name:<26} {seconds:8.1f} s   JVM peak "
              f"{out[name]['jvm_peak_mb'] or float('nan'):7.0f} MB   driver peak "
              f"{python_peak_mb():6.0f} MB   {docs:>10,} documents", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=14_000_000,
                        help="events in the 30-day window (the lake holds days/30 times more)")
    parser.add_argument("--users", type=int, default=None,
                        help="users in the whole lake (default: lake events / 11.3, which leaves "
                             "about 14 events per user active in the 30-day window, REES46's "
                             "density: 42.4M events, 3.0M users in October)")
    parser.add_argument("--lookback", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse the lake in --workdir")
    parser.add_argument("--keep", action="store_true", help="keep the lake and the database")
    args = parser.parse_args()

    days = args.lookback + 2 * args.horizon
    total_events = int(args.events * days / 30)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = Settings.from_env()
    settings = dataclasses.replace(base, data_dir=workdir / "data",
                                   mongo_db=f"{base.mongo_db}_bench_scale")
    resources = build_resources(settings)
    lake = resources["lake"].events_path
    spark = resources["spark"].get_session()
    users = args.users or int(total_events / 11.3)
    config = SyntheticConfig(n_events=total_events, seed=args.seed, days=days, n_users=users)
    print(f"== {total_events:,} events of {users:,} users over {days} days ({args.events:,} per "
          f"30 days), lookback {args.lookback} d, horizon {args.horizon} d", flush=True)
    if not (args.reuse and (Path(lake) / "_delta_log").exists()):
        print(f"  generate + load: {load_lake(spark, config, workdir, lake):.1f} s", flush=True)
    first = date.fromisoformat(config.start)
    as_of = (first + timedelta(days=days - 1 - args.horizon)).isoformat()
    definitions = build_batch_definitions(settings)
    assets = {a.key.to_user_string(): a for a in definitions.assets}
    run_config = {"ops": {USER_FEATURES: {"config": {"lookback_days": args.lookback}},
                          CHURN_PREDICTIONS: {"config": {"horizon_days": args.horizon}}}}
    passes: dict[str, Any] = {}
    with resources["mongo"].db() as db, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(AS_OF_PARTITIONS, [as_of])
        # The first pass writes into an empty database (a kept one from an earlier run would
        # turn it into a re-write).
        db.client.drop_database(settings.mongo_db)
        try:
            passes["first"] = materialize_pass("first", assets, resources, instance, as_of,
                                               run_config, db)
            # A stale document per collection: the re-materialization must remove it.
            for name in COLLECTIONS:
                db[name].insert_one({"_id": f"-1:{as_of}", "user_id": -1, "as_of": as_of})
            passes["again"] = materialize_pass("again", assets, resources, instance, as_of,
                                               run_config, db)
            stale = {name: int(db[name].find_one({"_id": f"-1:{as_of}"}) is not None)
                     for name in COLLECTIONS}
        finally:
            if not args.keep:
                db.client.drop_database(settings.mongo_db)
    spark.stop()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\nasset                       first (s)  again (s)   documents  same count")
    ok = True
    for name in COLLECTIONS:
        a, b = passes["first"][name], passes["again"][name]
        same = a["documents"] == b["documents"]
        ok &= same and stale[name] == 0
        print(f"{name:<27} {a['seconds']:9.1f} {b['seconds']:10.1f} {b['documents']:>11,}  "
              f"{same} (stale left: {stale[name]})")
    features = passes["first"][USER_FEATURES]["metadata"]
    churn = passes["first"][CHURN_PREDICTIONS]["metadata"]
    print(f"users {features.get('users')}, churn base rate {churn.get('base_rate')}, AUC-PR "
          f"lift {churn.get('auc_pr_lift')}, driver peak RSS {python_peak_mb():.0f} MB")
    print("result:", "OK" if ok else "FAILED (duplicates or stale documents)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
