"""The ``journey`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from journey_assets.local.artifacts import StackError


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
def dev(port: int) -> None:
    """Stack up, then `dagster dev` on the asset graph (the streaming sensor starts the job)."""
    from journey_assets.local.stack import LocalStack

    for line in _run_or_exit(LocalStack().up):
        click.echo(line)
    home = Path(os.environ.get("DAGSTER_HOME", Path.cwd() / ".local" / "dagster_home"))
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    workspace = Path.cwd() / "workspace.yaml"
    cmd = [sys.executable, "-m", "dagster", "dev", "-p", str(port)]
    cmd += ["-w", str(workspace)] if workspace.exists() else ["-m", "journey_assets.definitions"]
    click.echo(f"dagster dev on http://127.0.0.1:{port} (DAGSTER_HOME={home})")
    sys.exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()
