"""docker-compose.yml, validated by Debian's docker-compose (`config` needs no Docker daemon).

docker-compose is installed by scripts/install-docker-compose.sh when missing; where it cannot
be installed (no root, no apt), the test is skipped with the script's output as the reason.
Beyond the file's syntax: the services and their images, the commands against the project's own
command line, ports bound to this machine, and secrets that come only from the environment.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT_SERVICES = {"topics", "exchange", "producer", "detect", "dashboard"}


@pytest.fixture(scope="module")
def docker_compose() -> str:
    result = subprocess.run([str(ROOT / "scripts" / "install-docker-compose.sh")], capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        pytest.skip(f"docker-compose cannot be installed here: {result.stderr.strip()[-500:]}")
    return result.stdout.strip().splitlines()[-1]


def compose(docker_compose: str, *args: str, password: str | None = "not-a-real-password") -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "POSTGRES_PASSWORD"}
    if password is not None:
        environment["POSTGRES_PASSWORD"] = password
    return subprocess.run([docker_compose, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True,
                          text=True, timeout=120, env=environment, cwd=ROOT)


@pytest.fixture(scope="module")
def resolved(docker_compose) -> dict:
    result = compose(docker_compose, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_file_is_valid_and_has_every_part(docker_compose, resolved):
    assert compose(docker_compose, "config", "-q").returncode == 0
    services = resolved["services"]
    assert set(services) == {"kafka", "postgres", *PROJECT_SERVICES}
    from market_anomaly.kafka.broker import KAFKA_VERSION

    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"  # the official image, the project's version
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["postgres"]["image"].startswith("postgres:")
    assert {services[name]["image"] for name in PROJECT_SERVICES} == {"market-anomaly:latest"}
    assert (ROOT / services["detect"]["build"]["context"] / "Dockerfile").is_file()


def test_every_command_is_one_the_project_accepts(resolved):
    from market_anomaly.cli import build_parser

    parser = build_parser()
    for name in PROJECT_SERVICES:
        args = parser.parse_args(resolved["services"][name]["command"])  # a wrong flag exits here
        assert args.handler, name


def test_ports_are_published_on_this_machine_only(resolved):
    published = [port for service in resolved["services"].values() for port in service.get("ports", [])]
    assert sorted(published) == ["127.0.0.1:8050:8050/tcp", "127.0.0.1:9464:9464/tcp", "127.0.0.1:9465:9464/tcp"]


def test_secrets_come_from_the_environment(docker_compose, resolved):
    missing = compose(docker_compose, "config", "-q", password=None)
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr
    text = (ROOT / "docker-compose.yml").read_text()
    assert "not-a-real-password" not in text
    for name in ("detect", "dashboard"):
        environment = resolved["services"][name]["environment"]
        assert urlsplit(environment["MARKET_ANOMALY_DB"]).password is None
        assert environment["PGPASSWORD"] == "not-a-real-password"  # libpq reads it: no password in the URL
