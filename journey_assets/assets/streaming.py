"""The streaming outputs as Dagster assets, and the jobs that run the pipeline.

One multi-asset op runs both streaming queries. ``streaming_job`` runs it continuously (the
``streaming_supervisor`` sensor keeps exactly one such run alive); ``streaming_catchup_job``
runs it available-now: everything the topic holds, then it stops. Each micro-batch is logged,
and the touched assets are materialized at most every ``materialize_every_s`` seconds so the UI
shows their freshness while the run is still going.
"""

# No `from __future__ import annotations`: Dagster reads the config annotation at runtime.

import dagster as dg

from journey_assets.resources import KafkaResource, LakeResource, MongoResource, SparkResource
from journey_assets.settings import DEFAULT_MAX_OFFSETS_PER_TRIGGER
from journey_assets.streaming.lease import LeaseHeld, checkpoint_lease
from journey_assets.streaming.ledger import DATA_QUALITY_LEDGER, ledger_problems, skipped_ranges
from journey_assets.streaming.pipeline import (
    AVAILABLE_NOW,
    CONTINUOUS,
    StreamOptions,
    run_stream,
    target_from_resources,
)
from journey_assets.streaming.preflight import PreflightError, check_checkpoints, check_sources
from journey_assets.streaming.progress import DagsterProgressReporter, ledger_metadata
from journey_assets.streaming.sinks import (
    CONVERSION_FUNNEL,
    DEAD_LETTER_EVENTS,
    ENRICHED_EVENTS,
    EVENT_AGGREGATIONS,
    USER_SESSION_ANALYTICS,
)
from journey_assets.transforms.sessions import funnel_rates

# Defined by the events assets; referenced by key so this module does not import them.
TOPIC_KEY = dg.AssetKey("customer_events_topic")
PRODUCT_CATALOG_KEY = dg.AssetKey("product_catalog")
USER_DIMENSION_KEY = dg.AssetKey("user_dimension")

STREAMING_GROUP = "streaming"
STREAMING_OP = "streaming_pipeline"
STREAMING_JOB = "streaming_job"
STREAMING_CATCHUP_JOB = "streaming_catchup_job"

_KINDS = {"spark", "kafka", "mongodb"}
STREAMING_SPECS = [
    dg.AssetSpec(ENRICHED_EVENTS, group_name=STREAMING_GROUP, kinds={*_KINDS, "delta"},
                 deps=[TOPIC_KEY, PRODUCT_CATALOG_KEY, USER_DIMENSION_KEY],
                 description="Unique valid events with keys and dimension fields (_id = "
                             "event_id), in MongoDB and the Delta lake by event_date."),
    dg.AssetSpec(DEAD_LETTER_EVENTS, group_name=STREAMING_GROUP, kinds=_KINDS, deps=[TOPIC_KEY],
                 description="Rejected records: raw payload, reason, topic/partition/offset."),
    dg.AssetSpec(EVENT_AGGREGATIONS, group_name=STREAMING_GROUP, kinds=_KINDS, deps=[TOPIC_KEY],
                 description="Per 5-min tumbling and 10/5-min sliding window x event_type x "
                             "category_l1 (10-minute watermark, update mode)."),
    dg.AssetSpec(USER_SESSION_ANALYTICS, group_name=STREAMING_GROUP, kinds=_KINDS,
                 deps=[dg.AssetKey(ENRICHED_EVENTS)],
                 description="Per user_session: streaming state (closed 30 minutes of event "
                             "time after its last event), upserted while open and when closed."),
    dg.AssetSpec(CONVERSION_FUNNEL, group_name=STREAMING_GROUP, kinds=_KINDS,
                 deps=[dg.AssetKey(USER_SESSION_ANALYTICS)],
                 description="Per day of session_start: sessions per stage, rates conditional "
                             "on the previous stage (<= 1), the ordered view -> cart -> "
                             "purchase funnel, revenue."),
    dg.AssetSpec(DATA_QUALITY_LEDGER, group_name=STREAMING_GROUP, kinds=_KINDS, deps=[TOPIC_KEY],
                 description="Per events micro-batch: Kafka records in = new in the lake + "
                             "duplicates + dead-lettered by reason + late dropped, and the "
                             "offset ranges skipped by retention (docs/streaming.md)."),
]
#: The assets the events query writes: their metadata carry the ledger's last figures.
EVENTS_QUERY_ASSETS = {ENRICHED_EVENTS, DEAD_LETTER_EVENTS, DATA_QUALITY_LEDGER}


class StreamRunConfig(dg.Config):
    mode: str = CONTINUOUS
    trigger_seconds: float = 2.0
    #: Trigger of the events query (None: the pipeline's default, 60 s; docs/streaming.md).
    events_trigger_seconds: float | None = None
    #: Trigger of the sessions query (None: the pipeline's default, 45 s; docs/streaming.md).
    sessions_trigger_seconds: float | None = None
    #: Kafka records per micro-batch (0: no cap); bounds the driver's memory and a batch.
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER
    watermark: str = "10 minutes"
    #: A session closes this many minutes of event time after its last event.
    session_gap_minutes: float = 30.0
    materialize_every_s: float = 30.0
    #: Watchdog: fail the run when a micro-batch runs this long (0: off).
    stall_timeout_seconds: float = 900.0


@dg.multi_asset(specs=STREAMING_SPECS, name=STREAMING_OP, can_subset=False)
def streaming_pipeline(context: dg.AssetExecutionContext, config: StreamRunConfig,
                       kafka: KafkaResource, mongo: MongoResource, lake: LakeResource,
                       spark: SparkResource):
    """Run the streaming queries (events, aggregations, sessions; see
    journey_assets.streaming.pipeline)."""
    kafka.ensure_topic()
    target = target_from_resources(kafka, mongo, lake)
    try:
        check_sources(target.kafka, target.topic, target.mongo_uri)
        check_checkpoints(target.query_checkpoints())
    except PreflightError as exc:
        raise dg.Failure(description=str(exc)) from None
    options = StreamOptions(mode=config.mode, trigger_seconds=config.trigger_seconds,
                            events_trigger_seconds=config.events_trigger_seconds,
                            sessions_trigger_seconds=config.sessions_trigger_seconds,
                            max_offsets_per_trigger=config.max_offsets_per_trigger,
                            watermark=config.watermark,
                            session_gap_minutes=config.session_gap_minutes,
                            write_strategy=mongo.write_strategy,
                            stall_timeout_seconds=config.stall_timeout_seconds)
    reporter = DagsterProgressReporter(context, config.materialize_every_s)
    context.log.info(f"streaming {kafka.topic} -> {mongo.database} ({config.mode})")
    try:  # one writer per checkpoint: the catch-up job next to the continuous run stops here
        with checkpoint_lease(target.checkpoint_root,
                              owner=f"dagster run {context.run_id} ({config.mode})"):
            summary = run_stream(spark.get_session(streaming=True), target, options,
                                 on_progress=reporter)
    except LeaseHeld as exc:
        raise dg.Failure(description=str(exc)) from None
    # The run's own materializations close it: totals of this run per asset.
    sink_docs = summary.sinks.get("documents", {})
    for spec in STREAMING_SPECS:
        name = spec.key.path[-1]
        yield dg.MaterializeResult(asset_key=spec.key, metadata={
            "mode": config.mode,
            "batches": summary.batches,
            "input_rows": summary.input_rows,
            "documents_written": int(sink_docs.get(f"mongo.{name}", 0)),
            "seconds": round(summary.seconds, 1),
            **(ledger_metadata(reporter.last_ledger) if name in EVENTS_QUERY_ASSETS else {}),
        })


@dg.asset_check(asset=CONVERSION_FUNNEL, name="funnel_rates_within_0_1",
                description="Every rate of every day's funnel (the three stage rates and each "
                            "ordered step's conversions) is between 0 and 1.")
def funnel_rates_within_0_1(mongo: MongoResource) -> dg.AssetCheckResult:
    days, bad = 0, []
    with mongo.db() as db:
        for doc in db[CONVERSION_FUNNEL].find({}):  # one small document a day
            days += 1
            if not all(0.0 <= rate <= 1.0 for rate in funnel_rates(doc)):
                bad.append(doc["_id"])
    return dg.AssetCheckResult(passed=not bad, metadata={
        "days_checked": days, "days_out_of_range": len(bad), "first_bad_days": bad[:10]})


#: Ledger problems and skipped ranges listed in a check's metadata (the rest are counted).
_LISTED = 20


@dg.asset_check(asset=DATA_QUALITY_LEDGER, name="ledger_identity_holds",
                description="On every micro-batch: Kafka records in = new in the lake + "
                            "duplicates + dead-lettered (by reason) + late dropped, and records "
                            "read by partition = records in.")
def ledger_identity_holds(mongo: MongoResource) -> dg.AssetCheckResult:
    batches, problems = 0, []
    with mongo.db() as db:
        for doc in db[DATA_QUALITY_LEDGER].find({}, batch_size=1_000):  # a document a batch
            batches += 1
            problems.extend(ledger_problems(doc))
    return dg.AssetCheckResult(passed=not problems, metadata={
        "batches_checked": batches, "problems": len(problems),
        "first_problems": problems[:_LISTED]})


@dg.asset_check(asset=DATA_QUALITY_LEDGER, name="no_offsets_skipped",
                description="No Kafka offset was skipped unread (deleted by retention before "
                            "the pipeline read it, or a gap in a planned range); a failure "
                            "lists the ranges.")
def no_offsets_skipped(mongo: MongoResource) -> dg.AssetCheckResult:
    ranges, gaps = [], 0
    with mongo.db() as db:
        lossy = {"$or": [{"skipped_offsets": {"$gt": 0}}, {"gap_offsets": {"$gt": 0}}]}
        for doc in db[DATA_QUALITY_LEDGER].find(lossy, batch_size=1_000):
            ranges.extend(skipped_ranges(doc))
            gaps += int(doc.get("gap_offsets") or 0)
    skipped = sum(r["to"] - r["from"] for r in ranges)
    return dg.AssetCheckResult(
        passed=not ranges and not gaps,
        description=(None if not ranges and not gaps else
                     f"{skipped} offsets skipped unread in {len(ranges)} ranges, {gaps} in gaps"),
        metadata={"skipped_offsets": skipped, "gap_offsets": gaps,
                  "skipped_ranges": ranges[:_LISTED]})


STREAMING_CHECKS = [funnel_rates_within_0_1, ledger_identity_holds, no_offsets_skipped]


def _job(name: str, mode: str, description: str):
    return dg.define_asset_job(
        name, selection=dg.AssetSelection.assets(*[s.key for s in STREAMING_SPECS]),
        config={"ops": {STREAMING_OP: {"config": {"mode": mode}}}},
        description=description, tags={"journey/streaming": mode},
    )


streaming_job = _job(STREAMING_JOB, CONTINUOUS,
                     "Long-running streaming run (processing-time trigger); supervised by "
                     "the streaming_supervisor sensor.")
streaming_catchup_job = _job(STREAMING_CATCHUP_JOB, AVAILABLE_NOW,
                             "Catch-up: process everything in the topic, then stop.")
