"""The Kubernetes deployment, checked offline: Dockerfile facts, `helm lint`, `helm template`
of the journey-assets chart (default and scale-out values) validated against the Kubernetes
schemas of a fixed version (kubernetes-validate ships them), and the facts that matter.

No cluster and no Docker engine here: these tests catch what can be caught without one.
helm is built from the Go module proxy on first use (journey_assets.local.artifacts).
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from journey_assets.local.artifacts import helm_binary
from journey_assets.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "journey-assets"
SCALE_OUT = ROOT / "helm" / "values-scale-out.yaml"
DAGSTER_VALUES = ROOT / "helm" / "values-dagster.yaml"
# One fixed Kubernetes version for `helm template --kube-version` and the schemas.
KUBE_VERSION = "1.33.0"
# The release the walkthrough (docs/kubernetes.md) installs; values-dagster.yaml names its Service.
RELEASE = "journey"
NAMESPACE = "journey"
STRIMZI_API = "kafka.strimzi.io/v1beta2"


# ---- rendering helpers (also used by test_k8s.py) ---------------------------------------------

def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                          timeout=120)


def render(*values_files: Path, set_values: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` of the chart as a list of manifests (raises with helm's stderr)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--kube-version", KUBE_VERSION]
    for values in values_files:
        args += ["-f", str(values)]
    for assignment in set_values:
        args += ["--set", assignment]
    proc = helm(*args)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def code_server(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The user-code Deployment's container."""
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_value(container: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in container.get("env", []) if e["name"] == name]
    return entry


def journey_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The JOURNEY_* settings a pod sees: the env ConfigMap it loads with envFrom."""
    (ref,) = code_server(docs)["envFrom"]
    return one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]


def spark_defaults(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(docs, "Deployment")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "spark-conf"]
    text = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["spark-defaults.conf"]
    pairs = (line.split(None, 1) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key: value.strip() for key, value in pairs}


def role_allows(role: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    return any(group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
               and verb in rule.get("verbs", []) for rule in role["rules"])


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)
    elif isinstance(node, str):
        yield node


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def scale_docs() -> list[dict[str, Any]]:
    return render(SCALE_OUT)


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# ---- lint and schema validation -----------------------------------------------------------------

@pytest.mark.parametrize("values_files", [(), (SCALE_OUT,)], ids=["default", "scale-out"])
def test_helm_lint_strict(values_files: tuple[Path, ...]) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    for values in values_files:
        args += ["-f", str(values)]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("variant", ["default", "scale-out"])
def test_rendered_manifests_match_kubernetes_schemas(variant: str) -> None:
    docs = render() if variant == "default" else render(SCALE_OUT)
    validated = 0
    for doc in docs:
        if doc["apiVersion"] == STRIMZI_API:
            continue  # CRDs: no built-in schema; their shape is asserted below
        # strict: unknown fields (a typo like `resource:`) are errors, not silently dropped.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        validated += 1
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "ServiceAccount",
            "Role", "RoleBinding"} <= kinds
    assert validated == sum(d["apiVersion"] != STRIMZI_API for d in docs) >= 8


def test_schema_validation_can_fail(default_docs: list[dict[str, Any]]) -> None:
    """The validator is not a rubber stamp: a misspelt field in a container is rejected."""
    broken = json.loads(json.dumps(one(default_docs, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_values_schema_rejects_a_literal_mongo_uri() -> None:
    proc = helm("lint", str(CHART), "--set", "mongodb.uri=mongodb://root:hunter2@mongo:27017")
    assert proc.returncode != 0
    assert "additional properties 'uri' not allowed" in proc.stdout + proc.stderr


# ---- the facts that matter ------------------------------------------------------------------------

def test_image_and_grpc_code_server(default_docs: list[dict[str, Any]],
                                    chart_values: dict[str, Any]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = code_server(default_docs)
    assert container["image"] == f"journey-assets:{chart['appVersion']}"
    # Launched runs must use the very image the code server runs.
    assert env_value(container, "DAGSTER_CURRENT_IMAGE")["value"] == container["image"]
    assert container["args"][:3] == ["dagster", "api", "grpc"]
    assert container["args"][container["args"].index("--module-name") + 1] == \
        "journey_assets.definitions"
    port = chart_values["codeLocation"]["port"]
    assert container["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    service = one(default_docs, "Service")
    assert service["metadata"]["name"] == one(default_docs, "Deployment")["metadata"]["name"]
    assert service["spec"]["ports"][0]["port"] == port

    tagged = code_server(render(set_values=("image.repository=registry.example/ja",
                                            "image.tag=sha-1234")))
    assert tagged["image"] == "registry.example/ja:sha-1234"


def test_mongo_uri_comes_from_a_secret_and_no_secret_is_rendered(
        default_docs: list[dict[str, Any]], scale_docs: list[dict[str, Any]]) -> None:
    container = code_server(default_docs)
    uri = env_value(container, "JOURNEY_MONGO_URI")
    assert "value" not in uri
    assert uri["valueFrom"]["secretKeyRef"] == {"name": "journey-mongodb", "key": "mongodb-uri"}
    assert "JOURNEY_MONGO_URI" not in journey_env(default_docs)

    custom = code_server(render(set_values=("mongodb.existingSecret=prod-mongo",
                                            "mongodb.uriKey=uri")))
    assert env_value(custom, "JOURNEY_MONGO_URI")["valueFrom"]["secretKeyRef"] == \
        {"name": "prod-mongo", "key": "uri"}

    credential = re.compile(r"://[^/\s:@]+:[^/\s@]+@|password|passwd|BEGIN [A-Z ]*PRIVATE KEY",
                            re.IGNORECASE)
    for docs in (default_docs, scale_docs):
        assert not [d for d in docs if d["kind"] == "Secret"]
        leaks = [s for s in walk_strings(docs) if credential.search(s)]
        assert not leaks


def test_settings_in_the_pod_select_kubernetes(default_docs: list[dict[str, Any]]) -> None:
    env = journey_env(default_docs)
    settings = Settings.from_env({**env, "JOURNEY_MONGO_URI": "mongodb://mongo:27017/"})
    assert settings.deployment == "k8s"
    assert settings.spark_master == "local[2]"
    assert settings.topic == "customer_events"
    kafka = one(default_docs, "Kafka")
    assert settings.kafka_bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:9092"
    listeners = [{k: v for k, v in listener.items() if k != "networkPolicyPeers"}
                 for listener in kafka["spec"]["kafka"]["listeners"]]
    assert {"name": "plain", "port": 9092, "type": "internal", "tls": False} in listeners


def test_data_volume_is_mounted_at_journey_data_dir(default_docs: list[dict[str, Any]]) -> None:
    data_dir = journey_env(default_docs)["JOURNEY_DATA_DIR"]
    pvc = one(default_docs, "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = one(default_docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in code_server(default_docs)["volumeMounts"]}
    assert mounts[volume["name"]] == data_dir == "/data"

    moved = render(set_values=("journey.dataDir=/lake", "persistence.existingClaim=shared-lake"))
    assert not [d for d in moved if d["kind"] == "PersistentVolumeClaim"]
    assert journey_env(moved)["JOURNEY_DATA_DIR"] == "/lake"
    pod = one(moved, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "shared-lake"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/lake"} in code_server(moved)["volumeMounts"]


@pytest.mark.parametrize("variant", ["default", "scale-out"])
def test_every_container_has_requests_and_limits(variant: str) -> None:
    docs = render() if variant == "default" else render(SCALE_OUT)
    resources = [c["resources"] for d in docs if d["kind"] == "Deployment"
                 for c in d["spec"]["template"]["spec"]["containers"]]
    kafka = one(docs, "Kafka")["spec"]
    resources += [one(docs, "KafkaNodePool")["spec"]["resources"],
                  kafka["entityOperator"]["topicOperator"]["resources"],
                  kafka["entityOperator"]["userOperator"]["resources"]]
    # Run pods get theirs from the container context (step pods: executor defaults + tags).
    context = json.loads(env_value(code_server(docs), "DAGSTER_CONTAINER_CONTEXT")["value"])
    resources.append(context["k8s"]["resources"])
    for res in resources:
        assert {"cpu", "memory"} <= set(res["requests"]), res
        assert {"cpu", "memory"} <= set(res["limits"]), res


def test_pods_run_as_non_root(default_docs: list[dict[str, Any]]) -> None:
    pod = one(default_docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["automountServiceAccountToken"] is False
    container = code_server(default_docs)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]


def test_spark_local_mode_by_default_has_no_executor_rbac(
        default_docs: list[dict[str, Any]]) -> None:
    role = one(default_docs, "Role")
    # The run worker may start step Jobs (k8s_job_executor) ...
    assert role_allows(role, "batch", "jobs", "create")
    # ... but nothing may create pods while Spark runs in local mode.
    assert not role_allows(role, "", "pods", "create")
    assert "spark.kubernetes.container.image" not in spark_defaults(default_docs)


def _bytes(quantity: str) -> float:
    """A Kubernetes (``2Gi``) or JVM (``1g``) memory quantity in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmgtKMGT]i?)?", quantity).groups()
    return int(number) * 1024 ** ("kmgt".index(unit[0].lower()) + 1 if unit else 0)


def test_driver_heap_fits_the_run_pod(default_docs: list[dict[str, Any]],
                                      scale_docs: list[dict[str, Any]]) -> None:
    # Spark's driver (the run pod's process) gets the chart's heap, not the code's laptop
    # default: a 4g heap in a 2Gi pod is OOM-killed once G1 grows it.
    for docs, values in ((default_docs, CHART / "values.yaml"),
                         (scale_docs, ROOT / "helm" / "values-scale-out.yaml")):
        env = journey_env(docs)
        heap = Settings.from_env(
            {**env, "JOURNEY_MONGO_URI": "mongodb://mongo:27017/"}).spark_driver_memory
        assert heap == env["JOURNEY_SPARK_DRIVER_MEMORY"] == "1g", values
        run_limit = yaml.safe_load(values.read_text())["runWorker"]["resources"]["limits"]
        assert _bytes(heap) <= 0.6 * _bytes(run_limit["memory"]), (values, heap, run_limit)


def test_scale_out_spark_on_kubernetes(scale_docs: list[dict[str, Any]]) -> None:
    env = journey_env(scale_docs)
    assert env["JOURNEY_SPARK_MASTER"] == "k8s://https://kubernetes.default.svc:443"
    assert env["SPARK_CONF_DIR"] == "/opt/spark-conf"
    conf = spark_defaults(scale_docs)
    container = code_server(scale_docs)
    sa = one(scale_docs, "ServiceAccount", f"{RELEASE}-journey-assets")["metadata"]["name"]
    pvc = one(scale_docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert conf["spark.kubernetes.container.image"] == container["image"]
    assert conf["spark.kubernetes.namespace"] == NAMESPACE
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == sa
    claim = "spark.kubernetes.executor.volumes.persistentVolumeClaim.data"
    assert conf[f"{claim}.options.claimName"] == pvc["metadata"]["name"]
    assert conf[f"{claim}.mount.path"] == env["JOURNEY_DATA_DIR"]
    assert conf["spark.executor.instances"] == "4"

    # RBAC: the driver's service account manages executor pods and what they need.
    role = one(scale_docs, "Role")
    for resource in ("pods", "services", "configmaps", "persistentvolumeclaims"):
        for verb in ("create", "delete", "get", "list", "watch"):
            assert role_allows(role, "", resource, verb), (resource, verb)
    assert not role_allows(role, "", "secrets", "get")
    binding = one(scale_docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa,
                                    "namespace": NAMESPACE}]
    assert one(scale_docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa

    # The executor pod template is a valid Pod that runs as non-root.
    spark_cm = one(scale_docs, "ConfigMap", f"{RELEASE}-journey-assets-spark")
    template = yaml.safe_load(spark_cm["data"]["executor-pod-template.yaml"])
    kubernetes_validate.validate(template, KUBE_VERSION, strict=True)
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert conf["spark.kubernetes.executor.podTemplateFile"] == \
        f"{env['SPARK_CONF_DIR']}/executor-pod-template.yaml"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_network_policies_and_separate_service_accounts(
        scale_docs: list[dict[str, Any]]) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in scale_docs
                if d["kind"] == "NetworkPolicy"}
    prefix = f"{RELEASE}-journey-assets"
    assert set(policies) == {f"{prefix}-user-code", f"{prefix}-spark", f"{prefix}-mongodb"}
    code_pod = one(scale_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    context = json.loads(env_value(code_server(scale_docs), "DAGSTER_CONTAINER_CONTEXT")["value"])
    run_pod = context["k8s"]["labels"]
    spark_cm = one(scale_docs, "ConfigMap", f"{prefix}-spark")
    executor = yaml.safe_load(spark_cm["data"]["executor-pod-template.yaml"])
    executor_pod = executor["metadata"]["labels"]

    # Code server: gRPC from the Dagster webserver/daemon only.
    user_code = policies[f"{prefix}-user-code"]
    assert _matches(user_code["podSelector"], code_pod)
    (rule,) = user_code["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dagster"}}}]
    assert rule["ports"] == [{"port": 4000, "protocol": "TCP"}]
    # Run/step pods (Spark drivers) and executors: only from each other.
    spark = policies[f"{prefix}-spark"]
    assert _matches(spark["podSelector"], run_pod) and _matches(spark["podSelector"], executor_pod)
    assert not _matches(spark["podSelector"], code_pod)
    (rule,) = spark["ingress"]
    (peer,) = rule["from"]
    assert _matches(peer["podSelector"], run_pod) and _matches(peer["podSelector"], executor_pod)
    # MongoDB: port 27017 from this release's pods only.
    mongo = policies[f"{prefix}-mongodb"]
    assert mongo["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mongodb"}}
    (rule,) = mongo["ingress"]
    assert rule["ports"] == [{"port": 27017, "protocol": "TCP"}]
    assert [any(_matches(p["podSelector"], pod) for p in rule["from"])
            for pod in (run_pod, executor_pod, code_pod)] == [True, True, True]
    assert not any(_matches(p["podSelector"], {"app.kubernetes.io/name": "dagster"})
                   for p in rule["from"])
    # Kafka: Strimzi's listener policies admit the same pods.
    kafka = one(scale_docs, "Kafka")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        peers = listener["networkPolicyPeers"]
        assert any(_matches(p["podSelector"], executor_pod) for p in peers), listener["name"]
        assert any(_matches(p["podSelector"], code_pod) for p in peers), listener["name"]

    # Two identities: the run/step pods' (bound to the Role: may create Jobs and executor
    # pods) and the executors' (no binding, no token).
    accounts = {d["metadata"]["name"]: d for d in scale_docs if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {prefix, f"{prefix}-spark-executor"}
    assert context["k8s"]["service_account_name"] == prefix
    assert accounts[f"{prefix}-spark-executor"]["automountServiceAccountToken"] is False
    bound = {s["name"] for d in scale_docs if d["kind"] == "RoleBinding" for s in d["subjects"]}
    assert bound == {prefix}
    conf = spark_defaults(scale_docs)
    assert conf["spark.kubernetes.authenticate.executor.serviceAccountName"] == \
        f"{prefix}-spark-executor"
    assert executor["spec"]["serviceAccountName"] == f"{prefix}-spark-executor"
    assert executor["spec"]["automountServiceAccountToken"] is False

    # Off: no policy at all, no listener peers.
    off = render(SCALE_OUT, set_values=("networkPolicy.enabled=false",))
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
    assert all("networkPolicyPeers" not in listener
               for listener in one(off, "Kafka")["spec"]["kafka"]["listeners"])


@pytest.mark.parametrize("variant", ["default", "scale-out"])
def test_strimzi_kraft_kafka_and_topic(variant: str) -> None:
    docs = render() if variant == "default" else render(SCALE_OUT)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if variant == "scale-out":
        overlay = yaml.safe_load(SCALE_OUT.read_text())["kafka"]
        values["kafka"]["topic"] |= overlay["topic"]
        values["kafka"]["nodePool"]["replicas"] = overlay["nodePool"]["replicas"]
    strimzi = [d for d in docs if d["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {d["apiVersion"] for d in strimzi} == {STRIMZI_API}
    assert sorted(d["kind"] for d in strimzi) == ["Kafka", "KafkaNodePool", "KafkaTopic"]

    kafka = one(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    assert kafka["metadata"]["annotations"] == {"strimzi.io/kraft": "enabled",
                                                "strimzi.io/node-pools": "enabled"}
    assert "zookeeper" not in kafka["spec"]
    assert kafka["spec"]["kafka"]["version"].startswith("4.")
    assert "topicOperator" in kafka["spec"]["entityOperator"]

    pool = one(docs, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    replicas = pool["spec"]["replicas"]
    assert replicas == values["kafka"]["nodePool"]["replicas"]
    (volume,) = pool["spec"]["storage"]["volumes"]
    assert volume["type"] == "persistent-claim" and volume["kraftMetadata"] == "shared"

    topic = one(docs, "KafkaTopic")
    assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert topic["spec"]["topicName"] == "customer_events"
    # Kubernetes names are DNS-1123: the underscore lives only in spec.topicName.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", topic["metadata"]["name"])
    assert topic["spec"]["partitions"] == values["kafka"]["topic"]["partitions"]
    assert topic["spec"]["replicas"] == values["kafka"]["topic"]["replicas"] <= replicas
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] <= config["default.replication.factor"] <= replicas
    assert config["offsets.topic.replication.factor"] <= replicas


def test_external_kafka_instead_of_strimzi() -> None:
    with pytest.raises(RuntimeError, match=r"kafka.externalBootstrap is required"):
        render(set_values=("kafka.enabled=false",))
    docs = render(set_values=("kafka.enabled=false", "kafka.externalBootstrap=kafka.infra:9092"))
    assert not [d for d in docs if d["apiVersion"] == STRIMZI_API]
    assert journey_env(docs)["JOURNEY_KAFKA_BOOTSTRAP"] == "kafka.infra:9092"


SECURE_KAFKA = ("kafka.enabled=false", "kafka.externalBootstrap=kafka.infra:9096",
                "kafka.security.protocol=SASL_SSL", "kafka.security.saslMechanism=SCRAM-SHA-512",
                "kafka.security.saslUsername=journey",
                "kafka.security.existingSecret=journey-kafka",
                "kafka.security.caSecret=kafka-ca", "mongodb.caSecret=mongo-ca")


def test_kafka_security_and_ca_certificates_come_from_secrets() -> None:
    docs = render(SCALE_OUT, set_values=SECURE_KAFKA)
    env = journey_env(docs)
    container = code_server(docs)
    password = env_value(container, "JOURNEY_KAFKA_SASL_PASSWORD")
    assert password == {"name": "JOURNEY_KAFKA_SASL_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "journey-kafka", "key": "sasl-password"}}}
    # What the pod's settings make of it (the password from its Secret at run time).
    kafka = Settings.from_env({**env, "JOURNEY_KAFKA_SASL_PASSWORD": "from-the-secret"}).kafka
    assert (kafka.bootstrap, kafka.security_protocol, kafka.sasl_mechanism,
            kafka.sasl_username) == ("kafka.infra:9096", "SASL_SSL", "SCRAM-SHA-512", "journey")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v.get("secret", {}).get("secretName")
               for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-ca"] == "kafka-ca" and volumes["mongodb-ca"] == "mongo-ca"
    assert kafka.ssl_ca_file == f"{mounts['kafka-ca']}/ca.crt"
    assert mounts["mongodb-ca"] == "/etc/journey/mongodb-ca"
    # Run and step pods get the same env and mounts (the container context); Spark executors
    # mount the same CA Secrets at the same paths.
    (context,) = [e["value"] for e in container["env"] if e["name"] == "DAGSTER_CONTAINER_CONTEXT"]
    k8s = json.loads(context)["k8s"]
    assert password in k8s["run_k8s_config"]["container_config"]["env"]
    assert {"name": "kafka-ca", "mountPath": "/etc/journey/kafka-ca", "readOnly": True} in \
        k8s["volume_mounts"]
    conf = spark_defaults(docs)
    assert conf["spark.kubernetes.executor.secrets.kafka-ca"] == mounts["kafka-ca"]
    assert conf["spark.kubernetes.executor.secrets.mongo-ca"] == mounts["mongodb-ca"]
    for doc in docs:
        if doc["apiVersion"] in ("v1", "apps/v1"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_kafka_security_refuses_what_it_cannot_do() -> None:
    # The chart's Strimzi cluster listens in plaintext inside the namespace.
    with pytest.raises(RuntimeError, match="applies to an external Kafka"):
        render(set_values=("kafka.security.protocol=SASL_SSL",))
    with pytest.raises(RuntimeError, match=r"kafka\.security\.existingSecret is required"):
        render(set_values=tuple(v for v in SECURE_KAFKA if "existingSecret" not in v))
    # There is no field for a password: only a Secret's name.
    proc = helm("lint", str(CHART), "--set", "kafka.security.password=hunter2")
    assert proc.returncode != 0 and "'password' not allowed" in proc.stdout + proc.stderr


def test_official_dagster_chart_values_point_at_this_chart(
        default_docs: list[dict[str, Any]]) -> None:
    """values-dagster.yaml cannot be rendered offline (the chart is not downloadable here);
    what can be checked is that it names our Service and the K8sRunLauncher settings."""
    values = yaml.safe_load(DAGSTER_VALUES.read_text())
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    service = one(default_docs, "Service")
    assert server["host"] == service["metadata"]["name"]
    assert server["port"] == service["spec"]["ports"][0]["port"]
    assert server["name"] == "journey_assets"
    assert values["dagster-user-deployments"]["enabled"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["generatePostgresqlPasswordSecret"] is False
    credential = re.compile(r"password\s*:\s*\S", re.IGNORECASE)
    for path in (DAGSTER_VALUES, ROOT / "helm" / "values-mongodb.yaml"):
        body = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        assert not credential.search(body), path


# ---- Dockerfile -------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), " ".join(rest.split())))
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def dockerfile_uid() -> int:
    (user,) = [args for ins, args in dockerfile_stages()[-1] if ins == "USER"]
    return int(user.split(":")[0])


def test_dockerfile_facts() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = dict(dep.split("==") for dep in pyproject["project"]["dependencies"] if "==" in dep)
    instructions = dockerfile_instructions()
    stages = dockerfile_stages()
    args = {a.split("=")[0]: a.split("=", 1)[1] for ins, a in instructions
            if ins == "ARG" and "=" in a}
    assert len(stages) >= 3

    # Spark's Kafka connector is resolved by Maven at build time, for the pinned pyspark.
    assert args["SPARK_VERSION"] == pins["pyspark"]
    pom = (ROOT / "docker" / "spark-kafka" / "pom.xml").read_text()
    assert f"<spark.version>{pins['pyspark']}</spark.version>" in pom
    assert "<artifactId>spark-sql-kafka-0-10_2.13</artifactId>" in pom
    maven = [s for s in stages if s[0][1].startswith("maven:")]
    assert maven and any(i == "RUN" and "dependency:copy-dependencies" in a for i, a in maven[0])

    # Python 3.11 slim runtime with a Java 17 runtime, the baked jars and the pinned venv.
    runtime = stages[-1]
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    run = " ".join(a for i, a in runtime if i == "RUN")
    assert "openjdk-17-jre-headless" in run
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "JOURNEY_SPARK_JARS_DIR=/opt/spark-jars" in env
    assert "JOURNEY_DEPLOYMENT=k8s" in env
    copies = [a for i, a in runtime if i == "COPY"]
    assert any(c.startswith("--from=") and c.endswith("/opt/spark-jars /opt/spark-jars")
               for c in copies)
    install = " ".join(a for s in stages for i, a in s if i == "RUN" and "pip install" in a)
    assert "-c constraints.txt ." in install
    assert f"dagster-postgres=={pins['dagster-k8s']}" in install  # same release train

    # Non-root, and the same uid the chart's securityContext declares.
    assert dockerfile_uid() != 0
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == dockerfile_uid()

    # Serves the code location over gRPC on the port the chart exposes.
    (expose,) = [a for i, a in runtime if i == "EXPOSE"]
    assert int(expose) == chart_values["codeLocation"]["port"]
    (cmd,) = [json.loads(a) for i, a in runtime if i == "CMD"]
    module = pyproject["tool"]["dagster"]["module_name"]
    assert cmd == ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", expose, "-m", module]
    (entrypoint,) = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"]
    assert entrypoint[-1] == "/usr/local/bin/journey-entrypoint"

    # No credentials baked in.
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIAL)", re.IGNORECASE)
    assert not [a for i, a in instructions if i in {"ENV", "ARG"} and secretish.search(a)]
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", (ROOT / "Dockerfile").read_text())
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".local", ".env"} <= set(ignored)


def test_constraints_pin_what_pyproject_pins() -> None:
    """The image's constraints file agrees with pyproject (else pip refuses to resolve)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = dict(dep.split("==") for dep in pyproject["project"]["dependencies"] if "==" in dep)
    constraints = dict(
        line.split("==") for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#"))
    normalized = {k.lower().replace("_", "-"): v for k, v in constraints.items()}
    for name, version in pins.items():
        assert normalized[name.lower().replace("_", "-")] == version, name
