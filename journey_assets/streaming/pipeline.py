"""The streaming pipeline: three queries over the topic, each with its own checkpoint.

* ``events`` (stateless, foreachBatch): dead letters, enriched events (MongoDB + lake).
* ``aggregations`` (stateful, update mode): 10-minute watermark on event_time, exact duplicates
  dropped within the watermark, 5-minute tumbling + 10/5-minute sliding window metrics.
* ``sessions`` (stateful, update mode): one state per open user_session, closed
  ``session_gap_minutes`` of event time after its last event; its sink writes the session
  documents and the daily ordered funnel (``transforms.sessions``).

Both modes run the same code: ``available-now`` (everything in the topic, then stop) and
``continuous`` (processing-time trigger until stopped).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from journey_assets.schema import EVENT_ID, EVENT_TIME
from journey_assets.serving import MongoTarget
from journey_assets.settings import DEFAULT_MAX_OFFSETS_PER_TRIGGER, KafkaConnection
from journey_assets.streaming.ledger import LEDGER_FIGURES
from journey_assets.streaming.sinks import (
    AggregationsSink,
    EventsSink,
    SessionsSink,
    SinkStats,
)
from journey_assets.transforms.events import (
    parse_kafka_events,
    triage_events,
    valid_events,
    with_event_keys,
)
from journey_assets.transforms.sessions import session_state_updates
from journey_assets.transforms.windows import (
    aggregate_windows,
    aggregation_documents,
    explode_windows,
)

logger = logging.getLogger(__name__)

AVAILABLE_NOW = "available-now"
CONTINUOUS = "continuous"
MODES = (AVAILABLE_NOW, CONTINUOUS)
EVENTS_QUERY = "events"
AGGREGATIONS_QUERY = "aggregations"
SESSIONS_QUERY = "sessions"
QUERY_NAMES = (EVENTS_QUERY, AGGREGATIONS_QUERY, SESSIONS_QUERY)
#: A query's checkpoint directory, when it is not the query's name. The sessions query's state
#: changed its layout (``transforms.sessions.BucketState``), which an older checkpoint cannot
#: hold: the new layout starts in a new directory, from the topic's start (the old one,
#: ``sessions``, can be deleted).
CHECKPOINT_DIRS = {SESSIONS_QUERY: "sessions_v2"}
#: Default triggers of the events and sessions queries in continuous mode (at least
#: ``trigger_seconds``). Their batches cost mostly a fixed amount, so fewer, larger ones leave
#: the cores to the aggregations (the live path); the two intervals differ so that their
#: batches start together only every 3 minutes instead of stacking every minute. Measured on
#: 2 cores at 200 events/s, runs in turn (docs/streaming.md): the aggregations' p95 latency
#: 3.8-4.1 s with both at 15 s; 3.1-5.8 s at 60/60 s, with a spike once a minute; 3.3-4.9 s
#: at 60/45 s, without one. The lake and enriched_events lag the topic by up to a minute.
EVENTS_TRIGGER_SECONDS = 60.0
SESSIONS_TRIGGER_SECONDS = 45.0


@dataclass(frozen=True)
class StreamOptions:
    mode: str = AVAILABLE_NOW
    #: Processing-time trigger of the aggregations query (continuous mode): the latency knob.
    trigger_seconds: float = 2.0
    #: Trigger of the events query (continuous mode; None: max(trigger_seconds,
    #: EVENTS_TRIGGER_SECONDS)). It writes the history (lake, enriched events), where seconds
    #: matter less than the cost per event: a batch's cost is mostly fixed (Delta MERGE and
    #: commits, ~10 s on 2 cores for 3,000 or 12,000 events), so fewer, larger batches leave
    #: the cores to the aggregations query (the latency path) between them.
    events_trigger_seconds: float | None = None
    #: Trigger of the sessions query (continuous mode; None: max(trigger_seconds,
    #: SESSIONS_TRIGGER_SECONDS)). A session closes at least ``session_gap_minutes`` after its
    #: last event, so its documents gain little from short triggers; each trigger costs a burst
    #: of jobs next to the latency path.
    sessions_trigger_seconds: float | None = None
    #: Cap per micro-batch (all partitions together), in both modes; 0 = everything available
    #: (unbounded: a backlog becomes one batch).
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER
    watermark: str = "10 minutes"
    #: Only used when a query has no checkpoint yet; afterwards the checkpoint decides.
    starting_offsets: str = "earliest"
    #: Run the sessions query (sessions + funnel); off only to measure what it costs.
    sessions: bool = True
    #: Run the events query (lake + enriched events + dead letters); off only to measure the
    #: aggregations query's latency alone (bench/bench_streaming.py).
    history: bool = True
    #: A session closes this much event time after its last event (once the watermark passes).
    session_gap_minutes: float = 30.0
    #: After it closes, a session is remembered this much longer (event time), so that a
    #: later event of it is dead-lettered (``late_for_session``) instead of starting a new
    #: document that would replace the final one.
    session_tombstone_hours: float = 24.0
    write_strategy: str = "auto"
    poll_seconds: float = 1.0
    #: Watchdog: a query whose micro-batch has run this long fails the run (0: off), so a hung
    #: server or a stuck task ends in a restart by the supervisor instead of a silent stall.
    #: A batch is bounded by ``max_offsets_per_trigger``: minutes at most on a laptop.
    stall_timeout_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")

    @property
    def events_trigger(self) -> float:
        return self.events_trigger_seconds or max(self.trigger_seconds,
                                                  EVENTS_TRIGGER_SECONDS)

    @property
    def sessions_trigger(self) -> float:
        return self.sessions_trigger_seconds or max(self.trigger_seconds,
                                                    SESSIONS_TRIGGER_SECONDS)


@dataclass(frozen=True)
class StreamTarget:
    """Where the pipeline reads and writes (from Settings / the Dagster resources)."""

    kafka: KafkaConnection
    topic: str
    mongo_uri: str
    mongo_db: str
    events_path: str
    dead_letters_path: str
    product_path: str
    user_path: str
    checkpoint_root: str

    def checkpoint(self, query: str) -> str:
        return f"{self.checkpoint_root}/{CHECKPOINT_DIRS.get(query, query)}"

    def query_checkpoints(self) -> list[str]:
        return [self.checkpoint(query) for query in QUERY_NAMES]


@dataclass
class StreamSummary:
    batches: dict[str, int] = field(default_factory=dict)
    input_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sinks: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[str, dict[str, Any]], None]


def kafka_source(spark: SparkSession, target: StreamTarget, options: StreamOptions) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .options(**target.kafka.spark_options())
        .option("subscribe", target.topic)
        .option("startingOffsets", options.starting_offsets)
        # Retention may delete unread offsets on a long outage: log it, keep going.
        .option("failOnDataLoss", "false")
    )
    if options.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(options.max_offsets_per_trigger))
    return reader.load()


def windowed_aggregates(kafka_rows: DataFrame, watermark: str) -> DataFrame:
    """The stateful part: watermark, dedup within it, one aggregation over both window kinds.

    A group's state is dropped once the watermark (max event_time - delay) passes the end of
    its 10-minute sliding window; events older than the watermark are dropped (and counted in
    the progress as late rows).
    """
    events = (
        with_event_keys(valid_events(parse_kafka_events(kafka_rows)))
        .withWatermark(EVENT_TIME, watermark)
        .dropDuplicatesWithinWatermark([EVENT_ID])
    )
    return aggregate_windows(explode_windows(events))


def session_updates(kafka_rows: DataFrame, options: StreamOptions) -> DataFrame:
    """The sessions query's rows: valid events, watermark, one state per user_session."""
    events = (with_event_keys(valid_events(parse_kafka_events(kafka_rows)))
              .withWatermark(EVENT_TIME, options.watermark))
    return session_state_updates(events, gap_ms=int(options.session_gap_minutes * 60_000),
                                 tombstone_ms=int(options.session_tombstone_hours * 3_600_000))


def _trigger(writer, options: StreamOptions, seconds: float):
    if options.mode == AVAILABLE_NOW:
        return writer.trigger(availableNow=True)
    return writer.trigger(processingTime=f"{seconds} seconds")


class StreamingPipeline:
    """Starts, watches and stops the queries; reports each micro-batch's progress."""

    def __init__(self, spark: SparkSession, target: StreamTarget, options: StreamOptions,
                 on_progress: ProgressCallback | None = None,
                 stats: SinkStats | None = None) -> None:
        self.spark = spark
        self.target = target
        self.options = options
        self.on_progress = on_progress
        self.stats = stats or SinkStats()
        self.sink_output: dict[tuple[str, int], dict[str, Any]] = {}
        self.queries: dict[str, StreamingQuery] = {}
        self._reported: dict[str, int] = {}
        self._busy_since: dict[str, tuple[int, float]] = {}
        self._input_rows: dict[str, int] = {}
        self._batches: dict[str, int] = {}

    def _record_sink(self, query: str, batch_id: int, written: dict[str, Any]) -> None:
        self.sink_output[(query, batch_id)] = written

    def start(self) -> None:
        mongo = MongoTarget(self.target.mongo_uri, self.target.mongo_db,
                            self.options.write_strategy)
        source = kafka_source(self.spark, self.target, self.options)
        events_sink = EventsSink(
            mongo, self.target.events_path, self.target.dead_letters_path,
            self.target.product_path, self.target.user_path,
            self.target.checkpoint(EVENTS_QUERY), self.target.topic, self.stats,
            self._record_sink)
        aggregations_sink = AggregationsSink(mongo, self.stats, self._record_sink)
        events_writer = (
            triage_events(parse_kafka_events(source)).writeStream.queryName(f"{EVENTS_QUERY}")
            .option("checkpointLocation", self.target.checkpoint(EVENTS_QUERY))
            .foreachBatch(events_sink)
        )
        aggregations_writer = (
            aggregation_documents(windowed_aggregates(source, self.options.watermark))
            .writeStream
            .queryName(AGGREGATIONS_QUERY).outputMode("update")
            .option("checkpointLocation", self.target.checkpoint(AGGREGATIONS_QUERY))
            .foreachBatch(aggregations_sink)
        )
        if self.options.history:
            self.queries[EVENTS_QUERY] = _trigger(events_writer, self.options,
                                                  self.options.events_trigger).start()
            # The query's id lives in its checkpoint: the lake's idempotent commits are keyed
            # by it.
            events_sink.set_app_id(str(self.queries[EVENTS_QUERY].id))
        self.queries[AGGREGATIONS_QUERY] = _trigger(aggregations_writer, self.options,
                                                    self.options.trigger_seconds).start()
        if self.options.sessions:
            sessions_sink = SessionsSink(mongo, self.stats, self._record_sink)
            sessions_writer = (
                session_updates(source, self.options).writeStream
                .queryName(SESSIONS_QUERY).outputMode("update")
                .option("checkpointLocation", self.target.checkpoint(SESSIONS_QUERY))
                .foreachBatch(sessions_sink)
            )
            self.queries[SESSIONS_QUERY] = _trigger(sessions_writer, self.options,
                                                    self.options.sessions_trigger).start()
            # Its funnel counters are keyed by the query's id, which its checkpoint keeps.
            sessions_sink.set_query_id(str(self.queries[SESSIONS_QUERY].id))

    def report_progress(self) -> None:
        """Hand every micro-batch not reported yet to ``on_progress`` (once each)."""
        for name, query in self.queries.items():
            for progress in query.recentProgress:
                batch_id = int(progress["batchId"])
                if batch_id <= self._reported.get(name, -1):
                    continue
                self._reported[name] = batch_id
                self._batches[name] = self._batches.get(name, 0) + 1
                rows = int(progress.get("numInputRows", 0))
                self._input_rows[name] = self._input_rows.get(name, 0) + rows
                if self.on_progress is not None:
                    self.on_progress(name, self._progress_record(name, progress))

    def _progress_record(self, name: str, progress: dict[str, Any]) -> dict[str, Any]:
        batch_id = int(progress["batchId"])
        output = self.sink_output.get((name, batch_id), {})
        source = (progress.get("sources") or [{}])[0]
        state = progress.get("stateOperators") or []
        return {
            "query": name,
            "batch_id": batch_id,
            "timestamp": progress.get("timestamp"),
            "input_rows": int(progress.get("numInputRows", 0)),
            "input_rows_per_second": progress.get("inputRowsPerSecond"),
            "processed_rows_per_second": progress.get("processedRowsPerSecond"),
            "duration_ms": (progress.get("durationMs") or {}).get("triggerExecution"),
            "durations_ms": dict(progress.get("durationMs") or {}),
            "start_offset": source.get("startOffset"),
            "end_offset": source.get("endOffset"),
            "watermark": (progress.get("eventTime") or {}).get("watermark"),
            "state_rows": sum(int(s.get("numRowsTotal", 0)) for s in state),
            "late_rows_dropped": sum(int(s.get("numRowsDroppedByWatermark", 0)) for s in state),
            "written": {k: v for k, v in output.items() if k != LEDGER_FIGURES},
            "ledger": output.get(LEDGER_FIGURES),
        }

    def stalled(self) -> str | None:
        """A query whose current micro-batch has run for ``stall_timeout_seconds``, if any
        (as a sentence), else None. A batch is told apart by the last reported batch id."""
        limit = self.options.stall_timeout_seconds
        now = time.monotonic()
        for name, query in self.queries.items():
            if not query.isActive or not query.status.get("isTriggerActive"):
                self._busy_since.pop(name, None)
                continue
            last = query.lastProgress
            done = int(last["batchId"]) if last else self._reported.get(name, -1)
            batch, since = self._busy_since.get(name, (done, now))
            if batch != done:  # a batch completed since: a new one is running
                batch, since = done, now
            self._busy_since[name] = (batch, since)
            if limit and now - since >= limit:
                return (f"the {name} query has been in micro-batch {done + 1} for "
                        f"{now - since:.0f} s (stall_timeout_seconds={limit:.0f}): a hung "
                        f"server or a stuck task; the run fails so that it is restarted")
        return None

    def failure(self) -> BaseException | None:
        for query in self.queries.values():
            exc = query.exception()
            if exc is not None:
                return exc
        return None

    def active(self) -> bool:
        return any(q.isActive for q in self.queries.values())

    def stop_queries(self) -> None:
        for name, query in self.queries.items():
            if query.isActive:
                try:
                    query.stop()
                except Exception as exc:  # stopTimeout: a stuck batch
                    logger.warning("the %s query did not stop cleanly: %s", name,
                                   failure_summary(exc))

    def stop(self) -> None:
        self.stop_queries()

    def summary(self, seconds: float) -> StreamSummary:
        """Batches and rows reported by this pipeline object (one start)."""
        return StreamSummary(batches=dict(self._batches),
                             input_rows=dict(self._input_rows), seconds=seconds,
                             sinks=self.stats.as_dict())


class StreamFailure(RuntimeError):
    """A streaming query terminated with an error (the other query is stopped too)."""


# Spark 4.1.1's Kafka source throws this NPE while reporting progress for the first batch
# after a restart when that batch is re-run from the offset log (SPARK-55271 / SPARK-57438,
# "KafkaMicroBatchStream.metrics ... Option.get() is null"). The batch's commit is written
# before the progress report fails, so starting the queries again simply goes on.
_KAFKA_METRICS_NPE = 'because the return value of "scala.Option.get()" is null'


def is_kafka_metrics_npe(exc: BaseException | None) -> bool:
    """The known NPE, in the exception or its causes (a StreamFailure keeps one line)."""
    while exc is not None:
        if _KAFKA_METRICS_NPE in str(exc):
            return True
        exc = exc.__cause__
    return False


# An exception line: a name ending like an error, or any dotted (module-qualified) class name,
# e.g. pymongo.errors.AutoReconnect.
_ERROR_LINE = re.compile(
    r"^\s*(?:Caused by: )?("
    r"[A-Za-z_][\w.$]*(?:Error|Exception|Timeout|Cancelled|Interrupted)\w*"
    r"|[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)+): (.+)$")


def failure_summary(exc: BaseException) -> str:
    """The line of a query failure that says what went wrong: the innermost ``SomeError:
    message`` of its (Java or Python) trace, else its first line."""
    text = str(exc)
    found = [m for line in text.splitlines() if (m := _ERROR_LINE.match(line))]
    if not found:
        return text.splitlines()[0] if text else type(exc).__name__
    name, message = found[-1].groups()
    return f"{name.rsplit('.', 1)[-1]}: {message}"


def _run_once(pipeline: StreamingPipeline, options: StreamOptions,
              should_stop: Callable[[], bool] | None) -> None:
    pipeline.start()
    try:
        while pipeline.active():
            pipeline.report_progress()
            exc = pipeline.failure()
            if exc is not None:
                raise StreamFailure(f"streaming query failed: {failure_summary(exc)}") from exc
            stall = pipeline.stalled()
            if stall is not None:
                raise StreamFailure(stall)
            if should_stop is not None and should_stop():
                break
            time.sleep(options.poll_seconds)
        pipeline.stop_queries()
        exc = pipeline.failure()
        if exc is not None:
            raise StreamFailure(f"streaming query failed: {failure_summary(exc)}") from exc
        pipeline.report_progress()
    finally:
        pipeline.stop()


def run_stream(spark: SparkSession, target: StreamTarget, options: StreamOptions,
               on_progress: ProgressCallback | None = None,
               should_stop: Callable[[], bool] | None = None,
               restarts_on_known_bug: int = 10) -> StreamSummary:
    """Run both queries until they finish (available-now), fail, or ``should_stop()``.

    A failure of either query stops the other and is raised: a supervisor (Dagster sensor)
    restarts the run, and the checkpoints make the restart resume where it left off. Only the
    known Spark 4.1.1 Kafka progress NPE after a restart is retried here, in-process. Stopping
    one query for the other's NPE can make the stopped one hit it too on its next start (seen
    three times in a row), so the budget is generous; each restart still makes progress.
    """
    started = time.perf_counter()
    stats = SinkStats()
    totals = StreamSummary()
    attempt = 0
    while True:
        pipeline = StreamingPipeline(spark, target, options, on_progress, stats)
        try:
            _run_once(pipeline, options, should_stop)
            failed = None
        except StreamFailure as exc:
            failed = exc
        part = pipeline.summary(0.0)
        for name, n in part.batches.items():
            totals.batches[name] = totals.batches.get(name, 0) + n
        for name, n in part.input_rows.items():
            totals.input_rows[name] = totals.input_rows.get(name, 0) + n
        if failed is None:
            break
        if not (is_kafka_metrics_npe(failed) and attempt < restarts_on_known_bug):
            raise failed
        attempt += 1
        logger.warning("restarting the streaming queries after Spark's Kafka progress NPE "
                       "(SPARK-55271), attempt %d", attempt)
    totals.seconds = time.perf_counter() - started
    totals.sinks = stats.as_dict()
    return totals


def target_from_resources(kafka, mongo, lake) -> StreamTarget:
    """The pipeline target from the Kafka, Mongo and lake resources (paths: the lake layout)."""
    return StreamTarget(
        kafka=kafka.connection, topic=kafka.topic,
        mongo_uri=mongo.uri, mongo_db=mongo.database,
        events_path=lake.events_path,
        dead_letters_path=lake.dead_letters_path,
        product_path=lake.dimension_path("product_catalog"),
        user_path=lake.dimension_path("user_dimension"),
        checkpoint_root=str(lake.root / "checkpoints"),
    )


def target_from(settings, lake=None) -> StreamTarget:
    """The pipeline target from ``Settings`` (the same resources the Definitions build)."""
    from journey_assets.resources import build_resources

    resources = build_resources(settings)
    target = target_from_resources(resources["kafka"], resources["mongo"],
                                   lake or resources["lake"])
    # Outside a Dagster run a resource's EnvVar is not resolved: the URI itself, from Settings.
    return replace(target, mongo_uri=settings.mongo_uri)
