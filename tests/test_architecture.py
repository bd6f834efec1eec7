"""The package tree is the architecture: imports point one way and never form a loop.

Layers, top to bottom: cli/commands → plan, jobs (login node) → stages (what a job runs) →
ffn (network, training, inference) → io (volume I/O) → core (shared contracts). Every
`import hpcffn...` (module level or inside a function) is read from the source with `ast`.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hpcffn"
# Which layers each layer may import (besides itself and the root package's constants).
ALLOWED = {
    "cli": {"commands", "report", "jobs", "plan", "stages", "ffn", "io", "core"},
    "commands": {"report", "jobs", "plan", "stages", "ffn", "io", "core"},
    "report": {"jobs", "plan", "stages", "io", "core"},
    "plan": {"io", "core"},
    "jobs": {"plan", "stages", "io", "core"},
    "stages": {"ffn", "io", "core"},
    "ffn": {"io", "core"},
    "io": {"core"},
    "core": set(),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpcffn"):
                # `from hpcffn.plan import spec` imports the module hpcffn.plan.spec.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("hpcffn")]
            else:
                continue
            for target in targets:
                while target not in mods:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    edges[name].add(target)
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hpcffn"


def test_every_module_is_in_a_known_layer():
    layers = {_layer(m) for m in _modules()}
    assert layers <= set(ALLOWED) | {"hpcffn", "__main__"}, layers - set(ALLOWED)


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _imports().items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if there not in (here, "hpcffn") and there not in ALLOWED.get(here, set()):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(_modules()):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_module_re_exports_what_it_does_not_use():
    """A name is imported from the module that defines it: no module keeps an unused import
    (`noqa: F401`) for others to import through it, which hides where the name lives."""
    kept = [f"{path.relative_to(PACKAGE.parent)}:{i}" for path in _modules().values()
            for i, line in enumerate(path.read_text().splitlines(), start=1) if "noqa: F401" in line]
    assert not kept, kept
