"""Checks before a streaming run starts Spark: each failure is one line that says what to do,
instead of a Java stack trace from inside a query (or an endless retry loop)."""

from __future__ import annotations

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


def check_kafka(kafka: KafkaConnection | str, topic: str, timeout_s: float = TIMEOUT_S) -> None:
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
    if topic not in topics:
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
