"""Producer benchmark: generator speed, encode speed, and produce throughput per Kafka client.

    .local/venv/bin/python bench/bench_producer.py [--events 500000] [--kafka-python-events 100000]

Prints events/s for: the synthetic generator alone, encoding alone (validate_record + JSON),
``produce(..., rate=None)`` (--max-rate) with confluent-kafka and with kafka-python from
pre-generated records, and the end-to-end generate -> produce stream. Uses
JOURNEY_KAFKA_BOOTSTRAP (default 127.0.0.1:9092) and throw-away topics ``bench_producer_*``.
Also prints load average and CPU seconds, since other work on a 2-core machine skews wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import uuid

from journey_assets.settings import Settings
from journey_assets.sources.producer import CONFLUENT, KAFKA_PYTHON, encode_record, produce
from journey_assets.sources.synthetic import SyntheticConfig, generate_records
from journey_assets.streaming.preflight import require_servers


def _line(label: str, n: int, wall: float, cpu: float) -> None:
    print(f"{label:<44} {n:>9,} events {wall:>7.2f} s wall {n / wall:>10,.0f} events/s "
          f"(cpu {cpu:.2f} s, {n / cpu if cpu else 0:,.0f} events/cpu-s)", flush=True)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--kafka-python-events", type=int, default=100_000,
                        help="kafka-python is ~10x slower: fewer events keep the run short")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-kafka-python", action="store_true")
    args = parser.parse_args()
    settings = Settings.from_env()
    require_servers(settings.kafka, settings.mongo_uri)
    print(f"load average before: {os.getloadavg()}; cpus: {os.cpu_count()}")

    config = SyntheticConfig(n_events=args.events, seed=args.seed, invalid_fraction=0.001)
    records, wall, cpu = _timed(lambda: list(generate_records(config)))
    _line("generator (list of records)", len(records), wall, cpu)
    print(f"  peak RSS after generating: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")

    _, wall, cpu = _timed(lambda: [encode_record(r) for r in records])
    _line("encode only (validate + JSON)", len(records), wall, cpu)

    def run(client: str, items, label: str, n: int) -> None:
        topic = f"bench_producer_{client.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        summary, _wall, cpu = _timed(lambda: produce(items, settings.kafka_bootstrap, topic,
                                                    client=client, progress=False))
        assert summary.sent == n and summary.failed == 0, summary.lines()
        _line(label, summary.sent, summary.seconds, cpu)

    run(CONFLUENT, records, "produce --max-rate, confluent-kafka", len(records))
    if not args.skip_kafka_python:
        n = min(args.kafka_python_events, len(records))
        run(KAFKA_PYTHON, records[:n], "produce --max-rate, kafka-python", n)
    records = []  # free the memory before the streaming run
    run(CONFLUENT, generate_records(config), "generate -> produce stream, confluent", args.events)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
