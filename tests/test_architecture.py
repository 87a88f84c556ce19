"""The house's rules, checked on the code itself (docs/architecture.md): packages in layers that
point one way, no import cycle among our modules, the device side free of torch, timm and onnx,
and no module over 450 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "exporter"
# A package may import its own modules and those of lower layers, never a higher layer's.
LAYERS = {
    "core": 0,
    "source": 1,
    "bundle": 1,
    "parity": 1,
    "build": 2,
    "runtime": 2,
    "tensorrt": 2,
    "measure": 3,
    "deploy": 3,
    "cli": 4,
}
# The device side: what `validate`, `engine`, `predict`, the runtime API and Triton's models run on
# a machine without PyTorch. It imports nothing of the build or the measurements either.
DEVICE = ("core", "bundle", "parity", "runtime", "tensorrt")
HEAVY = ("torch", "timm", "onnx", "transformers", "safetensors")
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """Our modules a module imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "exporter":
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "exporter"]
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imported(ast.parse(path.read_text()), known) for name, path in known.items()}
    # a package's __init__ is imported on the way to any of its modules: not an arrow of its own
    return {name: {t for t in targets if t != name and not name.startswith(t + ".")} for name, targets in edges.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_lives_in_a_layer():
    loose = [name for name in modules() if name != "exporter" and package_of(name) not in LAYERS]
    assert not loose, f"modules outside the layered packages: {loose}"


def test_no_import_cycle_among_our_modules():
    assert cycles(graph()) == []


def test_arrows_point_down_the_layers():
    against = []
    for source, targets in graph().items():
        for target in targets:
            if source == "exporter" or target == "exporter":
                continue
            if LAYERS[package_of(target)] > LAYERS[package_of(source)]:
                against.append(f"{source} -> {target}")
    assert not against, "\n".join(sorted(against))


def test_device_side_imports_nothing_of_build_or_measure():
    against = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if package_of(source) in DEVICE
        for target in targets
        if package_of(target) in ("build", "measure", "source", "deploy", "cli")
    ]
    assert not against, "\n".join(sorted(against))


def test_device_side_runs_without_torch_timm_or_onnx():
    device = sorted(name for name in modules() if package_of(name) in DEVICE)
    code = (
        "import importlib, json, sys\n"
        f"for name in {device!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_the_line_limit(name: str):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_layers_table_is_the_documented_one():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for package in LAYERS:
        assert f"`{package}/`" in text, package


def layer_report() -> dict[str, list[str]]:
    """Which package imports which (for docs/architecture.md and a reader's eye)."""
    arrows: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph().items():
        for target in targets:
            if package_of(source) and package_of(target) and package_of(source) != package_of(target):
                arrows[package_of(source)].add(package_of(target))
    return {key: sorted(value) for key, value in sorted(arrows.items())}
