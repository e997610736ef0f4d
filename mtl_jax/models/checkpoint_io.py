"""Our own model checkpoint: a model config plus its parameters, independent of any training run.

``python -m mtl_jax.convert hf-to-jax`` writes it and every tool can read it back without
Hugging Face files or an optimizer. Layout of a converted directory::

    DIR/mtl_jax_model.json   {"format_version": 1, "family": "t5" | "xlmr",
                              "config": {T5Config / XLMRConfig fields},
                              "task_names": [...], "id2label": {...}, "source": "..."}
    DIR/params/              orbax (StandardCheckpointHandler): the ``nnx.Param`` state as a
                             pure dict (``nnx.to_pure_dict``), float32 by default

The parameter tree is the same pure dict a ``TrainState.params`` holds, so a converted checkpoint
can seed a training run and a training checkpoint's params can be saved here unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mtl_jax.models import lora, vocab_padding
from mtl_jax.models.families import get_family
from mtl_jax.models.t5 import T5Config
from mtl_jax.models.xlmr import XLMRConfig

RECORD_NAME = "mtl_jax_model.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1

ModelConfig = T5Config | XLMRConfig


class Converted(NamedTuple):
    model: nnx.Module
    config: ModelConfig
    family: str


def check_family(family: str) -> None:
    get_family(family)  # raises for an unknown name (models/families.py is the one registry)


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    """All fields of a model config as JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_fields(family: str, fields: Mapping[str, Any], where: str = "config",
                       **overrides: Any) -> ModelConfig:
    """A ``T5Config``/``XLMRConfig`` from stored fields; unknown fields are an error, missing ones
    take the class defaults (training records drop dtype and dropout fields on purpose), except
    ``vocab_pad_multiple``: a record without it predates vocabulary padding (1, unpadded)."""
    cls = get_family(family).config_cls
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: fields {unknown} are not {cls.__name__} fields (family {family!r})")
    return cls(**{**vocab_padding.stored_fields(fields), **overrides})


def abstract_model(family: str, config: ModelConfig) -> nnx.Module:
    """The model's structure with ShapeDtypeStruct parameters (nothing allocated or initialised)."""
    model_cls = get_family(family).model_cls
    return nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))


def abstract_params(family: str, config: ModelConfig) -> dict[str, Any]:
    """The pure-dict parameter tree of ``family``/``config`` as ShapeDtypeStructs (a restore target)."""
    return nnx.to_pure_dict(nnx.state(abstract_model(family, config), nnx.Param))


def model_from_params(family: str, config: ModelConfig, params: Mapping[str, Any],
                      seed: int = 0) -> nnx.Module:
    """A ready model holding ``params`` (pure dict of host or device arrays, cast to the model's
    parameter dtype). Inside ``jax.set_mesh`` + ``nnx.logical_axis_rules`` each parameter is placed
    with the sharding its logical axes resolve to. With ``config.lora`` and no LoRA matrices in
    ``params`` (the base model's parameters), the LoRA matrices start fresh from ``seed``."""
    graphdef, state = nnx.split(abstract_model(family, config))
    given = dict(nnx.to_flat_state(nnx.State(params)))
    mesh = jax.sharding.get_mesh() if not jax.sharding.get_abstract_mesh().empty else None
    leaves = []
    fresh_lora = False
    for path, var in nnx.to_flat_state(state):
        name = "/".join(map(str, path))
        if path not in given and lora.is_lora_param(name):
            fresh_lora = True  # filled by init_lora_params below
            given[path] = np.zeros(var.get_value().shape, var.get_value().dtype)
        if path not in given:
            raise ValueError(f"no value for parameter {name}")
        spec = var.get_value()
        value = given[path]
        value = value.get_value() if isinstance(value, nnx.Variable) else value
        if tuple(value.shape) != tuple(spec.shape):
            raise ValueError(f"parameter {name}: got shape {tuple(value.shape)}, model expects {tuple(spec.shape)}")
        if mesh is not None:
            pspec = _divisible_spec(nnx.spmd.get_var_pspec(var), spec.shape, mesh)
            array = jax.device_put(np.asarray(value, spec.dtype), jax.sharding.NamedSharding(mesh, pspec))
        else:
            array = jnp.asarray(value, spec.dtype)
        leaves.append((path, var.replace(array)))
    extra = sorted("/".join(map(str, p)) for p in set(given) - {p for p, _ in leaves})
    if extra:
        raise ValueError(f"parameters not in the {family} model of this config: {extra[:10]}")
    model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
    if fresh_lora:
        lora.init_lora_params(model, seed)
    return model


def _divisible_spec(spec: jax.sharding.PartitionSpec, shape: tuple[int, ...],
                    mesh: jax.sharding.Mesh) -> jax.sharding.PartitionSpec:
    """``spec`` with every dimension the mesh axes do not divide replicated instead (tiny test
    vocabularies, odd head counts), as the trainer's partitioner does."""
    out = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axes if size % ways == 0 else None)
    return jax.sharding.PartitionSpec(*out)


def params_of(model: nnx.Module) -> dict[str, Any]:
    """The model's ``nnx.Param`` state as a pure dict (what ``TrainState.params`` holds)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def is_converted(directory: str | Path) -> bool:
    return (Path(directory) / RECORD_NAME).is_file()


def read_record(directory: str | Path) -> dict[str, Any]:
    """The checked ``mtl_jax_model.json`` of a converted directory."""
    path = Path(directory) / RECORD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {RECORD_NAME} in {directory}: not an mtl_jax converted checkpoint")
    record = json.loads(path.read_text())
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(record.get("config"), dict):
        raise ValueError(f"{path}: no 'config' object")
    check_family(record.get("family"))
    return record


def save_converted(
    model: nnx.Module,
    config: ModelConfig,
    family: str,
    directory: str | Path,
    *,
    task_names: Sequence[str] | None = None,
    id2label: Mapping[str, Sequence[str]] | None = None,
    source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a converted checkpoint (module docstring) and return the directory.

    An existing ``DIR/params`` is replaced only with ``overwrite`` and only when ``DIR`` already is
    a converted checkpoint; other files in ``DIR`` are never touched. The record is written last,
    so a directory with a record always has complete parameters.
    """
    check_family(family)
    if model.config != config:
        raise ValueError(f"save_converted: config does not describe this model ({family})")
    directory = Path(directory).absolute()
    params_dir = directory / PARAMS_DIR
    if params_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{params_dir} exists (pass overwrite=True to replace it)")
        if not is_converted(directory):
            raise FileExistsError(
                f"{params_dir} exists but {directory} has no {RECORD_NAME}: not replacing a folder "
                "this tool did not write"
            )
    record: dict[str, Any] = {"format_version": FORMAT_VERSION, "family": family,
                              "config": config_to_json(config)}
    if task_names is not None:
        record["task_names"] = list(task_names)
    if id2label:
        record["id2label"] = {k: list(v) for k, v in id2label.items()}
    if source is not None:
        record["source"] = source
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".{PARAMS_DIR}.partial"
    if staging.exists():  # left by an interrupted earlier run of this function
        shutil.rmtree(staging)
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params_of(model))
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    checkpointer.save(staging, args=ocp.args.StandardSave(host))
    checkpointer.close()
    record_path = directory / RECORD_NAME
    if params_dir.exists():
        record_path.unlink(missing_ok=True)  # never a record next to half-replaced params
        shutil.rmtree(params_dir)
    os.replace(staging, params_dir)
    tmp = directory / f".{RECORD_NAME}.partial"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, record_path)
    return directory


def restore_params(params_dir: str | Path, family: str, config: ModelConfig) -> dict[str, Any]:
    """The parameters under ``params_dir`` as host (NumPy) arrays, checked against the model of
    ``config``: a missing, extra or reshaped tensor fails with orbax's tree diff."""
    # Plain shapes (no shardings, even inside a mesh context): restored as host NumPy arrays,
    # placed afterwards by ``model_from_params``.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          abstract_params(family, config))
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        return checkpointer.restore(Path(params_dir).absolute(), args=ocp.args.StandardRestore(target))
    finally:
        checkpointer.close()


def load_converted(directory: str | Path, **overrides: Any) -> Converted:
    """``(model, config, family)`` from a converted directory.

    ``overrides`` replace config fields, e.g. ``dtype="bfloat16"`` or ``attention_impl="xla"``
    (architecture fields must match the stored parameters). ``lora=LoRAConfig(...)`` on a
    checkpoint without LoRA adds fresh LoRA matrices (B = 0: the same function). Build inside
    ``jax.set_mesh`` + ``nnx.logical_axis_rules`` to get a sharded model.
    """
    directory = Path(directory)
    record = read_record(directory)
    family = record["family"]
    config = config_from_fields(family, record["config"], str(directory / RECORD_NAME), **overrides)
    stored = config
    if record["config"].get("lora") is None and config.lora is not None:
        stored = dataclasses.replace(config, lora=None)
    params = restore_params(directory / PARAMS_DIR, family, stored)
    return Converted(model_from_params(family, config, params), config, family)
