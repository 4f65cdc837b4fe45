"""The REES46 CSV reader: good rows out, one dead letter per malformed line, constant memory."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import pytest

from journey_assets.schema import CSV_COLUMNS, CSV_HEADER, MALFORMED_CSV, validate_record
from journey_assets.sources.rees46 import DeadLetter, HeaderError, read_rees46
from journey_assets.sources.synthetic import SyntheticConfig, generate_records, write_csv

GOOD = [
    "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
    "72d76fde-8bb3-4e00-8c23-a032dfed738c",
    "2019-10-01 00:00:01 UTC,purchase,1004856,2053013555631882655,electronics.smartphone,"
    "samsung,130.76,543272936,8187d148-3c41-46d4-b0c0-9c08cd9dc564",
    # Well-formed CSV with a bad value: the reader yields it, validation rejects it later.
    "2019-10-01 00:00:02 UTC,view,1004856,2053013555631882655,,,-3.00,543272936,",
    '2019-10-01 00:00:03 UTC,cart,1004857,2053013555631882655,"electronics.smartphone",'
    '"samsung",99.00,543272936,8187d148-3c41-46d4-b0c0-9c08cd9dc564',
]
BAD = [
    (b"2019-10-01 00:00:04 UTC,view,1,2,,,3.0,4", "8 columns"),               # too few
    (b"2019-10-01 00:00:05 UTC,view,1,2,,,3.0,4,s,extra", "10 columns"),     # too many
    (b"2019-10-01 00:00:06 UTC,view,1,2,,br\xff\xfeand,3.0,4,s", "not UTF-8"),
    (b'2019-10-01 00:00:07 UTC,view,1,2,"unterminated,,3.0,4,s', "quoting"),
    (b"garbage line", "1 columns"),
]


def _write(path: Path, lines: list[bytes]) -> None:
    data = b"\n".join([CSV_HEADER.encode(), *lines]) + b"\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_good_rows_and_one_dead_letter_per_bad_line(tmp_path, name):
    # Interleave: good, bad, good, blank line, bad, ... with known line numbers.
    lines: list[bytes] = []
    expected_bad: dict[int, str] = {}
    good_iter, bad_iter = iter(GOOD), iter(BAD)
    for i in range(len(GOOD) + len(BAD)):
        if i % 2 == 0 and (g := next(good_iter, None)) is not None:
            lines.append(g.encode())
        elif (b := next(bad_iter, None)) is not None:
            lines.append(b[0])
            expected_bad[len(lines) + 1] = b[1]  # +1: the header is line 1
        else:
            lines.append(next(good_iter).encode())
        if i == 3:
            lines.append(b"")  # blank lines are skipped, but they still count as lines
    path = tmp_path / name
    _write(path, lines)

    items = list(read_rees46(path))
    dead = [x for x in items if isinstance(x, DeadLetter)]
    rows = [x for x in items if not isinstance(x, DeadLetter)]
    assert len(rows) == len(GOOD)
    assert len(dead) == len(BAD)
    assert rows[0] == dict(zip(CSV_COLUMNS, GOOD[0].split(","), strict=True)) | {"category_code": None}
    assert rows[3]["category_code"] == "electronics.smartphone"  # quotes removed
    assert rows[2]["user_session"] is None and rows[2]["brand"] is None
    assert validate_record(rows[2])[1] == "negative_price"
    assert [validate_record(r)[1] for r in rows].count(None) == 3

    assert {d.line: d.detail for d in dead}.keys() == expected_bad.keys()
    for d in dead:
        assert d.reason == MALFORMED_CSV
        assert d.file == str(path)
        assert expected_bad[d.line] in d.detail
        assert d.raw  # the raw text travels with the dead letter
        doc = d.document()
        assert doc["source"] == {"file": str(path), "line": d.line}
        assert doc["_id"] == f"{path}:{d.line}"


def test_header_is_required(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(HeaderError):
        list(read_rees46(path))


def test_generated_file_round_trips(tmp_path):
    records = list(generate_records(SyntheticConfig(n_events=2_000, seed=2, invalid_fraction=0.02)))
    path = tmp_path / "gen.csv.gz"
    write_csv(records, path)
    assert list(read_rees46(path)) == records


def test_streams_in_constant_memory(tmp_path):
    path = tmp_path / "big.csv"
    n = write_csv(generate_records(SyntheticConfig(n_events=60_000, seed=3)), path)
    assert path.stat().st_size > 8_000_000
    tracemalloc.start()
    count = sum(1 for _ in read_rees46(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    assert peak < 2_000_000  # far below the file size: nothing accumulates
