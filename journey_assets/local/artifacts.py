"""Third-party programs the local stack needs, fetched once and cached under ``.local/``.

Kafka's broker and Spark's Kafka connector come from Maven Central (resolved with ``mvn``),
FerretDB and helm from the Go module proxy (``go install``). A second call finds them cached
and touches no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from journey_assets.settings import project_home

KAFKA_VERSION = "4.1.1"
SPARK_KAFKA_CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13"
# Delta Lake for Spark 4.1; must equal the PyPI delta-spark pin (its Python API calls these jars).
DELTA_SPARK = ("io.delta", "delta-spark_4.1_2.13", "4.4.0")
# FerretDB v1.24.2 embedded in a small command of ours (see local/ferretdb/main.go for why).
FERRETDB_SOURCE = Path(__file__).parent / "ferretdb"
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.19.0"

# Kafka 4.x logs through log4j2 behind slf4j 2; the broker artifact leaves the binding to us.
_KAFKA_EXTRA_DEPS = [
    ("org.slf4j", "slf4j-api", "2.0.17"),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
]


class StackError(RuntimeError):
    """A problem a user can fix (missing tool, taken port); printed as one line, no traceback."""


def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"'{name}' is not on PATH; it is needed {why}. Install it and retry.")
    return path


def java_major_version() -> int:
    java = require_tool("java", "to run Kafka and Spark (Java 17 or newer)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # e.g. 'openjdk version "17.0.15" 2025-04-15'
    quoted = out.split('"')[1] if '"' in out else "0"
    major = quoted.split(".")[0]
    return int(major) if major.isdigit() else 0


def require_java17() -> None:
    major = java_major_version()
    if major < 17:
        raise StackError(f"Java 17 or newer is needed for Kafka and Spark; found Java {major}.")


def _pom(artifact_id: str, deps: list[tuple[str, str, str]]) -> str:
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>journey-assets.local</groupId><artifactId>{artifact_id}</artifactId><version>1</version>
  <dependencies>
{body}
  </dependencies>
</project>
"""


# Some POMs (Spark's parent) list extra repositories ahead of Maven Central; where those hosts
# cannot be reached, resolution fails instead of falling back. Route every repository to Central.
_MAVEN_SETTINGS = """<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">
  <mirrors>
    <mirror><id>central-only</id><mirrorOf>*</mirrorOf>
      <url>https://repo.maven.apache.org/maven2</url></mirror>
  </mirrors>
</settings>
"""


def _maven_copy(name: str, deps: list[tuple[str, str, str]], dest: Path) -> Path:
    """Resolve ``deps`` with their runtime dependencies into ``dest`` (once)."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    mvn = require_tool("mvn", "to fetch Kafka and Spark connector jars from Maven Central")
    work = dest.parent / f".{name}-resolve"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_pom(name, deps))
    (work / "settings.xml").write_text(_MAVEN_SETTINGS)
    staging = work / "jars"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"resolving {name} jars from Maven Central (first run only)...", flush=True)
    proc = subprocess.run(
        [mvn, "-q", "-B", "-s", "settings.xml", "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}",
         "-DincludeScope=runtime"],
        cwd=work, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise StackError(f"mvn could not resolve {name} jars:\n{tail}")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    marker.write_text("\n".join(f"{g}:{a}:{v}" for g, a, v in deps) + "\n")
    return dest


def kafka_libs(home: Path | None = None) -> Path:
    """The classpath folder of an Apache Kafka broker (KRaft) resolved from Maven Central."""
    home = home or project_home()
    deps = [("org.apache.kafka", "kafka_2.13", KAFKA_VERSION), *_KAFKA_EXTRA_DEPS]
    return _maven_copy("kafka-broker", deps, home / "kafka" / "libs")


def _jar_artifact(jar: Path) -> str:
    """'kafka-clients-3.9.1.jar' -> 'kafka-clients' (strip the trailing version)."""
    parts = jar.stem.split("-")
    while parts and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts)


def spark_connector_jars(home: Path | None = None) -> list[Path]:
    """Spark's Kafka source, Delta Lake, and what they need beyond the pyspark wheel's jars.

    ``JOURNEY_SPARK_JARS_DIR`` points at a folder that already holds them (the container image
    bakes them in); otherwise they are resolved once into ``.local/spark-jars``.
    """
    baked = os.environ.get("JOURNEY_SPARK_JARS_DIR")
    if baked:
        return sorted(Path(baked).glob("*.jar"))
    import pyspark

    home = home or project_home()
    version = pyspark.__version__
    group, artifact = SPARK_KAFKA_CONNECTOR.split(":")
    delta_version = DELTA_SPARK[2]
    folder = _maven_copy(f"spark-{version}-delta-{delta_version}",
                         [(group, artifact, version), DELTA_SPARK],
                         home / "spark-jars" / f"{version}-delta-{delta_version}")
    # Drop what pyspark already ships (scala, slf4j, compression codecs...): two copies of a
    # class on the classpath is how version conflicts start.
    shipped = {_jar_artifact(j) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return sorted(j for j in folder.glob("*.jar") if _jar_artifact(j) not in shipped)


def _source_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*")):
        if file.is_file() and (file.suffix == ".go" or file.name in ("go.mod", "go.sum")):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def go_binary(name: str, module: str, home: Path | None = None, cwd: Path | None = None) -> Path:
    """Build a Go program with ``go install`` into ``.local/bin`` (once).

    ``module`` is ``path@version`` from the Go module proxy, or ``.`` with ``cwd`` set to a
    main package of this project; such a binary is rebuilt when its sources change (a digest
    of them is kept beside it).
    """
    home = home or project_home()
    binary = home / "bin" / name
    stamp = binary.with_name(f".{name}.source-sha256")
    digest = _source_digest(cwd or Path.cwd()) if module == "." else module
    if binary.exists() and (module != "." or (stamp.exists() and stamp.read_text() == digest)):
        return binary
    go = require_tool("go", f"to build {name} from the Go module proxy")
    binary.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {name} with go install...", flush=True)
    env = {**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-buildvcs=false"}
    proc = subprocess.run([go, "install", module], env=env, capture_output=True, text=True,
                          cwd=cwd)
    if proc.returncode != 0 or not binary.exists():
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise StackError(f"go install {module} failed:\n{tail}")
    stamp.write_text(digest)
    return binary


def ferretdb_binary(home: Path | None = None) -> Path:
    return go_binary("ferretdb", ".", home, cwd=FERRETDB_SOURCE)


def helm_binary(home: Path | None = None) -> Path:
    return go_binary("helm", HELM_MODULE, home)
