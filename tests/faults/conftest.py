"""Fixtures of the fault suite: replayable candle files, a webhook receiver, the pipeline, a stoppable PostgreSQL."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
import harness
from harness import Pipeline, Receiver

from support import REPOSITORY

# How long a database or a webhook receiver stays away (the case: 2 minutes; `make test-faults` sets it).
OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "120"))


def pytest_collection_modifyitems(config, items):
    """The suite takes minutes of real faults: it runs from `make test-faults` (FAULT_SUITE=1), not `make test`."""
    if os.environ.get("FAULT_SUITE") != "1":
        skip = pytest.mark.skip(reason="the fault suite runs with `make test-faults`")
        for item in items:
            if "tests/faults/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def pipeline(tmp_path, kafka_broker, receiver, replay_files, request):
    """A pipeline on the session broker, its own topic; ``pipeline(**Pipeline fields)`` builds and starts it."""
    made: list[Pipeline] = []

    def build(bootstrap: str | None = None, replication: tuple[int, int | None] = (1, None), **fields) -> Pipeline:
        topic = "f-" + request.node.name.replace("[", "-").replace("]", "")[:60] + f"-{len(made)}"
        bootstrap = bootstrap or kafka_broker.bootstrap_servers
        built = Pipeline(tmp_path / f"pipeline-{len(made)}", bootstrap, fields.pop("db_url", None)
                         or f"sqlite:///{tmp_path / 'anomalies.db'}", receiver, replay=tuple(replay_files), topic=topic,
                         **fields)
        built.create_topics(replication)
        made.append(built)
        built.start()
        return built

    yield build
    for built in made:
        built.stop()


class StoppablePostgres:
    """A PostgreSQL server from scripts/postgres-test-server.sh that can be stopped and started on its port."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="market-anomaly-pg-faults-"))
        started = subprocess.run([str(REPOSITORY / "scripts" / "postgres-test-server.sh"), "start",
                                  str(self.directory)], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            pytest.fail(f"postgres-test-server.sh failed:\n{started.stderr}", pytrace=False)
        self.url = started.stdout.strip().splitlines()[-1]
        # The options the script started it with (postgres keeps them), to start it again the same way.
        command = shlex.split((self.directory / "data" / "postmaster.opts").read_text())
        self.postgres, self.options = command[0], command[3:]  # [postgres, -D, DIR, options...]

    def _pg_ctl(self, *argv: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run([*as_user, str(Path(self.postgres).parent / "pg_ctl"), "-D", str(self.directory / "data"),
                        *argv], check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._pg_ctl("-l", str(self.directory / "server.log"), "-w", "start", "-o", shlex.join(self.options))

    def close(self) -> None:
        subprocess.run([str(REPOSITORY / "scripts" / "postgres-test-server.sh"), "stop", str(self.directory)],
                       capture_output=True, timeout=60)


@pytest.fixture
def stoppable_postgres():
    server = StoppablePostgres()
    yield server
    server.close()


@pytest.fixture(scope="session")
def replay_files(tmp_path_factory) -> list[Path]:
    return harness.replay_files(tmp_path_factory.mktemp("replay"))
