"""The configuration file (TOML) and the one place that turns values into a command's flags.

Every flag of every command has a key: its long name without the dashes. Keys at the top
of the file apply to every command that has that flag; a ``[COMMAND]`` table (``[detect]``,
``[kafka.topics]``; ``[kafka]`` also covers its subcommands) applies to that command only::

    bootstrap-servers = "kafka-1:9092,kafka-2:9092"
    kafka-config = ["security.protocol=SASL_SSL", "sasl.mechanism=PLAIN"]

    [detect]
    db = "postgresql://anomaly@db:5432/anomaly"
    console = "anomalies"
    conf = ["spark.sql.shuffle.partitions=8"]

Precedence: command-line flag > environment (``MARKET_ANOMALY_*``) > file > built-in default.
The file is ``--config PATH``, else ``$MARKET_ANOMALY_CONFIG``, else ``market-anomaly.toml`` in
the working directory when it exists. An unknown table or key, or a value the flag would refuse,
is an error naming the key. ``market-anomaly config show`` prints the values in force and where
each comes from, secrets masked.

The flags themselves are defined once, in each command's parser: the file's keys, ``config
show`` and ``up``'s arguments for its children (``child_argv``) are all read from those parsers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Iterator

from market_anomaly import config

CONFIG_ENV = "CONFIG"  # MARKET_ANOMALY_CONFIG
DEFAULT_FILE = "market-anomaly.toml"
# Variables that place things (state, caches, this file) rather than set one flag: a default that
# follows them is still a default, so the file may override it.
PLACE_VARIABLES = {config.ENV_PREFIX + name for name in ("HOME", "CACHE", CONFIG_ENV)}
TOKEN_URL_KEYS = {"webhook"}  # URLs whose path or query is the token (Slack, Teams, ...)
NOT_SETTINGS = ("help", "version", "handler", "command", "config_file")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="config_file", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"configuration file (TOML; env {config.ENV_PREFIX}{CONFIG_ENV}; default: ./{DEFAULT_FILE} "
                             "when present); flags and environment win over it")


# -- the commands' parsers ---------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command's parser by its path (``"detect"``, ``"kafka.topics"``)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                nested = subcommands(child)
                found.update({f"{name}.{path}": leaf for path, leaf in nested.items()} if nested else {name: child})
    return found


def settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A command's flags by key (long option name without its dashes)."""
    keys = {}
    for action in parser._actions:
        longs = [option for option in action.option_strings if option.startswith("--")]
        if longs and action.dest not in NOT_SETTINGS and not isinstance(action, argparse._SubParsersAction):
            keys[longs[0][2:]] = action
    return keys


def command_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The path of the leaf command ``args`` ran (``"kafka.topics"``), or None without one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name is None:
                return None
            below = command_path(action.choices[name], args)
            return f"{name}.{below}" if below else name
    return None


@contextlib.contextmanager
def without_flag_environment() -> Iterator[None]:
    """The process environment without the ``MARKET_ANOMALY_*`` variables that set flags (restored after)."""
    saved = {name: value for name, value in os.environ.items()
             if name.startswith(config.ENV_PREFIX) and name not in PLACE_VARIABLES}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


# -- the file ---------------------------------------------------------------------------------------


def config_path(argv: list[str]) -> tuple[Path | None, bool]:
    """The configuration file for this command line and whether it was named (a named file must exist)."""
    for index, word in enumerate(argv):
        if word == "--":
            break
        if word == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1]), True
        if word.startswith("--config="):
            return Path(word.split("=", 1)[1]), True
    named = config.env(CONFIG_ENV, "")
    if named:
        return Path(named), True
    default = Path(DEFAULT_FILE)
    return (default, False) if default.is_file() else (None, False)


def load_document(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"configuration file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path}: not valid TOML: {error}") from None


def file_values(document: dict, path: Path, parser: argparse.ArgumentParser,
                command: str) -> dict[str, tuple[str, object]]:
    """``command``'s settings from the file, by key: (where in the file, value). Checks the whole file."""
    commands = subcommands(parser)
    tables = {name: value for name, value in document.items() if isinstance(value, dict)}
    top = {name: value for name, value in document.items() if not isinstance(value, dict)}
    everywhere = set(settings(parser)).union(*(settings(leaf) for leaf in commands.values()))
    for key in top:
        if key not in everywhere:
            raise ConfigError(f"{path}: unknown key {key!r}: no command has a --{key} flag")
    mine = {**settings(parser), **settings(commands[command])}
    found = {key: (key, value) for key, value in top.items() if key in mine}
    for name, table in _flatten_tables(tables):
        matching = [path_ for path_ in commands if path_ == name or path_.startswith(name + ".")]
        if not matching:
            raise ConfigError(f"{path}: unknown table [{name}]; tables are commands: {', '.join(sorted(commands))}")
        known = set().union(*(settings(commands[path_]) for path_ in matching))
        for key in table:
            if key not in known:
                raise ConfigError(f"{path}: [{name}] unknown key {key!r}; {name} has no --{key} flag")
        if command in matching:
            found.update({key: (f"[{name}] {key}", value) for key, value in table.items()})
    return found


def _flatten_tables(tables: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """``{"kafka": {"topics": {...}, "x": 1}}`` -> ("kafka", {"x": 1}), ("kafka.topics", {...}); broadest first."""
    for name, table in tables.items():
        full = f"{prefix}{name}"
        yield full, {key: value for key, value in table.items() if not isinstance(value, dict)}
        yield from _flatten_tables({k: v for k, v in table.items() if isinstance(v, dict)}, full + ".")


def converted(action: argparse.Action, where: str, path: Path, value: object) -> object:
    """``value`` as the flag itself would take it, or a ConfigError naming the key."""
    def one(item: object) -> object:
        if isinstance(item, (dict, list)) or isinstance(item, bool):
            raise ConfigError(f"{path}: {where}: expected a single value, got {item!r}")
        try:
            result = action.type(str(item)) if action.type else str(item)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ConfigError(f"{path}: {where}: {item!r} is not valid: {error}") from None
        if action.choices is not None and result not in action.choices:
            raise ConfigError(f"{path}: {where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        return result

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {where}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [one(item) for item in items]
    return one(value)


# -- applying it ------------------------------------------------------------------------------------


def resolve(build_parser, argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, dict[str, str]]:
    """Parse ``argv`` with the file's values under the flags and the environment.

    Returns the parser, the arguments and, per key of the command (its own flags and the global
    ones), where its value came from (``flag``, ``env``, ``file [detect] db`` or ``default``). A
    required flag may come from the file: it is checked once the file has been applied.
    """
    parser = build_parser()
    required_by_command = {path: relax_required(leaf) for path, leaf in subcommands(parser).items()}
    args = parser.parse_args(argv)  # --help, --version and usage errors end here, before any file is read
    command = command_path(parser, args)
    if command is None:
        return parser, args, {}
    leaf = subcommands(parser)[command]
    required = required_by_command[command]
    keys = {**settings(parser), **settings(leaf)}
    given = explicitly_given(build_parser, argv, command)
    with without_flag_environment():
        plain = build_parser()
        plain_defaults = {key: action.default
                          for key, action in {**settings(plain), **settings(subcommands(plain)[command])}.items()}
    sources = {key: "flag" if action.dest in given else "env" if action.default != plain_defaults[key] else "default"
               for key, action in keys.items()}
    path, named = config_path(argv)
    if path is not None and (named or path.is_file()):
        for key, (where, value) in file_values(load_document(path), path, parser, command).items():
            if sources[key] == "default":
                setattr(args, keys[key].dest, converted(keys[key], where, path, value))
                sources[key] = f"file {where}"
    missing = [" or ".join(action.option_strings[-1] for action in names) for names in required
               if all(getattr(args, action.dest, None) in (None, []) for action in names)]
    if missing:
        leaf.error("the following arguments are required: " + ", ".join(missing))
    return parser, args, sources


def relax_required(parser: argparse.ArgumentParser) -> list[list[argparse.Action]]:
    """Make ``parser``'s required flags (and required either-or groups) optional; return them to check later."""
    required = []
    for action in settings(parser).values():
        if action.required:
            action.required = False
            required.append([action])
    for group in parser._mutually_exclusive_groups:
        if group.required:
            group.required = False
            required.append(list(group._group_actions))
    return required


def explicitly_given(build_parser, argv: list[str], command: str) -> set[str]:
    """The destinations of ``command``'s flags (and the global ones) that ``argv`` itself sets."""
    parser = build_parser()
    leaf = subcommands(parser)[command]
    relax_required(leaf)
    marker = object()
    actions = [*settings(parser).values(), *settings(leaf).values()]
    for action in actions:
        # An appending flag adds to its default, so it starts from None rather than the marker.
        action.default = None if isinstance(action, argparse._AppendAction) else marker
    args = parser.parse_args(argv)
    return {action.dest for action in actions
            if getattr(args, action.dest, marker) is not (None if isinstance(action, argparse._AppendAction) else marker)}


def child_argv(build_parser, command: str, values: dict[str, object]) -> list[str]:
    """``command``'s words (``["produce", "--ws-url", ...]``) for ``values`` by destination name, rendered by the
    command's own flags; a name the command has no flag for is a ValueError (``up`` and its children stay in step)."""
    by_dest = {action.dest: action for action in settings(subcommands(build_parser())[command]).values()}
    words = command.split(".")
    for dest, value in values.items():
        if dest not in by_dest:
            raise ValueError(f"{command} has no flag for {dest!r}")
        action = by_dest[dest]
        option = next(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._StoreTrueAction):
            words += [option] if value else []
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                words += [option, str(item)]
        elif action.nargs in ("+", "*"):
            words += [option, *map(str, value)] if value else []
        elif value is not None:
            words += [option, str(value)]
    return words


# -- config show ------------------------------------------------------------------------------------


def masked(key: str, value: object) -> object:
    """``value`` with secrets hidden: secret-looking keys, ``KEY=VALUE`` pairs with such keys, passwords in URLs,
    webhook URLs down to their host."""
    if isinstance(value, list):
        return [masked(key, item) for item in value]
    if not isinstance(value, str) or not value:
        return value
    if config.is_secret_key(key):
        return config.MASK
    if key in TOKEN_URL_KEYS:
        return config.redact_url(value)
    return config.redact(value)  # KEY=VALUE pairs with secret keys, passwords in URLs


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def show(build_parser, commands: list[str], argv_tail: list[str]) -> str:
    """The settings in force for ``commands`` (all when empty) as a TOML file, each line saying its source."""
    every = subcommands(build_parser())
    unknown = [name for name in commands if name not in every]
    if unknown:
        raise ConfigError(f"unknown command(s) {', '.join(unknown)}; commands: {', '.join(sorted(every))}")
    lines = ["# market-anomaly config show: the settings in force; the comment says where each comes from"]
    for command in commands or sorted(every):
        if command.startswith("config"):
            continue
        _, args, sources = resolve(build_parser, [*command.split("."), *argv_tail, *required_placeholders(every[command])])
        lines += ["", f"[{command}]"]
        for key, action in settings(every[command]).items():
            value = getattr(args, action.dest, None)
            if value is None:
                lines.append(f"# {key} = (not set)")
                continue
            lines.append(f"{key} = {toml_value(masked(key, value))}  # {sources[key]}")
    return "\n".join(lines) + "\n"


def required_placeholders(parser: argparse.ArgumentParser) -> list[str]:
    """Words that satisfy a command's required flags so ``show`` can parse it (they show as ``flag``)."""
    words = []
    for action in settings(parser).values():
        if action.required:
            words += [action.option_strings[-1], "REQUIRED"]
    for group in parser._mutually_exclusive_groups:
        if group.required and not any(action.required for action in group._group_actions):
            words += [group._group_actions[0].option_strings[-1], "REQUIRED"]
    return words


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="show the settings in force (flags, environment, configuration file, defaults)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show_parser = actions.add_parser("show", help="print the settings in force as a TOML file, secrets masked")
    show_parser.add_argument("commands", nargs="*", metavar="COMMAND",
                             help="commands to show (e.g. detect produce kafka.topics); default: all")
    show_parser.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    from market_anomaly.cli import build_parser

    tail = ["--config", args.config_file] if getattr(args, "config_file", None) else []
    sys.stdout.write(show(build_parser, args.commands, tail))
    return 0
