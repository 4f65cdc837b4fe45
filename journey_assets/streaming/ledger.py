"""The data-quality ledger: where every Kafka record of a micro-batch went (no Dagster here).

One document per micro-batch of the events query, ``_id`` ``<app id>:<batch id>`` (the app id
is the query's, kept in its checkpoint), written insert-only after the batch's lake commit, so
a replayed batch keeps its first record. Its figures are the driver's own counters (the counts
job's few rows, the MERGE's metrics, the checkpoint's offsets), so the driver writes it, one
small document per micro-batch; the batch's rows stay on the executors. Its figures:

* ``offsets``: per Kafka partition, the range the batch was planned to read (from the
  checkpoint's offset log: ``[end of batch - 1, end of batch)``), the records read, and the
  head of the range that was no longer in the topic (``skipped``: deleted by retention before
  it was read, ``failOnDataLoss=false``) - the exact skipped offsets, ``[start, first read)``.
* ``records_in`` = ``inserted`` (new in the lake) + ``duplicates_in_batch`` (an event_id seen
  twice in the batch) + ``duplicates_in_lake`` (already stored) + dead-lettered (by reason) +
  ``late_dropped``. The events path stores late events (the lake and ``enriched_events`` are
  complete): ``late_dropped`` is 0 there; the stateful queries' watermark drops are in their
  progress (``late_rows_dropped``).
* per partition: planned = read + skipped + ``gaps`` (offsets inside the range that hold no
  record: transaction markers or compaction; zero on this project's topics, negative never).

``ledger_problems`` checks both identities on one document; the Dagster asset checks run it
over the collection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

DATA_QUALITY_LEDGER = "data_quality_ledger"
#: Counts that make up ``records_in``.
OUTCOMES = ("inserted", "duplicates_in_batch", "duplicates_in_lake", "late_dropped")

#: Key of a micro-batch's ledger figures in the events sink's output (progress, metadata).
LEDGER_FIGURES = "ledger"
#: The ledger figures shown in the streaming assets' metadata.
LEDGER_SUMMARY = ("batch_id", "records_in", "inserted", "duplicates_in_batch",
                  "duplicates_in_lake", "late_dropped", "dead_lettered_total",
                  "skipped_offsets", "gap_offsets")


def read_checkpoint_text(spark: SparkSession, path: str) -> str | None:
    """A checkpoint file's text through Hadoop's file system (local, PVC or object store)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        return None
    stream = fs.open(hadoop_path)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def kafka_end_offsets(offset_log_text: str | None, topic: str) -> dict[int, int] | None:
    """A batch's end offsets per partition from its offset-log file (``v1``, the batch's
    metadata, then one line per source: ``{"topic": {"0": 123, ...}}``)."""
    if not offset_log_text:
        return None
    for line in offset_log_text.splitlines()[2:]:
        try:
            offsets = json.loads(line)
        except ValueError:
            continue
        if isinstance(offsets, dict) and topic in offsets:
            return {int(p): int(o) for p, o in offsets[topic].items()}
    return None


def planned_ranges(spark: SparkSession, checkpoint: str, batch_id: int,
                   topic: str) -> tuple[dict[int, int] | None, dict[int, int] | None]:
    """(start, end) offsets per partition of micro-batch ``batch_id``: the end offsets of the
    batch before it and of this one (start None for batch 0: it began at startingOffsets)."""
    end = kafka_end_offsets(read_checkpoint_text(spark, f"{checkpoint}/offsets/{batch_id}"),
                            topic)
    start = None
    if batch_id > 0:
        start = kafka_end_offsets(
            read_checkpoint_text(spark, f"{checkpoint}/offsets/{batch_id - 1}"), topic)
    return start, end


def offset_entries(read: Mapping[int, tuple[int, int, int]], start: Mapping[int, int] | None,
                   end: Mapping[int, int] | None) -> list[dict[str, Any]]:
    """Per partition: planned range, records read, first/last offset read, skipped head range
    and gaps. ``read``: partition -> (records, first offset, last offset)."""
    partitions = sorted(set(read) | set(end or {}))
    entries = []
    for partition in partitions:
        count, first, last = read.get(partition, (0, None, None))
        stop = (end or {}).get(partition, last + 1 if last is not None else 0)
        begin = (start or {}).get(partition, first if first is not None else stop)
        skipped_to = first if first is not None else stop
        skipped = max(0, skipped_to - begin)
        entries.append({
            "partition": partition, "start": begin, "end": stop, "read": count,
            "first_read": first, "last_read": last,
            "skipped": skipped, "skipped_range": [begin, skipped_to] if skipped else None,
            "gaps": (stop - begin) - count - skipped,
        })
    return entries


def ledger_document(app_id: str, batch_id: int, topic: str, *, records_in: int, valid: int,
                    source_rows: int, inserted: int, dead_lettered: Mapping[str, int],
                    offsets: list[dict[str, Any]]) -> dict[str, Any]:
    """The ledger's document for one events micro-batch (``recorded_at`` a UTC instant)."""
    return {
        "_id": f"{app_id}:{batch_id}", "query": "events", "app_id": app_id,
        "batch_id": batch_id, "topic": topic, "records_in": records_in, "valid": valid,
        "inserted": inserted, "duplicates_in_batch": valid - source_rows,
        "duplicates_in_lake": source_rows - inserted, "late_dropped": 0,
        "dead_lettered": dict(sorted(dead_lettered.items())),
        "dead_lettered_total": sum(dead_lettered.values()),
        "offsets": offsets,
        "skipped_offsets": sum(e["skipped"] for e in offsets),
        "gap_offsets": sum(e["gaps"] for e in offsets),
        "recorded_at": datetime.now(UTC),
    }


def ledger_problems(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with one ledger document (empty: both identities hold)."""
    problems = []
    dead = doc.get("dead_lettered") or {}
    outcomes = sum(int(doc.get(name) or 0) for name in OUTCOMES) + sum(dead.values())
    if outcomes != doc.get("records_in"):
        problems.append(f"{doc['_id']}: records_in {doc.get('records_in')} != inserted + "
                        f"duplicates + late + dead-lettered {outcomes}")
    if sum(dead.values()) != doc.get("dead_lettered_total"):
        problems.append(f"{doc['_id']}: dead-lettered by reason {sum(dead.values())} != total "
                        f"{doc.get('dead_lettered_total')}")
    if any(int(doc.get(name) or 0) < 0 for name in OUTCOMES):
        problems.append(f"{doc['_id']}: a negative count")
    offsets = doc.get("offsets") or []
    read = sum(e["read"] for e in offsets)
    if read != doc.get("records_in"):
        problems.append(f"{doc['_id']}: records read by partition {read} != records_in "
                        f"{doc.get('records_in')}")
    for entry in offsets:
        if entry["gaps"] < 0:  # more records than offsets in the planned range
            problems.append(f"{doc['_id']}: partition {entry['partition']} read "
                            f"{entry['read']} records from [{entry['start']}, {entry['end']})")
    return problems


def skipped_ranges(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The offset ranges of one ledger document that were never read (by partition)."""
    return [{"topic": doc.get("topic"), "partition": e["partition"],
             "from": e["skipped_range"][0], "to": e["skipped_range"][1]}
            for e in doc.get("offsets") or [] if e.get("skipped")]
