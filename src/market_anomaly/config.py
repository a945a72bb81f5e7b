"""Configuration shared by every command: paths, environment defaults, Kafka settings.

Precedence, as Kafka and Spark users expect: command-line flag > environment variable
(``MARKET_ANOMALY_*``) > configuration file > built-in default (the flags and the file are
``cli``'s: nothing below the command line sees argparse).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "MARKET_ANOMALY_"

CANDLES_TOPIC = "crypto-candles"
DEAD_LETTER_TOPIC = "crypto-candles-dlq"
ANOMALIES_TOPIC = "crypto-anomalies"
DEFAULT_BOOTSTRAP = "localhost:9092"
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,AVAXUSDT"
BINANCE_WS_URL = "wss://stream.binance.com:9443"
BINANCE_REST_URL = "https://api.binance.com"


def env(name: str, default: str) -> str:
    """Value of ``MARKET_ANOMALY_<NAME>`` or ``default``."""
    return os.environ.get(ENV_PREFIX + name, default)


def home_dir() -> Path:
    """Where runtime state lives: broker data, checkpoints, logs, the SQLite database."""
    return Path(env("HOME", "var")).resolve()


def cache_dir() -> Path:
    """Where downloaded jars are kept between runs (survives a fresh clone)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "market-anomaly"
    return Path(env("CACHE", str(default))).resolve()


def model_params_path() -> Path:
    return Path(env("MODEL_PARAMS", "model_params.json")).resolve()


def parse_symbols(text: str) -> list[str]:
    """``"btcusdt, ETHUSDT,"`` -> ``["BTCUSDT", "ETHUSDT"]`` (the --symbols syntax of every command)."""
    return [symbol.strip().upper() for symbol in text.split(",") if symbol.strip()]


def kafka_settings(bootstrap_servers: str, from_file: dict[str, str] | None = None,
                   overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Client settings for ``bootstrap_servers``: ``from_file`` < ``MARKET_ANOMALY_KAFKA_CFG_*`` < ``overrides``
    (-X). Secret values are registered, so ``redact`` hides them wherever they would be logged."""
    settings = {**(from_file or {}), **kafka_settings_from_env(), "bootstrap.servers": bootstrap_servers,
                **(overrides or {})}
    for key, value in settings.items():
        if is_secret_key(key):
            register_secret(value)
    return settings


# -- Kafka settings outside the command line (secrets stay out of process lists) -------------------

KAFKA_ENV_PREFIX = "KAFKA_CFG_"  # MARKET_ANOMALY_KAFKA_CFG_SASL_PASSWORD -> sasl.password (as Bitnami's images)


def kafka_settings_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``MARKET_ANOMALY_KAFKA_CFG_<KEY>`` variables as Kafka settings: the key lower-cased, ``_`` -> ``.``."""
    prefix = ENV_PREFIX + KAFKA_ENV_PREFIX
    environ = os.environ if environ is None else environ
    return {name[len(prefix):].lower().replace("_", "."): value
            for name, value in sorted(environ.items()) if name.startswith(prefix) and len(name) > len(prefix)}


def read_kafka_properties(path: str) -> dict[str, str]:
    """A Java properties file as Kafka settings: ``KEY=VALUE`` or ``KEY: VALUE`` lines, ``#`` and ``!`` comments, a
    trailing backslash continues a line. A ValueError names the line, never its value."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"cannot read the Kafka properties file {path}: {error.strerror}")
    settings: dict[str, str] = {}
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^=:\s]+)\s*[=:]\s*(.*)$", line)
        if match is None:
            raise ValueError(f"{path}, line {number}: not KEY=VALUE")
        settings[match[1]] = match[2]
    return settings


# -- redaction: secrets never reach logs, error messages or the health API ------------------------

MASK = "***"
# Setting, parameter or field names whose values are secret: Kafka's sasl.password, ssl.key.password,
# sasl.jaas.config, sasl.oauthbearer.client.secret, URL parameters like ?password= or &access_token=.
SECRET_WORDS = ("password", "passwd", "secret", "token", "jaas", "credential", "apikey", "api_key", "api-key",
                "private", "key.pem", "signature")
SECRET_QUERY_PARAMETERS = ("pwd", "pass", "key", "sig", "auth")  # only after ? or &: these words are common
_registered: dict[str, str] = {}  # secret value -> how it is shown
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s:/@]*):(?P<password>[^\s/@]+)@", re.I)
_TOKEN_PATHS = re.compile(r"(?P<path>hooks\.slack\.com/(?:services|workflows|triggers)|discord(?:app)?\.com/api/"
                          r"webhooks)/[^\s\"'<>]+", re.I)
_PAIR = re.compile(r"""(?:(?P<keyquote>["'])(?P<quoted_key>[\w.-]+)(?P=keyquote)\s*:\s*|(?P<key>[\w.-]+)=)"""
                   r"""(?P<quote>["'])?(?P<value>(?(quote)[^"']*|[^\s&;,"'}]+))""")


def is_secret_key(key: str) -> bool:
    name = key.lower()
    return any(word in name for word in SECRET_WORDS)


def register_secret(value: str, shown_as: str = MASK) -> None:
    """From now on ``redact`` shows ``value`` as ``shown_as`` wherever it appears (values under 4 characters are
    not registered: masking them would hide ordinary text)."""
    if value and len(value) >= 4:
        _registered[value] = shown_as


def _mask_pair(match: re.Match) -> str:
    key, value = (match["key"] or match["quoted_key"]).lower(), match["value"]
    query = match.start() > 0 and match.string[match.start() - 1] in "?&"
    if not value or value == MASK or not (is_secret_key(key) or (query and key in SECRET_QUERY_PARAMETERS)):
        return match[0]
    start, end = match.start("value") - match.start(), match.end("value") - match.start()
    return match[0][:start] + MASK + match[0][end:]


def redact(text: object) -> str:
    """``text`` fit for a log or an error message: registered secrets (Kafka secrets, webhook URLs), URL passwords
    (``scheme://user:***@host``), tokens in Slack and Discord webhook paths, and the values of secret-named
    settings or parameters (``sasl.password=***``, ``?token=***``, ``'ssl.key.password': '***'``) hidden.

    >>> redact("postgresql://app:pw@db:5432/x?sslpassword=s3 and https://h/x?user=a&token=t0k")
    'postgresql://app:***@db:5432/x?sslpassword=*** and https://h/x?user=a&token=***'
    """
    text = str(text)
    for secret, shown in sorted(_registered.items(), key=lambda item: -len(item[0])):
        text = text.replace(secret, shown)
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{match['user']}:{MASK}@", text)
    text = _TOKEN_PATHS.sub(lambda match: f"{match['path']}/{MASK}", text)
    return _PAIR.sub(_mask_pair, text)


def redact_url(url: str) -> str:
    """A URL whose path or query may be a token (webhooks) as ``scheme://host:port/…``; a URL without a scheme
    shows its first part only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not host:
        return url.split("/", 1)[0].rsplit("@", 1)[-1][:40] + ("/…" if "/" in url else "")
    hidden_path = "/…" if (parts.path.strip("/") or parts.query) else ""
    return urlunsplit((parts.scheme, host + port, hidden_path, "", ""))
