"""A Spark standalone cluster on localhost: one master and N workers, started from PySpark's own ``spark-class``.

For trying the stream on a real cluster manager on one machine (and for the tests): the
job joins it with ``--master spark://127.0.0.1:PORT``. Every worker runs the project's
interpreter for its Python workers (``PYSPARK_PYTHON``), and each executor's stdout and
stderr stay in the worker's work directory (``executor_logs``) for when a task fails.
The cluster outlives the process that started it (`market-anomaly spark start`): its ports
and pids stay in its directory, where ``StandaloneCluster.attach`` finds them to stop it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from market_anomaly.kafka.broker import free_ports, running_pid, terminate

log = logging.getLogger("market_anomaly.spark")


def spark_home() -> Path:
    """PySpark's install holds Spark itself: ``bin/spark-class`` and the jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class StandaloneCluster:
    """``workers`` workers of ``cores`` cores and ``memory`` each, and their master, until ``stop``."""

    def __init__(self, directory: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
                 daemon_memory: str = "256m") -> None:
        self.directory = Path(directory).resolve()
        self.workers, self.cores, self.memory, self.daemon_memory = workers, cores, memory, daemon_memory
        self.port, self.web_port = free_ports(2)

    @classmethod
    def attach(cls, directory: Path) -> "StandaloneCluster | None":
        """The cluster last started in ``directory``, or None if none was."""
        try:
            saved = json.loads((Path(directory) / "cluster.json").read_text())
        except (OSError, ValueError):
            return None
        cluster = cls(directory, saved["workers"], saved["cores"], saved["memory"])
        cluster.port, cluster.web_port = saved["port"], saved["web_port"]
        return cluster

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def worker_dir(self, index: int) -> Path:
        return self.directory / f"worker-{index + 1}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the master, then the workers, and wait until every worker has registered."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "cluster.json").write_text(json.dumps(
            {"port": self.port, "web_port": self.web_port, "workers": self.workers, "cores": self.cores,
             "memory": self.memory}))
        self._launch("master", "org.apache.spark.deploy.master.Master",
                     "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.web_port))
        worker_web_ports = free_ports(self.workers, exclude={self.port, self.web_port})  # the master may not listen yet
        for index, web_port in enumerate(worker_web_ports):
            work = self.worker_dir(index)
            work.mkdir(parents=True, exist_ok=True)
            self._launch(f"worker-{index + 1}", "org.apache.spark.deploy.worker.Worker",
                         "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
                         "--work-dir", str(work), "--webui-port", str(web_port), self.master_url)
        deadline = time.monotonic() + timeout
        while self.alive_workers() < self.workers:
            if time.monotonic() > deadline or None in self.pids().values():
                logs = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
                                 for path in sorted(self.directory.glob("*.log")))
                self.stop()
                raise RuntimeError(f"the Spark standalone cluster did not come up within {timeout:.0f}s:\n{logs}")
            time.sleep(0.5)
        log.info("Spark standalone cluster at %s: %d workers x %d cores", self.master_url, self.workers, self.cores)

    def alive_workers(self) -> int:
        """Workers the master counts as alive (its web UI's JSON), 0 while it is not answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/json/", timeout=2) as response:
                return int(json.load(response).get("aliveworkers", 0))
        except (OSError, ValueError):
            return 0

    def pids(self) -> dict[str, int | None]:
        """Each daemon's pid (master, worker-1, ...), None for one that is not running."""
        names = ["master", *[f"worker-{index + 1}" for index in range(self.workers)]]
        return {name: running_pid(self.directory / f"{name}.pid") for name in names}

    def status(self) -> dict[str, object]:
        pids = self.pids()
        return {"master_url": self.master_url, "web_ui": f"http://127.0.0.1:{self.web_port}",
                "alive_workers": self.alive_workers() if pids["master"] else 0,
                "workers": self.workers, "cores_per_worker": self.cores, "pids": pids}

    def stop(self, timeout: float = 30.0) -> bool:
        """Workers first (they kill their executors), then the master; False if nothing was running."""
        pids = self.pids()
        workers = [pid for name, pid in pids.items() if name != "master" and pid]
        terminate(workers, timeout)
        terminate([pids["master"]] if pids["master"] else [], timeout)
        return bool(workers or pids["master"])

    def executor_logs(self, tail: int = 3000) -> str:
        """The end of every executor's stderr (``<work dir>/<app>/<executor>/stderr``): where a failed task says why."""
        return "\n".join(f"--- {path.relative_to(self.directory)}\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(self.directory.glob("worker-*/app-*/*/stderr")))

    def _launch(self, name: str, main_class: str, *arguments: str) -> None:
        home = spark_home()
        environment = {
            **os.environ,
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": self.daemon_memory,
            "SPARK_LOG_DIR": str(self.directory),
            # Executors start Python workers with the interpreter that has numpy, pandas and this package.
            "PYSPARK_PYTHON": sys.executable,
        }
        with open(self.directory / f"{name}.log", "ab") as output:
            process = subprocess.Popen(
                [str(home / "bin" / "spark-class"), main_class, *arguments],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                start_new_session=True,
            )
        (self.directory / f"{name}.pid").write_text(str(process.pid))
