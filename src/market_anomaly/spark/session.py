"""A SparkSession with what the job needs: the Kafka connector, the project's interpreter, sane local defaults."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from market_anomaly import maven

log = logging.getLogger("market_anomaly.spark")

SPARK_VERSION = "4.2.0"
CONNECTOR = f"org.apache.spark:spark-sql-kafka-0-10_2.13:{SPARK_VERSION}"
POM = maven.PACKAGE_DIR / "spark" / "pom.xml"
# The connector plus what PySpark's own jars lack; the rest of the pom's tree ships with PySpark.
CONNECTOR_ARTIFACTS = (
    "spark-sql-kafka-0-10_2.13", "spark-token-provider-kafka-0-10_2.13", "kafka-clients", "commons-pool2",
)


def connector_jars() -> list[str]:
    folder = maven.resolve_jars(POM, f"spark-kafka-{SPARK_VERSION}", CONNECTOR_ARTIFACTS)
    return sorted(str(jar) for jar in folder.glob("*.jar"))


def check_pyspark_version() -> None:
    import pyspark

    if pyspark.__version__ != SPARK_VERSION:
        raise maven.SetupError(
            f"PySpark {pyspark.__version__} is installed but the Kafka connector is {CONNECTOR}: "
            f"they must match exactly (pip install pyspark=={SPARK_VERSION})"
        )


# The streaming job's settings unless the user says otherwise (see build_session for who wins).
SESSION_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # One state partition per local core: every partition is a task per micro-batch, and on 2 cores
    # 4 tasks cost ~0.3 s of latency over 2 (200, the default, would be 200 idle tasks). Fixed per checkpoint;
    # on a cluster pass --conf spark.sql.shuffle.partitions=N.
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    # Streaming with state cannot use adaptive execution; saying so avoids a warning per start.
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.debug.maxToStringFields": "200",
    # The parser's validation is dozens of conditions over the same columns: inferring constraints from them is
    # optimiser work in every micro-batch (again when foreachBatch's toPandas runs) for no filter that uses them.
    "spark.sql.constraintPropagation.enabled": "false",
    # HotSpot does not compile methods over 8,000 bytes of bytecode: the parser's stage (every check in one
    # method) ran interpreted, 12 us a candle instead of 5. At this limit Spark splits such a stage instead.
    "spark.sql.codegen.hugeMethodLimit": "8000",
}


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and tells the Python driver its port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def submitted_conf() -> dict[str, str]:
    """What spark-submit was given (its flags, ``--conf``, spark-defaults.conf); empty when run directly."""
    if not under_spark_submit():
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # joins spark-submit's JVM, whose system properties hold its settings
    return dict(SparkConf().getAll())


def build_session(app_name: str, master: str | None, conf: dict[str, str] | None = None,
                  defaults: dict[str, str] | None = None):
    """Create (or, under spark-submit, join) the session.

    Under ``spark-submit`` the master, jars and resources come from its flags; run
    directly, the session is local and loads the connector jars resolved from Maven.
    Settings: ``conf`` (the command's own ``--conf``) wins, then what spark-submit was
    given, then ``defaults`` over ``SESSION_DEFAULTS``.
    """
    import pyarrow
    from pyspark.sql import SparkSession

    check_pyspark_version()
    # Workers must run this interpreter (it has numpy, pandas and this package).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Arrow's default allocator (mimalloc) keeps what a micro-batch's conversions freed: at 2,000 symbols in batches
    # of 50,000 the driver peaked at 490 MB RSS with it and 390 MB with the system's, which hands large blocks back.
    # Set before the JVM starts, so its Python workers inherit it too (on a cluster: spark.executorEnv below); the
    # driver's own pool was chosen when pyarrow was imported. A pool the user named wins everywhere.
    arrow_pool = os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    pool = getattr(pyarrow, f"{arrow_pool}_memory_pool", None)
    if pool is not None:
        pyarrow.set_memory_pool(pool())
    builder = SparkSession.builder.appName(app_name)
    submitted = submitted_conf()
    if not under_spark_submit():
        # A local job talks to itself: bind to loopback instead of guessing (and warning about) an interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.master(master or "local[2]")
            .config("spark.jars", ",".join(connector_jars()))
            .config("spark.pyspark.python", sys.executable)
            # The stream's driver heap: state, batches of 20,000 decisions and the sinks fit in 1 GB; 2 GB let
            # the JVM grow ~0.15-0.5 GB more at the same speed (bench/pipeline_throughput.py, README).
            .config("spark.driver.memory", "1g")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.ui.enabled", "false")
        )
    chosen = {**SESSION_DEFAULTS, "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL": arrow_pool, **(defaults or {})}
    settings = {key: value for key, value in chosen.items() if key not in submitted}
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MARKET_ANOMALY_SPARK_LOG_LEVEL", "WARN"))
    ship_package(spark)
    log.info("Spark %s: master %s, %d cores, shuffle partitions %s%s", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism, spark.conf.get("spark.sql.shuffle.partitions"),
             " (spark-submit)" if under_spark_submit() else "")
    return spark


def ship_package(spark) -> None:
    """On a cluster, send this package's code to the executors (``addPyFile``).

    Their machines then need Python with PySpark's, NumPy's, pandas' and PyArrow's versions,
    not this project installed; a local master's workers import it from this install.
    """
    context = spark.sparkContext
    if context.master.startswith("local"):
        return
    import market_anomaly

    package = Path(market_anomaly.__file__).parent
    folder = tempfile.mkdtemp(prefix="market-anomaly-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the driver serves the file until it exits
    archive = Path(folder) / "market_anomaly.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(package.rglob("*.py")):  # code only: executors need no static files
            zipped.write(path, path.relative_to(package.parent))
    context.addPyFile(str(archive))
    log.info("executors import market_anomaly from %s (sent by the driver)", archive.name)
