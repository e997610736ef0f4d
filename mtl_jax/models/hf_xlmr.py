"""Hugging Face <-> mtl_jax conversion for XLM-R (and BERT-style) encoders with per-task heads.

Import reads any of ``XLMRobertaModel``, ``XLMRobertaForSequenceClassification``,
``XLMRobertaForMaskedLM`` (or the RoBERTa/BERT equivalents) for the encoder, and a RoBERTa-style
sequence classification directory's head into head k (BERT's pooled-output classifier is not a
RoBERTa head and is not imported). Export writes this layout::

    DST/mtl_jax_tasks.json   task order [{"name", "num_labels", "dir"}, ...], add_pooling_layer
    DST/encoder/             XLMRobertaModel (pooler included when the model has one)
    DST/<task_name>/         XLMRobertaForSequenceClassification: the encoder + head k

Every per-task directory loads with ``from_pretrained`` and reproduces that task's logits;
``load_hf_xlmr(DST)`` reads the whole layout back into one multi-task model.
Tensors are only transposed/reshaped, so both round trips are exact in float32; our word
embeddings have ``config.padded_vocab_size`` rows, zero-padded on import and cut on export.

LoRA: a config with ``lora`` loads the HF weights into the base and gives the LoRA matrices a
fresh start (B = 0). Export writes the merged model; :func:`export_lora_adapters` writes the
update as peft adapters next to an unmerged export (``DST/encoder/adapter``,
``DST/<task>/adapter``; a task's adapter also carries its classification head, as peft's
``SEQ_CLS`` adapters do, so it applies to the plain pretrained encoder too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax.models import ca_mtl, lora, peft_adapter, vocab_padding
from mtl_jax.models.hf_io import read_config, read_state_dict, write_checkpoint
from mtl_jax.models.xlmr import XLMRConfig, XLMREncoder, XLMRMultiTask

log = logging.getLogger(__name__)

MANIFEST_NAME = "mtl_jax_tasks.json"
ENCODER_DIR = "encoder"
_FORMAT = "mtl_jax-xlmr-export/1"
_HEAD_PREFIX = "classifier."
_ENCODER_PREFIXES = ("roberta.", "bert.", "")

Path_ = tuple[str | int, ...]


class _Layout(NamedTuple):
    """How one HF tensor maps to ours: ``to_ours(hf_array, config)`` and ``to_hf(our_array, config)``."""

    to_ours: Callable[[np.ndarray, XLMRConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, XLMRConfig], np.ndarray]


_COPY = _Layout(lambda a, c: a, lambda a, c: a)
_LINEAR = _Layout(lambda a, c: a.T, lambda a, c: a.T)  # torch Linear stores [out, in]
_VOCAB_ROWS = _Layout(  # [vocab, embed] <-> [padded vocab, embed]
    lambda a, c: vocab_padding.pad(a, 0, c.vocab_size, c.padded_vocab_size),
    lambda a, c: vocab_padding.unpad(a, 0, c.vocab_size),
)
_QKV = _Layout(  # [heads*kv, embed] -> [embed, heads, kv]
    lambda a, c: a.T.reshape(c.hidden_size, c.num_attention_heads, c.head_dim),
    lambda a, c: a.reshape(a.shape[0], -1).T,
)
_QKV_BIAS = _Layout(
    lambda a, c: a.reshape(c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1)
)
_ATTN_OUT = _Layout(  # [embed, heads*kv] -> [heads, kv, embed]
    lambda a, c: a.T.reshape(c.num_attention_heads, c.head_dim, c.hidden_size),
    lambda a, c: a.reshape(-1, a.shape[-1]).T,
)


def encoder_tensor_map(config: XLMRConfig) -> list[tuple[str, Path_, _Layout]]:
    """``(HF name without model prefix, our path under XLMREncoder, layout)`` for every tensor."""
    out: list[tuple[str, Path_, _Layout]] = [
        ("embeddings.word_embeddings.weight", ("embeddings", "word_embeddings", "embedding"), _VOCAB_ROWS),
        ("embeddings.position_embeddings.weight", ("embeddings", "position_embeddings", "embedding"), _COPY),
        ("embeddings.token_type_embeddings.weight", ("embeddings", "token_type_embeddings", "embedding"), _COPY),
        ("embeddings.LayerNorm.weight", ("embeddings", "layer_norm", "scale"), _COPY),
        ("embeddings.LayerNorm.bias", ("embeddings", "layer_norm", "bias"), _COPY),
    ]
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}.", ("layers", i)
        for name in ("query", "key", "value"):
            out.append((f"{hf}attention.self.{name}.weight", (*ours, "attention", name, "kernel"), _QKV))
            out.append((f"{hf}attention.self.{name}.bias", (*ours, "attention", name, "bias"), _QKV_BIAS))
        out += [
            (f"{hf}attention.output.dense.weight", (*ours, "attention", "out", "kernel"), _ATTN_OUT),
            (f"{hf}attention.output.dense.bias", (*ours, "attention", "out", "bias"), _COPY),
            (f"{hf}attention.output.LayerNorm.weight", (*ours, "attention_norm", "scale"), _COPY),
            (f"{hf}attention.output.LayerNorm.bias", (*ours, "attention_norm", "bias"), _COPY),
            (f"{hf}intermediate.dense.weight", (*ours, "intermediate", "kernel"), _LINEAR),
            (f"{hf}intermediate.dense.bias", (*ours, "intermediate", "bias"), _COPY),
            (f"{hf}output.dense.weight", (*ours, "output", "kernel"), _LINEAR),
            (f"{hf}output.dense.bias", (*ours, "output", "bias"), _COPY),
            (f"{hf}output.LayerNorm.weight", (*ours, "output_norm", "scale"), _COPY),
            (f"{hf}output.LayerNorm.bias", (*ours, "output_norm", "bias"), _COPY),
        ]
    if config.add_pooling_layer:
        out += [
            ("pooler.dense.weight", ("pooler", "kernel"), _LINEAR),
            ("pooler.dense.bias", ("pooler", "bias"), _COPY),
        ]
    return out


def _variable(module: nnx.Module, path: Path_) -> nnx.Variable:
    obj: Any = module
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def _is_abstract(var: nnx.Variable) -> bool:
    return isinstance(var.get_value(), jax.ShapeDtypeStruct)


def _assign(var: nnx.Variable, value: np.ndarray, where: str) -> None:
    """Set a parameter from a host array, placed by its logical axes when a mesh is active.

    Works on concrete and on abstract (``nnx.eval_shape``) variables, so import never spends
    time initialising weights it is about to overwrite.
    """
    old = var.get_value()
    if tuple(value.shape) != tuple(old.shape):
        raise ValueError(f"{where}: shape {tuple(value.shape)} does not fit our parameter of shape {tuple(old.shape)}")
    value = np.asarray(value, dtype=old.dtype)
    mesh = jax.sharding.get_mesh()
    if not mesh.empty:
        new = jax.device_put(value, jax.sharding.NamedSharding(mesh, nnx.spmd.get_var_pspec(var)))
    else:
        new = jnp.asarray(value)
    var.set_value(new)


def _legacy_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old BERT/RoBERTa checkpoints name LayerNorm parameters gamma/beta (transformers renames too)."""
    renames = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def _encoder_prefix(state: Mapping[str, np.ndarray], directory: Path | str) -> str:
    for prefix in _ENCODER_PREFIXES:
        if f"{prefix}embeddings.word_embeddings.weight" in state:
            return prefix
    raise KeyError(f"{directory}: no embeddings.word_embeddings.weight (with prefix roberta./bert./none)")


def load_encoder_state(
    model: XLMRMultiTask, state: Mapping[str, np.ndarray], source: str = "state", *, seed: int = 0
) -> list[str]:
    """Copy an HF encoder state dict (any model prefix) into ``model.encoder`` in place.

    Only the pooler may be missing (sequence-classification checkpoints have none): it is then
    freshly initialised from ``seed``. Returns the HF names that were missing.
    """
    config = model.config
    state = _legacy_names(state)
    prefix = _encoder_prefix(state, source)
    missing = [
        prefix + hf_name
        for hf_name, path, _ in encoder_tensor_map(config)
        if path[0] == "pooler" and prefix + hf_name not in state
    ]
    if missing:
        log.warning("%s has no pooler weights (%s); initialising the pooler from seed %d", source, missing, seed)
        model.encoder.pooler = XLMREncoder.make_pooler(config, rngs=nnx.Rngs(params=seed))
    for hf_name, path, layout in encoder_tensor_map(config):
        key = prefix + hf_name
        if key in missing:
            continue
        if key not in state:
            raise KeyError(f"{source}: missing tensor {key!r}")
        _assign(_variable(model.encoder, path), layout.to_ours(np.asarray(state[key]), config), f"{source}:{key}")
    return missing


def encoder_state(model: XLMRMultiTask, prefix: str = "", *, pooler: bool = True) -> dict[str, np.ndarray]:
    """Our encoder as an HF state dict (float32 NumPy), names prefixed with ``prefix``. LoRA
    matrices are not part of it (``export_hf_xlmr`` merges them into the kernels first)."""
    out = {}
    for hf_name, path, layout in encoder_tensor_map(model.config):
        if path[0] == "pooler" and not pooler:
            continue
        value = np.asarray(_variable(model.encoder, path)[...])
        out[prefix + hf_name] = np.ascontiguousarray(layout.to_hf(value, model.config))
    return out


def load_head_states(
    model: XLMRMultiTask, states: Mapping[int, Mapping[str, np.ndarray]], sources: Mapping[int, str] | None = None
) -> None:
    """Copy HF ``classifier.*`` heads (RoBERTa classification heads) into heads ``k`` in place.

    Heads not in ``states`` keep their values; abstract heads must be covered completely.
    """
    sources = sources or {}
    heads = _heads(model, 0)
    task_num_labels = model.config.task_num_labels
    names = ("dense_kernel", "dense_bias", "out_kernel", "out_bias")
    variables = {n: getattr(heads, n) for n in names}
    if any(_is_abstract(v) for v in variables.values()) and set(states) != set(range(len(task_num_labels))):
        raise ValueError(f"abstract heads need a state for every task; got tasks {sorted(states)}")
    arrays = {
        n: np.zeros(v.get_value().shape, np.float32) if _is_abstract(v) else np.array(v.get_value())
        for n, v in variables.items()
    }
    for task, state in states.items():
        _heads(model, task)
        source = sources.get(task, f"head {task}")
        for key in [f"{_HEAD_PREFIX}{p}.{w}" for p in ("dense", "out_proj") for w in ("weight", "bias")]:
            if key not in state:
                raise KeyError(f"{source}: missing tensor {key!r} (not a RoBERTa sequence-classification checkpoint?)")
        n = task_num_labels[task]
        out_w = np.asarray(state[f"{_HEAD_PREFIX}out_proj.weight"])
        if out_w.shape[0] != n:
            raise ValueError(
                f"{source}: head has {out_w.shape[0]} labels but task {task} expects {n} (task_num_labels)"
            )
        new = {
            "dense_kernel": np.asarray(state[f"{_HEAD_PREFIX}dense.weight"]).T,
            "dense_bias": np.asarray(state[f"{_HEAD_PREFIX}dense.bias"]),
            "out_kernel": np.pad(out_w.T, ((0, 0), (0, heads.max_labels - n))),
            "out_bias": np.pad(np.asarray(state[f"{_HEAD_PREFIX}out_proj.bias"]), (0, heads.max_labels - n)),
        }
        for name, value in new.items():
            if arrays[name][task].shape != value.shape:
                raise ValueError(
                    f"{source}: {name} of shape {value.shape} does not fit {arrays[name][task].shape}"
                )
            arrays[name][task] = value
    for name, var in variables.items():
        _assign(var, arrays[name], f"heads.{name}")


def head_state(model: XLMRMultiTask, task: int) -> dict[str, np.ndarray]:
    """Head ``task`` as HF ``classifier.*`` tensors (padded label columns dropped)."""
    heads = _heads(model, task)
    n = model.config.task_num_labels[task]
    return {
        f"{_HEAD_PREFIX}dense.weight": np.asarray(heads.dense_kernel[...][task]).T,
        f"{_HEAD_PREFIX}dense.bias": np.asarray(heads.dense_bias[...][task]),
        # The kernel the forward pass uses (divided by its spectral norm under R4F).
        f"{_HEAD_PREFIX}out_proj.weight": np.asarray(heads.out_projection()[task][:, :n]).T,
        f"{_HEAD_PREFIX}out_proj.bias": np.asarray(heads.out_bias[...][task][:n]),
    }


def _heads(model: XLMRMultiTask, task: int):
    n_tasks = len(model.config.task_num_labels)
    if model.heads is None or not 0 <= task < n_tasks:
        raise IndexError(f"task {task} out of range: the model has {n_tasks} task heads")
    return model.heads


class LoadedXLMR(NamedTuple):
    model: XLMRMultiTask
    config: XLMRConfig
    task_names: tuple[str, ...]


def load_hf_xlmr(
    directory: str | Path,
    *,
    task_num_labels: Sequence[int] | None = None,
    head_dirs: Mapping[int, str | Path] | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> LoadedXLMR:
    """A ready ``XLMRMultiTask`` from an HF directory or from an ``export_hf_xlmr`` layout.

    - An export layout (has ``mtl_jax_tasks.json``): encoder and every head, in task order.
    - A sequence-classification directory without ``task_num_labels``: one task, its head = head 0.
    - Otherwise the encoder from ``directory``, ``task_num_labels`` fresh heads (initialised from
      ``seed``), and head k from ``head_dirs[k]`` (HF classification directories) where given.

    ``config_overrides`` sets ``XLMRConfig`` fields (e.g. ``dtype="bfloat16"``, ``lora=...``:
    the LoRA matrices then start fresh from ``seed``, B = 0). Build inside ``jax.set_mesh`` +
    ``nnx.logical_axis_rules`` to get a sharded model.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    task_names: tuple[str, ...] = ()
    if manifest.is_file():
        if task_num_labels is not None or head_dirs:
            raise ValueError(f"{directory} is an mtl_jax export: its tasks come from {MANIFEST_NAME}")
        tasks = read_manifest(directory)
        pooler = json.loads(manifest.read_text()).get("add_pooling_layer", True)
        config_overrides.setdefault("add_pooling_layer", pooler)
        task_names = tuple(t["name"] for t in tasks)
        task_num_labels = tuple(int(t["num_labels"]) for t in tasks)
        head_dirs = {k: directory / t["dir"] for k, t in enumerate(tasks)}
        encoder_dir = directory / ENCODER_DIR
    else:
        encoder_dir = directory
    hf_config = read_config(encoder_dir)
    state = read_state_dict(encoder_dir)
    if task_num_labels is None:
        if f"{_HEAD_PREFIX}out_proj.weight" in state:
            task_num_labels = (int(state[f"{_HEAD_PREFIX}out_proj.weight"].shape[0]),)
            head_dirs = {0: encoder_dir}
        else:
            task_num_labels = ()
    config = XLMRConfig.from_hf(hf_config, task_num_labels=tuple(task_num_labels), **config_overrides)
    model = nnx.eval_shape(lambda: XLMRMultiTask(config, rngs=nnx.Rngs(params=seed)))
    load_encoder_state(model, state, str(encoder_dir), seed=seed)
    head_dirs = {int(k): Path(v) for k, v in (head_dirs or {}).items()}
    if config.task_num_labels:
        if set(head_dirs) != set(range(len(config.task_num_labels))):
            model.heads = XLMRMultiTask.make_heads(config, rngs=nnx.Rngs(params=seed))
        states = {k: state if d == encoder_dir else read_state_dict(d) for k, d in head_dirs.items()}
        load_head_states(model, states, {k: str(d) for k, d in head_dirs.items()})
    elif head_dirs:
        raise ValueError(f"head_dirs given for a model without tasks (task_num_labels={config.task_num_labels})")
    if config.lora is not None:
        lora.init_lora_params(model, seed)
    if config.ca_mtl is not None:
        ca_mtl.init_conditional_params(model, seed)
    left = ["/".join(map(str, p)) for p, v in nnx.to_flat_state(nnx.state(model)) if _is_abstract(v)]
    if left:  # a converter bug, never a user error
        raise RuntimeError(f"parameters left uninitialised after import: {left}")
    return LoadedXLMR(model, config, task_names)


def read_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """The task list of an export layout, checked for the fields import needs."""
    path = Path(directory) / MANIFEST_NAME
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT or not isinstance(data.get("tasks"), list):
        raise ValueError(f"{path}: not an mtl_jax XLM-R export manifest (format {_FORMAT})")
    for i, task in enumerate(data["tasks"]):
        if not {"name", "num_labels", "dir"} <= set(task):
            raise ValueError(f"{path}: task entry {i} lacks name/num_labels/dir: {task}")
    return data["tasks"]


def export_hf_xlmr(
    model: XLMRMultiTask,
    config: XLMRConfig,
    directory: str | Path,
    task_names: Sequence[str],
    *,
    id2label: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Write the encoder and one HF sequence-classification directory per task (module docstring).

    ``id2label`` optionally maps a task name to its label names (config.json ``id2label``).
    Returns ``{"encoder": path, <task_name>: path, ...}``.
    """
    _check_plain_encoder(config)
    directory = Path(directory)
    task_names = tuple(task_names)
    if len(task_names) != len(config.task_num_labels):
        raise ValueError(
            f"{len(task_names)} task names for {len(config.task_num_labels)} heads "
            f"(XLMRConfig.task_num_labels={config.task_num_labels})"
        )
    for name in task_names:
        if not name or name in (ENCODER_DIR, ".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"task name {name!r} cannot be a directory name next to {ENCODER_DIR}/")
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"task names are not unique: {task_names}")
    if task_names and config.model_type != "xlm-roberta":
        raise NotImplementedError(f"heads export only as XLM-R (model_type={config.model_type!r})")
    labels = dict(id2label or {})
    unknown = set(labels) - set(task_names)
    if unknown:
        raise ValueError(f"id2label names unknown tasks: {sorted(unknown)}")

    model = lora.merged(model)
    written = {ENCODER_DIR: write_checkpoint(directory / ENCODER_DIR, config.to_hf(), encoder_state(model))}
    prefix = "roberta."
    encoder_no_pooler = encoder_state(model, prefix, pooler=False)
    entries = []
    for k, name in enumerate(task_names):
        n = config.task_num_labels[k]
        hf_config = config.to_hf(num_labels=n, id2label=labels.get(name))
        written[name] = write_checkpoint(directory / name, hf_config, {**encoder_no_pooler, **head_state(model, k)})
        entries.append({"name": name, "num_labels": n, "dir": name})
    manifest = {"format": _FORMAT, "add_pooling_layer": config.add_pooling_layer, "tasks": entries}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return written


def _check_plain_encoder(config: XLMRConfig) -> None:
    """Hugging Face's XLM-R has no task-conditioned modules: refuse rather than drop them."""
    if config.ca_mtl is not None:
        raise ValueError(
            "a CA-MTL model (XLMRConfig.ca_mtl set) cannot be exported to Hugging Face: its "
            "task-conditioned modules (task embedding, conditional attention, layer norm, adapters) "
            "have no transformers equivalent and dropping them would change every prediction; "
            "keep the mtl_jax checkpoint (python -m mtl_jax.evaluate/predict read it)")


def export_lora_adapters(
    model: XLMRMultiTask, directory: str | Path, task_names: Sequence[str]
) -> dict[str, Path]:
    """peft adapters of the model's LoRA update for an ``export_hf_xlmr`` layout of
    ``lora.without_lora(model)`` in ``directory``: ``encoder/adapter`` (``FEATURE_EXTRACTION``,
    for ``XLMRobertaModel``) and ``<task>/adapter`` (``SEQ_CLS``, for
    ``XLMRobertaForSequenceClassification``, with the task's head as ``modules_to_save``).
    Returns ``{"encoder/adapter": path, "<task>/adapter": path, ...}``."""
    config = model.config
    _check_plain_encoder(config)
    if config.lora is None:
        raise ValueError("export_lora_adapters: the model has no LoRA (XLMRConfig.lora is None)")
    if len(task_names) != len(config.task_num_labels):
        raise ValueError(f"{len(task_names)} task names for {len(config.task_num_labels)} heads")
    directory = Path(directory)
    hf_module = {
        ("encoder", *path[:-1]): name.removesuffix(".weight")
        for name, path, layout in encoder_tensor_map(config)
        if layout not in (_COPY, _VOCAB_ROWS) and name.endswith(".weight")
    }
    layers = {path: peft_adapter.lora_tensors(layer) for path, layer in lora.lora_layers(model)}
    unknown = sorted("/".join(map(str, p)) for p in set(layers) - set(hf_module))
    if unknown:
        raise ValueError(f"LoRA layers without a Hugging Face module: {unknown}")
    written = {}
    for name, prefix in [(ENCODER_DIR, ""), *((t, "roberta.") for t in task_names)]:
        weights = {prefix + hf_module[p]: tensors for p, tensors in layers.items()}
        modules = [prefix + m for m in hf_module.values()]
        if name == ENCODER_DIR:
            task_type, saved, to_save = "FEATURE_EXTRACTION", {}, None
        else:
            # Sequence classifiers have no pooler (the head reads the first token).
            weights = {m: t for m, t in weights.items() if not m.startswith("roberta.pooler")}
            modules = [m for m in modules if not m.startswith("roberta.pooler")]
            modules += [f"{_HEAD_PREFIX}dense", f"{_HEAD_PREFIX}out_proj"]
            task_type, to_save = "SEQ_CLS", [_HEAD_PREFIX.rstrip(".")]
            saved = head_state(model, list(task_names).index(name))
        base = directory / name
        adapter_cfg = peft_adapter.adapter_config(
            config.lora, task_type, peft_adapter.target_modules(weights, modules),
            str(base.absolute()), to_save)
        out = base / peft_adapter.ADAPTER_DIR
        written[f"{name}/{peft_adapter.ADAPTER_DIR}"] = peft_adapter.write_adapter(
            out, adapter_cfg, weights, saved)
    return written


def verify_against_transformers(
    model: XLMRMultiTask,
    hf_directory: str | Path,
    *,
    task: int = 0,
    batch: int = 3,
    length: int = 17,
    seed: int = 0,
) -> dict[str, float]:
    """Max absolute/relative difference of our outputs vs the transformers PyTorch model.

    Runs random padded inputs through ``AutoModel``/``AutoModelForSequenceClassification`` loaded
    from ``hf_directory`` (needs torch + transformers) and through ``model`` (head ``task`` for a
    classification directory). Compares logits, or last hidden state for an encoder directory.
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    hf_config = read_config(hf_directory)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in hf_config.get("architectures") or [])
    auto = AutoModelForSequenceClassification if is_classifier else AutoModel
    reference = auto.from_pretrained(str(hf_directory), attn_implementation="eager").eval()
    ids, mask = random_padded_inputs(model.config, batch, length, seed)
    with torch.no_grad():
        ref = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    task_id = jnp.full((batch,), task, jnp.int32) if model.heads is not None else None
    ours = _forward(model, jnp.asarray(ids), jnp.asarray(mask), task_id)
    if is_classifier:
        n = model.config.task_num_labels[task]
        got, want = np.asarray(ours["logits"])[:, :n], ref.logits.numpy()
    else:
        got, want = np.asarray(ours["hidden"], np.float32), ref.last_hidden_state.numpy()
    diff = np.abs(got - want)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / max(np.abs(want).max(), 1e-12))}


@nnx.jit
def _forward(model: XLMRMultiTask, ids: jax.Array, mask: jax.Array, task_id: jax.Array | None) -> dict:
    return model(ids, mask, task_id)


def random_padded_inputs(config: XLMRConfig, batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(input_ids, attention_mask)`` with right padding of varied lengths (>= 2 real tokens).

    Real tokens avoid the pad id; rows start with the BOS id when there is one, as a tokenizer would.
    """
    rng = np.random.default_rng(seed)
    length = min(length, config.max_position_length)
    ids = rng.integers(0, config.vocab_size, size=(batch, length))
    ids = np.where(ids == config.pad_token_id, (config.pad_token_id + 1) % config.vocab_size, ids)
    if config.bos_token_id is not None:
        ids[:, 0] = config.bos_token_id
    lengths = rng.integers(2, length + 1, size=batch)
    lengths[0] = length  # one full row
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, config.pad_token_id)
    return ids.astype(np.int32), mask
