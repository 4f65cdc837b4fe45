"""Streaming reader of the REES46 Kaggle CSV files (``2019-Oct.csv``, plain or gzip).

Constant memory: the file is read line by line (a 5.67 GB month never sits in memory). A line
that cannot be a row at all (wrong column count, bytes that are not UTF-8, broken quoting)
becomes a ``DeadLetter`` with file and line number; everything else is yielded as the raw text
record, exactly like the synthetic generator's output. Whether the *values* are acceptable is
decided by ``schema.validate_record`` downstream, not here.

Dead letters are never only counted: ``DeadLetterWriter`` writes them to the
``dead_letter_events`` collection (one document per bad line, ``_id`` = ``file:line``, so a
replay of the same file rewrites the same documents), in batches through the project's upsert
helper (``MongoResource.upsert`` / ``serving.upsert_documents``).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from journey_assets.schema import CSV_COLUMNS, CSV_HEADER, MALFORMED_CSV

Record = dict[str, str | None]
#: The serving collection of rejected input records (the design's contract).
DEAD_LETTER_EVENTS = "dead_letter_events"

_N = len(CSV_COLUMNS)
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class DeadLetter:
    """A line of a CSV file that is not a REES46 row (``line`` is 1-based, the header is 1)."""

    file: str
    line: int
    raw: str
    reason: str
    detail: str = ""

    def document(self, received_at: datetime | None = None) -> dict[str, Any]:
        """As a ``dead_letter_events`` document (deterministic ``_id``: file and line)."""
        return {
            "_id": f"{self.file}:{self.line}",
            "raw": self.raw,
            "reason": self.reason,
            "detail": self.detail,
            "received_at": received_at or datetime.now(UTC),
            "source": {"file": self.file, "line": self.line},
        }


class DeadLetterWriter:
    """Collects ``DeadLetter`` lines and writes them as ``dead_letter_events`` documents.

    ``write(documents)`` stores a batch and returns how many it wrote, for example
    ``lambda docs: mongo.upsert(DEAD_LETTER_EVENTS, docs)``; documents go out every
    ``batch_size`` letters and on ``flush`` (memory stays bounded on a file full of bad lines).
    """

    def __init__(self, write: Callable[[list[dict[str, Any]]], int],
                 batch_size: int = 1_000) -> None:
        self._write = write
        self._batch_size = batch_size
        self._pending: list[dict[str, Any]] = []
        self.written = 0

    def add(self, letter: DeadLetter) -> None:
        self._pending.append(letter.document())
        if len(self._pending) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.written += self._write(self._pending)
            self._pending = []


class HeaderError(ValueError):
    """The file does not start with the REES46 header: not a file this reader understands."""


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _split(text: str) -> list[str] | None:
    """The fields of one line, or None when its quoting is broken."""
    if '"' not in text:
        return text.split(",")  # the common case: REES46 has no quoted fields
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def read_rees46(path: str | Path) -> Iterator[Record | DeadLetter]:
    """Yield each data line of ``path`` as a raw record (empty -> None) or a ``DeadLetter``.

    Blank lines are skipped. Raises ``HeaderError`` if the first line is not the REES46 header.
    """
    path = Path(path)
    name = str(path)
    with _open(path) as fh:
        header = fh.readline().decode("utf-8-sig", errors="replace").strip()
        if header.replace('"', "") != CSV_HEADER:
            raise HeaderError(f"{name}: expected header {CSV_HEADER!r}, found {header[:200]!r}")
        for number, raw_bytes in enumerate(fh, start=2):
            line = raw_bytes.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield DeadLetter(name, number, line.decode("utf-8", errors="replace"),
                                 MALFORMED_CSV, f"not UTF-8: {exc.reason} at byte {exc.start}")
                continue
            fields = _split(text)
            if fields is None:
                yield DeadLetter(name, number, text, MALFORMED_CSV, "broken quoting")
                continue
            if len(fields) != _N:
                yield DeadLetter(name, number, text, MALFORMED_CSV,
                                 f"{len(fields)} columns, expected {_N}")
                continue
            yield {col: (value if value.strip() else None)
                   for col, value in zip(CSV_COLUMNS, fields, strict=True)}

