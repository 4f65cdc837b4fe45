"""Shared fixtures: the real local stack, one Spark session, an isolated database and topic.

The stack (Kafka + FerretDB) is started if it is not already running and stopped again at
the end only when this test run started it. Each test run gets its own MongoDB database and
topic names, so a developer's `journey dev` data is never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.local.stack import LocalStack, kafka_ready, mongo_ready
from journey_assets.resources.kafka import ensure_topic
from journey_assets.settings import DEFAULT_KAFKA_BOOTSTRAP, DEFAULT_MONGO_URI, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """The embedded stack, started for this run unless Kafka and a MongoDB-wire server already
    answer on the default addresses (a developer's `journey stack up`, or another checkout's)."""
    os.environ.setdefault("JOURNEY_HOME", str(PROJECT_ROOT / ".local"))
    stack = LocalStack()
    started_here = False
    if not (kafka_ready(stack.kafka.port) and mongo_ready(stack.mongo.port)):
        started_here = all(svc.pid() is None for svc in stack.services)
        stack.up()
    yield stack
    if started_here and os.environ.get("JOURNEY_KEEP_STACK") != "1":
        stack.down()


@pytest.fixture(scope="session")
def settings(local_stack: LocalStack, run_id: str, tmp_path_factory) -> Settings:
    return Settings(
        kafka_bootstrap=DEFAULT_KAFKA_BOOTSTRAP,
        mongo_uri=DEFAULT_MONGO_URI,
        mongo_db=f"journey_test_{run_id}",
        topic=f"customer_events_{run_id}",
        data_dir=tmp_path_factory.mktemp("data"),
    )


@pytest.fixture(scope="session")
def mongo_db(settings: Settings) -> Iterator[Database]:
    client: MongoClient = MongoClient(settings.mongo_uri, tz_aware=True)
    db = client[settings.mongo_db]
    yield db
    client.drop_database(settings.mongo_db)
    client.close()


@pytest.fixture(scope="session")
def spark(local_stack: LocalStack):
    """One Spark session for the whole run: starting one costs 20+ s here."""
    from journey_assets.resources.spark import build_spark_session

    session = build_spark_session(master="local[2]", app_name="journey_assets_tests",
                                  shuffle_partitions=2, driver_memory="3g")
    yield session
    session.stop()


@pytest.fixture
def fresh_topic(settings: Settings) -> str:
    """A new, empty topic with 3 partitions for one test."""
    name = f"{settings.topic}_{uuid.uuid4().hex[:6]}"
    ensure_topic(settings.kafka_bootstrap, name, partitions=3)
    return name


# -- the fault matrix's tally ----------------------------------------------------------------
@dataclass
class FaultTally:
    """Faults injected by the fault-matrix tests, and what the final states showed."""

    injected: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0

    def inject(self, name: str) -> None:
        self.injected.append(name)

    def outcome(self, name: str, lost: int, duplicated: int) -> None:
        """Record a fault's final state; it survived when nothing was lost or doubled."""
        self.lost += lost
        self.duplicated += duplicated
        if not lost and not duplicated:
            self.survived.append(name)

    def line(self) -> str:
        return (f"faults injected {len(self.injected)}, survived {len(self.survived)}, "
                f"events lost {self.lost}, duplicated {self.duplicated}")


FAULTS = FaultTally()


@pytest.fixture(scope="session")
def fault_tally() -> FaultTally:
    return FAULTS


def pytest_terminal_summary(terminalreporter) -> None:
    if FAULTS.injected:
        terminalreporter.write_line(FAULTS.line())
