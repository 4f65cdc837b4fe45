"""`journey stack up` is idempotent and `down` leaves no process behind (a second stack)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from journey_assets.local.artifacts import StackError
from journey_assets.local.stack import LocalStack, port_open
from journey_assets.serving import INSERT_REPLACE, upsert_documents

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line and "ps -eo" not in line]


def test_up_twice_then_down_leaves_nothing(tmp_path: Path, local_stack: LocalStack) -> None:
    # Its own home and ports, sharing the cached jars and FerretDB build of the main stack.
    stack = LocalStack(tmp_path, kafka_port=19092, kafka_controller_port=19093,
                       mongo_port=27117, artifacts_home=local_stack.artifacts_home)
    try:
        first = stack.up()
        assert all("started" in line for line in first)
        pids = [svc.pid() for svc in stack.services]
        second = stack.up()
        assert all("already running" in line for line in second)
        assert [svc.pid() for svc in stack.services] == pids
        assert port_open(19092) and port_open(27117)
    finally:
        stack.down()
    assert not port_open(19092) and not port_open(27117)
    assert all(svc.pid() is None for svc in stack.services)
    assert _processes_under(tmp_path) == []


def test_taken_port_is_one_clear_error(tmp_path: Path, local_stack: LocalStack) -> None:
    # The main stack's FerretDB already holds 27017.
    stack = LocalStack(tmp_path, kafka_port=19192, kafka_controller_port=19193,
                       artifacts_home=local_stack.artifacts_home)
    with pytest.raises(StackError, match=r"port 127\.0\.0\.1:27017 is taken"):
        stack._up_mongo()


def test_cli_reports_a_taken_port_without_a_traceback(tmp_path: Path,
                                                     local_stack: LocalStack) -> None:
    env = {**os.environ, "JOURNEY_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "journey_assets.cli", "stack", "up"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: port 127.0.0.1:9092 is taken")
    assert "Traceback" not in proc.stderr


@pytest.fixture
def private_ferretdb(tmp_path: Path, local_stack: LocalStack) -> Iterator[tuple[Path, Database]]:
    """A FerretDB of its own (its SQLite files are read by the tests): its data folder and a
    database on it."""
    stack = LocalStack(tmp_path, kafka_port=19292, kafka_controller_port=19293,
                       mongo_port=27118, artifacts_home=local_stack.artifacts_home)
    try:
        stack._up_mongo()
        client: MongoClient = MongoClient("mongodb://127.0.0.1:27118")
        yield stack.mongo.home / "ferretdb", client["journey_sqlite_check"]
        client.close()
    finally:
        stack.down()


def test_ferretdb_finds_a_document_to_replace_by_index(
        private_ferretdb: tuple[Path, Database]) -> None:
    """FerretDB 1.24 updates and deletes by `_ferretdb_sjson->'$._id'`, an expression its own
    _id index does not cover; the local build adds that index to every collection table, so a
    replace_one by _id is an index search, not a scan of the collection."""
    folder, db = private_ferretdb
    coll = db["documents"]
    coll.insert_many([{"_id": f"{i}:2019-10-01", "n": i} for i in range(500)])
    database_file = folder / f"{db.name}.sqlite"
    deadline = time.monotonic() + 30
    while not (indexes := _id_lookup_indexes(database_file)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(indexes) == 1, f"no _id lookup index in {database_file}"
    table, index = indexes[0]
    with sqlite3.connect(database_file) as con:
        plan = con.execute(f"EXPLAIN QUERY PLAN UPDATE \"{table}\" SET _ferretdb_sjson = ? "
                           "WHERE _ferretdb_sjson->'$._id' = ?", ("{}", '"1"')).fetchall()
    assert any(f"USING INDEX {index}" in row[-1] for row in plan), plan
    # Writes still answer as MongoDB's do.
    assert coll.replace_one({"_id": "7:2019-10-01"}, {"n": -7}).modified_count == 1
    assert coll.find_one({"_id": "7:2019-10-01"}) == {"_id": "7:2019-10-01", "n": -7}
    assert coll.delete_one({"_id": "8:2019-10-01"}).deleted_count == 1
    assert coll.count_documents({}) == 499


def test_a_rewrite_on_ferretdb_keeps_its_wal_small(
        private_ferretdb: tuple[Path, Database]) -> None:
    """Re-writing documents on FerretDB is one replace_one each, whose read transaction stays
    open while it writes: without a commit in between that has no reader, SQLite never
    rewinds the WAL (here it grows past 100 MiB). upsert_documents lets it rewind."""
    folder, db = private_ferretdb
    docs = [{"_id": f"{i}:2019-10-01", "as_of": "2019-10-01", "pad": "p" * 400}
            for i in range(4_000)]
    upsert_documents(db, "rewritten", docs, strategy=INSERT_REPLACE)
    wal = folder / f"{db.name}.sqlite-wal"
    largest = 0
    for version in range(3):
        changed = [{**d, "version": version} for d in docs]
        assert upsert_documents(db, "rewritten", changed, strategy=INSERT_REPLACE) == len(docs)
        largest = max(largest, wal.stat().st_size)
    assert db["rewritten"].count_documents({"version": 2}) == len(docs)
    assert largest < 64 * 2**20, f"the WAL grew to {largest / 2**20:.0f} MiB"


def _id_lookup_indexes(database_file: Path) -> list[tuple[str, str]]:
    if not database_file.exists():
        return []
    with sqlite3.connect(database_file) as con:
        return con.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
                           "AND name LIKE '%journey_id_lookup'").fetchall()


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    # One in 64 base64url ids starts with "-"; the storage tool's parser took one for an option
    # and a CI run failed to start Kafka. 2,000 draws would meet one with near certainty.
    from journey_assets.local.stack import _kafka_cluster_id

    ids = [_kafka_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
