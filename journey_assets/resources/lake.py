"""Filesystem layout under ``JOURNEY_DATA_DIR``: the Parquet lake, checkpoints, models."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class LakeResource(dg.ConfigurableResource):
    """Paths of the lake (event history as Parquet), streaming checkpoints and saved models."""

    data_dir: str

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def events_path(self) -> str:
        """Enriched events, partitioned by event_date: the history the batch assets replay."""
        return str(self.root / "lake" / "enriched_events")

    def dimension_path(self, name: str) -> str:
        return str(self.root / "lake" / "dimensions" / name)

    def checkpoint_path(self, query: str) -> str:
        return str(self.root / "checkpoints" / query)

    def model_path(self, model: str, version: str) -> str:
        return str(self.root / "models" / model / version)
