"""The house's floors (docs/design.md, "Layers"): the import graph of evilm_core, counted by
top-level folder or module, has no cycle, at most eight floors, and every node sits on the floor
the picture draws it on (its longest chain of imports downward)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.helpers.cli import REPO

PACKAGE = REPO / "evilm_core"
# docs/design.md's picture, floor by floor
FLOORS = {
    "errors": 1, "progress": 1,
    "fs": 2, "bundled": 2, "evaluation/": 2, "workers": 2,
    "config/": 3, "text/": 3,
    "data/": 4, "checkpoints/": 4,
    "models/": 5, "settings": 5, "prepare/": 5,
    "engine/": 6, "export/": 6, "profiling": 6,
    "tokenizer/": 7, "label/": 7, "pretrain/": 7, "finetune/": 7, "retrieval/": 7, "predict/": 7,
    "recipes": 8, "quickstart/": 8, "serve/": 8,
}


def _node(module: str) -> str | None:
    """evilm_core.data.video.read -> 'data/'; evilm_core.settings -> 'settings'."""
    parts = module.split(".")
    if parts[0] != "evilm_core" or len(parts) < 2 or parts[1] == "bundled_recipes":
        return None
    if (PACKAGE / parts[1]).is_dir():
        return parts[1] + "/"
    return parts[1] if (PACKAGE / f"{parts[1]}.py").is_file() else None  # a name (`__version__`), not a module


def _imports(path: Path, package: str) -> set[str]:
    """Every evilm_core module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        src = _node(module.removesuffix(".__init__"))
        if src is None:
            continue
        targets = {_node(m) for m in _imports(path, package.removesuffix(".__init__"))}
        graph.setdefault(src, set()).update(t for t in targets if t is not None and t != src)
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    @functools.cache
    def floor(node: str, seen: frozenset = frozenset()) -> int:
        assert node not in seen, f"import cycle through {node}"
        return 1 + max((floor(d, seen | {node}) for d in graph.get(node, ())), default=0)

    return {node: floor(node) for node in graph}


def test_the_import_graph_has_the_floors_the_design_draws():
    graph = import_graph()
    measured = floors(graph)
    assert max(measured.values()) <= 8
    assert set(measured) == set(FLOORS), "a new top-level module or folder: place it in docs/design.md and FLOORS"
    assert measured == FLOORS


def test_nothing_imports_upward_or_sideways():
    graph = import_graph()
    for node, targets in graph.items():
        for target in targets:
            assert FLOORS[target] < FLOORS[node], f"{node} (floor {FLOORS[node]}) imports {target} ({FLOORS[target]})"
