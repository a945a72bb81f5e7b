"""`market-anomaly spark start|stop|status`: a local Spark standalone cluster for `detect --master`."""

from __future__ import annotations

import argparse
import json

from market_anomaly import config
from market_anomaly.cli.kafka import positive_int
from market_anomaly.spark.standalone import StandaloneCluster


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "spark", help="start, stop or inspect a local Spark standalone cluster",
        description=(
            "A Spark standalone master and workers on 127.0.0.1, started from PySpark's own spark-class "
            "(no separate Spark install): try the stream on a cluster manager with "
            "`detect --master <the printed URL>`. State and logs in $MARKET_ANOMALY_HOME/spark-cluster "
            "(default ./var/spark-cluster); executors' logs in its worker-*/app-* directories."
        ),
    )
    actions = parser.add_subparsers(dest="spark_action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start the master and the workers (if not running); prints the master URL")
    start.add_argument("--workers", type=positive_int, default=2, help="worker daemons (default: %(default)s)")
    start.add_argument("--cores", type=positive_int, default=1, help="cores per worker (default: %(default)s)")
    start.add_argument("--memory", default="1g", help="memory per worker for its executors (default: %(default)s)")
    start.set_defaults(handler=start_cluster)
    actions.add_parser("stop", help="stop the workers, then the master").set_defaults(handler=stop_cluster)
    actions.add_parser("status", help="the master URL, alive workers and pids (JSON)").set_defaults(handler=show_status)


def cluster_dir():
    return config.home_dir() / "spark-cluster"


def start_cluster(args: argparse.Namespace) -> int:
    running = StandaloneCluster.attach(cluster_dir())
    if running is not None and running.pids()["master"]:
        print(running.master_url)
        return 0
    cluster = StandaloneCluster(cluster_dir(), workers=args.workers, cores=args.cores, memory=args.memory)
    cluster.start()
    print(cluster.master_url)
    return 0


def stop_cluster(args: argparse.Namespace) -> int:
    cluster = StandaloneCluster.attach(cluster_dir())
    if cluster is None or not cluster.stop():
        print("no local Spark cluster is running")
    return 0


def show_status(args: argparse.Namespace) -> int:
    cluster = StandaloneCluster.attach(cluster_dir())
    status = cluster.status() if cluster else {"alive_workers": 0}
    print(json.dumps(status, indent=2))
    return 0 if cluster and status["alive_workers"] == cluster.workers else 1
