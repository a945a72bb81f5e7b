"""The configuration file: keys are the flags, precedence flags > environment > file > defaults, clear errors."""

from __future__ import annotations

import pytest

from market_anomaly.cli import build_parser, main, settings
from market_anomaly.cli.detect import detect_config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory of its own, with no MARKET_ANOMALY_* flag variables set."""
    monkeypatch.chdir(tmp_path)
    for name in ("MARKET_ANOMALY_DB", "MARKET_ANOMALY_BOOTSTRAP_SERVERS", "MARKET_ANOMALY_CONFIG",
                 "MARKET_ANOMALY_SYMBOLS", "MARKET_ANOMALY_SPARK_MASTER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write(path, text: str):
    path.write_text(text)
    return path


def resolved(*argv: str):
    _, args, sources = settings.resolve(build_parser, list(argv))
    return args, sources


def test_precedence_flag_over_environment_over_file_over_default(workdir, monkeypatch):
    write(workdir / "market-anomaly.toml", 'bootstrap-servers = "file:9092"\n[detect]\nconsole = "off"\n'
                                           'db = "sqlite:///file.db"\nstate-buckets = 8\n')
    monkeypatch.setenv("MARKET_ANOMALY_DB", "sqlite:///env.db")
    args, sources = resolved("detect", "--console", "anomalies")
    assert (args.console, sources["console"]) == ("anomalies", "flag")
    assert (args.db, sources["db"]) == ("sqlite:///env.db", "env")
    assert (args.state_buckets, sources["state-buckets"]) == (8, "file [detect] state-buckets")
    assert (args.bootstrap_servers, sources["bootstrap-servers"]) == ("file:9092", "file bootstrap-servers")
    assert (args.trigger, sources["trigger"]) == ("0 seconds", "default")
    job = detect_config(args)  # the frozen value the job gets carries the file's settings
    assert job.state_buckets == 8 and job.kafka["bootstrap.servers"] == "file:9092" and job.sinks.console == "anomalies"


def test_a_repeated_flag_on_the_command_line_wins_over_the_file(workdir):
    write(workdir / "market-anomaly.toml", '[exchange]\ninject = ["flash_crash:BTCUSDT:5"]\n')
    args, sources = resolved("exchange", "--inject", "volume_burst:ETHUSDT:20", "--inject", "price_spike:ETHUSDT:30")
    assert args.inject == [("volume_burst", "ETHUSDT", 20.0), ("price_spike", "ETHUSDT", 30.0)]
    assert sources["inject"] == "flag"
    args, sources = resolved("exchange")  # the file's value goes through the flag's own type
    assert args.inject == [("flash_crash", "BTCUSDT", 5.0)] and sources["inject"] == "file [exchange] inject"


def test_a_named_file_and_lists_and_switches(workdir):
    path = write(workdir / "team.toml", '[detect]\nconf = ["spark.sql.shuffle.partitions=8"]\nanomalies-only = true\n'
                                        '[kafka]\npartitions = 12\n')
    args, _ = resolved("detect", "--config", str(path))
    assert args.conf == ["spark.sql.shuffle.partitions=8"] and args.anomalies_only is True
    args, sources = resolved("--config", str(path), "kafka", "topics")  # [kafka] covers its subcommands
    assert args.partitions == 12 and sources["partitions"].startswith("file [kafka]")


def test_a_required_flag_may_come_from_the_file(workdir):
    write(workdir / "market-anomaly.toml", '[score]\ninput = "in.csv"\noutput = "out.parquet"\n')
    args, _ = resolved("score")
    assert (str(args.input), str(args.output)) == ("in.csv", "out.parquet")


@pytest.mark.parametrize("text, message", [
    ('bogus = 1\n', "unknown key 'bogus': no command has a --bogus flag"),
    ('[detekt]\nconsole = "off"\n', "unknown table [detekt]"),
    ('[detect]\nconsle = "off"\n', "[detect] unknown key 'consle'"),
    ('[detect]\nconsole = "loud"\n', "[detect] console: 'loud' is not one of auto, all, anomalies, summary, off"),
    ('[detect]\nstate-buckets = "many"\n', "[detect] state-buckets: 'many' is not valid"),
    ('[detect]\nanomalies-only = "yes"\n', "[detect] anomalies-only: expected true or false"),
    ('[detect]\nconsole = \n', "not valid TOML"),
])
def test_errors_name_the_key(workdir, capsys, text, message):
    write(workdir / "market-anomaly.toml", text)
    assert main(["detect"]) == 2
    assert message in capsys.readouterr().err


def test_a_named_file_must_exist(workdir, capsys):
    assert main(["--config", "missing.toml", "detect"]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_config_show_masks_secrets_and_says_where_values_come_from(workdir, capsys, monkeypatch):
    write(workdir / "market-anomaly.toml",
          'kafka-config = ["sasl.password=hunter2", "security.protocol=SASL_SSL"]\n'
          '[detect]\nwebhook = ["https://hooks.slack.com/services/T0/B0/SECRETTOKEN"]\n'
          'db = "postgresql://anomaly:dbsecret@db:5432/anomaly"\n')
    monkeypatch.setenv("MARKET_ANOMALY_SPARK_MASTER", "spark://m:7077")
    assert main(["config", "show", "detect"]) == 0
    shown = capsys.readouterr().out
    assert "hunter2" not in shown and "SECRETTOKEN" not in shown and "dbsecret" not in shown
    assert 'kafka-config = ["sasl.password=***", "security.protocol=SASL_SSL"]  # file kafka-config' in shown
    assert 'db = "postgresql://anomaly:***@db:5432/anomaly"  # file [detect] db' in shown
    assert 'master = "spark://m:7077"  # env' in shown
    assert 'trigger = "0 seconds"  # default' in shown


def test_config_show_output_is_a_configuration_file(workdir, capsys):
    assert main(["config", "show", "produce"]) == 0
    shown = capsys.readouterr().out
    write(workdir / "shown.toml", shown)
    args, sources = resolved("--config", "shown.toml", "produce")
    assert sources["ws-url"].startswith("file [produce]") and args.interval == "1m"


def test_up_renders_its_children_through_their_own_flags():
    argv = settings.child_argv(build_parser, "exchange", {"port": 9, "symbols": "A,B", "inject": ["x:A:1", "y:B:2"],
                                                          "inject_random": 0})
    assert argv == ["exchange", "--port", "9", "--symbols", "A,B", "--inject", "x:A:1", "--inject", "y:B:2",
                    "--inject-random", "0"]
    with pytest.raises(ValueError, match="detect has no flag for 'speed'"):
        settings.child_argv(build_parser, "detect", {"speed": 1})
    # Parsing what was rendered gives the values back.
    _, args, _ = settings.resolve(build_parser, settings.child_argv(
        build_parser, "detect", {"bootstrap_servers": "h:1", "checkpoint_dir": "/c", "anomalies_only": True}))
    assert (args.bootstrap_servers, str(args.checkpoint_dir), args.anomalies_only) == ("h:1", "/c", True)
    # up's --retention-days reaches its job.
    _, up, _ = settings.resolve(build_parser, ["up", "--retention-days", "2.5"])
    _, job, _ = settings.resolve(build_parser, settings.child_argv(build_parser, "detect",
                                                                   {"retention_days": up.retention_days}))
    assert job.retention_days == 2.5


def test_up_symbols_all_lists_the_simulator_pairs_and_lets_the_job_take_every_symbol(tmp_path):
    from market_anomaly.cli.up import pipeline_children

    _, args, _ = settings.resolve(build_parser, ["up", "--symbols", "all", "--pairs", "30", "--quote", "USDT,BTC"])
    children = {child.name: child.argv for child in pipeline_children(args, "h:1", tmp_path, None, simulator_port=9)}
    exchange, producer, job = children["exchange simulator"], children["producer"], children["spark job"]
    assert exchange[exchange.index("--pairs") + 1] == "30" and "--symbols" not in exchange
    assert producer[producer.index("--symbols") + 1:producer.index("--symbols") + 4:2] == ["all", "USDT,BTC"]
    assert "--symbols" not in job  # no allow-list: whatever the producer lists
    _, named, _ = settings.resolve(build_parser, ["up", "--symbols", "BTCUSDT,ETHUSDT"])
    children = {child.name: child.argv for child in pipeline_children(named, "h:1", tmp_path, None, simulator_port=9)}
    assert all(argv[argv.index("--symbols") + 1] == "BTCUSDT,ETHUSDT" for argv in children.values() if "--symbols" in argv)
    assert "--pairs" not in children["exchange simulator"] and "--symbols" in children["spark job"]
    _, wrong, _ = settings.resolve(build_parser, ["up", "--quote", "BTC"])
    with pytest.raises(SystemExit, match="--quote goes with --symbols all"):
        pipeline_children(wrong, "h:1", tmp_path, None, simulator_port=9)


def test_up_runs_the_decider_instead_of_the_spark_job_when_asked(tmp_path):
    from market_anomaly.cli.up import pipeline_children

    _, args, _ = settings.resolve(build_parser, ["up", "--runner", "decide", "--retention-days", "2"])
    children = {child.name: child.argv for child in pipeline_children(args, "h:1", tmp_path, None, simulator_port=9)}
    assert "spark job" not in children
    decider = children["decider"]
    assert decider[decider.index("market_anomaly") + 1:].count("decide") == 1
    assert decider[decider.index("--checkpoint-dir") + 1] == str(tmp_path / "checkpoint-decide")
    assert decider[decider.index("--retention-days") + 1] == "2.0" and "--accept-future-candles" in decider
