"""Ingestion: the Kafka topic as an external asset, and the ``kafka_replay`` job that fills it.

The topic is not computed by Dagster (producers outside it write to it too), so it is an
external ``AssetSpec``; a replay run records a materialization of it with the producer's
counts and the end offset of every partition. Downstream assets (dimensions, the streaming
job) depend on ``customer_events_topic``.
"""


import dagster as dg
from pyspark.sql import DataFrame, SparkSession

from journey_assets.resources import KafkaResource, MongoResource
from journey_assets.settings import KafkaConnection, kafka_connection
from journey_assets.sources.producer import CONFLUENT, REPLAY, produce, source_records
from journey_assets.sources.rees46 import DEAD_LETTER_EVENTS, DeadLetterWriter
from journey_assets.transforms.events import parse_kafka_events, valid_events

TOPIC_ASSET_KEY = dg.AssetKey("customer_events_topic")
INGESTION_GROUP = "ingestion"

customer_events_topic = dg.AssetSpec(
    key=TOPIC_ASSET_KEY,
    description="The Kafka topic of raw customer events (REES46 JSON values keyed by user_id): "
                "the replayable log everything else is computed from.",
    kinds={"kafka"},
    group_name=INGESTION_GROUP,
)


class ReplayConfig(dg.Config):
    """What to replay into the topic (same options as ``journey simulate``)."""

    source: str = "synthetic"          # synthetic | csv
    path: str | None = None            # the REES46 CSV for source=csv
    events: int | None = 100_000       # synthetic: how many; csv: first N lines (None: all)
    seed: int = 42
    start: str = "2019-10-01"
    days: int = 30
    invalid_fraction: float = 0.0
    mode: str = REPLAY                 # replay keeps event_time, live re-stamps to now
    rate: float | None = None          # events/s; None: as fast as possible
    client: str = CONFLUENT


@dg.op(description="Produce events into the topic and record a materialization of it.")
def replay_events(context: dg.OpExecutionContext, config: ReplayConfig,
                  kafka: KafkaResource, mongo: MongoResource) -> None:
    records = source_records(config.source, path=config.path, events=config.events,
                             seed=config.seed, start=config.start, days=config.days,
                             invalid_fraction=config.invalid_fraction)

    def log_progress(summary, rate: float) -> None:
        context.log.info(f"sent {summary.sent:,} events ({rate:,.0f} events/s)")

    summary = produce(records, kafka.connection, kafka.topic, rate=config.rate,
                      mode=config.mode, partitions=kafka.partitions, progress=log_progress,
                      client=config.client,
                      # Malformed CSV lines cannot reach Kafka: they go to the dead letters here.
                      dead_letters=DeadLetterWriter(
                          lambda docs: mongo.upsert(DEAD_LETTER_EVENTS, docs)))
    for line in summary.lines():
        context.log.info(line)
    if summary.failed:
        raise dg.Failure(f"{summary.failed} events were not acknowledged by Kafka",
                         metadata=summary.as_metadata())
    metadata = {
        **{k: v for k, v in summary.as_metadata().items() if k != "end_offsets"},
        "source": config.source,
        "end_offsets": dg.MetadataValue.json(summary.as_metadata()["end_offsets"]),
        "total_offset": sum(summary.end_offsets.values()),
    }
    context.log_event(dg.AssetMaterialization(asset_key=TOPIC_ASSET_KEY, metadata=metadata))


@dg.job(name="kafka_replay", description="Replay synthetic or REES46 CSV events into Kafka.")
def kafka_replay() -> None:
    replay_events()


def read_topic_events(spark: SparkSession, kafka: KafkaConnection | str, topic: str) -> DataFrame:
    """Valid typed events of the whole topic (Spark's Kafka batch source, earliest -> latest)."""
    kafka_rows = (
        spark.read.format("kafka")
        .options(**kafka_connection(kafka).spark_options())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
    )
    return valid_events(parse_kafka_events(kafka_rows))
