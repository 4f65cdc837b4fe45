"""Kubernetes specifics of the code location: executor choice and per-asset pod resources.

Locally every step runs in-process (one Spark session shared by all steps). On Kubernetes
(``JOURNEY_DEPLOYMENT=k8s``, set by the Helm chart) each step of a run becomes its own Kubernetes
Job through ``dagster_k8s.k8s_job_executor``; the run itself is started by the ``K8sRunLauncher``
configured in the official Dagster chart (``helm/values-dagster.yaml``), not here: the run
launcher belongs to the Dagster *instance*, the executor to the *Definitions*.

Assets that need more (or less) than the default step pod ask for it with an op tag::

    @dg.asset(op_tags=k8s_resources(cpu="2", memory="6Gi"))
    def user_features(...): ...

The tag is ``dagster-k8s/config`` with ``container_config.resources``; it is deep-merged over
the executor's defaults below, so an asset only states what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from journey_assets.settings import Settings

# The op tag dagster-k8s reads for per-step Kubernetes config (dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY).
K8S_CONFIG_TAG = "dagster-k8s/config"

# A batch step runs one Spark driver in local mode (SparkResource: driver memory 4g) plus the
# Python side (pandas/Arrow): 3Gi is what it needs at rest, the 6Gi limit is the 4g heap plus
# off-heap and Python headroom, so the kernel does not OOM-kill a JVM that is merely growing.
DEFAULT_STEP_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "3Gi"},
    "limits": {"cpu": "2", "memory": "6Gi"},
}
# Step pods of one run running at once (dagster's limit is per run, not cluster-wide).
MAX_CONCURRENT_STEP_PODS = 4


def k8s_resources(
    cpu: str, memory: str, cpu_limit: str | None = None, memory_limit: str | None = None,
) -> dict[str, str]:
    """Op tags giving an asset's step pod these requests (and limits, default = requests).

    Pass as ``@dg.asset(op_tags=k8s_resources("2", "6Gi"))``. Limits are always set with the
    requests: a request above an inherited default limit would make the pod invalid.
    """
    resources = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit or cpu, "memory": memory_limit or memory},
    }
    # A JSON string: op tag values are strings, and dagster-k8s json-decodes this one.
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": resources}})}


def step_executor(
    max_concurrent: int = MAX_CONCURRENT_STEP_PODS,
    step_resources: dict[str, dict[str, str]] | None = None,
) -> dg.ExecutorDefinition:
    """``k8s_job_executor`` with default step-pod resources and a per-run pod limit.

    Namespace, image, service account, env, Secret refs and volumes are not set here: they come
    from the code location's container context (the chart's ``DAGSTER_CONTAINER_CONTEXT``) and
    the run launcher, so the same Definitions work in any namespace or release.
    """
    from dagster_k8s import k8s_job_executor  # only imported where it is used (the cluster)

    return k8s_job_executor.configured(
        {
            "max_concurrent": max_concurrent,
            "step_k8s_config": {
                "container_config": {"resources": step_resources or DEFAULT_STEP_RESOURCES},
            },
        },
        name="k8s_step_executor",
    )


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """In-process locally (one shared Spark session); one Kubernetes Job per step on k8s."""
    if settings.deployment == "k8s":
        return step_executor()
    return dg.in_process_executor


def deployment_resources(settings: Settings) -> dict[str, Any]:
    """Resources that differ by deployment (added on top of ``build_resources``).

    On Kubernetes every step is a separate pod, so outputs handed from one asset to the next
    must live on storage all pods see: the data PersistentVolumeClaim under JOURNEY_DATA_DIR
    (the default IO manager would write into each pod's own, discarded, DAGSTER_HOME).
    """
    if settings.deployment == "k8s":
        return {"io_manager": dg.FilesystemIOManager(base_dir=str(settings.data_dir / "dagster-io"))}
    return {}


def prune_jars_shipped_by_pyspark(folder: str | Path) -> list[str]:
    """Delete the jars in ``folder`` that the pyspark wheel already ships; return their names.

    Used when the image bakes the Kafka connector's dependency tree into JOURNEY_SPARK_JARS_DIR:
    Maven resolves scala-library, slf4j, compression codecs... which pyspark also has, and two
    copies of a class on the classpath is how version conflicts start (the same rule as
    ``journey_assets.local.artifacts.spark_connector_jars`` applies to the local cache).
    """
    import pyspark

    from journey_assets.local.artifacts import _jar_artifact

    shipped = {_jar_artifact(j) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    removed = []
    for jar in sorted(Path(folder).glob("*.jar")):
        if _jar_artifact(jar) in shipped:
            jar.unlink()
            removed.append(jar.name)
    return removed
