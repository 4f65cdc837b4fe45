"""Kafka security: one connection setting (protocol, SASL, TLS CA) for every client - the
producers, the admin and offset clients, the preflight and Spark's Kafka source - and the SASL
password only ever as a reference to its environment variable.

The end-to-end test runs a private broker with a SASL_PLAINTEXT listener (PLAIN users) on its
own ports and goes through it with each client.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from journey_assets.assets.ingestion import read_topic_events
from journey_assets.local.stack import LocalStack
from journey_assets.resources import KafkaResource, build_resources
from journey_assets.resources.kafka import end_offsets
from journey_assets.settings import KAFKA_SASL_PASSWORD_ENV, KafkaConnection, Settings
from journey_assets.sources.producer import CONFLUENT, KAFKA_PYTHON, produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.preflight import PreflightError, check_kafka

SASL_ENV = {"JOURNEY_KAFKA_BOOTSTRAP": "kafka.example:9096",
            "JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "JOURNEY_KAFKA_SASL_USERNAME": "journey",
            KAFKA_SASL_PASSWORD_ENV: 'pa"ss-w0rd',
            "JOURNEY_KAFKA_SSL_CA_FILE": "/etc/journey/kafka-ca/ca.crt"}


def test_settings_give_every_client_the_same_security() -> None:
    kafka = Settings.from_env(SASL_ENV).kafka
    assert kafka.python_options() == {
        "bootstrap_servers": "kafka.example:9096", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "journey",
        "sasl_plain_password": 'pa"ss-w0rd', "ssl_cafile": "/etc/journey/kafka-ca/ca.crt"}
    assert kafka.librdkafka_options() == {
        "bootstrap.servers": "kafka.example:9096", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "journey",
        "sasl.password": 'pa"ss-w0rd', "ssl.ca.location": "/etc/journey/kafka-ca/ca.crt"}
    spark = kafka.spark_options()
    assert spark["kafka.security.protocol"] == "SASL_SSL"
    assert spark["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="journey" password="pa\\"ss-w0rd";')
    assert spark["kafka.ssl.truststore.type"] == "PEM"
    assert spark["kafka.ssl.truststore.location"] == "/etc/journey/kafka-ca/ca.crt"
    # The default stays plain, with nothing else set.
    assert Settings.from_env({}).kafka.spark_options() == {
        "kafka.bootstrap.servers": "127.0.0.1:9092", "kafka.security.protocol": "PLAINTEXT"}
    assert "pa" not in repr(kafka)  # the password is left out of the repr


@pytest.mark.parametrize(("env", "message"), [
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "TLS"}, "not one of PLAINTEXT, SSL"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a SASL mechanism"),
    ({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "JOURNEY_KAFKA_SASL_MECHANISM": "PLAIN",
      "JOURNEY_KAFKA_SASL_USERNAME": "u"}, KAFKA_SASL_PASSWORD_ENV),
])
def test_a_bad_security_setting_is_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _ = Settings.from_env(env).kafka


def test_the_sasl_password_is_an_env_var_reference(monkeypatch, tmp_path: Path) -> None:
    env = {**SASL_ENV, "JOURNEY_DATA_DIR": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kafka = build_resources(Settings.from_env(env))["kafka"]
    shown = repr(kafka.model_dump())
    assert "pa\"ss" not in shown and "ss-w0rd" not in shown and KAFKA_SASL_PASSWORD_ENV in shown

    @dg.asset
    def password_seen(kafka: KafkaResource) -> str:
        return kafka.connection.sasl_password or ""

    result = dg.materialize([password_seen], resources={"kafka": kafka})
    assert result.output_for_node("password_seen") == 'pa"ss-w0rd'

    # A password from anywhere but its variable is refused (it would be shown by Dagster).
    monkeypatch.delenv(KAFKA_SASL_PASSWORD_ENV)
    with pytest.raises(ValueError, match=KAFKA_SASL_PASSWORD_ENV):
        build_resources(Settings.from_env(env))


@pytest.fixture(scope="module")
def sasl_broker(local_stack: LocalStack, tmp_path_factory) -> KafkaConnection:
    """A private broker: PLAINTEXT on 19392, SASL_PLAINTEXT (PLAIN, user journey) on 19394."""
    stack = LocalStack(tmp_path_factory.mktemp("sasl_stack"), kafka_port=19392,
                       kafka_controller_port=19393, mongo_port=27317,
                       artifacts_home=local_stack.artifacts_home, kafka_sasl_port=19394,
                       kafka_sasl_users={"journey": "kafka-s3cret"})
    stack.up()
    try:
        yield KafkaConnection(bootstrap="127.0.0.1:19394", security_protocol="SASL_PLAINTEXT",
                              sasl_mechanism="PLAIN", sasl_username="journey",
                              sasl_password="kafka-s3cret")
    finally:
        stack.down()


@pytest.mark.slow  # a second broker (~15 s)
def test_every_client_goes_through_a_sasl_listener(sasl_broker: KafkaConnection, spark) -> None:
    topic = "customer_events_sasl"
    records = list(generate_records(SyntheticConfig(n_events=300, seed=7, invalid_fraction=0)))
    sent = 0
    for client in (CONFLUENT, KAFKA_PYTHON):
        summary = produce(records, sasl_broker, topic, client=client, progress=False)
        assert summary.failed == 0 and summary.sent == len(records)
        sent += summary.sent
    assert sum(end_offsets(sasl_broker, topic).values()) == sent
    check_kafka(sasl_broker, topic, timeout_s=10)

    # Spark's Kafka source, with the JAAS configuration built from the same settings.
    assert read_topic_events(spark, sasl_broker, topic).count() == sent

    # A wrong password and a client without SASL fail the preflight in one line.
    wrong = KafkaConnection(bootstrap=sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT",
                            sasl_mechanism="PLAIN", sasl_username="journey",
                            sasl_password="not-it")
    for connection in (wrong, KafkaConnection(bootstrap=sasl_broker.bootstrap)):
        with pytest.raises(PreflightError) as failure:
            check_kafka(connection, topic, timeout_s=5)
        assert "\n" not in str(failure.value) and "127.0.0.1:19394" in str(failure.value)
