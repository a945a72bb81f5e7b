"""The package's layers only point down, and no module imports itself through others.

Read from the source (every ``import``, function-level ones included), not from what a run
happens to load. A part may import its own layer's other modules and any layer below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import market_anomaly

PACKAGE = Path(market_anomaly.__file__).parent

# Bottom first. A new part gets a line here: that is where its place in the architecture is decided.
LAYERS = (
    ("market_anomaly", "market_anomaly.config", "market_anomaly.files", "market_anomaly.maven",
     "market_anomaly.metrics", "market_anomaly.lifecycle"),
    ("market_anomaly.candles",),
    ("market_anomaly.core",),
    ("market_anomaly.training",),
    ("market_anomaly.kafka", "market_anomaly.exchange"),
    ("market_anomaly.producer", "market_anomaly.sinks"),
    ("market_anomaly.spark", "market_anomaly.dashboard"),
    ("market_anomaly.decider",),  # the Spark stream's batch handler and bucket step (no pyspark), without Spark
    ("market_anomaly.cli", "market_anomaly.__main__"),
)


def module_name(path: Path) -> str:
    parts = ("market_anomaly", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (``from market_anomaly.x import y`` counts as x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES} - {module_name(path)}


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}
GRAPH = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """Index of the layer ``module`` belongs to (its longest matching part)."""
    matches = [(len(part), index) for index, parts in enumerate(LAYERS) for part in parts
               if module == part or module.startswith(part + ".")]
    assert matches, f"{module} has no layer: add its part to LAYERS"
    return max(matches)[1]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_only_point_down():
    upward = sorted(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
                    for module, targets in GRAPH.items() for target in targets
                    if layer(target) > layer(module) and not module.startswith(target + "."))
    assert not upward, "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def without_package_faces(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its modules is not a cycle with them: drop module -> own package."""
    return {module: {target for target in targets if not module.startswith(target + ".")}
            for module, targets in graph.items()}


def test_no_import_cycles():
    assert strongly_connected(without_package_faces(GRAPH)) == []


def test_the_checks_can_fail():
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert layer("market_anomaly.cli.detect") > layer("market_anomaly.core.engine")


def test_argparse_lives_in_the_command_line_only():
    """The parts below ``cli`` take frozen values (``DetectConfig``, ``SinkOptions``, ...), never parsed flags."""
    users = sorted(module_name(path) for path in PACKAGE.rglob("*.py")
                   if layer(module_name(path)) < layer("market_anomaly.cli")
                   and any(isinstance(node, (ast.Import, ast.ImportFrom))
                           and "argparse" in ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                                              else [node.module])
                           for node in ast.walk(ast.parse(path.read_text()))))
    assert users == []
