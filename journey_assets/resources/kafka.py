"""Kafka: the replayable event log."""

from __future__ import annotations

import dagster as dg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from journey_assets.settings import (
    DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_TOPIC,
    KafkaConnection,
    kafka_connection,
)


def ensure_topic(kafka: KafkaConnection | str, topic: str, partitions: int = 3,
                 replication: int = 1) -> bool:
    """Create ``topic`` if missing; return True when it was created now."""
    admin = KafkaAdminClient(client_id="journey-admin", **kafka_connection(kafka).python_options())
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


def end_offsets(kafka: KafkaConnection | str, topic: str) -> dict[int, int]:
    """Next offset to be written, per partition (the log's current end)."""
    consumer = KafkaConsumer(client_id="journey-offsets", **kafka_connection(kafka).python_options())
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class KafkaResource(dg.ConfigurableResource):
    """The event topic on a Kafka cluster (``JOURNEY_KAFKA_BOOTSTRAP`` / ``JOURNEY_TOPIC``, and
    the ``JOURNEY_KAFKA_SECURITY_PROTOCOL`` / ``_SASL_*`` / ``_SSL_CA_FILE`` settings). The SASL
    password is config only as a reference to ``JOURNEY_KAFKA_SASL_PASSWORD``."""

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    partitions: int = 3
    replication_factor: int = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_file: str | None = None

    @property
    def connection(self) -> KafkaConnection:
        return KafkaConnection(
            bootstrap=self.bootstrap_servers, security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism, sasl_username=self.sasl_username,
            sasl_password=self.sasl_password, ssl_ca_file=self.ssl_ca_file)

    def ensure_topic(self) -> bool:
        return ensure_topic(self.connection, self.topic, self.partitions,
                            self.replication_factor)

    def end_offsets(self) -> dict[int, int]:
        return end_offsets(self.connection, self.topic)
