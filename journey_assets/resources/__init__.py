"""Dagster resources, built from ``Settings`` (environment) in one place."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from journey_assets.resources.kafka import KafkaResource
from journey_assets.resources.lake import LakeResource
from journey_assets.resources.mongo import MongoResource
from journey_assets.resources.spark import SparkResource
from journey_assets.settings import (
    KAFKA_SASL_PASSWORD_ENV,
    MONGO_URI_ENV,
    Settings,
    has_credentials,
)

__all__ = ["KafkaResource", "LakeResource", "MongoResource", "SparkResource", "build_resources"]


def mongo_uri_config(settings: Settings) -> str:
    """The MongoDB URI as resource config: a URI with credentials only as a reference to the
    environment variable (``dg.EnvVar``), so Dagster resolves it in the run and never shows or
    stores it; a URI without credentials (the local stack) as it is."""
    if not has_credentials(settings.mongo_uri):
        return settings.mongo_uri
    if os.environ.get(MONGO_URI_ENV) != settings.mongo_uri:
        raise ValueError(f"a MongoDB URI with credentials is only read from the environment "
                         f"variable {MONGO_URI_ENV} (so that Dagster never shows it): set it "
                         f"there, or in the Kubernetes Secret the chart maps to it")
    return dg.EnvVar(MONGO_URI_ENV)


def kafka_resource(settings: Settings) -> KafkaResource:
    """The Kafka resource; the SASL password only as a reference to its environment variable."""
    kafka = settings.kafka  # validated here: a bad setting fails in one line
    password: Any = None
    if kafka.sasl_password:
        if os.environ.get(KAFKA_SASL_PASSWORD_ENV) != kafka.sasl_password:
            raise ValueError(f"the Kafka SASL password is only read from the environment "
                             f"variable {KAFKA_SASL_PASSWORD_ENV} (so that Dagster never shows "
                             f"it): set it there, or in the Kubernetes Secret the chart maps to it")
        password = dg.EnvVar(KAFKA_SASL_PASSWORD_ENV)
    return KafkaResource(
        bootstrap_servers=kafka.bootstrap, topic=settings.topic,
        security_protocol=kafka.security_protocol, sasl_mechanism=kafka.sasl_mechanism,
        sasl_username=kafka.sasl_username, sasl_password=password, ssl_ca_file=kafka.ssl_ca_file)


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "kafka": kafka_resource(settings),
        "mongo": MongoResource(uri=mongo_uri_config(settings), database=settings.mongo_db),
        "spark": SparkResource(master=settings.spark_master,
                               driver_memory=settings.spark_driver_memory),
        "lake": LakeResource(data_dir=str(settings.data_dir)),
    }
