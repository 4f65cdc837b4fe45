"""Micro-batch progress as log lines and Dagster events (the UI's freshness signal)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import dagster as dg

from journey_assets.streaming.ledger import DATA_QUALITY_LEDGER
from journey_assets.streaming.pipeline import AGGREGATIONS_QUERY, EVENTS_QUERY, SESSIONS_QUERY
from journey_assets.streaming.sinks import (
    CONVERSION_FUNNEL,
    DEAD_LETTER_EVENTS,
    ENRICHED_EVENTS,
    EVENT_AGGREGATIONS,
    USER_SESSION_ANALYTICS,
)

#: Which collections each query writes.
QUERY_OUTPUTS: dict[str, tuple[str, ...]] = {
    EVENTS_QUERY: (ENRICHED_EVENTS, DEAD_LETTER_EVENTS, DATA_QUALITY_LEDGER),
    AGGREGATIONS_QUERY: (EVENT_AGGREGATIONS,),
    SESSIONS_QUERY: (USER_SESSION_ANALYTICS, CONVERSION_FUNNEL),
}


def format_progress(rec: Mapping[str, Any]) -> str:
    written = ", ".join(f"{k}={v}" for k, v in (rec.get("written") or {}).items())
    ledger = rec.get("ledger") or {}
    return (f"[{rec['query']}] batch {rec['batch_id']}: {rec['input_rows']} rows in, "
            f"{rec.get('duration_ms')} ms, offsets {rec.get('end_offset')}, "
            f"watermark {rec.get('watermark')}, late dropped {rec.get('late_rows_dropped')}"
            + (f"; written {written}" if written else "")
            + (f"; ledger: {ledger['inserted']} new, {ledger['duplicates_in_batch']} + "
               f"{ledger['duplicates_in_lake']} duplicates, {ledger['dead_lettered_total']} "
               f"dead-lettered, {ledger['skipped_offsets']} offsets skipped" if ledger else ""))


def ledger_metadata(figures: Mapping[str, int]) -> dict[str, int]:
    """The last micro-batch's ledger figures as asset metadata (``ledger_<figure>``)."""
    return {f"ledger_{name}": int(value) for name, value in figures.items()}


def _offsets_text(offsets: Any) -> str:
    return "" if offsets is None else str(offsets)


class DagsterProgressReporter:
    """Log every micro-batch; materialize the query's assets at most every ``min_interval_s``.

    Empty batches are logged but not materialized (nothing changed). Materializations rather
    than observations, because freshness policies of materializable assets read those.
    """

    def __init__(self, context: dg.AssetExecutionContext | dg.OpExecutionContext,
                 min_interval_s: float = 30.0) -> None:
        self.context = context
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}
        self._pending: dict[str, dict[str, int]] = {}
        self._last_rec: dict[str, dict[str, Any]] = {}
        #: The events query's last micro-batch ledger figures (journey_assets.streaming.ledger).
        self.last_ledger: dict[str, int] = {}

    def __call__(self, query: str, rec: dict[str, Any]) -> None:
        self.context.log.info(format_progress(rec))
        self._last_rec[query] = rec
        if rec.get("ledger"):
            self.last_ledger = dict(rec["ledger"])
        pending = self._pending.setdefault(query, {"rows_in": 0, "batches": 0})
        pending["rows_in"] += int(rec.get("input_rows") or 0)
        pending["batches"] += 1
        written = rec.get("written") or {}
        for name, count in written.items():
            pending[f"written_{name}"] = pending.get(f"written_{name}", 0) + int(count or 0)
        now = time.monotonic()
        if pending["rows_in"] and now - self._last.get(query, 0.0) >= self.min_interval_s:
            self._emit(query, rec, pending)
            self._last[query] = now
            self._pending[query] = {"rows_in": 0, "batches": 0}

    def _emit(self, query: str, rec: Mapping[str, Any], pending: Mapping[str, int]) -> None:
        for collection in QUERY_OUTPUTS.get(query, ()):
            self.context.log_event(dg.AssetMaterialization(
                asset_key=dg.AssetKey(collection),
                description=f"streaming query {query}, batch {rec['batch_id']}",
                metadata={
                    "query": query,
                    "batch_id": int(rec["batch_id"]),
                    "batches_since_last": int(pending["batches"]),
                    "rows_in_since_last": int(pending["rows_in"]),
                    "documents_written_since_last": int(pending.get(f"written_{collection}", 0)),
                    "last_batch_duration_ms": int(rec.get("duration_ms") or 0),
                    "end_offsets": _offsets_text(rec.get("end_offset")),
                    "watermark": str(rec.get("watermark")),
                    "late_rows_dropped": int(rec.get("late_rows_dropped") or 0),
                    # Events of sessions that had closed (dead-lettered, sessions query only).
                    "late_for_session_since_last": int(pending.get("written_late_for_session",
                                                                   0)),
                    **(ledger_metadata(self.last_ledger) if query == EVENTS_QUERY else {}),
                },
            ))

    def flush(self) -> None:
        """Materialize what is pending (end of an available-now run)."""
        for query, pending in self._pending.items():
            if pending["rows_in"]:
                self._emit(query, self._last_rec[query], pending)
        self._pending = {}
