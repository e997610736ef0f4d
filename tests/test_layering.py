"""Imports point down the house (mtl_jax/__init__.py): checked on the source, statically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_jax"
CLIS = ("train", "evaluate", "predict", "inspect", "convert", "task_embed", "cache")
# package -> the mtl_jax packages/modules it must not import (at any depth, lazily or not)
FORBIDDEN = {
    "models": ("mtl_jax.training", "mtl_jax.evaluation", "mtl_jax.data", "mtl_jax.experiment"),
    "training": ("mtl_jax.evaluation", "mtl_jax.data", "mtl_jax.experiment"),
    "evaluation": ("mtl_jax.data", "mtl_jax.experiment"),
    "data": ("mtl_jax.evaluation", "mtl_jax.training", "mtl_jax.experiment"),
}
THIRD_PARTY = ("tensorflow", "seqio")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for p in prefixes if n == p or n.startswith(p + "."))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    bad = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        forbidden = FORBIDDEN[package] + (THIRD_PARTY if package != "data" else ())
        hits = _hits(_imports(path), forbidden)
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    assert not bad, bad


def test_clis_never_import_each_other():
    bad = {}
    for cli in CLIS:
        others = tuple(f"mtl_jax.{c}" for c in CLIS if c != cli)
        # "from mtl_jax import train" shows up as "mtl_jax.train"
        hits = _hits(_imports(PACKAGE / f"{cli}.py"), others)
        if hits:
            bad[cli] = hits
    assert not bad, bad
