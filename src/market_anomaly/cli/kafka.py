"""`market-anomaly kafka start|stop|status|topics`: the local broker and the project's topics."""

from __future__ import annotations

import argparse
import json

from market_anomaly import config
from market_anomaly.cli import options
from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import LocalBroker, LocalCluster, default_broker, default_cluster


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kafka", help="start, stop or inspect the local Kafka broker (KRaft)",
        description=(
            "Manage the project's local Apache Kafka broker (KRaft: broker and controller in one JVM, "
            "jars from Maven Central). Data lives in $MARKET_ANOMALY_HOME/kafka (default ./var/kafka); "
            "with --brokers 3, a local three-node cluster in $MARKET_ANOMALY_HOME/kafka-cluster. "
            "To use an existing cluster instead, skip this and pass --bootstrap-servers to the other commands."
        ),
    )
    actions = parser.add_subparsers(dest="kafka_action", metavar="ACTION", required=True)

    start = actions.add_parser("start", help="start the broker (if not running) and create the topics")
    start.add_argument("--port", type=int, default=int(config.env("KAFKA_PORT", "9092")),
                       help="client port on 127.0.0.1 (env MARKET_ANOMALY_KAFKA_PORT; default: %(default)s); "
                            "a cluster's node i listens on port + i")
    start.add_argument("--brokers", type=positive_int, default=1,
                       help="nodes (each broker and controller); more than one starts a local cluster whose "
                            "topics get replication factor min(3, brokers) and min.insync.replicas one less "
                            "(default: %(default)s)")
    start.set_defaults(handler=start_broker)

    stop = actions.add_parser("stop", help="stop the broker (and the local cluster, if running) gracefully")
    stop.set_defaults(handler=stop_broker)

    status = actions.add_parser("status", help="is the broker running and answering? (JSON; the cluster's nodes too)")
    status.set_defaults(handler=show_status)

    create = actions.add_parser("topics", help="create the project's topics on any cluster")
    options.add_kafka_arguments(create)
    create.add_argument("--partitions", type=int, default=topics.DEFAULT_TOPICS[config.CANDLES_TOPIC],
                        help="partitions of the candle and anomaly topics (default: %(default)s)")
    create.add_argument("--replication-factor", type=int, default=1)
    create.set_defaults(handler=create_topics)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def start_broker(args: argparse.Namespace) -> int:
    if args.brokers > 1:
        cluster = default_cluster(args.brokers, port=args.port)
        cluster.start()
        cluster.ensure_topics(topics.DEFAULT_TOPICS)
        print(cluster.bootstrap_servers)
        return 0
    broker = LocalBroker(default_broker().state_dir, port=args.port)
    broker.start()
    topics.ensure_topics(broker.client_config(), topics.DEFAULT_TOPICS)
    print(broker.bootstrap_servers)
    return 0


def local_cluster() -> LocalCluster | None:
    """The local cluster, if one was ever started (its state directory holds its nodes)."""
    directory = default_cluster().directory
    nodes = list(directory.glob("node-*/server.properties"))
    return LocalCluster(directory, brokers=len(nodes)) if nodes else None


def stop_broker(args: argparse.Namespace) -> int:
    cluster = local_cluster()
    stopped_cluster = cluster is not None and cluster.stop()
    if not default_broker().stop() and not stopped_cluster:
        print("no local Kafka broker is running")
    return 0


def show_status(args: argparse.Namespace) -> int:
    status = default_broker().status()
    cluster = local_cluster()
    if cluster is not None:
        status["cluster"] = cluster.status()
    print(json.dumps(status, indent=2))
    return 0 if status["ready"] or status.get("cluster", {}).get("ready") else 1


def create_topics(args: argparse.Namespace) -> int:
    wanted = {
        name: (1 if name == config.DEAD_LETTER_TOPIC else args.partitions) for name in topics.DEFAULT_TOPICS
    }
    created = topics.ensure_topics(options.kafka_client_config(args), wanted, args.replication_factor)
    print(json.dumps({"created": created}))
    return 0
