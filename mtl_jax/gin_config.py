"""Gin at the edges: resolve config files from anywhere, parse bindings without quoting tricks.

Library code never reads gin; the CLIs call ``parse(files, params)`` and then build plain config
objects whose classes are registered in ``mtl_jax.configurables``.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs"


class GinConfigError(ValueError):
    """A gin file or binding could not be used; the message names it."""


def resolve_gin_file(name: str | Path) -> Path:
    """``name`` as given (absolute or relative to the working directory), else under gin_configs/."""
    path = Path(name)
    if path.is_file():
        return path.resolve()
    for candidate in (GIN_DIR / path, GIN_DIR / "models" / path):
        if candidate.is_file():
            return candidate
    known = sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise GinConfigError(f"gin file {name!r} not found in the working directory or {GIN_DIR}.{hint}")


_BINDING = re.compile(r"^\s*([A-Za-z_][\w./]*(?:\.[A-Za-z_]\w*)?)\s*=\s*(.*)$", re.S)


def normalize_binding(binding: str) -> str:
    """Quote a bare string value, so ``TrainConfig.model_dir=/tmp/run`` just works.

    Values that are Python literals, gin references (``@fn``, ``%MACRO``) or already quoted are
    kept as they are.
    """
    match = _BINDING.match(binding)
    if not match:
        raise GinConfigError(f"--gin_param {binding!r} is not of the form NAME=VALUE")
    name, value = match.group(1), match.group(2).strip()
    if value[:1] in "@%'\"" or _is_literal(value):
        return f"{name} = {value}"
    return f"{name} = {value!r}"


def _is_literal(value: str) -> bool:
    try:
        ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return False
    return True


def parse(gin_files: Sequence[str | Path], gin_params: Sequence[str] = (),
          base: str | None = None, base_name: str = "stored configuration") -> None:
    """Parse ``base`` (gin text, e.g. the configuration stored with a checkpoint), then files,
    then bindings (later ones win) into a fresh config; raise ``GinConfigError`` naming the
    culprit."""
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    paths = [str(resolve_gin_file(f)) for f in gin_files]
    bindings = [normalize_binding(b) for b in gin_params]
    if base is not None:
        try:
            gin.parse_config(base)
        except (ValueError, KeyError, SyntaxError) as e:
            raise GinConfigError(f"in the {base_name}: {_first_line(e)}") from e
    for path in paths:
        try:
            gin.parse_config_file(path)
        except (ValueError, KeyError, SyntaxError, OSError) as e:
            raise GinConfigError(f"in gin file {path}: {_first_line(e)}") from e
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, KeyError, SyntaxError) as e:
            raise GinConfigError(f"in --gin_param {binding!r}: {_first_line(e)}{_suggest(binding)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _suggest(binding: str) -> str:
    name = binding.split("=", 1)[0].strip()
    configurable = name.rsplit(".", 1)[0]
    names = sorted({c.name for _, c in gin.config._REGISTRY.items()})  # noqa: SLF001
    close = difflib.get_close_matches(configurable, names, n=3)
    return f" (known configurables like it: {', '.join(close)})" if close else ""


def checkpoint_train_config(checkpoint: Any, gin_files: Sequence[str | Path] = (),
                            gin_params: Sequence[str] = ()) -> Any:
    """The ``TrainConfig`` of a training checkpoint (``training.checkpoints.RunCheckpoint``):
    the gin configuration stored with it, or ``gin_files`` instead; ``gin_params`` on top.
    ``model_dir`` is the checkpoint's run directory."""
    import dataclasses

    from mtl_jax import configurables

    stored = None if gin_files else checkpoint.config.get("gin")
    if not gin_files and not stored:
        raise GinConfigError(f"{checkpoint.where} stores no gin configuration; pass the run's "
                             "--gin_file (and --gin_param) flags")
    parse(gin_files, gin_params, base=stored,
          base_name=f"gin configuration stored with {checkpoint.where}")
    cfg = configurables.train_config()
    return dataclasses.replace(cfg, model_dir=str(checkpoint.directory.parent))
