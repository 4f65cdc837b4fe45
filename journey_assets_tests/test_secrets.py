"""Credentials stay out of Dagster: a MongoDB URI with a password is resource config only as a
reference to its environment variable, resolved inside the run."""

from __future__ import annotations

import dagster as dg
import pytest

from journey_assets.definitions import build_definitions
from journey_assets.resources import MongoResource, build_resources
from journey_assets.settings import MONGO_URI_ENV, Settings
from journey_assets.streaming.pipeline import target_from

SECRET_URI = "mongodb://journey_app:s3cr3t-pw@mongo.example:27017/?authSource=admin"


def test_a_uri_with_credentials_is_an_env_var_reference(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(MONGO_URI_ENV, SECRET_URI)
    settings = Settings.from_env({MONGO_URI_ENV: SECRET_URI, "JOURNEY_DATA_DIR": str(tmp_path)})
    mongo = build_resources(settings)["mongo"]
    # What Dagster keeps and shows for the resource: the variable's name, not the password.
    assert "s3cr3t" not in repr(mongo.model_dump()) and MONGO_URI_ENV in repr(mongo.model_dump())
    defs = build_definitions(settings)
    assert "s3cr3t" not in repr(defs.resources["mongo"].model_dump())
    # The streaming CLI (outside a run) still connects with the real URI.
    assert target_from(settings).mongo_uri == SECRET_URI

    # Inside a run the reference resolves to the URI.
    @dg.asset
    def uri_seen(mongo: MongoResource) -> str:
        return mongo.uri

    result = dg.materialize([uri_seen], resources={"mongo": mongo})
    assert result.output_for_node("uri_seen") == SECRET_URI


def test_a_uri_with_credentials_from_anywhere_else_is_refused(monkeypatch) -> None:
    monkeypatch.delenv(MONGO_URI_ENV, raising=False)
    with pytest.raises(ValueError, match=MONGO_URI_ENV):
        build_resources(Settings(mongo_uri=SECRET_URI))


def test_a_local_uri_without_credentials_stays_literal() -> None:
    mongo = build_resources(Settings(mongo_uri="mongodb://127.0.0.1:27017"))["mongo"]
    assert mongo.uri == "mongodb://127.0.0.1:27017"


# ---- the Dagster UI, through its GraphQL API ----------------------------------------------------

UI_QUERY = """
{ repositoriesOrError { __typename ... on RepositoryConnection { nodes {
    name
    allTopLevelResourceDetails { name description configuredValues { key value type } }
    jobs { name description }
    schedules { name description }
    sensors { name description }
    assetNodes { assetKey { path } description opName
                 metadataEntries { label __typename ... on TextMetadataEntry { text }
                                   ... on JsonMetadataEntry { jsonString } } }
} } } }
"""


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.mark.slow  # a dagster-webserver process (~20 s)
def test_no_dagster_ui_page_shows_a_secret(tmp_path) -> None:
    """The webserver loads the code location with a MongoDB URI with a password and a Kafka
    SASL password in its environment; no GraphQL answer the UI is built from - resources and
    their configured values, jobs, schedules, sensors, assets and their metadata, each job's
    default run config - holds either secret, and the resources show the variables' names."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    from journey_assets.settings import KAFKA_SASL_PASSWORD_ENV

    kafka_password = "k4fka-pw-9f2c"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "JOURNEY_DATA_DIR": str(tmp_path / "d"),
           MONGO_URI_ENV: SECRET_URI,
           "JOURNEY_KAFKA_BOOTSTRAP": "kafka.example:9096",
           "JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "JOURNEY_KAFKA_SASL_USERNAME": "journey", KAFKA_SASL_PASSWORD_ENV: kafka_password}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "journey_assets.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                data = _graphql(port, UI_QUERY)
                if data["repositoriesOrError"]["__typename"] == "RepositoryConnection":
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "dagster-webserver did not load the code"
            time.sleep(2)
        (repo,) = data["repositoriesOrError"]["nodes"]
        answers = [json.dumps(data)]
        for job in repo["jobs"]:
            schema = _graphql(port, """
                query($selector: PipelineSelector!) { runConfigSchemaOrError(selector: $selector)
                  { __typename ... on RunConfigSchema { rootDefaultYaml } } }""",
                {"selector": {"repositoryLocationName": "journey_assets.definitions",
                              "repositoryName": repo["name"], "pipelineName": job["name"]}})
            answers.append(json.dumps(schema))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

    text = "\n".join(answers)
    for secret in ("s3cr3t-pw", kafka_password):
        assert secret not in text
    resources = {r["name"]: {v["key"]: v for v in r["configuredValues"]}
                 for r in repo["allTopLevelResourceDetails"]}
    # A positive control: what the UI shows instead is the variable's name.
    assert resources["mongo"]["uri"]["value"] == MONGO_URI_ENV
    assert resources["mongo"]["uri"]["type"] == "ENV_VAR"
    assert resources["kafka"]["sasl_password"]["value"] == KAFKA_SASL_PASSWORD_ENV
    assert json.loads(resources["kafka"]["sasl_username"]["value"]) == "journey"
    assert len(answers) > 3  # the jobs' default run configs were read too
