"""`market-anomaly train --spark`: the same training as a Spark batch job gives exactly the local result.

Real Spark and a real Kafka broker. The CLI runs in a subprocess against a standalone cluster
(a master and two one-core workers started from PySpark's install, as on a real cluster);
spark-submit runs local[2]; the other cases share one in-process local[2] session and call the
Spark path (``spark_series``) directly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import REPOSITORY
from confluent_kafka import Producer

from market_anomaly.cli import main
from market_anomaly.core.params import DEFAULTS
from market_anomaly.exchange.market import synthetic_candles
from market_anomaly.training.train import TrainConfig, train
from market_anomaly.kafka.broker import free_port

pytestmark = pytest.mark.integration

CANDLES = 3000  # per series: past the longest warm-up (1440) with room for tuning events
TUNE = 60
IGNORED = ("/trained_on/trained_at", "/trained_on/sources")  # when it ran, how the sources were named
BASE = {**DEFAULTS, "volatility": {**DEFAULTS["volatility"], "history": 48, "warmup": 300}}  # warm on short series


def write_history(directory, messy: bool = False) -> list[str]:
    """A CSV with AAAUSDT and BBBUSDT (symbol column, ISO times) and a Parquet file of more AAAUSDT (symbol from its
    name, epoch ms, extra columns). ``messy``: one malformed row and two duplicate candles in the CSV, the first
    of each the original (the later copy of one has other prices, so keeping the wrong one changes the result)."""
    first, second = synthetic_candles(CANDLES, 1, "AAAUSDT"), synthetic_candles(CANDLES, 2, "BBBUSDT")
    frame = pd.concat([first, second], ignore_index=True)
    frame.insert(0, "timestamp", pd.to_datetime(frame["open_time"], unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S"))
    frame = frame[["symbol", "timestamp", "open", "high", "low", "close", "volume"]]
    if messy:
        frame = frame.astype({"close": object})  # room for a malformed value
        changed = frame.iloc[[1700]].assign(close=frame["close"].iat[1700] * 1.5, volume=frame["volume"].iat[1700] * 50)
        frame = pd.concat([frame, frame.iloc[[100]], changed], ignore_index=True)
        frame.loc[CANDLES + 900, "close"] = "oops"
    csv = directory / "history.csv"
    frame.to_csv(csv, index=False)
    later = synthetic_candles(CANDLES, 3, "AAAUSDT", start=first["open_time"].iat[-1] + 86_400_000)
    parquet = directory / "AAAUSDT_1m_2024.parquet"
    later.drop(columns=["symbol"]).to_parquet(parquet)
    return [str(csv), str(parquet)]


def local_training(tmp_path, *source: str):
    """`train` without --spark, in process, on ``source`` (``--input`` files or ``--topic`` flags)."""
    base, output = tmp_path / "base.json", tmp_path / "local" / "model_params.json"
    base.write_text(json.dumps(BASE))
    output.parent.mkdir()
    assert main(["train", *source, "--output", str(output), "--base", str(base), "--tune-injections", str(TUNE)]) == 0
    return output


def documents_and_models(path):
    document = json.loads(path.read_text())
    with np.load(path.parent / document["learned"]["file"]) as stored:
        model = {name: stored[name] for name in stored.files}
    return document, model


def assert_same_training(spark_document: dict, spark_model: dict, local_path, rtol: float = 0.0):
    """Everything but ``IGNORED``. Arrays bit for bit by default (same float64
    inputs, same order of series); ``rtol`` for inputs the two readers parse differently."""
    local_document, local_model = documents_and_models(local_path)
    assert spark_document["trained_on"]["tuning"]["injections"] == TUNE  # the tuning passes ran
    spark_values, local_values = ({path: value for path, value in leaves(document) if not path.startswith(IGNORED)}
                                  for document in (spark_document, local_document))
    assert spark_values.keys() == local_values.keys()
    for path, value in spark_values.items():
        assert value == (pytest.approx(local_values[path], rel=rtol) if isinstance(value, float)
                         else local_values[path]), path
    assert spark_model.keys() == local_model.keys()
    for name, values in spark_model.items():
        assert np.allclose(values, local_model[name], rtol=rtol, atol=0), name


def leaves(value, path: str = ""):
    """(path, value) of every number and text in a JSON document."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        yield path, value
    for key, item in items or ():
        yield from leaves(item, f"{path}/{key}")


@pytest.fixture(scope="module")
def spark():
    from market_anomaly.spark.session import build_session
    from market_anomaly.spark.training import BATCH_CONF

    session = build_session("test-train-spark", "local[2]", defaults=BATCH_CONF)
    yield session
    session.stop()


def spark_training(spark, candles) -> tuple[dict, dict]:
    from market_anomaly.spark.training import spark_series

    params = train(spark_series(spark, candles, partitions=4), TrainConfig(base=BASE, tune_injections=TUNE))
    model = params.model
    return params.to_json(), {"mean": model.mean, "directions": model.directions, "scales": model.scales}


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone master and two one-core workers (PySpark's ``spark-class``); yields the master URL."""
    from pyspark.find_spark_home import _find_spark_home

    spark_class = str(Path(_find_spark_home()) / "bin" / "spark-class")
    folder = tmp_path_factory.mktemp("standalone")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(free_port())]]
    commands += [[spark_class, "org.apache.spark.deploy.worker.Worker", "--cores", "1", "--memory", "1g",
                  "--webui-port", str(free_port()), "--work-dir", str(folder / f"worker{n}"), url] for n in (1, 2)]
    logs = [folder / f"process{n}.log" for n in range(len(commands))]
    processes = [subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
                 for command, log in zip(commands, logs)]
    try:
        deadline = time.monotonic() + 120
        while logs[0].read_text().count("Registering worker") < 2:
            assert time.monotonic() < deadline, logs[0].read_text()
            assert all(process.poll() is None for process in processes), [log.read_text() for log in logs]
            time.sleep(0.5)
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def test_the_cli_trains_on_a_standalone_cluster_as_local_training_does(tmp_path, standalone_cluster):
    inputs = write_history(tmp_path)
    base, output = tmp_path / "base.json", tmp_path / "spark" / "model_params.json"
    base.write_text(json.dumps(BASE))
    output.parent.mkdir()
    run = subprocess.run([sys.executable, "-m", "market_anomaly", "train", "--spark", "--master", standalone_cluster,
                          "--input", *inputs, "--output", str(output), "--base", str(base),
                          "--tune-injections", str(TUNE)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"master {standalone_cluster}, 2 cores" in run.stderr
    assert "skipped" not in run.stderr and "duplicate" not in run.stderr
    document, model = documents_and_models(output)
    assert document["trained_on"]["sources"] == ["history.csv", "AAAUSDT_1m_2024.parquet"]
    assert list(document["trained_on"]["series"]) == ["AAAUSDT", "BBBUSDT", "AAAUSDT@AAAUSDT_1m_2024"]
    assert_same_training(document, model, local_training(tmp_path, "--input", *inputs))


def test_executors_of_a_cluster_import_the_package_the_driver_sends(standalone_cluster):
    # Here the workers could import this install too; the path says they took the driver's copy.
    probe = ("import logging\n"
             "logging.basicConfig(level=logging.INFO)\n"
             "from market_anomaly.spark.session import build_session\n"
             f"spark = build_session('probe', {standalone_cluster!r})\n"
             "where = lambda _: __import__('market_anomaly').__file__\n"
             "print('\\n'.join(spark.sparkContext.parallelize(range(2), 2).map(where).collect()))\n"
             "spark.stop()\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "executors import market_anomaly from market_anomaly.zip" in run.stderr
    paths = run.stdout.split()
    assert len(paths) == 2 and all(path.endswith("market_anomaly.zip/market_anomaly/__init__.py") for path in paths)


def test_spark_submit_runs_the_training_and_its_conf_wins_over_the_session_defaults(tmp_path):
    inputs = write_history(tmp_path)
    base, output = tmp_path / "base.json", tmp_path / "submitted" / "model_params.json"
    base.write_text(json.dumps(BASE))
    output.parent.mkdir()
    bin_dir = Path(sys.executable).parent
    script = REPOSITORY / "src" / "market_anomaly" / "cli" / "train.py"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.run([str(bin_dir / "spark-submit"), "--master", "local[2]",
                          "--conf", "spark.sql.shuffle.partitions=3", "--conf", "spark.ui.enabled=false",
                          str(script), "--input", *inputs, "--output", str(output), "--base", str(base),
                          "--tune-injections", str(TUNE)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    # spark-submit's --conf is not overridden by the streaming defaults (2) or the batch job's own (2 per core).
    # spark-submit merges the Python driver's stderr (our log) into its stdout.
    assert "shuffle partitions 3 (spark-submit)" in run.stdout
    assert_same_training(*documents_and_models(output), local_training(tmp_path, "--input", *inputs))


def test_skipped_rows_and_duplicates_are_counted_and_the_first_candle_kept(spark, tmp_path, caplog):
    from market_anomaly.spark.training import file_candles

    inputs = write_history(tmp_path, messy=True)
    with caplog.at_level(logging.WARNING, logger="market_anomaly"):
        document, model = spark_training(spark, file_candles(spark, inputs))
    assert "history.csv: 1 rows skipped (missing or non-positive prices/volume)" in caplog.text
    assert "2 duplicate candles (same series and open_time) dropped, the first of each kept" in caplog.text
    assert document["trained_on"]["series"]["BBBUSDT"]["candles"] == CANDLES - 1
    # With a malformed value in it, the local reader parses the price column as text (pandas.to_numeric), which
    # lands one unit in the last place off for about a third of the numbers; Spark parses them exactly.
    assert_same_training(document, model, local_training(tmp_path, "--input", *inputs), rtol=1e-9)


def test_training_from_a_topic_equals_local_topic_training(spark, kafka_broker, fresh_topic, tmp_path, caplog):
    from market_anomaly.spark.training import topic_candles

    producer = Producer(kafka_broker.client_config())
    for seed, symbol in enumerate(("AAAUSDT", "BBBUSDT", "CCCUSDT")):
        for record in synthetic_candles(CANDLES, seed, symbol).to_dict("records"):
            producer.produce(fresh_topic, key=symbol, value=json.dumps(record).encode())
    producer.produce(fresh_topic, key="junk", value=b"not json")
    assert producer.flush(30) == 0
    with caplog.at_level(logging.WARNING, logger="market_anomaly"):
        document, model = spark_training(spark, topic_candles(spark, fresh_topic, kafka_broker.client_config()))
    assert f"topic {fresh_topic}: 1 rows skipped (not a JSON object)" in caplog.text
    assert list(document["trained_on"]["series"]) == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    assert_same_training(document, model, local_training(
        tmp_path, "--topic", fresh_topic, "--bootstrap-servers", kafka_broker.bootstrap_servers))


def test_files_of_one_glob_with_other_columns_are_an_error_not_a_misread(spark, tmp_path):
    from market_anomaly.spark.training import file_candles, spark_series

    frame = synthetic_candles(200, 0, "AAAUSDT")[["symbol", "open_time", "open", "high", "low", "close", "volume"]]
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame[["symbol", "open_time", "volume", "open", "high", "low", "close"]].to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(Exception, match="CSV header does not conform to the schema"):
        spark_series(spark, file_candles(spark, [str(tmp_path / "*.csv")]), partitions=2)
