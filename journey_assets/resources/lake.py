"""Filesystem layout under ``JOURNEY_DATA_DIR``: the Delta lake, checkpoints, models."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class LakeResource(dg.ConfigurableResource):
    """Paths of the Delta lake (``journey_assets.lake``), streaming checkpoints and models."""

    data_dir: str

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def events_path(self) -> str:
        """Unique valid events, partitioned by event_date: the history the batch assets
        replay (Delta)."""
        return str(self.root / "lake" / "events")

    @property
    def dead_letters_path(self) -> str:
        """Rejected records with their reason, partitioned by received_date (Delta)."""
        return str(self.root / "lake" / "dead_letters")

    def dimension_path(self, name: str) -> str:
        return str(self.root / "lake" / "dimensions" / name)

    def checkpoint_path(self, query: str) -> str:
        return str(self.root / "checkpoints" / query)

    def model_path(self, model: str, version: str) -> str:
        return str(self.root / "models" / model / version)
