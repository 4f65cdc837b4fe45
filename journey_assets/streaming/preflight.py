"""Checks before a streaming run starts Spark: each failure is one line that says what to do,
instead of a Java stack trace from inside a query (or an endless retry loop)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from journey_assets.settings import KafkaConnection, kafka_connection

#: How long each check waits for an answer.
TIMEOUT_S = 10.0


class PreflightError(RuntimeError):
    """A streaming run cannot start; the message is one line for the user."""


def mongo_hosts(uri: str) -> str:
    """The host part of a MongoDB URI without its credentials (safe to print)."""
    return urlsplit(uri).netloc.rsplit("@", 1)[-1] or uri.split("://", 1)[-1]


def check_kafka(kafka: KafkaConnection | str, topic: str | None,
                timeout_s: float = TIMEOUT_S) -> None:
    """The broker answers and (unless ``topic`` is None) the topic exists."""
    kafka = kafka_connection(kafka)
    bootstrap = kafka.bootstrap
    try:
        admin = KafkaAdminClient(client_id="journey-preflight",
                                 request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **kafka.python_options())
    except KafkaError as exc:
        hint = ("check JOURNEY_KAFKA_SECURITY_PROTOCOL and the SASL / TLS settings"
                if kafka.security_protocol != "PLAINTEXT" else "locally: `journey stack up`")
        raise PreflightError(
            f"no Kafka broker answers at {bootstrap} (JOURNEY_KAFKA_BOOTSTRAP, "
            f"{kafka.security_protocol}) within {timeout_s:.0f} s ({type(exc).__name__}); "
            f"{hint}") from None
    try:
        topics = admin.list_topics()
    except KafkaError as exc:
        raise PreflightError(f"Kafka at {bootstrap} did not list its topics "
                             f"({type(exc).__name__})") from None
    finally:
        admin.close()
    if topic is not None and topic not in topics:
        raise PreflightError(
            f"topic {topic!r} does not exist on {bootstrap} (JOURNEY_TOPIC); produce events "
            f"into it first (`journey simulate`, or the kafka_replay job)")


def check_mongo(uri: str, timeout_s: float = TIMEOUT_S) -> None:
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
                                      connectTimeoutMS=int(timeout_s * 1000))
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise PreflightError(
            f"MongoDB at {mongo_hosts(uri)} does not answer (JOURNEY_MONGO_URI) within "
            f"{timeout_s:.0f} s ({type(exc).__name__}); locally: `journey stack up`") from None
    finally:
        client.close()


def check_sources(kafka: KafkaConnection | str, topic: str, mongo_uri: str,
                  timeout_s: float = TIMEOUT_S) -> None:
    """Raise ``PreflightError`` unless the broker answers, the topic exists and MongoDB
    answers."""
    check_kafka(kafka, topic, timeout_s)
    check_mongo(mongo_uri, timeout_s)


def require_servers(kafka: KafkaConnection | str, mongo_uri: str) -> None:
    """For scripts (bench/) that create their own topics: exit with one line unless the
    broker and MongoDB answer."""
    try:
        check_kafka(kafka, None)
        check_mongo(mongo_uri)
    except (PreflightError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


#: The offset and commit logs of a query checkpoint: the files Spark reads first at a restart.
_CHECKPOINT_LOGS = ("offsets", "commits")


def check_checkpoints(query_checkpoints: Iterable[str | Path]) -> None:
    """Raise ``PreflightError`` if one of the queries' checkpoints is unreadable.

    Spark reads each query's ``metadata`` and the newest entry of its offset and commit logs
    when it restarts; a truncated or garbled one (a full disk, a copy cut short) fails inside
    the query with a long Java trace. Each log entry is a version line (``v1``) followed by
    JSON lines. The way out is to move the query's checkpoint aside: the query then starts
    afresh from ``startingOffsets``, and the lake's idempotent writes (bound to the
    checkpoint's identity) and MongoDB's replace-by-_id keep everything once.
    """
    for query in map(Path, query_checkpoints):
        if not (query / "metadata").exists():
            continue  # not started yet
        problem = _checkpoint_problem(query)
        if problem is not None:
            raise PreflightError(
                f"the streaming checkpoint {query} is corrupt ({problem}); move it aside "
                f"(`mv {query} {query}.corrupt`) and start again: the query restarts from the "
                f"topic's start and nothing is written twice (docs/streaming.md)")


def _checkpoint_problem(query: Path) -> str | None:
    metadata = query / "metadata"
    try:
        if "id" not in json.loads(metadata.read_text() or "null"):
            return f"{metadata.name} has no query id"
    except (ValueError, TypeError, OSError) as exc:
        return f"{metadata.name}: {type(exc).__name__}"
    for log in _CHECKPOINT_LOGS:
        entries = [p for p in (query / log).glob("[0-9]*") if p.name.isdigit()]
        if not entries:
            continue
        newest = max(entries, key=lambda p: int(p.name))
        where = f"{log}/{newest.name}"
        try:
            lines = newest.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return f"{where}: {type(exc).__name__}"
        if not lines or not re.fullmatch(r"v\d+", lines[0]):
            return f"{where} does not start with a version line"
        if len(lines) < 2:
            return f"{where} is truncated"
        for line in lines[1:]:
            try:
                json.loads(line)
            except ValueError:
                return f"{where} holds a line that is not JSON"
    return None
