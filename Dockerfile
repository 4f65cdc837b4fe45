# syntax=docker/dockerfile:1.7
# journey-assets user-code image: the Dagster code location served over gRPC, the run and step
# pods Dagster launches from it, and (scale-out) the Spark executor pods.
#
#   docker build -t journey-assets:0.1.0 .
#
# Three stages: Maven resolves Spark's Kafka connector and Delta Lake (no download when a pod starts), a Python
# stage installs the pinned dependencies into a venv, the slim runtime gets both plus a Java 17
# runtime and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must equal the pyspark pin in pyproject.toml: the connector is built for one Spark version.
ARG SPARK_VERSION=4.1.1
# Must equal the delta-spark pin in pyproject.toml (its Python API drives these jars).
ARG DELTA_VERSION=4.4.0

# ---- 1. Spark's Kafka source, Delta Lake and their dependencies, from Maven Central ---------
FROM maven:3.9-eclipse-temurin-17 AS spark-jars
ARG SPARK_VERSION
ARG DELTA_VERSION
WORKDIR /build
COPY docker/spark-kafka/pom.xml pom.xml
RUN mvn -B -q dependency:copy-dependencies \
        -Dspark.version=${SPARK_VERSION} \
        -Ddelta.version=${DELTA_VERSION} \
        -DincludeScope=runtime \
        -DoutputDirectory=/opt/spark-jars

# ---- 2. Python dependencies (pinned) in a relocatable venv ----------------------------------
FROM ${PYTHON_IMAGE} AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached layer): pyproject pins the Dagster family, constraints.txt pins
# every transitive package to the versions the test suite ran with.
COPY pyproject.toml docker/constraints.txt ./
COPY journey_assets ./journey_assets
# dagster-postgres: the official chart's instance (run/event storage) is PostgreSQL, and run and
# step pods load that instance. Same release train as dagster-k8s in pyproject.toml.
RUN pip install -c constraints.txt . "dagster-postgres==0.29.27"
# The connector tree minus what the pyspark wheel already ships (duplicate classes conflict).
COPY --from=spark-jars /opt/spark-jars /opt/spark-jars
RUN python -c "from journey_assets.k8s import prune_jars_shipped_by_pyspark as p; print('pruned', p('/opt/spark-jars'))"

# ---- 3. Runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="journey-assets" \
      org.opencontainers.image.description="Customer-journey analytics: Dagster code location (Kafka, Spark, MongoDB)" \
      org.opencontainers.image.licenses="Apache-2.0"

# Java 17 for Spark (Debian bookworm's OpenJDK), tini to forward signals to the gRPC server and
# reap Spark's children, procps because Spark's scripts call `ps`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

# An unprivileged user with a fixed uid, so Kubernetes can check runAsNonRoot.
RUN groupadd --gid 10001 journey \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/journey journey \
 && mkdir -p /data /opt/dagster/dagster_home /opt/spark-conf \
 && chown -R journey:journey /data /opt/dagster/dagster_home

COPY --from=python-deps /opt/venv /opt/venv
COPY --from=python-deps /opt/spark-jars /opt/spark-jars
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/journey-entrypoint

ENV PATH=/opt/venv/bin:$PATH \
    JAVA_HOME=/opt/java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    JOURNEY_SPARK_JARS_DIR=/opt/spark-jars \
    JOURNEY_HOME=/home/journey/.local \
    JOURNEY_DATA_DIR=/data \
    JOURNEY_DEPLOYMENT=k8s \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /home/journey
EXPOSE 4000

# The entrypoint passes any command through (run/step pods get `dagster api execute_*` as args)
# and turns `executor` into a Spark executor; the default command is the code server.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/journey-entrypoint"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "journey_assets.definitions"]
