"""The window/session transforms on static frames (the lake's idempotent writes: test_lake.py)."""

from __future__ import annotations

from pyspark.sql import functions as F

from journey_assets.schema import CSV_COLUMNS, EVENT_SCHEMA, validate_record
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.events import enrich_events
from journey_assets.transforms.sessions import funnel_counts, funnel_documents, session_metrics
from journey_assets.transforms.windows import (
    TUMBLING_5M,
    aggregate_windows,
    explode_windows,
)
from journey_assets_tests.session_truth import assert_funnel_equal, assert_sessions_equal
from journey_assets_tests.test_streaming import compute_truth


def _events_frame(spark, n: int = 3_000, seed: int = 3):
    records = list(generate_records(SyntheticConfig(n_events=n, seed=seed, days=1)))
    typed = [e for e, _ in map(validate_record, records) if e is not None]
    frame = spark.createDataFrame([tuple(e[c] for c in CSV_COLUMNS) for e in typed], EVENT_SCHEMA)
    return records, enrich_events(frame).dropDuplicates(["event_id"])


def test_windows_and_sessions_equal_plain_python(spark) -> None:
    records, events = _events_frame(spark)
    truth = compute_truth(records, malformed=0)
    events = events.cache()
    assert events.count() == len(truth.events)

    exploded = explode_windows(events)
    assert exploded.count() == 3 * len(truth.events)  # 1 tumbling + 2 sliding per event
    rows = aggregate_windows(exploded).collect()
    got = {(r.window_type, int(r.window_start.timestamp()), r.event_type, r.category_l1): r
           for r in rows}
    assert set(got) == set(truth.aggregations)
    for key, want in truth.aggregations.items():
        row = got[key]
        assert (row.event_count, row.unique_users) == (want["event_count"], want["unique_users"])
        assert abs(row.revenue - want["revenue"]) < 1e-6
        expected_len = 300 if key[0] == TUMBLING_5M else 600
        assert (row.window_end - row.window_start).total_seconds() == expected_len

    sessions = session_metrics(events).cache()
    assert_sessions_equal({r.user_session: r.asDict() for r in sessions.collect()},
                          truth.sessions)
    # More engaged sessions score higher on average (the pandas UDF is wired right).
    converted = sessions.where("converted").agg(F.avg("session_quality_score")).first()[0]
    browsing = sessions.where("not converted").agg(F.avg("session_quality_score")).first()[0]
    assert converted > browsing

    funnel = {d["_id"]: d for d in funnel_documents(funnel_counts(sessions))}
    assert_funnel_equal(funnel, truth.funnel)
