"""Scale-out proven locally: the same pipeline on a local Spark cluster with two executor JVMs
(``local-cluster[2,1,1024]``) writes MongoDB and the lake from the executors, and leaves the
same collections as the independent computation (and so as local mode, which test_streaming
checks against the same computation).

The run is a subprocess (one SparkContext per process; the suite's shared session is local[2]).
It reports which executor wrote each MongoDB document (``serving.executor_id`` in the writing
task) and, from Spark's REST API, which executors ran the tasks that wrote records to the lake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo.database import Database

from journey_assets.lake import read_table_arrow
from journey_assets.resources.kafka import ensure_topic
from journey_assets.settings import Settings
from journey_assets.sources.producer import produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.pipeline import target_from
from journey_assets_tests.test_streaming import (  # noqa: F401 (fixtures)
    assert_matches_truth,
    compute_truth,
    send_malformed,
    stream_db,
    stream_settings,
)

CLUSTER_RUN = r"""
import json, sys, urllib.request
from journey_assets.resources.spark import build_spark_session
from journey_assets.settings import Settings
from journey_assets.streaming.pipeline import StreamOptions, run_stream, target_from

spark = build_spark_session(master="local-cluster[2,1,1024]", app_name="journey_scale_out",
                            shuffle_partitions=2, driver_memory="1g", streaming=True)
summary = run_stream(spark, target_from(Settings.from_env()),
                     StreamOptions(mode="available-now", max_offsets_per_trigger=2_000))
api = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}"
lake_writers = {}
stages = json.load(urllib.request.urlopen(f"{api}/stages?status=complete"))
for stage in stages:
    if not stage.get("outputRecords"):
        continue
    url = f"{api}/stages/{stage['stageId']}/{stage['attemptId']}/taskList?length=1000"
    for task in json.load(urllib.request.urlopen(url)):
        written = task.get("taskMetrics", {}).get("outputMetrics", {}).get("recordsWritten", 0)
        if written:
            lake_writers[task["executorId"]] = lake_writers.get(task["executorId"], 0) + written
executors = [e["id"] for e in json.load(urllib.request.urlopen(f"{api}/executors"))]
print("RESULT " + json.dumps({"mongo_writers": summary.sinks["writers"],
                              "lake_writers": lake_writers, "executors": executors}))
spark.stop()
"""


@pytest.mark.slow  # a driver and two executor JVMs: ~2-3 min on 2 shared cores
def test_local_cluster_writes_from_the_executors(
        stream_settings: Settings, stream_db: Database, tmp_path: Path) -> None:  # noqa: F811
    records = list(generate_records(SyntheticConfig(n_events=6_000, seed=23, days=1,
                                                    duplicate_fraction=0.02,
                                                    invalid_fraction=0.01)))
    ensure_topic(stream_settings.kafka_bootstrap, stream_settings.topic, partitions=4)
    assert produce(records, stream_settings.kafka_bootstrap, stream_settings.topic,
                   partitions=4, progress=False).sent == len(records)
    truth = compute_truth(records, send_malformed(stream_settings.kafka_bootstrap,
                                                  stream_settings.topic))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "JOURNEY_KAFKA_BOOTSTRAP": stream_settings.kafka_bootstrap,
           "JOURNEY_MONGO_URI": stream_settings.mongo_uri,
           "JOURNEY_MONGO_DB": stream_settings.mongo_db, "JOURNEY_TOPIC": stream_settings.topic,
           "JOURNEY_DATA_DIR": str(stream_settings.data_dir)}
    proc = subprocess.run([sys.executable, "-c", CLUSTER_RUN], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])

    # Two executor processes besides the driver, and every data document and lake record was
    # written by them, none by the driver (it writes only the ledger's document per batch, from
    # its own counters: assert_matches_truth checks those below).
    assert {"0", "1"} <= set(result["executors"]), result
    for collection in ("enriched_events", "dead_letter_events", "event_aggregations",
                       "user_session_analytics", "conversion_funnel"):
        writers = result["mongo_writers"][collection]
        assert writers and "driver" not in writers, (collection, writers)
    assert set(result["mongo_writers"]["enriched_events"]) == {"0", "1"}, result
    assert sum(result["mongo_writers"]["enriched_events"].values()) == len(truth.events)
    assert result["lake_writers"] and "driver" not in result["lake_writers"], result
    assert sum(result["lake_writers"].values()) >= len(truth.events)

    # The same collections and lake as the independent computation.
    assert_matches_truth(stream_db, truth)
    lake_ids = read_table_arrow(target_from(stream_settings).events_path).to_table(
        columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(lake_ids) == sorted(truth.events)
