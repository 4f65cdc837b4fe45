"""The embedded local stack: a single-node KRaft Kafka broker and a FerretDB (MongoDB wire) server.

Both run as plain processes that this module starts, records by pid under ``.local/stack/run``
and stops again. ``up`` is idempotent: a service whose recorded pid is alive and answering is
left alone. Spark needs no server: it runs in local mode inside the Python process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from journey_assets.local.artifacts import (
    StackError,
    ferretdb_binary,
    kafka_libs,
    require_java17,
)
from journey_assets.settings import project_home

KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
MONGO_PORT = 27017
HOST = "127.0.0.1"

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def _sasl_properties(port: int, users: dict[str, str]) -> tuple[str, str, str]:
    """(listener, protocol map entry, settings) of a SASL_PLAINTEXT listener with PLAIN users."""
    accounts = " ".join(f'user_{user}="{password}"' for user, password in users.items())
    settings = ("sasl.enabled.mechanisms=PLAIN\n"
                "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {accounts};\n")
    return f",SASL_PLAINTEXT://{HOST}:{port}", ",SASL_PLAINTEXT:SASL_PLAINTEXT", settings


def _server_properties(data: Path, port: int, controller_port: int,
                       sasl_port: int | None = None,
                       sasl_users: dict[str, str] | None = None) -> str:
    listener = protocol = sasl = ""
    if sasl_port is not None:
        listener, protocol, sasl = _sasl_properties(sasl_port, sasl_users or {})
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}{listener}
advertised.listeners=PLAINTEXT://{HOST}:{port}{listener}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT{protocol}
inter.broker.listener.name=PLAINTEXT
{sasl}
log.dirs={data}
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
"""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists": look at its state.
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _spawn(service: Service, argv: list[str], env: dict[str, str] | None = None,
           cwd: Path | None = None) -> int:
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(service.log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    service.pid_file.write_text(str(proc.pid))
    return proc.pid


def _wait_until(check, service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = service.pid()
        if pid is None:
            raise StackError(f"{service.name} exited during start-up; see {service.log_file}")
        if check():
            return
        time.sleep(0.5)
    raise StackError(f"{service.name} did not answer within {timeout:.0f}s; see {service.log_file}")


class LocalStack:
    """Start, inspect and stop the local Kafka and FerretDB processes."""

    def __init__(
        self, home: Path | None = None, *, kafka_port: int = KAFKA_PORT,
        kafka_controller_port: int = KAFKA_CONTROLLER_PORT, mongo_port: int = MONGO_PORT,
        artifacts_home: Path | None = None, kafka_sasl_port: int | None = None,
        kafka_sasl_users: dict[str, str] | None = None,
    ) -> None:
        """``kafka_sasl_port``: a second broker listener, SASL_PLAINTEXT with the PLAIN
        ``kafka_sasl_users`` (user -> password), for testing authenticated clients."""
        self.home = (home or project_home()).resolve()
        # Downloads and builds may be shared with another stack (tests start a second one).
        self.artifacts_home = (artifacts_home or self.home).resolve()
        stack = self.home / "stack"
        self.kafka = Service("kafka", kafka_port, stack)
        self.kafka_controller_port = kafka_controller_port
        self.kafka_sasl_port = kafka_sasl_port
        self.kafka_sasl_users = dict(kafka_sasl_users or {})
        self.mongo = Service("ferretdb", mongo_port, stack)

    @property
    def services(self) -> list[Service]:
        return [self.kafka, self.mongo]

    # -- up -------------------------------------------------------------------------------
    def up(self) -> list[str]:
        """Start what is not running; return one line per service."""
        return [self._up_kafka(), self._up_mongo()]

    def _check_port_free(self, service: Service, port: int) -> None:
        if port_open(port):
            raise StackError(
                f"port {HOST}:{port} is taken by another process, so {service.name} cannot start "
                f"there; stop that process (e.g. `ss -ltnp 'sport = :{port}'`) and retry."
            )

    def _up_kafka(self) -> str:
        svc = self.kafka
        if svc.pid() is not None:
            _wait_until(lambda: kafka_ready(svc.port), svc, 60)
            return f"kafka     already running (pid {svc.pid()}) on {HOST}:{svc.port}"
        self._check_port_free(svc, svc.port)
        self._check_port_free(svc, self.kafka_controller_port)
        if self.kafka_sasl_port is not None:
            self._check_port_free(svc, self.kafka_sasl_port)
        require_java17()
        libs = kafka_libs(self.artifacts_home)
        base = svc.home / "kafka"
        data = base / "data"
        base.mkdir(parents=True, exist_ok=True)
        props = base / "server.properties"
        props.write_text(_server_properties(data, svc.port, self.kafka_controller_port,
                                            self.kafka_sasl_port, self.kafka_sasl_users))
        log4j = base / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=base / "server.log"))
        classpath = f"{libs}/*"
        java_opts = ["-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}",
                     "-Djava.awt.headless=true"]
        if not (data / "meta.properties").exists():
            # KRaft storage is formatted once, with a fresh cluster id.
            cluster_id = _kafka_cluster_id()
            proc = subprocess.run(
                ["java", *java_opts, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 f"--cluster-id={cluster_id}", "-c", str(props)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {proc.stdout}{proc.stderr}")
        pid = _spawn(svc, ["java", *java_opts, "-cp", classpath, "kafka.Kafka", str(props)])
        _wait_until(lambda: kafka_ready(svc.port), svc, 90)
        return f"kafka     started (pid {pid}) on {HOST}:{svc.port}; logs {svc.log_file}"

    def _up_mongo(self) -> str:
        svc = self.mongo
        if svc.pid() is not None:
            _wait_until(lambda: mongo_ready(svc.port), svc, 30)
            return f"ferretdb  already running (pid {svc.pid()}) on {HOST}:{svc.port}"
        self._check_port_free(svc, svc.port)
        binary = ferretdb_binary(self.artifacts_home)
        data = svc.home / "ferretdb"
        data.mkdir(parents=True, exist_ok=True)
        # WAL with synchronous=NORMAL: a commit no longer waits for fsync (the WAL is synced at
        # checkpoints). Survives a crash of any process; a power cut may lose the last commits
        # of this local, re-creatable store. FerretDB commits every 100 documents of an insert.
        argv = [
            str(binary), f"-sqlite-url=file:{data}/?_pragma=synchronous(normal)",
            f"-listen-addr={HOST}:{svc.port}",
            "-log-level=warn",
        ]
        pid = _spawn(svc, argv, cwd=data)
        _wait_until(lambda: mongo_ready(svc.port), svc, 30)
        return f"ferretdb  started (pid {pid}) on {HOST}:{svc.port}; logs {svc.log_file}"

    # -- status / down --------------------------------------------------------------------
    def status(self) -> list[str]:
        lines = []
        for svc in self.services:
            pid = svc.pid()
            if pid is None:
                lines.append(f"{svc.name:<9} stopped")
            else:
                state = "answering" if port_open(svc.port) else "not answering"
                lines.append(f"{svc.name:<9} running (pid {pid}) on {HOST}:{svc.port}, {state}")
        return lines

    def down(self, timeout: float = 30) -> list[str]:
        lines = []
        for svc in reversed(self.services):
            pid = svc.pid()
            if pid is None:
                lines.append(f"{svc.name:<9} not running")
                svc.pid_file.unlink(missing_ok=True)
                continue
            _stop(pid, timeout)
            svc.pid_file.unlink(missing_ok=True)
            lines.append(f"{svc.name:<9} stopped (pid {pid})")
        return lines


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _kafka_cluster_id() -> str:
    # Kafka wants a base64url-encoded 16-byte UUID without padding (22 characters).
    import base64

    # One in 64 such ids starts with "-", which the format tool's argument parser takes for an
    # option; Kafka's own Uuid.randomUuid() redraws those, and so does this.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_ready(port: int) -> bool:
    if not port_open(port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=3000,
                                 client_id="journey-stack-probe")
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def mongo_ready(port: int) -> bool:
    if not port_open(port):
        return False
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client = MongoClient(f"mongodb://{HOST}:{port}/", serverSelectionTimeoutMS=2000)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()
