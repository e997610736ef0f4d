"""Datasets and mixtures declared as plain values (a gin file's ``TrainConfig`` lists), applied once.

``apply(modules, datasets, mixtures)`` imports the named Python modules (which call
``register_dataset`` / ``register_mixture`` themselves), registers each dataset declaration (the
keywords of :func:`mtl_jax.data.registry.declare`) and each mixture declaration (the keywords
of :func:`mtl_jax.data.mixtures.declare_mixture`). Errors name the list entry and the key.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mtl_jax.data import mixtures, registry


class DeclarationError(ValueError):
    """A declaration that cannot be applied; the message names the entry and what is wrong."""


def _keywords(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _entry(kind: str, i: int, value: Any) -> str:
    name = value.get("name") if isinstance(value, Mapping) else None
    return f"{kind}[{i}]" + (f" ({name!r})" if name else "")


def apply(
    modules: Sequence[str] = (),
    datasets: Sequence[Mapping[str, Any]] = (),
    mixture_declarations: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Import ``modules``, register ``datasets`` then ``mixture_declarations``; returns the
    registered dataset and mixture names."""
    names: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise DeclarationError(f"dataset_modules: cannot import {module!r}: {e}") from e
    for i, decl in enumerate(datasets):
        where = _entry("datasets", i, decl)
        if not isinstance(decl, Mapping):
            raise DeclarationError(f"{where}: expected a dict of declaration keys, got {decl!r}")
        unknown = sorted(set(decl) - set(_keywords(registry.declare)))
        if unknown:
            raise DeclarationError(f"{where}: unknown key(s) {unknown}; known keys: "
                                   f"{_keywords(registry.declare)}")
        if "name" not in decl:
            raise DeclarationError(f"{where}: no 'name'")
        try:
            names.append(registry.register_dataset(**decl).name)
        except (ValueError, KeyError, TypeError) as e:
            raise DeclarationError(f"{where}: {e}") from e
    for i, decl in enumerate(mixture_declarations):
        where = _entry("mixtures", i, decl)
        if not isinstance(decl, Mapping):
            raise DeclarationError(f"{where}: expected a dict, got {decl!r}")
        try:
            names.append(mixtures.declare_mixture(**decl))
        except (ValueError, KeyError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise DeclarationError(f"{where}: {msg}") from e
    return names
