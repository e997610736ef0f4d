"""Chaining runs: start a fresh run from another run's parameters (``TrainConfig.init_from``).

Only the parameters travel: the new run gets a fresh optimizer state, starts at step 0 and reads
its own mixture from the start. The source is restored onto the NEW run's shardings (any mesh) with
the parameters-only restore of ``training.checkpoints.RunCheckpoint``.

What is taken from the source and what is the new run's own:
- every shared parameter (embeddings, encoder, decoder, LM head) comes from the source;
- XLM-R task heads are matched by head name (``TaskLayout.heads``): a head of this run that the
  source has, or that ``TrainConfig.init_heads`` maps to a source head, is copied from it (label
  counts must agree); other heads keep this run's fresh initialisation; source heads that are
  not used are dropped;
- LoRA matrices of this run are fresh (B = 0), so at step 0 the model computes exactly what the
  source computed; a source trained with LoRA has its update folded into its kernels first.

Everything is checked in ``resolve`` (the checkpoint, the step, the model fields that must agree,
the head mapping) before the training CLI writes anything.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtl_jax.data import tasks
from mtl_jax.experiment import ConfigError, Experiment, model_factory
from mtl_jax.models.lora import LORA_PARAM_NAMES
from mtl_jax.training import partitioning as part
from mtl_jax.training.checkpoints import (
    CheckpointLookupError,
    RunCheckpoint,
    model_differences,
)
from mtl_jax.training.train_state import (
    TrainState,
    abstract_model,
    create_train_state,
    state_from_params,
)

log = logging.getLogger(__name__)

HEADS = "heads"  # the XLM-R task heads' subtree (models/xlmr.py XLMRMultiTask.heads)
# Model-record fields allowed to differ between the source and the new run: the task heads (matched
# by name below) and LoRA (the new run's is fresh; a source's is folded into its kernels).
_FREE_FIELDS = ("heads", "task_num_labels", "lora")
_STEP = re.compile(r"^(best|latest|\d+)$")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"RUN_DIR@best"`` -> ``("RUN_DIR", "best")``; no ``@best|@latest|@N`` suffix -> step None
    (the best scored step, else the latest)."""
    path, sep, step = spec.rpartition("@")
    if sep and _STEP.match(step):
        return path, step
    return spec, None


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A resolved ``TrainConfig.init_from``: which checkpoint, and where each head comes from."""

    spec: str
    run_dir: Path  # the source's MODEL_DIR
    checkpoints: Path
    step: int
    record: dict[str, Any]  # the source's model record
    heads: dict[str, str | None]  # this run's head -> source head copied (None: fresh)

    def as_record(self) -> dict[str, Any]:
        """What the new run stores about its start (checkpoint config, run log, results.json)."""
        return {"spec": self.spec, "run": str(self.run_dir), "step": self.step,
                "mixture": self.record.get("mixture"), "heads": dict(self.heads)}


def resolve(exp: Experiment) -> InitSource:
    """Open and check ``exp.cfg.init_from`` (nothing is written, no array is read)."""
    cfg = exp.cfg
    assert cfg.init_from
    where = f"TrainConfig.init_from={cfg.init_from!r}"
    if exp.family.encoder_decoder and cfg.init_heads:
        raise ConfigError(
            f"TrainConfig.init_heads={cfg.init_heads!r}: a text-to-text (mT5) model has one LM "
            "head shared by all tasks, so there is nothing to map; the XNLI-format tasks "
            "(ctkfacts_xnli_t2t_*) reuse the 'xnli:' prefix and labels instead")
    path, step = parse_spec(cfg.init_from)
    if not Path(path).exists():
        raise ConfigError(f"{where}: {path} does not exist (expected a training run's MODEL_DIR)")
    try:
        with RunCheckpoint(path, step) as checkpoint:
            record, chosen, directory = checkpoint.model_record, checkpoint.step, checkpoint.directory
            mixture = checkpoint.config.get("mixture")
    except CheckpointLookupError as e:
        raise ConfigError(f"{where}: {e}") from e
    if record.get("family") != cfg.family:
        raise ConfigError(f"{where}: the source run is a {record.get('family')!r} model, this run "
                          f"has TrainConfig.family={cfg.family!r}")
    mine = exp.model_record()
    diffs = model_differences({k: v for k, v in record.items() if k not in _FREE_FIELDS},
                              {k: v for k, v in mine.items() if k not in _FREE_FIELDS})
    if diffs:
        raise ConfigError(f"{where}: the source run's model ({directory / str(chosen)}) differs "
                          "from this run's in fields that must agree:\n  " + "\n  ".join(diffs))
    heads = _match_heads(exp, record, where)
    run_dir = directory.parent if directory.name == "checkpoints" else directory
    return InitSource(cfg.init_from, run_dir.absolute(), directory.absolute(), chosen,
                      {**record, "mixture": mixture}, heads)


def _match_heads(exp: Experiment, record: dict[str, Any], where: str) -> dict[str, str | None]:
    """This run's head -> the source head it starts from (``None`` = fresh), checked."""
    cfg = exp.cfg
    if exp.family.encoder_decoder:  # one LM head for every task
        return {}
    source = list(record.get("heads") or [])
    source_labels = dict(zip(source, record.get("task_num_labels") or [], strict=False))
    mine = dict(zip(exp.layout.heads, (max(n, 1) for n in exp.layout.head_labels), strict=True))
    by_dataset = {}
    for name in (*exp.layout.train_tasks, *exp.layout.eval_tasks):
        info = tasks.task_info(name)
        by_dataset.setdefault(info.dataset, info.head)
    mapping: dict[str, str] = {}
    for key, src in cfg.init_heads.items():
        head = key if key in mine else by_dataset.get(key)
        if head is None:
            raise ConfigError(
                f"TrainConfig.init_heads: {key!r} is neither a head nor a dataset of this run "
                f"(mixture {cfg.mixture!r}); its heads: {sorted(mine)}, datasets: "
                f"{sorted(by_dataset)}")
        if src not in source_labels:
            raise ConfigError(f"TrainConfig.init_heads[{key!r}]={src!r}: the source run "
                              f"({where}) has no head {src!r}; its heads: {source}")
        mapping[head] = src
    heads: dict[str, str | None] = {}
    for head, labels in mine.items():
        src = mapping.get(head, head if head in source_labels else None)
        if src is not None and source_labels[src] != labels:
            raise ConfigError(
                f"{where}: head {head!r} of this run has {labels} label(s) but the source head "
                f"{src!r} it would start from has {source_labels[src]}; map it to a head with "
                f"{labels} label(s) in TrainConfig.init_heads, or map it to nothing by training "
                "a mixture without it")
        heads[head] = src
    dropped = [h for h in source if h not in heads.values()]
    if dropped:
        log.info("init_from: source heads not used by this run (dropped): %s", ", ".join(dropped))
    return heads


def initial_state(exp: Experiment, source: InitSource) -> TrainState:
    """Step 0 of the new run: the source's parameters on this run's mesh, fresh heads where the
    source has none to give, fresh LoRA matrices, a fresh optimizer state."""
    _, fresh, _ = create_train_state(model_factory(exp.cfg.family, exp.config, exp.cfg.seed),
                                     exp.optimizer, exp.mesh, exp.rules, seed=exp.cfg.seed)
    fresh_params, fresh_rest = fresh.params, fresh.rest
    del fresh  # its optimizer state is rebuilt below; free it before the source is read
    flat_abstract = traverse_util.flatten_dict(exp.abstract_state.params)
    flat_shardings = traverse_util.flatten_dict(exp.shardings.params)
    source_lora = source.record.get("lora")
    # The parameters read from the source: everything but heads and this run's LoRA matrices
    # (plus the source's own LoRA matrices, folded below).
    target = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_shardings[k])
        for k, v in flat_abstract.items() if k[0] != HEADS and k[-1] not in LORA_PARAM_NAMES
    }
    if source_lora is not None:
        target.update(_source_lora_target(exp, source))
    with RunCheckpoint(source.checkpoints, source.step) as checkpoint:
        restored = traverse_util.flatten_dict(
            checkpoint.restore({"params": traverse_util.unflatten_dict(target)})["params"])
        source_heads = _read_source_heads(exp, source, checkpoint)
    if source_lora is not None:
        restored = _fold_lora(restored, source_lora)
    flat = dict(traverse_util.flatten_dict(fresh_params))
    flat.update(restored)
    params = traverse_util.unflatten_dict(flat)
    if source_heads is not None:
        heads = _assemble_heads(jax.device_get(fresh_params[HEADS]), source_heads, exp, source)
        params[HEADS] = part.host_to_global(heads, exp.shardings.params[HEADS])
    log.info("init_from: parameters of %s step %d%s", source.checkpoints, source.step,
             "".join(f"; head {h} <- {s or 'fresh'}" for h, s in source.heads.items()))
    return state_from_params(exp.graphdef, params, fresh_rest, exp.optimizer, exp.shardings,
                             seed=exp.cfg.seed)


def _source_config(exp: Experiment, source: InitSource) -> Any:
    from mtl_jax.models.lora import LoRAConfig

    changes: dict[str, Any] = {"lora": LoRAConfig.coerce(source.record.get("lora"))}
    if not exp.family.encoder_decoder:
        changes["task_num_labels"] = tuple(source.record.get("task_num_labels") or ())
    return dataclasses.replace(exp.config, **changes)


def _source_abstract(exp: Experiment, source: InitSource) -> dict[tuple, Any]:
    _, params, _ = abstract_model(model_factory(exp.cfg.family, _source_config(exp, source), 0))
    from flax import nnx

    return traverse_util.flatten_dict(nnx.to_pure_dict(params))


def _source_lora_target(exp: Experiment, source: InitSource) -> dict[tuple, Any]:
    """The source's LoRA matrices, read replicated (they are small) to fold into the kernels."""
    repl = part.replicated(exp.mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=repl)
            for k, v in _source_abstract(exp, source).items()
            if k[-1] in LORA_PARAM_NAMES and k[0] != HEADS}


def _fold_lora(flat: dict[tuple, Any], lora: dict[str, Any]) -> dict[tuple, Any]:
    """``kernel + A B * alpha / rank`` for every source LoRA layer (models/lora.py
    ``LoRADense.merged_kernel``), then the matrices are dropped."""
    scaling = float(lora["alpha"]) / float(lora["rank"])
    out = {k: v for k, v in flat.items() if k[-1] not in LORA_PARAM_NAMES}
    for key, a in flat.items():
        if key[-1] != "lora_a":
            continue
        layer = key[:-1]
        b, kernel = flat[(*layer, "lora_b")], flat[(*layer, "kernel")]
        rank = a.shape[-1]
        delta = scaling * (jnp.asarray(a, jnp.float32).reshape(-1, rank)
                           @ jnp.asarray(b, jnp.float32).reshape(rank, -1))
        merged = (jnp.asarray(kernel, jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
        out[(*layer, "kernel")] = jax.device_put(merged, kernel.sharding)
    return out


def _read_source_heads(exp: Experiment, source: InitSource,
                       checkpoint: RunCheckpoint) -> dict[str, np.ndarray] | None:
    """The source's stacked head arrays as NumPy (small), or None when nothing is copied."""
    if exp.family.encoder_decoder or not any(source.heads.values()):
        return None
    shapes = {k[1:]: v for k, v in _source_abstract(exp, source).items() if k[0] == HEADS}
    target = {HEADS: traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in shapes.items()})}
    restored = checkpoint.restore({"params": target})["params"][HEADS]
    return {"/".join(map(str, k)): np.asarray(v)
            for k, v in traverse_util.flatten_dict(restored).items()}


def _assemble_heads(fresh: dict[str, Any], src: dict[str, np.ndarray], exp: Experiment,
                    source: InitSource) -> dict[str, Any]:
    """This run's stacked heads: row i copied from the source head it maps to (label columns
    only; padding columns stay zero, as ``TaskHeads`` initialises them), else the fresh row."""
    order = list(source.record.get("heads") or [])
    out = {k: np.array(v) for k, v in fresh.items()}
    for i, (head, labels) in enumerate(zip(exp.layout.heads, exp.layout.head_labels, strict=True)):
        name = source.heads.get(head)
        if name is None:
            continue
        j, n = order.index(name), max(labels, 1)
        out["dense_kernel"][i] = src["dense_kernel"][j]
        out["dense_bias"][i] = src["dense_bias"][j]
        out["out_kernel"][i] = 0.0
        out["out_kernel"][i, :, :n] = src["out_kernel"][j, :, :n]
        out["out_bias"][i] = 0.0
        out["out_bias"][i, :n] = src["out_bias"][j, :n]
    unknown = sorted(set(out) - {"dense_kernel", "dense_bias", "out_kernel", "out_bias"})
    if unknown:  # a head parameter this code does not know how to copy: fail loudly
        raise ConfigError(f"init_from: cannot map head parameters {unknown}")
    return out

