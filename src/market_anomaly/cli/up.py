"""`market-anomaly setup` and `market-anomaly up`: install what the pipeline needs, then run all of it.

``up`` is a small supervisor: a local Kafka broker (unless ``--bootstrap-servers`` names a
cluster), the exchange simulator, the producer, the Spark job (or, with ``--runner decide``, the
low-latency decider) and the dashboard, each a child process with its log under
``$MARKET_ANOMALY_HOME/logs``. The job's live table goes to this terminal. Ctrl-C stops everything in order (producer first, broker
last) and leaves no process behind; children also die if the supervisor is killed.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from market_anomaly import config, maven
from market_anomaly.cli import build_parser, options, produce, settings

log = logging.getLogger("market_anomaly.up")

PR_SET_PDEATHSIG = 1
STOP_ORDER = ("producer", "exchange simulator", "spark job", "decider", "dashboard")


def register(subparsers: argparse._SubParsersAction) -> None:
    setup = subparsers.add_parser(
        "setup", help="download the Kafka broker and Spark connector jars (cached) and check Java",
        description="Resolve the Kafka broker's jars and Spark's Kafka connector from Maven Central into the "
                    "cache ($MARKET_ANOMALY_CACHE, default ~/.cache/market-anomaly). Idempotent and quick "
                    "once cached.",
    )
    setup.set_defaults(handler=run_setup)

    up = subparsers.add_parser(
        "up", help="run the whole pipeline locally: Kafka, exchange simulator, producer, Spark job, dashboard",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--bootstrap-servers", default=None,
                    help="use this Kafka cluster instead of starting a local broker")
    up.add_argument("--binance", action="store_true",
                    help="read the real Binance (or the exchange --ws-url/--rest-url name) instead of the built-in "
                         "simulator (needs internet)")
    produce.add_exchange_url_arguments(up)
    up.add_argument("--symbols", default=config.env("SYMBOLS", config.DEFAULT_SYMBOLS),
                    help="symbols to watch, or 'all' for every TRADING pair of --quote on the exchange (the "
                         "simulator then lists --pairs synthetic pairs) (default: %(default)s)")
    up.add_argument("--quote", default=None, metavar="ASSETS",
                    help="with --symbols all: comma-separated quote assets, e.g. USDT or USDT,BTC (default: USDT)")
    up.add_argument("--pairs", type=options.positive_int, default=400, metavar="N",
                    help="with --symbols all and the simulator: how many pairs it lists, P0000USDT, ... (every "
                         "20th quoted in BTC) (default: %(default)s, about Binance's USDT pairs)")
    up.add_argument("--speed", type=float, default=60.0,
                    help="simulator speed: simulated seconds per wall second (default: %(default)s = one 1m "
                         "candle per symbol per second)")
    up.add_argument("--inject-random", type=int, default=6, metavar="N",
                    help="labelled anomalies the simulator injects into the live market (default: %(default)s)")
    up.add_argument("--inject", action="append", default=[], metavar="KIND:SYMBOL:MINUTE",
                    help="inject this anomaly into the simulator's market MINUTE minutes after its live start "
                         "(kinds: price_spike, volume_burst, volatility_burst, flash_crash, pump_and_dump); "
                         "repeatable")
    up.add_argument("--seed-history", type=int, default=1000, metavar="N",
                    help="candles per symbol fetched from REST at start so detectors are warm (default: %(default)s)")
    up.add_argument("--dashboard-port", type=int, default=8050, help="dashboard port on 127.0.0.1; 0 = none")
    up.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                    help="Prometheus metrics on 127.0.0.1: the producer's on PORT, the Spark job's on PORT+1 (the "
                         "dashboard's at its own /metrics); 0 = none (default: %(default)s)")
    options.add_retention_argument(up)
    up.add_argument("--params", default=str(config.model_params_path()), help="model parameters file")
    up.add_argument("--keep-state", action="store_true",
                    help="continue the previous run's broker data, checkpoint and database instead of starting "
                         "clean (the simulator's market restarts at its start time, so use with --binance)")
    up.add_argument("--runner", default="detect", choices=RUNNERS,
                    help="what decides: the Spark stream (detect) or the low-latency consumer (decide), which "
                         "decides a minute's candles within a second (default: %(default)s)")
    up.add_argument("--run-for", type=float, default=None, metavar="SECONDS",
                    help="stop after this long (default: until Ctrl-C)")
    up.set_defaults(handler=run_up)


def run_setup(args: argparse.Namespace) -> int:
    from market_anomaly.kafka.broker import kafka_libs
    from market_anomaly.spark.session import check_pyspark_version, connector_jars

    try:
        check_pyspark_version()
        print(f"Kafka broker jars:      {kafka_libs()}")
        print(f"Spark Kafka connector:  {Path(connector_jars()[0]).parent}")
    except maven.SetupError as error:
        print(f"setup failed: {error}", file=sys.stderr)
        return 1
    return 0


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the supervisor dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path | None  # None: output to this terminal
    stop_timeout: float = 20.0  # SIGTERM, then this long before SIGKILL
    settle: float = 0.0  # pause after starting, before the next child starts
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        output = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            self.argv, stdout=output, stderr=subprocess.STDOUT if output else None, stdin=subprocess.DEVNULL,
            # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
            start_new_session=True, preexec_fn=die_with_parent,
        )
        log.info("%s started (pid %d)%s", self.name, self.process.pid,
                 f", log: {self.log_path}" if self.log_path else "")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        if not self.running():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


# The runner's command, its name among up's processes and its checkpoint's directory under the home
RUNNERS = {"detect": ("spark job", "checkpoint"), "decide": ("decider", "checkpoint-decide")}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "market_anomaly", *args]


def pipeline_children(args: argparse.Namespace, bootstrap: str, home: Path, config_file: Path | None,
                      simulator_port: int) -> list[Child]:
    """The processes ``up`` runs (not yet started), each with its command line rendered by its own parser."""
    logs, database = home / "logs", f"sqlite:///{home / 'anomalies.db'}"

    def child(name: str, command_name: str, log_path: Path | None, log_level: str | None = None,
              stop_timeout: float = 20.0, settle: float = 0.0, **values) -> Child:
        words = ["--log-level", log_level] if log_level else []
        if config_file is not None and config_file.is_file():
            words += ["--config", str(config_file.resolve())]
        words += settings.child_argv(build_parser, command_name, values)
        return Child(name, command(*words), log_path, stop_timeout=stop_timeout, settle=settle)

    whole_exchange = config.parse_symbols(args.symbols) == ["ALL"]
    if args.quote is not None and not whole_exchange:
        raise SystemExit("up: --quote goes with --symbols all")
    children = []
    if args.binance:
        ws_url, rest_url = args.ws_url, args.rest_url
    else:
        ws_url, rest_url = f"ws://127.0.0.1:{simulator_port}", f"http://127.0.0.1:{simulator_port}"
        # settle: bound before the producer connects (which also retries)
        children.append(child("exchange simulator", "exchange", logs / "exchange.log", settle=1.0,
                              port=simulator_port,
                              **({"pairs": args.pairs} if whole_exchange else {"symbols": args.symbols}),
                              speed=args.speed, inject_random=args.inject_random,
                              labels_out=home / "injected-labels.json", inject=args.inject))
    children.append(child("producer", "produce", logs / "producer.log", bootstrap_servers=bootstrap,
                          ws_url=ws_url, rest_url=rest_url, symbols=args.symbols, quote=args.quote,
                          seed_history=args.seed_history, metrics_port=args.metrics_port))
    # stop_timeout: the job finishes its micro-batch and commits its checkpoint
    runner_name, checkpoint = RUNNERS[args.runner]
    children.append(child(runner_name, args.runner, None, log_level="WARNING", stop_timeout=60.0,
                          bootstrap_servers=bootstrap, params=args.params, checkpoint_dir=home / checkpoint,
                          db=database, retention_days=args.retention_days,
                          symbols=None if whole_exchange else args.symbols,  # all: whatever the producer lists
                          metrics_port=args.metrics_port + 1 if args.metrics_port else 0,
                          accept_future_candles=not args.binance))  # the simulator runs ahead of the clock
    if args.dashboard_port:
        children.append(child("dashboard", "dashboard", logs / "dashboard.log", bootstrap_servers=bootstrap,
                              port=args.dashboard_port, db=database))
    return children


def run_up(args: argparse.Namespace) -> int:
    from market_anomaly.kafka import topics
    from market_anomaly.kafka.broker import LocalBroker, free_port

    # The demo keeps its own broker, checkpoint and database, fresh each run by default: the
    # simulator's market restarts at the same simulated time, which a kept checkpoint would
    # treat as already-seen candles.
    home = config.home_dir() / "demo"
    if home.exists() and not args.keep_state:
        shutil.rmtree(home)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    broker = None
    children: list[Child] = []
    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker = LocalBroker(home / "kafka", port=0)
            broker.start()
            bootstrap = broker.bootstrap_servers
            log.info("Kafka broker at %s (data in %s)", bootstrap, home / "kafka")
        topics.ensure_topics(config.kafka_settings(bootstrap), topics.DEFAULT_TOPICS)  # + MARKET_ANOMALY_KAFKA_CFG_*
        # The children read up's configuration file too (named, from the environment, or found here).
        config_file = Path(args.config_file) if hasattr(args, "config_file") else settings.config_path([])[0]
        children += pipeline_children(args, bootstrap, home, config_file, simulator_port=free_port())

        for child in children:
            child.start()
            time.sleep(child.settle)
        if args.dashboard_port:
            log.info("dashboard: http://127.0.0.1:%d", args.dashboard_port)
        if args.metrics_port:
            log.info("metrics: http://127.0.0.1:%d/metrics (producer), http://127.0.0.1:%d/metrics (Spark job)",
                     args.metrics_port, args.metrics_port + 1)
        log.info("pipeline up; the Spark job prints decisions below once its first micro-batch runs. Ctrl-C stops.")

        deadline = time.monotonic() + args.run_for if args.run_for else None
        while not interrupted and (deadline is None or time.monotonic() < deadline):
            failed = [child for child in children if not child.running()]
            if failed:
                log.error("%s exited with code %s; stopping the pipeline (see %s)", failed[0].name,
                          failed[0].process.returncode, failed[0].log_path or "the output above")
                return 1
            time.sleep(0.5)
        return 0
    finally:
        log.info("stopping the pipeline")
        # The producer first (it flushes what it has), then its source, then the job, so the job sees the last candles.
        for child in sorted(children, key=lambda child: STOP_ORDER.index(child.name)):
            child.stop(child.stop_timeout)
        if broker is not None:
            broker.stop()
