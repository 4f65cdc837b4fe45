"""The Delta event lake: insert-only writes, idempotent commits, readers outside Spark, and the
maintenance asset. The independent side is delta-rs (``deltalake``) + DuckDB over the same
table, and plain Python over the input rows."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
from deltalake import DeltaTable

from journey_assets import lake
from journey_assets.assets.maintenance import lake_maintenance
from journey_assets.resources import LakeResource, SparkResource
from journey_assets.schema import EVENT_DATE, EVENT_ID, EVENT_TIME, event_id, validate_record
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.transforms.events import LAKE_COLUMNS, read_event_lake, write_event_lake
from journey_assets_tests.test_features import spark_events


def _records(n: int, seed: int) -> list[dict]:
    return list(generate_records(SyntheticConfig(n_events=n, seed=seed, days=2,
                                                 duplicate_fraction=0.05)))


def _unique_ids(records: list[dict]) -> set[str]:
    ids = set()
    for rec in records:
        event, _ = validate_record(rec)
        if event is not None:
            ids.add(event_id(event))
    return ids


def test_idempotent_commits_and_insert_only_rows(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    first, second = _records(3_000, 1), _records(2_000, 2)
    events = spark_events(spark, first)

    write_event_lake(events, path, app_id="app-a", version=0)
    version = DeltaTable(path).version()
    write_event_lake(events, path, app_id="app-a", version=0)  # a re-run batch: skipped
    assert DeltaTable(path).version() == version
    write_event_lake(events, path, app_id="app-b", version=0)  # new app id, same rows
    write_event_lake(spark_events(spark, first + second), path, app_id="app-b", version=1)

    # delta-rs + DuckDB, not Spark: every unique event exactly once.
    dataset = lake.read_table_arrow(path)  # noqa: F841 (DuckDB reads it by name)
    [(rows, distinct)] = duckdb.sql(
        f"SELECT count(*), count(DISTINCT {EVENT_ID}) FROM dataset").fetchall()
    expected = _unique_ids(first) | _unique_ids(second)
    assert rows == distinct == len(expected)
    assert set(lake.read_table_arrow(path).to_table(columns=[EVENT_ID])
               .column(EVENT_ID).to_pylist()) == expected
    # Time travel: the first version still holds the first batch only.
    assert read_event_lake(spark, path, version=version).count() == len(_unique_ids(first))


def _seconds_by_day(records: list[dict]) -> dict[date, lake.SecondsRange]:
    """Plain Python: per UTC day of the valid events, the whole seconds they span."""
    seconds: dict[date, list[int]] = {}
    for rec in records:
        event, _ = validate_record(rec)
        if event is not None:
            t = event["event_time"]
            seconds.setdefault(t.date(), []).append(int(t.timestamp()))
    return {day: lake.SecondsRange(min(s), max(s)) for day, s in seconds.items()}


def _event_second(record: dict) -> float:
    event, _ = validate_record(record)
    return float("inf") if event is None else int(event["event_time"].timestamp())


def test_time_ranged_inserts_skip_other_files_and_store_each_event_once(
        spark, tmp_path: Path) -> None:
    # Three time slices of two days (the middle one crosses midnight; no second is in two
    # slices), inserted as micro-batches are; the last batch repeats the middle slice, whose
    # stored rows its seconds still reach.
    path = str(tmp_path / "events")
    records = sorted(_records(6_000, 4), key=_event_second)
    cuts = [next(i for i in range(n, len(records))
                 if _event_second(records[i]) != _event_second(records[i - 1]))
            for n in (2_000, 4_000)]
    first, middle, last = records[:cuts[0]], records[cuts[0]:cuts[1]], records[cuts[1]:]
    batches = (first, middle, middle + last)

    def insert(version: int) -> lake.InsertCounts:
        ranges = _seconds_by_day(batches[version])
        return lake.insert_new_rows(
            spark, path, spark_events(spark, batches[version]).select(*LAKE_COLUMNS), EVENT_ID,
            EVENT_DATE, "app", version, lake.EVENTS_TABLE_PROPERTIES, partitions=set(ranges),
            time_column=EVENT_TIME, seconds_by_partition=ranges)

    insert(0)
    first_files = [Path(uri.removeprefix("file://")) for uri in DeltaTable(path).file_uris()]
    assert first_files
    insert(1)
    # The first slice's files are moved away: the last MERGE can only succeed if it skips them.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for i, file in enumerate(first_files):
        file.rename(hidden / f"{i}.parquet")
    counts = insert(2)
    for i, file in enumerate(first_files):
        (hidden / f"{i}.parquet").rename(file)
    assert counts.inserted == len(_unique_ids(last) - _unique_ids(first + middle))

    dataset = lake.read_table_arrow(path)  # noqa: F841 (DuckDB reads it by name)
    [(rows, distinct)] = duckdb.sql(
        f"SELECT count(*), count(DISTINCT {EVENT_ID}) FROM dataset").fetchall()
    assert rows == distinct == len(_unique_ids(records))


def test_maintenance_compacts_and_keeps_every_row(spark, tmp_path: Path) -> None:
    data = tmp_path / "data"
    resources = {"spark": SparkResource(master="local[2]", shuffle_partitions=2),
                 "lake": LakeResource(data_dir=str(data))}
    path = resources["lake"].events_path
    records = _records(4_000, 3)
    for i, chunk in enumerate((records[:1_000], records[1_000:2_500], records[2_500:])):
        write_event_lake(spark_events(spark, chunk), path, app_id="app", version=i)
    before = DeltaTable(path)
    files_before = len(before.file_uris())
    ids_before = sorted(before.to_pyarrow_table(columns=[EVENT_ID]).column(EVENT_ID).to_pylist())

    result = dg.materialize([lake_maintenance], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("lake_maintenance")[0].metadata
    after = DeltaTable(path)
    assert len(after.file_uris()) < files_before
    assert metadata["files_removed_by_compaction"].value >= files_before - len(after.file_uris())
    assert sorted(after.to_pyarrow_table(columns=[EVENT_ID]).column(EVENT_ID)
                  .to_pylist()) == ids_before
    days = {d.isoformat() for d in after.to_pyarrow_table(columns=[EVENT_DATE])
            .column(EVENT_DATE).to_pylist()}
    valid = [validate_record(r)[0] for r in records]
    assert days == {e["event_time"].date().isoformat() for e in valid if e is not None}
