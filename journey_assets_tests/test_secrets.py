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
