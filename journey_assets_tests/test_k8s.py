"""Executor choice by environment, and the Kubernetes Job dagster-k8s builds for a batch step.

No cluster: the Job is built by the real ``k8s_job_executor`` step handler from the real
Definitions' executor, the chart's rendered container context and the asset's
``dagster-k8s/config`` tag; only the Kubernetes API call that would submit it is a mock, and
the captured Job is validated against the Kubernetes schema.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
from dagster._core.definitions.reconstruct import reconstructable
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import k8s_job_executor
from dagster_k8s.job import get_user_defined_k8s_config

from journey_assets.definitions import build_definitions
from journey_assets.k8s import (
    DEFAULT_STEP_RESOURCES,
    K8S_CONFIG_TAG,
    MAX_CONCURRENT_STEP_PODS,
    executor_for,
    k8s_resources,
    prune_jars_shipped_by_pyspark,
)
from journey_assets.local.artifacts import spark_connector_jars
from journey_assets.settings import Settings
from journey_assets_tests.test_helm import (
    KUBE_VERSION,
    NAMESPACE,
    code_server,
    env_value,
    journey_env,
    one,
    render,
)

ROOT = Path(__file__).resolve().parents[1]
K8S_ENV = {"JOURNEY_DEPLOYMENT": "k8s", "JOURNEY_DATA_DIR": "/data"}
HEAVY = {"cpu": "2", "memory": "6Gi"}


# ---- a batch job shaped like the project's: one heavy asset (tagged), one with defaults ----------
# (names of their own, so they never collide with the project's assets merged in below)

@dg.asset(op_tags=k8s_resources(cpu=HEAVY["cpu"], memory=HEAVY["memory"]))
def probe_user_features() -> dg.MaterializeResult:
    return dg.MaterializeResult()


@dg.asset(deps=[probe_user_features])
def probe_customer_segments() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def batch_job() -> dg.JobDefinition:
    """The job as the cluster's code location builds it (module-level: reconstructable)."""
    defs = dg.Definitions.merge(
        build_definitions(Settings.from_env(K8S_ENV)),
        dg.Definitions(assets=[probe_user_features, probe_customer_segments],
                       jobs=[dg.define_asset_job(
                           "batch", selection=[probe_user_features, probe_customer_segments])]),
    )
    return defs.resolve_job_def("batch")


# ---- executor choice --------------------------------------------------------------------------------

def test_definitions_pick_the_executor_by_environment() -> None:
    local = build_definitions(Settings.from_env({"JOURNEY_DATA_DIR": "/tmp/x"}))
    assert local.executor is dg.in_process_executor
    assert "io_manager" not in (local.resources or {})

    k8s = build_definitions(Settings.from_env(K8S_ENV))
    assert k8s.executor is not None
    # k8s_job_executor, configured: same step-delegating implementation, our defaults.
    assert k8s.executor.executor_creation_fn is k8s_job_executor.executor_creation_fn
    assert k8s.executor.name == "k8s_step_executor"
    # Steps run in separate pods: hand-offs go through the shared data volume.
    io_manager = k8s.resources["io_manager"]
    assert isinstance(io_manager, dg.FilesystemIOManager)
    assert io_manager.base_dir == "/data/dagster-io"

    # Every job of the code location inherits it (the project's asset jobs included).
    assert {j.executor_def.name for j in k8s.resolve_all_job_defs()} == {"k8s_step_executor"}
    job = batch_job()
    assert job.executor_def.name == k8s.executor.name
    assert job.executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn
    config = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
    assert config["max_concurrent"] == MAX_CONCURRENT_STEP_PODS
    assert config["step_k8s_config"]["container_config"]["resources"] == DEFAULT_STEP_RESOURCES


def test_k8s_resources_tag_is_what_dagster_k8s_reads() -> None:
    tags = k8s_resources("500m", "1Gi", memory_limit="2Gi")
    assert list(tags) == [K8S_CONFIG_TAG]
    parsed = get_user_defined_k8s_config(tags)
    assert parsed.container_config["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "2Gi"},
    }
    assert executor_for(Settings.from_env({})) is dg.in_process_executor


# ---- the step Job, built without a cluster ---------------------------------------------------------

@pytest.fixture(scope="module")
def chart_pod() -> dict[str, Any]:
    """What the chart gives the code server: image, container context, settings."""
    docs = render()
    container = code_server(docs)
    return {
        "image": env_value(container, "DAGSTER_CURRENT_IMAGE")["value"],
        "container_context": json.loads(
            env_value(container, "DAGSTER_CONTAINER_CONTEXT")["value"]),
        "env": journey_env(docs),
        "pvc": one(docs, "PersistentVolumeClaim")["metadata"]["name"],
        "service_account": one(docs, "ServiceAccount")["metadata"]["name"],
        "env_config_map": container["envFrom"][0]["configMapRef"]["name"],
    }


@pytest.fixture
def k8s_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run launcher is the K8sRunLauncher of the official chart,
    pointed at a kubeconfig for a cluster that does not exist (nothing may call it)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
    }))
    launcher = {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": "dagster-postgresql-secret",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_namespace": "dagster",
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
    }
    with instance_for_test(overrides={"run_launcher": {
            "module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher}}) as instance:
        yield instance


def launch_step_job(instance: dg.DagsterInstance, chart_pod: dict[str, Any],
                    step_key: str) -> tuple[kubernetes.client.V1Job, str]:
    """Run the executor's step handler for one step; return the Job it submits + namespace."""
    recon_job = reconstructable(batch_job)
    job_def = recon_job.get_definition()
    origin = recon_job.get_python_origin()
    # The code location as the chart deploys it: image and container context of the server.
    origin = origin._replace(repository_origin=origin.repository_origin._replace(
        container_image=chart_pod["image"], container_context=chart_pod["container_context"]))
    run = create_run_for_test(instance, job_name="batch", job_code_origin=origin)

    engine_config = ResolvedRunConfig.build(job_def, {}).execution.execution_engine_config
    executor = job_def.executor_def.executor_creation_fn(InitExecutorContext(
        job=recon_job, executor_def=job_def.executor_def, executor_config=engine_config,
        instance=instance))
    handler = executor._step_handler
    batch_api = mock.MagicMock()  # the cluster: receives the Job instead of a real API server
    handler._api_client.batch_api = batch_api

    plan = create_execution_plan(recon_job)
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=recon_job, dagster_run=run, instance=instance,
                           execution_plan=plan, raise_on_error=True,
                           retry_mode=RetryMode.DISABLED),
        log_manager=create_context_free_log_manager(instance, run),
        executor=executor, output_capture=None)
    context = StepHandlerContext(
        instance=instance, plan_context=plan_context, steps=plan.steps,
        execute_step_args=ExecuteStepArgs(origin, run.run_id, [step_key]))
    list(handler.launch_step(context))

    (call,) = batch_api.create_namespaced_job.call_args_list
    return call.kwargs["body"], call.kwargs["namespace"]


def as_manifest(job: kubernetes.client.V1Job) -> dict[str, Any]:
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_step_job_of_a_heavy_batch_asset(k8s_instance: dg.DagsterInstance,
                                         chart_pod: dict[str, Any]) -> None:
    job, namespace = launch_step_job(k8s_instance, chart_pod, "probe_user_features")
    manifest = as_manifest(job)
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)

    # In the release's namespace (container context), not the Dagster chart's.
    assert namespace == NAMESPACE
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == chart_pod["image"]
    assert container["args"][:3] == ["dagster", "api", "execute_step"]
    # The asset's dagster-k8s/config tag wins over the executor defaults.
    assert container["resources"] == {"requests": HEAVY, "limits": HEAVY}

    # Same settings, Secret ref and volume as the code server.
    assert {"configMapRef": {"name": chart_pod["env_config_map"]}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JOURNEY_MONGO_URI"]["valueFrom"]["secretKeyRef"] == \
        {"name": "journey-mongodb", "key": "mongodb-uri"}
    assert "value" not in env["JOURNEY_MONGO_URI"]
    assert env["SPARK_LOCAL_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DAGSTER_RUN_STEP_KEY"]["value"] == "probe_user_features"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (data,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[data]["persistentVolumeClaim"]["claimName"] == chart_pod["pvc"]
    assert mounts[data] == chart_pod["env"]["JOURNEY_DATA_DIR"]
    assert pod["serviceAccountName"] == chart_pod["service_account"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["restartPolicy"] == "Never"
    assert manifest["metadata"]["labels"]["dagster/op"] == "probe_user_features"


def test_step_job_of_an_untagged_asset_gets_the_defaults(
        k8s_instance: dg.DagsterInstance, chart_pod: dict[str, Any]) -> None:
    job, _ = launch_step_job(k8s_instance, chart_pod, "probe_customer_segments")
    manifest = as_manifest(job)
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == DEFAULT_STEP_RESOURCES
    # Not the run worker's small resources from the container context.
    assert container["resources"] != chart_pod["container_context"]["k8s"]["resources"]


# ---- the image's runtime pieces that can run here ----------------------------------------------------

def test_baked_connector_jars_equal_the_local_ones(tmp_path: Path) -> None:
    """The image prunes Maven's tree with the same rule the local stack uses."""
    local = spark_connector_jars()
    resolved = local[0].parent  # the unpruned Maven folder in .local/spark-jars/<version>
    baked = tmp_path / "spark-jars"
    shutil.copytree(resolved, baked)
    removed = prune_jars_shipped_by_pyspark(baked)
    assert removed  # scala-library, slf4j...: pyspark ships them
    assert sorted(j.name for j in baked.glob("*.jar")) == sorted(j.name for j in local)
    assert any(j.name.startswith("spark-sql-kafka-0-10_2.13-") for j in baked.glob("*.jar"))


def test_entrypoint_passes_commands_through() -> None:
    proc = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "echo", "run", "pod"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "run pod\n"


def test_entrypoint_starts_a_spark_executor_backend(tmp_path: Path) -> None:
    """`executor` (what Spark gives executor pods) starts KubernetesExecutorBackend with the
    driver's jars; with no driver listening it must fail *connecting*, which proves the class,
    classpath and arguments are right (a bad argument exits with a usage message first)."""
    import pyspark

    java = shutil.which("java")
    assert java is not None
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "JAVA_HOME": str(Path(java).resolve().parents[1]),
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "JOURNEY_SPARK_JARS_DIR": str(spark_connector_jars()[0].parent),
        "SPARK_EXECUTOR_MEMORY": "256m", "SPARK_EXECUTOR_ID": "1", "SPARK_EXECUTOR_CORES": "1",
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@127.0.0.1:9",
        "SPARK_APPLICATION_ID": "spark-test", "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
        "SPARK_EXECUTOR_POD_NAME": "journey-exec-1",
        "SPARK_JAVA_OPT_0": "-Djourney.test=1", "SPARK_JAVA_OPT_1": "-Xss4m",
    }
    proc = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "executor"],
                          env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "KubernetesExecutorBackend: Started daemon" in out
    assert "Failed to connect to /127.0.0.1:9" in out


def test_code_server_starts_as_the_chart_runs_it(tmp_path: Path) -> None:
    """The Deployment's command, env ConfigMap and container context, run as a local process:
    the code location loads in k8s mode and hands the chart's container context and image to
    the webserver/daemon (which pass them on to the run launcher)."""
    import socket

    from dagster._grpc.client import DagsterGrpcClient
    from dagster._serdes import deserialize_value

    docs = render()
    container = code_server(docs)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = list(container["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    env = {
        **os.environ, **journey_env(docs),
        "JOURNEY_DATA_DIR": str(tmp_path / "data"),  # the pod's /data mount
        "JOURNEY_MONGO_URI": "mongodb://127.0.0.1:27017/",  # the Secret's value in the pod
        "DAGSTER_HOME": str(tmp_path / "dagster_home"), "HOME": str(tmp_path),
        "DAGSTER_CURRENT_IMAGE": env_value(container, "DAGSTER_CURRENT_IMAGE")["value"],
        "DAGSTER_CONTAINER_CONTEXT": env_value(container, "DAGSTER_CONTAINER_CONTEXT")["value"],
    }
    (tmp_path / "dagster_home").mkdir()
    dagster = Path(sys.executable).parent / "dagster"  # the venv's, as in the image
    server = subprocess.Popen([str(dagster), *args[1:]], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        deadline = 60.0
        while deadline > 0:
            if server.poll() is not None:
                pytest.fail(f"code server exited: {server.stderr.read()[-2000:]}")
            try:
                client.ping("x")
                break
            except Exception:
                time.sleep(1)
                deadline -= 1
        response = deserialize_value(client.list_repositories())
        assert response.container_image == env["DAGSTER_CURRENT_IMAGE"]
        assert response.container_context == json.loads(env["DAGSTER_CONTAINER_CONTEXT"])
        assert response.repository_code_pointer_dict  # the Definitions loaded
    finally:
        server.terminate()
        server.wait(timeout=30)
