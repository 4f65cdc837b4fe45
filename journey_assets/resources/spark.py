"""The Spark session: local mode by default, any master (k8s://...) by configuration."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import dagster as dg
from pyspark.sql import SparkSession

#: FAIR scheduler pools; the streaming sinks pick theirs with ``scheduler_pool``.
FAIR_SCHEDULER_FILE = Path(__file__).with_name("fair_scheduler.xml")


#: The driver's heap for batch work (a partition's features and models are built in it).
BATCH_DRIVER_MEMORY = "4g"
#: The streaming job's heap: a micro-batch is bounded (``maxOffsetsPerTrigger``; state lives
#: off-heap in RocksDB), so its heap is too, whatever the backlog. A larger heap is not used
#: for more work, only filled with garbage before G1 collects it (measured: the JVM's RSS
#: followed the heap to 3.8 GB on a 5M-event backlog with 4g, 2.8 GB on 1M).
STREAM_DRIVER_MEMORY = "2g"


#: Session settings of the streaming job. Its sinks cache one bounded micro-batch for the few
#: jobs over it (``streaming/sinks.py``): compressing those caches costs CPU on every batch and
#: saves memory nobody needs (measured: the whole pipeline 3% faster without it). Batch work
#: caches whole tables and keeps Spark's default (compressed).
STREAM_SESSION_CONF = {"spark.sql.inMemoryColumnarStorage.compressed": "false"}


def driver_heap(configured: str | None = None, streaming: bool = False) -> str:
    """spark.driver.memory: the configured heap (``JOURNEY_SPARK_DRIVER_MEMORY``), else the
    role's default."""
    return configured or (STREAM_DRIVER_MEMORY if streaming else BATCH_DRIVER_MEMORY)


def build_spark_session(
    master: str = "local[2]", app_name: str = "journey_assets", shuffle_partitions: int = 4,
    driver_memory: str | None = None, extra_conf: dict[str, str] | None = None,
    streaming: bool = False,
) -> SparkSession:
    """Get (or create) the process's Spark session with the Kafka connector and Delta Lake on
    its classpath. ``streaming``: the streaming job's session - its heap (``driver_heap``, unless
    ``driver_memory`` is given) and its settings (``STREAM_SESSION_CONF``).

    Connector jars are resolved once into ``.local/spark-jars`` (or come baked into the image),
    so starting a session needs no network.
    """
    from journey_assets.local.artifacts import spark_connector_jars

    jars = ",".join(str(j) for j in spark_connector_jars())
    # Python workers (pandas UDFs) must run this interpreter (with pandas/numpy), not whatever
    # `python3` is on PATH; PySpark only reads this from the environment of the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", jars)
        .config("spark.driver.memory", driver_heap(driver_memory, streaming))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # query.stop() gives up after this instead of waiting forever for a stuck batch.
        .config("spark.sql.streaming.stopTimeout", "120s")
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.scheduler.allocation.file", str(FAIR_SCHEDULER_FILE))
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        # A state commit writes the changed keys (a changelog), not a RocksDB snapshot of the
        # whole store: the commit is the fixed cost of every stateful micro-batch. Snapshots
        # are still taken by the background maintenance. Off in Spark by default; switching it
        # on (or off) keeps an existing checkpoint's state.
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        # The event lake is Delta Lake (journey_assets.lake).
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog",
                "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        # A MERGE's source is a persisted micro-batch or a deterministic read: Delta need not
        # materialize it once more ("auto" copies any source that is not a Delta scan).
        .config("spark.databricks.delta.merge.materializeSource", "none")
        # Three streaming queries and the lake's jobs generate more than Spark's default 100
        # classes: with that cache each micro-batch compiled its plans again (measured: 13% of
        # the JVM's CPU in Janino at 200 events/s; ~1% with 2,000 entries).
        .config("spark.sql.codegen.cache.maxEntries", "2000")
    )
    snapshot_partitions = _local_cores(master)
    if snapshot_partitions:
        # Delta rebuilds a table's state from its log after each commit in 50 tasks, sized for
        # a cluster; in local mode those tasks wait for the same few cores as the streaming
        # queries (measured at 200 events/s: the lake's seconds per micro-batch fell by 30%).
        builder = builder.config("spark.databricks.delta.snapshotPartitions",
                                 str(snapshot_partitions))
    for key, value in {**(STREAM_SESSION_CONF if streaming else {}), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _local_cores(master: str) -> int | None:
    """The task slots of a ``local[N]`` / ``local[*]`` / ``local`` master (None otherwise)."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match is None:
        return None
    slots = match.group(1)
    if slots is None:
        return 1
    return (os.cpu_count() or 1) if slots == "*" else max(int(slots), 1)


class SparkResource(dg.ConfigurableResource):
    """Spark session settings (``JOURNEY_SPARK_MASTER``; executors on Kubernetes via conf)."""

    master: str = "local[2]"
    app_name: str = "journey_assets"
    shuffle_partitions: int = 4
    #: spark.driver.memory (``JOURNEY_SPARK_DRIVER_MEMORY``); None: the role's default
    #: (``BATCH_DRIVER_MEMORY``, or ``STREAM_DRIVER_MEMORY`` for the streaming run).
    driver_memory: str | None = None
    conf: dict[str, str] = {}

    def get_session(self, streaming: bool = False) -> SparkSession:
        """The session; the first call in a process fixes the driver's heap, so the streaming
        run (a process of its own) asks with ``streaming=True``."""
        return build_spark_session(self.master, self.app_name, self.shuffle_partitions,
                                   self.driver_memory, self.conf, streaming=streaming)

    def driver_heap(self, streaming: bool = False) -> str:
        return driver_heap(self.driver_memory, streaming)


def scheduler_pool(spark: SparkSession, pool: str | None) -> None:
    """Run the jobs this thread submits from now on in FAIR pool ``pool`` (None: default).

    Local properties belong to the JVM thread: a foreachBatch function runs on a callback
    thread, not on the query's thread, so it sets its pool itself on every call.
    """
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)
