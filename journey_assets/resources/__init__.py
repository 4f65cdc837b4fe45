"""Dagster resources, built from ``Settings`` (environment) in one place."""

from __future__ import annotations

from typing import Any

from journey_assets.resources.kafka import KafkaResource
from journey_assets.resources.lake import LakeResource
from journey_assets.resources.mongo import MongoResource
from journey_assets.resources.spark import SparkResource
from journey_assets.settings import Settings

__all__ = ["KafkaResource", "LakeResource", "MongoResource", "SparkResource", "build_resources"]


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic),
        "mongo": MongoResource(uri=settings.mongo_uri, database=settings.mongo_db),
        "spark": SparkResource(master=settings.spark_master),
        "lake": LakeResource(data_dir=str(settings.data_dir)),
    }
