"""The one ``Definitions`` of the journey_assets code location.

Built lazily (``@dg.definitions``): the environment is read when Dagster loads the code
location, not when this module is imported.
"""

from __future__ import annotations

import dagster as dg

from journey_assets import k8s
from journey_assets.assets.batch import build_batch_definitions
from journey_assets.assets.dimensions import DIMENSION_CHECKS, dimension_tables
from journey_assets.assets.ingestion import customer_events_topic, kafka_replay
from journey_assets.assets.maintenance import (
    lake_maintenance,
    lake_maintenance_job,
    lake_maintenance_schedule,
)
from journey_assets.assets.streaming import (
    STREAMING_CHECKS,
    streaming_catchup_job,
    streaming_job,
    streaming_pipeline,
)
from journey_assets.resources import build_resources
from journey_assets.sensors import streaming_supervisor
from journey_assets.settings import Settings


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """In-process locally (one Spark session shared by every step); one Kubernetes Job per step
    (k8s_job_executor with default pod resources, see journey_assets.k8s) when
    JOURNEY_DEPLOYMENT=k8s. The run launcher (K8sRunLauncher) is instance config: helm/."""
    return k8s.executor_for(settings)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    batch = build_batch_definitions(settings)
    return dg.Definitions(
        assets=[customer_events_topic, dimension_tables, streaming_pipeline, lake_maintenance,
                *batch.assets],
        asset_checks=[*DIMENSION_CHECKS, *STREAMING_CHECKS],
        jobs=[kafka_replay, streaming_job, streaming_catchup_job, lake_maintenance_job,
              *batch.jobs],
        schedules=[*batch.schedules, lake_maintenance_schedule],
        sensors=[streaming_supervisor],
        resources={**build_resources(settings), **k8s.deployment_resources(settings)},
        executor=executor_for(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
