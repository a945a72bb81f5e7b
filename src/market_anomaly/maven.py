"""Jars from Maven Central, resolved by Maven from the project's own pom files and cached.

The broker's jars and Spark's Kafka connector are declared in ``kafka/pom.xml`` and
``spark/pom.xml``; ``mvn dependency:copy-dependencies`` copies them into the cache
directory once, and every later run finds them there (a stamp file marks a complete copy).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from market_anomaly import config

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


class SetupError(RuntimeError):
    """A prerequisite (Java, Maven, a download) is missing; the message says how to fix it."""


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SetupError(f"`{name}` not found on PATH: {hint}")
    return path


def resolve_jars(pom: Path, name: str, include_artifacts: tuple[str, ...] = ()) -> Path:
    """Copy the pom's runtime dependencies into ``<cache>/<name>/`` (once) and return that folder."""
    dest = config.cache_dir() / name
    stamp = dest / ".complete"
    if stamp.exists():
        return dest
    mvn = require_tool("mvn", "install Maven 3 (Debian: apt-get install maven)")
    require_tool("java", "install Java 17+ (Debian: apt-get install openjdk-17-jre-headless)")
    if dest.exists():
        shutil.rmtree(dest)
    command = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={dest}", "-DincludeScope=runtime",
    ]
    if include_artifacts:
        command.append("-DincludeArtifactIds=" + ",".join(include_artifacts))
    log.info("resolving %s from Maven Central into %s", name, dest)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"Maven could not resolve {pom.name} for {name}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    stamp.touch()
    return dest
