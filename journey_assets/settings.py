"""Runtime configuration: the one place that reads the environment.

Nothing here runs at import time; callers ask for ``Settings.from_env()`` when they need it
(CLI commands, the lazily-built Dagster ``Definitions``, tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017/"
DEFAULT_MONGO_DB = "journey"
DEFAULT_TOPIC = "customer_events"
#: Kafka records per streaming micro-batch (all partitions together) unless configured, in both
#: modes: the driver's memory and a batch's duration stay the same whatever the backlog.
DEFAULT_MAX_OFFSETS_PER_TRIGGER = 50_000


#: The one place a MongoDB URI with credentials may come from (a Kubernetes Secret in the chart).
MONGO_URI_ENV = "JOURNEY_MONGO_URI"
#: The one place the Kafka SASL password may come from (a Kubernetes Secret in the chart).
KAFKA_SASL_PASSWORD_ENV = "JOURNEY_KAFKA_SASL_PASSWORD"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_JAAS_MODULES = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
                 "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
                 "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}


@dataclass(frozen=True)
class KafkaConnection:
    """How every Kafka client of the project (kafka-python, confluent-kafka, Spark's connector)
    reaches the cluster: bootstrap servers and security, one set of settings.

    ``security_protocol``: PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL; SASL takes
    ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), a user and a password; TLS trusts
    the CA certificates of the PEM file ``ssl_ca_file`` (else the system's).
    """

    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in KAFKA_PROTOCOLS:
            raise ValueError(f"Kafka security protocol {self.security_protocol!r} is not one of "
                             f"{', '.join(KAFKA_PROTOCOLS)} (JOURNEY_KAFKA_SECURITY_PROTOCOL)")
        if self.sasl:
            if self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                raise ValueError(f"{self.security_protocol} needs a SASL mechanism, one of "
                                 f"{', '.join(KAFKA_SASL_MECHANISMS)} "
                                 f"(JOURNEY_KAFKA_SASL_MECHANISM), not {self.sasl_mechanism!r}")
            if not (self.sasl_username and self.sasl_password):
                raise ValueError(f"{self.security_protocol} needs a user and a password "
                                 f"(JOURNEY_KAFKA_SASL_USERNAME, {KAFKA_SASL_PASSWORD_ENV})")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def python_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap,
                                   "security_protocol": self.security_protocol}
        if self.sasl:
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        if self.tls and self.ssl_ca_file:
            options["ssl_cafile"] = self.ssl_ca_file
        return options

    def librdkafka_options(self) -> dict[str, Any]:
        """Configuration for confluent-kafka (librdkafka)."""
        options: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                   "security.protocol": self.security_protocol.lower()}
        if self.sasl:
            options.update({"sasl.mechanism": self.sasl_mechanism,
                            "sasl.username": self.sasl_username,
                            "sasl.password": self.sasl_password})
        if self.tls and self.ssl_ca_file:
            options["ssl.ca.location"] = self.ssl_ca_file
        return options

    def spark_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source (``kafka.``-prefixed consumer properties)."""
        options = {"kafka.bootstrap.servers": self.bootstrap,
                   "kafka.security.protocol": self.security_protocol}
        if self.sasl:
            user = self.sasl_username.replace('"', '\\"')  # type: ignore[union-attr]
            secret = self.sasl_password.replace('"', '\\"')  # type: ignore[union-attr]
            options["kafka.sasl.mechanism"] = self.sasl_mechanism or ""
            options["kafka.sasl.jaas.config"] = (
                f'{_JAAS_MODULES[self.sasl_mechanism or ""]} required '
                f'username="{user}" password="{secret}";')
        if self.tls and self.ssl_ca_file:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = self.ssl_ca_file
        return options


def kafka_connection(kafka: KafkaConnection | str) -> KafkaConnection:
    """A connection from itself or from bare bootstrap servers (PLAINTEXT)."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(bootstrap=kafka)


def has_credentials(uri: str) -> bool:
    """True for a URI that carries a user (and so, usually, a password)."""
    return "@" in urlsplit(uri).netloc


def project_home() -> Path:
    """Where local state lives (`.local/` under the working directory unless JOURNEY_HOME says)."""
    return Path(os.environ.get("JOURNEY_HOME", Path.cwd() / ".local")).resolve()


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_ca_file: str | None = None
    mongo_uri: str = DEFAULT_MONGO_URI
    mongo_db: str = DEFAULT_MONGO_DB
    topic: str = DEFAULT_TOPIC
    data_dir: Path = field(default_factory=lambda: project_home() / "data")
    # "local" runs everything in-process; "k8s" selects dagster-k8s executors (set by the chart).
    deployment: str = "local"
    spark_master: str = "local[2]"
    #: The Spark driver's JVM heap (spark.driver.memory; None: the role's default in
    #: resources/spark.py). In local mode the driver also hosts the executors. On Kubernetes it
    #: must fit the run pod's memory limit (the chart sets it).
    spark_driver_memory: str | None = None
    partitions_start: str = "2019-10-01"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            kafka_bootstrap=env.get("JOURNEY_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP),
            kafka_security_protocol=env.get("JOURNEY_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            kafka_sasl_mechanism=env.get("JOURNEY_KAFKA_SASL_MECHANISM") or None,
            kafka_sasl_username=env.get("JOURNEY_KAFKA_SASL_USERNAME") or None,
            kafka_sasl_password=env.get(KAFKA_SASL_PASSWORD_ENV) or None,
            kafka_ssl_ca_file=env.get("JOURNEY_KAFKA_SSL_CA_FILE") or None,
            mongo_uri=env.get(MONGO_URI_ENV, DEFAULT_MONGO_URI),
            mongo_db=env.get("JOURNEY_MONGO_DB", DEFAULT_MONGO_DB),
            topic=env.get("JOURNEY_TOPIC", DEFAULT_TOPIC),
            data_dir=Path(env.get("JOURNEY_DATA_DIR", project_home() / "data")).resolve(),
            deployment=env.get("JOURNEY_DEPLOYMENT", "local"),
            spark_master=env.get("JOURNEY_SPARK_MASTER", "local[2]"),
            spark_driver_memory=env.get("JOURNEY_SPARK_DRIVER_MEMORY") or None,
            partitions_start=env.get("JOURNEY_PARTITIONS_START", "2019-10-01"),
        )

    @property
    def kafka(self) -> KafkaConnection:
        """The Kafka connection (validated: a bad protocol or missing SASL setting fails here,
        in one line)."""
        return KafkaConnection(
            bootstrap=self.kafka_bootstrap, security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism, sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password, ssl_ca_file=self.kafka_ssl_ca_file)
