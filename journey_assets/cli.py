"""The ``journey`` command line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import click

from journey_assets.local.artifacts import StackError
from journey_assets.settings import DEFAULT_MAX_OFFSETS_PER_TRIGGER


def _run_or_exit(fn, *args, **kwargs):
    """Show a StackError as one line on stderr and exit 1, not as a traceback."""
    try:
        return fn(*args, **kwargs)
    except StackError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.group()
def main() -> None:
    """Customer-journey analytics on Kafka, Spark and MongoDB, orchestrated by Dagster."""


# -- the local stack ------------------------------------------------------------------------
@main.group()
def stack() -> None:
    """The embedded local stack: Kafka (KRaft) and FerretDB on 127.0.0.1."""


@stack.command("up")
def stack_up() -> None:
    """Start Kafka and FerretDB (idempotent); wait until each answers."""
    from journey_assets.local.stack import LocalStack

    for line in _run_or_exit(LocalStack().up):
        click.echo(line)


@stack.command("status")
def stack_status() -> None:
    """Show which local services run, with their pids."""
    from journey_assets.local.stack import LocalStack

    for line in LocalStack().status():
        click.echo(line)


@stack.command("down")
def stack_down() -> None:
    """Stop the services this project started (by pid), nothing else."""
    from journey_assets.local.stack import LocalStack

    for line in LocalStack().down():
        click.echo(line)


@main.command("setup")
@click.option("--with-helm", is_flag=True, help="Also build helm (chart tests need it).")
def setup(with_helm: bool) -> None:
    """Fetch and cache what the stack needs (Kafka and Spark jars, FerretDB): once."""
    from journey_assets.local import artifacts

    def fetch() -> None:
        artifacts.require_java17()
        click.echo(f"kafka broker jars: {artifacts.kafka_libs()}")
        jars = artifacts.spark_connector_jars()
        click.echo(f"spark kafka connector: {len(jars)} jars")
        click.echo(f"ferretdb: {artifacts.ferretdb_binary()}")
        if with_helm:
            click.echo(f"helm: {artifacts.helm_binary()}")

    _run_or_exit(fetch)


@main.command("dev")
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--seed-events", default=200_000, show_default=True,
              help="Synthetic events produced first when the topic is empty (0: none).")
def dev(port: int, seed_events: int) -> None:
    """The main job on the embedded stack: stack up, seed the topic, build the dimension
    tables, then `dagster dev` (its streaming_supervisor sensor starts streaming_job)."""
    from journey_assets.local.stack import LocalStack
    from journey_assets.resources.kafka import end_offsets, ensure_topic
    from journey_assets.settings import Settings

    for line in _run_or_exit(LocalStack().up):
        click.echo(line)
    settings = Settings.from_env()
    home = Path(os.environ.get("DAGSTER_HOME", Path.cwd() / ".local" / "dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists() or not instance_yaml.read_text().strip():
        # Run monitoring: a streaming run whose process died is marked failed (not left
        # STARTED forever), so the supervisor sensor starts a new one. A user's file is kept.
        instance_yaml.write_text(DEV_INSTANCE_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    ensure_topic(settings.kafka, settings.topic)
    if seed_events and sum(end_offsets(settings.kafka, settings.topic).values()) == 0:
        from journey_assets.sources.producer import produce, source_records

        click.echo(f"seeding {settings.topic} with {seed_events:,} synthetic events", err=True)
        summary = produce(source_records("synthetic", events=seed_events, seed=42,
                                         invalid_fraction=0.001),
                          settings.kafka, settings.topic)
        for line in summary.lines():
            click.echo(line)
        # Dimensions first, so that the streaming job enriches with them from its first batch.
        click.echo("materializing product_catalog, category_hierarchy, user_dimension", err=True)
        subprocess.check_call(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
             "journey_assets.definitions", "--select",
             "product_catalog,category_hierarchy,user_dimension"], env=env)
    workspace = Path.cwd() / "workspace.yaml"
    cmd = [sys.executable, "-m", "dagster", "dev", "-p", str(port)]
    cmd += ["-w", str(workspace)] if workspace.exists() else ["-m", "journey_assets.definitions"]
    click.echo(f"dagster dev on http://127.0.0.1:{port} (DAGSTER_HOME={home})")
    sys.exit(_run_until_interrupted(cmd, env))


#: The instance of `journey dev` (written when DAGSTER_HOME has no dagster.yaml yet).
DEV_INSTANCE_YAML = """\
# Written by `journey dev`; edit freely (it is not overwritten once it has content).
run_monitoring:
  enabled: true
  start_timeout_seconds: 300     # Spark can take a while to start on a busy laptop
  cancel_timeout_seconds: 180    # let query.stop() finish a micro-batch
  max_resume_run_attempts: 0     # no resume: the supervisor sensor relaunches from checkpoints
  poll_interval_seconds: 30
telemetry:
  enabled: false
"""
#: Seconds `dagster dev` gets to stop its webserver, daemon, code servers and runs after a
#: Ctrl-C before it is sent SIGTERM, then (its whole process group) SIGKILL.
DEV_STOP_GRACE_S = 20.0


def _run_until_interrupted(cmd: list[str], env: dict[str, str]) -> int:
    """Run `dagster dev` in a process group of its own and stop all of it on Ctrl-C.

    ``subprocess.call`` would SIGKILL `dagster dev` on KeyboardInterrupt, orphaning its
    webserver, daemon, code servers and run workers. Instead the interrupt is forwarded to the
    group (a run worker stops its streaming queries on it), `dagster dev` gets
    ``DEV_STOP_GRACE_S`` to shut down, then SIGTERM, then the group gets SIGKILL.
    """
    import signal
    import time

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        click.echo("stopping dagster dev (its runs, webserver, daemon and code servers)...",
                   err=True)
        for sig, grace in ((signal.SIGINT, DEV_STOP_GRACE_S), (signal.SIGTERM, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.5)
            if not _group_alive(proc.pid):
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        click.echo("stopped; the local stack keeps running (`journey stack down` stops it)",
                   err=True)
        return 130


def _group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# -- events: synthetic data and the producer ---------------------------------------------------
@main.command("generate")
@click.option("--events", "n_events", type=int, default=100_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--start", default="2019-10-01", show_default=True, help="First day (UTC).")
@click.option("--days", type=int, default=30, show_default=True)
@click.option("--invalid-fraction", type=float, default=0.0, show_default=True)
@click.option("--duplicate-fraction", type=float, default=0.01, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="events.csv or events.csv.gz (REES46 header).")
def generate(n_events: int, seed: int, start: str, days: int, invalid_fraction: float,
             duplicate_fraction: float, out: str) -> None:
    """Write a deterministic synthetic REES46 CSV."""
    import time

    from journey_assets.sources.synthetic import SyntheticConfig, generate_records, write_csv

    config = SyntheticConfig(n_events=n_events, seed=seed, start=start, days=days,
                             invalid_fraction=invalid_fraction,
                             duplicate_fraction=duplicate_fraction)
    began = time.perf_counter()
    rows = write_csv(generate_records(config), out)
    seconds = time.perf_counter() - began
    click.echo(f"wrote {rows:,} events to {out} in {seconds:.1f} s ({rows / seconds:,.0f} events/s)")


@main.command("simulate")
@click.option("--source", type=click.Choice(["synthetic", "csv"]), default="synthetic",
              show_default=True)
@click.option("--path", type=click.Path(exists=True, dir_okay=False), help="REES46 CSV (.csv/.gz).")
@click.option("--events", type=int, default=None,
              help="How many events (synthetic default 100000; csv default: the whole file).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--rate", type=float, default=None, help="Throttle to this many events/s.")
@click.option("--max-rate", is_flag=True, help="As fast as possible (the default without --rate).")
@click.option("--mode", type=click.Choice(["replay", "live"]), default="replay", show_default=True,
              help="replay keeps event_time, live re-stamps it to now.")
@click.option("--partitions", type=int, default=3, show_default=True,
              help="Partitions when the topic has to be created.")
@click.option("--client", type=click.Choice(["confluent", "kafka-python"]), default="confluent",
              show_default=True)
@click.option("--invalid-fraction", type=float, default=0.0, show_default=True,
              help="Synthetic only: share of invalid records (they go to the dead-letter queue).")
def simulate(source: str, path: str | None, events: int | None, seed: int, rate: float | None,
             max_rate: bool, mode: str, partitions: int, client: str,
             invalid_fraction: float) -> None:
    """Produce events into the Kafka topic (JOURNEY_KAFKA_BOOTSTRAP / JOURNEY_TOPIC)."""
    from journey_assets.settings import Settings
    from journey_assets.sources.producer import produce, source_records

    if rate is not None and max_rate:
        raise click.UsageError("--rate and --max-rate exclude each other")
    if source == "csv" and not path:
        raise click.UsageError("--source csv needs --path")
    settings = Settings.from_env()
    records = source_records(source, path=path, events=events, seed=seed,
                             invalid_fraction=invalid_fraction)
    click.echo(f"producing {source} events to {settings.topic} on {settings.kafka_bootstrap} "
               f"({'max rate' if rate is None else f'{rate:,.0f} events/s'}, {mode})", err=True)
    from journey_assets.resources.mongo import MongoResource
    from journey_assets.sources.rees46 import DEAD_LETTER_EVENTS, DeadLetterWriter

    mongo = MongoResource(uri=settings.mongo_uri, database=settings.mongo_db)
    # Malformed CSV lines cannot reach Kafka: written to dead_letter_events from here.
    dead_letters = DeadLetterWriter(lambda docs: mongo.upsert(DEAD_LETTER_EVENTS, docs))
    summary = produce(records, settings.kafka, settings.topic, rate=rate, mode=mode,
                      partitions=partitions, client=client, dead_letters=dead_letters)
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        sys.exit(1)


@main.command("stream")
@click.option("--mode", type=click.Choice(["available-now", "continuous"]), default="continuous",
              show_default=True, help="available-now: process what the topic holds, then stop.")
@click.option("--max-offsets", type=int, default=DEFAULT_MAX_OFFSETS_PER_TRIGGER,
              show_default=True,
              help="maxOffsetsPerTrigger: cap on records per micro-batch (all partitions); "
                   "0: no cap (a backlog becomes one batch).")
@click.option("--trigger-seconds", type=float, default=2.0, show_default=True,
              help="Processing-time trigger interval (continuous mode).")
@click.option("--events-trigger-seconds", type=float, default=None,
              help="Trigger interval of the events query (lake, enriched events; continuous "
                   "mode; default: max(--trigger-seconds, 60), see docs/streaming.md).")
@click.option("--sessions-trigger-seconds", type=float, default=None,
              help="Trigger interval of the sessions query (continuous mode; default: "
                   "max(--trigger-seconds, 45), see docs/streaming.md).")
@click.option("--session-gap", type=float, default=30.0, show_default=True,
              help="Minutes of event time after its last event that close a session.")
@click.option("--stall-timeout", type=float, default=900.0, show_default=True,
              help="Watchdog: seconds a micro-batch may run before the stream fails (0: off).")
@click.option("--shuffle-partitions", type=int, default=2, show_default=True,
              help="Spark shuffle partitions = state store partitions of the aggregation "
                   "(fixed by the checkpoint at the first start). On local[2], 1 gives the "
                   "lowest latency, 2 the highest throughput.")
def stream(mode: str, max_offsets: int, trigger_seconds: float,
           events_trigger_seconds: float | None, sessions_trigger_seconds: float | None,
           session_gap: float, stall_timeout: float, shuffle_partitions: int) -> None:
    """Kafka -> Spark Structured Streaming -> MongoDB + lake (checkpoints under JOURNEY_DATA_DIR)."""
    from journey_assets.resources.spark import build_spark_session
    from journey_assets.settings import Settings
    from journey_assets.streaming.lease import CheckpointLease, LeaseHeld
    from journey_assets.streaming.pipeline import (
        StreamFailure,
        StreamOptions,
        run_stream,
        target_from,
    )
    from journey_assets.streaming.preflight import (
        PreflightError,
        check_checkpoints,
        check_sources,
    )
    from journey_assets.streaming.progress import format_progress

    settings = Settings.from_env()
    try:  # before Spark starts: a missing topic or a dead server is one line, not a trace
        check_sources(settings.kafka, settings.topic, settings.mongo_uri)
    except (PreflightError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    options = StreamOptions(mode=mode, max_offsets_per_trigger=max_offsets,
                            trigger_seconds=trigger_seconds,
                            events_trigger_seconds=events_trigger_seconds,
                            sessions_trigger_seconds=sessions_trigger_seconds,
                            session_gap_minutes=session_gap,
                            stall_timeout_seconds=stall_timeout)
    target = target_from(settings)
    lease = CheckpointLease(target.checkpoint_root, owner=f"journey stream --mode {mode}")
    try:  # one writer per checkpoint, taken before Spark starts; a corrupt one is one line
        check_checkpoints(target.query_checkpoints())
        lease.acquire()
    except (LeaseHeld, PreflightError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    try:
        spark = build_spark_session(
            master=settings.spark_master, app_name="journey_stream",
            shuffle_partitions=shuffle_partitions,
            driver_memory=settings.spark_driver_memory, streaming=True)
        click.echo(f"streaming {settings.topic} -> {settings.mongo_db} ({mode})", err=True)
        summary = run_stream(spark, target, options,
                             on_progress=lambda _q, rec: click.echo(format_progress(rec)))
    except StreamFailure as exc:  # its Java detail is in Spark's log above
        click.echo(f"error: {str(exc).splitlines()[0]}", err=True)
        sys.exit(1)
    finally:
        lease.release()
    click.echo(f"done: batches {summary.batches}, input rows {summary.input_rows}, "
               f"{summary.seconds:.1f} s")


if __name__ == "__main__":
    main()
