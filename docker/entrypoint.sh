#!/usr/bin/env bash
# Entrypoint of the journey-assets image.
#
# - `executor`: the pod is a Spark executor started by a Spark driver running on Kubernetes
#   (JOURNEY_SPARK_MASTER=k8s://...). Spark gives executor pods the single argument `executor`
#   and describes the executor through SPARK_* environment variables; this branch turns them
#   into a KubernetesExecutorBackend JVM, with the same jars as the driver.
# - anything else is executed as is: `dagster api grpc ...` (the default CMD, the code server),
#   and the `dagster api execute_run` / `execute_step` arguments Dagster's K8sRunLauncher and
#   k8s_job_executor put on run and step pods.
set -euo pipefail

if [[ "${1:-}" == "executor" ]]; then
  shift
  # SPARK_JAVA_OPT_0, _1, ... in numeric order (Java 17 --add-opens, extraJavaOptions).
  java_opts=()
  for i in $(compgen -v SPARK_JAVA_OPT_ | sed 's/^SPARK_JAVA_OPT_//' | sort -n); do
    var="SPARK_JAVA_OPT_${i}"
    java_opts+=("${!var}")
  done
  exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
    -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
    -cp "${SPARK_CONF_DIR:-/opt/spark-conf}:${SPARK_HOME}/jars/*:${JOURNEY_SPARK_JARS_DIR}/*" \
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
    --driver-url "${SPARK_DRIVER_URL}" \
    --executor-id "${SPARK_EXECUTOR_ID}" \
    --cores "${SPARK_EXECUTOR_CORES}" \
    --app-id "${SPARK_APPLICATION_ID}" \
    --hostname "${SPARK_EXECUTOR_POD_IP}" \
    --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
    --podName "${SPARK_EXECUTOR_POD_NAME}"
fi

exec "$@"
