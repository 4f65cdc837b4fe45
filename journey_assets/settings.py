"""Runtime configuration: the one place that reads the environment.

Nothing here runs at import time; callers ask for ``Settings.from_env()`` when they need it
(CLI commands, the lazily-built Dagster ``Definitions``, tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
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


def has_credentials(uri: str) -> bool:
    """True for a URI that carries a user (and so, usually, a password)."""
    return "@" in urlsplit(uri).netloc


def project_home() -> Path:
    """Where local state lives (`.local/` under the working directory unless JOURNEY_HOME says)."""
    return Path(os.environ.get("JOURNEY_HOME", Path.cwd() / ".local")).resolve()


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    mongo_uri: str = DEFAULT_MONGO_URI
    mongo_db: str = DEFAULT_MONGO_DB
    topic: str = DEFAULT_TOPIC
    data_dir: Path = field(default_factory=lambda: project_home() / "data")
    # "local" runs everything in-process; "k8s" selects dagster-k8s executors (set by the chart).
    deployment: str = "local"
    spark_master: str = "local[2]"
    partitions_start: str = "2019-10-01"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            kafka_bootstrap=env.get("JOURNEY_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP),
            mongo_uri=env.get(MONGO_URI_ENV, DEFAULT_MONGO_URI),
            mongo_db=env.get("JOURNEY_MONGO_DB", DEFAULT_MONGO_DB),
            topic=env.get("JOURNEY_TOPIC", DEFAULT_TOPIC),
            data_dir=Path(env.get("JOURNEY_DATA_DIR", project_home() / "data")).resolve(),
            deployment=env.get("JOURNEY_DEPLOYMENT", "local"),
            spark_master=env.get("JOURNEY_SPARK_MASTER", "local[2]"),
            partitions_start=env.get("JOURNEY_PARTITIONS_START", "2019-10-01"),
        )
