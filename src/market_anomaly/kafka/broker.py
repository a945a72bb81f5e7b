"""A real Apache Kafka broker in KRaft mode (broker and controller in one JVM) on localhost.

The jars come from Maven Central through ``kafka/pom.xml``; data, logs and the pid file
live in a state directory, so ``start`` after ``stop`` keeps the topics and their data.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from market_anomaly import config, maven
from market_anomaly.kafka import topics

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
POM = maven.PACKAGE_DIR / "kafka" / "pom.xml"
LOG_CONFIG = maven.PACKAGE_DIR / "kafka" / "log4j2.properties"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kafka_libs() -> Path:
    return maven.resolve_jars(POM, f"kafka-{KAFKA_VERSION}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class LocalBroker:
    """One KRaft node. ``port=0`` picks free ports (tests); the demo uses 9092."""

    state_dir: Path
    port: int = 9092
    heap: str = "512m"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.properties_file = self.state_dir / "server.properties"
        self.pid_file = self.state_dir / "kafka.pid"
        self.log_file = self.state_dir / "kafka.log"
        if self.properties_file.exists():
            # A broker formatted earlier keeps its ports: its metadata names them.
            self.port = int(self._read_properties()["advertised.listeners"].rsplit(":", 1)[1])
        elif self.port == 0:
            self.port = free_port()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (or adopt one already running from this state directory) and wait until it answers."""
        if self.pid():
            log.info("Kafka broker already running (pid %s) at %s", self.pid(), self.bootstrap_servers)
        else:
            libs = kafka_libs()
            self._format_storage(libs)
            self._launch(libs)
        try:
            topics.wait_until_ready(self.client_config(), timeout=timeout)
        except topics.KafkaUnavailable as error:
            tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            self.stop()
            raise topics.KafkaUnavailable(f"{error}; broker log ({self.log_file}):\n{tail}") from None
        log.info("Kafka %s ready at %s (data in %s)", KAFKA_VERSION, self.bootstrap_servers, self.state_dir)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop gracefully (SIGTERM lets the broker flush and close its logs); kill after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            log.warning("Kafka broker (pid %s) did not stop in %.0fs; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        log.info("Kafka broker stopped")
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        ready = False
        if pid:
            try:
                topics.wait_until_ready(self.client_config(), timeout=3)
                ready = True
            except topics.KafkaUnavailable:
                pass
        return {"running": pid is not None, "ready": ready, "pid": pid,
                "bootstrap_servers": self.bootstrap_servers, "state_dir": str(self.state_dir)}

    # -- internals -------------------------------------------------------------------

    def _read_properties(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.properties_file.read_text().splitlines() if "=" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def _format_storage(self, libs: Path) -> None:
        data_dir = self.state_dir / "data"
        if (data_dir / "meta.properties").exists():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        controller_port = free_port()
        self.properties_file.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=4",
            # One node: internal topics cannot be replicated.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created by the project with the partitions it wants, never by accident.
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "",
        ]))
        result = subprocess.run(
            [*self._java(libs), "kafka.tools.StorageTool", "format",
             "--cluster-id", uuid.uuid4().hex[:22], "--config", str(self.properties_file), "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise topics.KafkaUnavailable(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def _java(self, libs: Path) -> list[str]:
        java = maven.require_tool("java", "install Java 17+ (Debian: apt-get install openjdk-17-jre-headless)")
        return [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}", f"-Dkafka.logs.dir={self.state_dir / 'logs'}",
            "-cp", f"{libs}/*",
        ]

    def _launch(self, libs: Path) -> None:
        with open(self.log_file, "ab") as log_out:
            process = subprocess.Popen(
                [*self._java(libs), "kafka.Kafka", str(self.properties_file)],
                stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop the broker in order.
            )
        self.pid_file.write_text(str(process.pid))
        log.info("Kafka broker starting (pid %s), log: %s", process.pid, self.log_file)


def default_broker() -> LocalBroker:
    return LocalBroker(config.home_dir() / "kafka", port=int(config.env("KAFKA_PORT", "9092")))
