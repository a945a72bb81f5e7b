"""Real Apache Kafka in KRaft mode on localhost: one node (``LocalBroker``) or a cluster (``LocalCluster``).

Every node is broker and controller in one JVM. The jars come from Maven Central through
``kafka/pom.xml``; data, logs and the pid file live in a state directory per node, so
``start`` after ``stop`` keeps the topics and their data.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from market_anomaly import config, maven
from market_anomaly.kafka import topics

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
POM = maven.PACKAGE_DIR / "kafka" / "pom.xml"
LOG_CONFIG = maven.PACKAGE_DIR / "kafka" / "log4j2.properties"


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct free local ports, none of them in ``exclude`` (ports picked earlier and not yet listened on).

    Every socket stays bound until all are picked: released one by one, the kernel may hand the same port out
    twice (a 3-broker cluster once got two brokers on one port).

    >>> ports = free_ports(3)
    >>> len(set(ports)), all(1024 <= port < 65536 for port in ports)
    (3, True)
    """
    sockets, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


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


def running_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file`` if that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def read_properties(properties_file: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in properties_file.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def node_properties(node_id: int, port: int, controller_port: int, voters: str, data_dir: Path,
                    replication_factor: int, min_isr: int) -> str:
    """server.properties of one combined broker+controller node; ``voters`` is the controller quorum."""
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=4",
        # Internal topics are replicated as far as the nodes allow; a single node cannot replicate.
        f"default.replication.factor={replication_factor}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replication_factor}",
        f"transaction.state.log.replication.factor={replication_factor}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replication_factor}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created by the project with the partitions it wants, never by accident.
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
        "",
    ])


def java_command(libs: Path, heap: str, state_dir: Path) -> list[str]:
    java = maven.require_tool("java", "install Java 17+ (Debian: apt-get install openjdk-17-jre-headless)")
    return [
        java, f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG_CONFIG}", f"-Dkafka.logs.dir={state_dir / 'logs'}",
        "-cp", f"{libs}/*",
    ]


def format_storage(java: list[str], properties_file: Path, cluster_id: str) -> None:
    result = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format",
         "--cluster-id", cluster_id, "--config", str(properties_file), "--ignore-formatted"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise topics.KafkaUnavailable(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")


def launch_node(java: list[str], properties_file: Path, log_file: Path, pid_file: Path) -> int:
    with open(log_file, "ab") as log_out:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(properties_file)],
            stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop the broker in order.
        )
    pid_file.write_text(str(process.pid))
    log.info("Kafka node starting (pid %s), log: %s", process.pid, log_file)
    return process.pid


def terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM (a node flushes and closes its logs), SIGKILL after ``timeout``.

    A cluster's nodes get the signal together: stopped one after another, the last ones
    would wait for a controller quorum that is already gone.
    """
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in filter(process_alive, pids):
        log.warning("pid %s did not stop in %.0fs; killing it", pid, timeout)
        os.kill(pid, signal.SIGKILL)


def log_tail(log_file: Path) -> str:
    return log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""


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
            self.port = int(read_properties(self.properties_file)["advertised.listeners"].rsplit(":", 1)[1])
        elif self.port == 0:
            self.port = free_port()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}

    def pid(self) -> int | None:
        return running_pid(self.pid_file)

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
            tail = log_tail(self.log_file)
            self.stop()
            raise topics.KafkaUnavailable(f"{error}; broker log ({self.log_file}):\n{tail}") from None
        log.info("Kafka %s ready at %s (data in %s)", KAFKA_VERSION, self.bootstrap_servers, self.state_dir)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop gracefully (SIGTERM lets the broker flush and close its logs); kill after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        terminate([pid], timeout)
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

    def _format_storage(self, libs: Path) -> None:
        data_dir = self.state_dir / "data"
        if (data_dir / "meta.properties").exists():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (controller_port,) = free_ports(1, exclude={self.port})
        self.properties_file.write_text(node_properties(
            1, self.port, controller_port, f"1@127.0.0.1:{controller_port}", data_dir,
            replication_factor=1, min_isr=1))
        format_storage(self._java(libs), self.properties_file, uuid.uuid4().hex[:22])

    def _java(self, libs: Path) -> list[str]:
        return java_command(libs, self.heap, self.state_dir)

    def _launch(self, libs: Path) -> None:
        launch_node(self._java(libs), self.properties_file, self.log_file, self.pid_file)



@dataclass
class ClusterNode:
    """One node of a ``LocalCluster``: its own state directory, client port and process."""

    node_id: int
    state_dir: Path
    port: int
    heap: str

    def __post_init__(self) -> None:
        self.properties_file = self.state_dir / "server.properties"
        self.pid_file = self.state_dir / "kafka.pid"
        self.log_file = self.state_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        return running_pid(self.pid_file)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start the JVM if it is not running; does not wait (a lone node has no quorum to answer with)."""
        if self.pid is None:
            launch_node(java_command(kafka_libs(), self.heap, self.state_dir),
                        self.properties_file, self.log_file, self.pid_file)

    def start(self, timeout: float = 90.0) -> None:
        """Start this node again (after ``kill`` or ``stop``) and wait until it answers on its own port."""
        self.launch()
        try:
            topics.wait_until_ready({"bootstrap.servers": self.bootstrap_servers}, timeout=timeout)
        except topics.KafkaUnavailable as error:
            raise topics.KafkaUnavailable(f"{error}; node log ({self.log_file}):\n{log_tail(self.log_file)}") from None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL: the node dies as in a crash, without flushing or leaving the quorum in order."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        log.info("Kafka node %s (pid %s) killed", self.node_id, pid)

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid
        if pid is not None:
            terminate([pid], timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None


class LocalCluster:
    """``brokers`` KRaft nodes on localhost, each broker and controller, one cluster id and one quorum.

    ``port=0`` picks free ports (tests); otherwise node ``i`` listens on ``port + i``. A cluster
    formatted earlier keeps its ports and data. Topics get replication factor
    ``min(3, brokers)`` with ``min.insync.replicas`` one less (``topics.replication_settings``),
    so with three nodes one may die and ``acks=all`` producers go on.
    """

    def __init__(self, directory: Path, brokers: int = 3, port: int = 0, heap: str = "384m") -> None:
        self.directory = Path(directory).resolve()
        existing = sorted(self.directory.glob("node-*/server.properties"))
        if existing:
            # Formatted earlier: its metadata names the nodes and their ports.
            if len(existing) != brokers:
                log.warning("%s holds a cluster of %d nodes; using it as it is", self.directory, len(existing))
            brokers = len(existing)
            ports = [int(read_properties(path)["advertised.listeners"].rsplit(":", 1)[1]) for path in existing]
        elif port == 0:
            ports = free_ports(brokers)
        else:
            ports = [port + index for index in range(brokers)]
        if brokers < 1:
            raise ValueError(f"a cluster needs at least one broker, got {brokers}")
        self.brokers = [ClusterNode(index + 1, self.directory / f"node-{index + 1}", node_port, heap)
                        for index, node_port in enumerate(ports)]
        self.replication_factor, self.min_insync_replicas = topics.replication_settings(len(self.brokers))

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.brokers)

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}

    def start(self, timeout: float = 120.0) -> None:
        """Format (once), start every node not running, and wait until all of them are registered."""
        self._format_storage()
        for node in self.brokers:
            node.launch()
        try:
            topics.wait_until_ready(self.client_config(), timeout=timeout, brokers=len(self.brokers))
        except topics.KafkaUnavailable as error:
            tails = "\n".join(f"node {node.node_id} ({node.log_file}):\n{log_tail(node.log_file)[-1500:]}"
                              for node in self.brokers)
            self.stop()
            raise topics.KafkaUnavailable(f"{error}; logs:\n{tails}") from None
        log.info("Kafka cluster of %d nodes ready at %s (data in %s)",
                 len(self.brokers), self.bootstrap_servers, self.directory)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node gracefully; True if any was running."""
        pids = [pid for pid in (node.pid for node in self.brokers) if pid is not None]
        terminate(pids, timeout)
        for node in self.brokers:
            node.pid_file.unlink(missing_ok=True)
        return bool(pids)

    def ensure_topics(self, wanted: dict[str, int]) -> list[str]:
        """Create ``wanted`` (name -> partitions) replicated across the cluster."""
        return topics.ensure_topics(self.client_config(), wanted, self.replication_factor, self.min_insync_replicas)

    def status(self) -> dict[str, object]:
        ready = False
        if any(node.pid for node in self.brokers):
            try:
                topics.wait_until_ready(self.client_config(), timeout=3, brokers=len(self.brokers))
                ready = True
            except topics.KafkaUnavailable:
                pass
        return {
            "ready": ready, "bootstrap_servers": self.bootstrap_servers, "state_dir": str(self.directory),
            "nodes": [{"node_id": node.node_id, "port": node.port, "pid": node.pid} for node in self.brokers],
        }

    def _format_storage(self) -> None:
        formatted = [(node.state_dir / "data" / "meta.properties").exists() for node in self.brokers]
        if all(formatted):
            return
        if any(formatted):
            raise topics.KafkaUnavailable(
                f"{self.directory} holds a partly formatted cluster (interrupted first start?); delete it and start again")
        controller_ports = free_ports(len(self.brokers), exclude={node.port for node in self.brokers})
        voters = ",".join(f"{node.node_id}@127.0.0.1:{controller_port}"
                          for node, controller_port in zip(self.brokers, controller_ports))
        cluster_id = uuid.uuid4().hex[:22]
        for node, controller_port in zip(self.brokers, controller_ports):
            node.state_dir.mkdir(parents=True, exist_ok=True)
            node.properties_file.write_text(node_properties(
                node.node_id, node.port, controller_port, voters, node.state_dir / "data",
                self.replication_factor, self.min_insync_replicas))
            format_storage(java_command(kafka_libs(), node.heap, node.state_dir), node.properties_file, cluster_id)


def default_broker() -> LocalBroker:
    return LocalBroker(config.home_dir() / "kafka", port=int(config.env("KAFKA_PORT", "9092")))


def default_cluster(brokers: int = 3, port: int = 0) -> LocalCluster:
    return LocalCluster(config.home_dir() / "kafka-cluster", brokers=brokers, port=port)
