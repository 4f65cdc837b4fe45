"""Kafka: the replayable event log."""

from __future__ import annotations

import dagster as dg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from journey_assets.settings import DEFAULT_KAFKA_BOOTSTRAP, DEFAULT_TOPIC


def ensure_topic(bootstrap: str, topic: str, partitions: int = 3, replication: int = 1) -> bool:
    """Create ``topic`` if missing; return True when it was created now."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="journey-admin")
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                          replication_factor=replication)])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Next offset to be written, per partition (the log's current end)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="journey-offsets")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class KafkaResource(dg.ConfigurableResource):
    """The event topic on a Kafka cluster (``JOURNEY_KAFKA_BOOTSTRAP`` / ``JOURNEY_TOPIC``)."""

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    partitions: int = 3
    replication_factor: int = 1

    def ensure_topic(self) -> bool:
        return ensure_topic(self.bootstrap_servers, self.topic, self.partitions,
                            self.replication_factor)

    def end_offsets(self) -> dict[int, int]:
        return end_offsets(self.bootstrap_servers, self.topic)
