"""Hugging Face T5/mT5 checkpoints <-> our ``T5Model``.

One table (:func:`parameter_map`) lists every HF tensor with our parameter path and layout change,
and both directions are derived from it, so a round trip reproduces every tensor bit for bit.
Layouts: HF ``nn.Linear`` weights are ``[out, in]``; ours are ``[in, out]`` with attention split
into heads (``q/k/v``: ``[embed, heads, kv]``, ``o``: ``[heads, kv, embed]``); our vocabulary
tables have ``config.padded_vocab_size`` rows, zero-padded on import and cut on export
(``vocab_rows``/``vocab_linear``). Files are read and written by :mod:`mtl_jax.models.hf_io`.

LoRA: a config with ``lora`` loads the HF weights into the base and gives the LoRA matrices a
fresh start (B = 0: the same function as the checkpoint). Export writes the merged model
(``W + A B * alpha/r``); :func:`export_lora_adapter` writes the update as a peft adapter instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax.models import hf_io, lora, peft_adapter, vocab_padding
from mtl_jax.models.t5 import T5Config, T5Model

Path_ = tuple[str | int, ...]
Kind = Literal["copy", "linear", "attn_in", "attn_out", "vocab_rows", "vocab_linear"]

# Copies of ``shared.weight`` (HF ties them) and a tensor some old checkpoints carry but no model uses.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: its name, our parameter path and the layout change between them."""

    hf: str
    ours: Path_
    kind: Kind


def parameter_map(config: T5Config) -> list[Entry]:
    """Every parameter of ``T5Model(config)`` with its Hugging Face name."""
    out = [Entry("shared.weight", ("shared", "embedding"), "vocab_rows")]
    ff = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")

    def attention(hf: str, ours: Path_) -> list[Entry]:
        return [
            Entry(f"{hf}.q.weight", (*ours, "query", "kernel"), "attn_in"),
            Entry(f"{hf}.k.weight", (*ours, "key", "kernel"), "attn_in"),
            Entry(f"{hf}.v.weight", (*ours, "value", "kernel"), "attn_in"),
            Entry(f"{hf}.o.weight", (*ours, "out", "kernel"), "attn_out"),
        ]

    def mlp(hf: str, ours: Path_) -> list[Entry]:
        return [
            Entry(f"{hf}.DenseReluDense.{w}.weight", (*ours, "mlp", w, "kernel"), "linear")
            for w in ff
        ]

    for stack, n in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
        out.append(
            Entry(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos", "embedding"),
                "copy",
            )
        )
        for i in range(n):
            hf, ours = f"{stack}.block.{i}", (stack, "layers", i)
            if stack == "encoder":
                out += attention(f"{hf}.layer.0.SelfAttention", (*ours, "attention"))
                out.append(
                    Entry(
                        f"{hf}.layer.0.layer_norm.weight",
                        (*ours, "attention_norm", "scale"),
                        "copy",
                    )
                )
                ff_layer = 1
            else:
                out += attention(f"{hf}.layer.0.SelfAttention", (*ours, "self_attention"))
                out.append(
                    Entry(
                        f"{hf}.layer.0.layer_norm.weight",
                        (*ours, "self_attention_norm", "scale"),
                        "copy",
                    )
                )
                out += attention(f"{hf}.layer.1.EncDecAttention", (*ours, "cross_attention"))
                out.append(
                    Entry(
                        f"{hf}.layer.1.layer_norm.weight",
                        (*ours, "cross_attention_norm", "scale"),
                        "copy",
                    )
                )
                ff_layer = 2
            out += mlp(f"{hf}.layer.{ff_layer}", ours)
            out.append(
                Entry(
                    f"{hf}.layer.{ff_layer}.layer_norm.weight", (*ours, "mlp_norm", "scale"), "copy"
                )
            )
        out.append(
            Entry(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale"), "copy")
        )
    if not config.tie_word_embeddings:
        out.append(Entry("lm_head.weight", ("lm_head", "kernel"), "vocab_linear"))
    return out


def to_ours(kind: Kind, x: np.ndarray, config: T5Config) -> np.ndarray:
    n, h, d = config.num_heads, config.d_kv, config.d_model
    if kind == "copy":
        return x
    if kind == "vocab_rows":
        return vocab_padding.pad(x, 0, config.vocab_size, config.padded_vocab_size)
    if kind == "vocab_linear":
        return vocab_padding.pad(x.T, 1, config.vocab_size, config.padded_vocab_size)
    if kind == "linear":
        return x.T
    if kind == "attn_in":
        return x.T.reshape(d, n, h)
    return x.T.reshape(n, h, d)


def to_hf(kind: Kind, x: np.ndarray, config: T5Config) -> np.ndarray:
    n, h, d = config.num_heads, config.d_kv, config.d_model
    if kind == "copy":
        return x
    if kind == "vocab_rows":
        return vocab_padding.unpad(x, 0, config.vocab_size)
    if kind == "vocab_linear":
        return vocab_padding.unpad(x, 1, config.vocab_size).T
    if kind == "linear":
        return x.T
    if kind == "attn_in":
        return x.reshape(d, n * h).T
    return x.reshape(n * h, d).T


def hf_shape(kind: Kind, ours_shape: tuple[int, ...], config: T5Config) -> tuple[int, ...]:
    """The HF tensor shape of one of our parameter shapes (no data needed)."""
    if kind == "copy":
        return ours_shape
    if kind == "vocab_rows":
        return (config.vocab_size, *ours_shape[1:])
    if kind in ("linear", "vocab_linear"):
        shape = ours_shape[::-1]
        return (config.vocab_size, *shape[1:]) if kind == "vocab_linear" else shape
    if kind == "attn_in":
        return (ours_shape[1] * ours_shape[2], ours_shape[0])
    return (ours_shape[2], ours_shape[0] * ours_shape[1])


def params_from_hf(
    state: dict[str, np.ndarray], config: T5Config, source: str = "<state dict>"
) -> dict[Path_, np.ndarray]:
    """Our flat parameters from an HF state dict; every tensor must be used or a known copy."""
    entries = parameter_map(config)
    state = dict(state)
    shared = state.get("shared.weight")
    if shared is None:
        raise ValueError(f"{source}: no 'shared.weight' tensor; is this a T5/mT5 checkpoint?")
    for name in _TIED_COPIES:
        if name in state and not np.array_equal(state.pop(name), shared):
            raise ValueError(
                f"{source}: {name} differs from shared.weight; untied input embeddings are not supported"
            )
    for name in _UNUSED:
        state.pop(name, None)
    if config.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        if head is not None and not np.array_equal(head, shared):
            raise ValueError(
                f"{source}: lm_head.weight differs from shared.weight but the config ties them "
                "(tie_word_embeddings/scale_decoder_outputs); fix the config"
            )
    elif "lm_head.weight" not in state:
        state["lm_head.weight"] = shared  # transformers 5 ties a missing head to the embedding

    out: dict[Path_, np.ndarray] = {}
    missing = [e.hf for e in entries if e.hf not in state]
    if missing:
        raise ValueError(
            f"{source}: missing tensors for this config: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    for e in entries:
        x = np.asarray(state.pop(e.hf))
        out[e.ours] = to_ours(e.kind, x, config)
    if state:
        extra = sorted(state)
        raise ValueError(
            f"{source}: tensors not used by T5Model(config) (wrong config?): {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''}"
        )
    return out


def params_to_hf(params: dict[Path_, Any], config: T5Config) -> dict[str, np.ndarray]:
    """HF state dict (contiguous NumPy) from our flat parameters."""
    return {
        e.hf: np.ascontiguousarray(to_hf(e.kind, np.asarray(params[e.ours]), config))
        for e in parameter_map(config)
    }


def flat_params(model: nnx.Module) -> dict[Path_, Any]:
    """Our parameters keyed by path tuple (``("encoder", "layers", 0, "attention", ...)``)."""
    return {tuple(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def model_from_params(
    params: dict[Path_, np.ndarray], config: T5Config, seed: int = 0
) -> T5Model:
    """A ``T5Model`` holding ``params`` (cast to ``param_dtype``), built without random init.

    Inside ``jax.set_mesh`` + ``nnx.logical_axis_rules`` each parameter is placed with the
    sharding its logical axes resolve to. With ``config.lora`` and no LoRA matrices in ``params``
    (a checkpoint of the base model), the LoRA matrices start fresh from ``seed`` (B = 0).
    """
    abstract = nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    mesh = jax.sharding.get_mesh() if not jax.sharding.get_abstract_mesh().empty else None
    leaves = []
    fresh_lora = False
    for path, var in nnx.to_flat_state(state):
        spec_value = var.get_value()
        path = tuple(path)
        if path not in params and lora.is_lora_param("/".join(map(str, path))):
            fresh_lora = True  # filled by init_lora_params below
            params = {**params, path: np.zeros(spec_value.shape, spec_value.dtype)}
        if path not in params:
            raise ValueError(f"no value for parameter {'/'.join(map(str, path))}")
        value = np.asarray(params[path])
        if value.shape != spec_value.shape:
            raise ValueError(
                f"parameter {'/'.join(map(str, path))}: got shape {value.shape}, model expects {spec_value.shape}"
            )
        sharding = getattr(spec_value, "sharding", None)
        if mesh is not None and sharding is not None:
            array = jax.device_put(
                value.astype(spec_value.dtype), jax.sharding.NamedSharding(mesh, sharding.spec)
            )
        else:
            array = jnp.asarray(value, spec_value.dtype)
        leaves.append((path, var.replace(array)))
    model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
    if fresh_lora:
        lora.init_lora_params(model, seed)
    return model


def model_from_hf_state(state: dict[str, np.ndarray], config: T5Config, seed: int = 0) -> T5Model:
    """``T5Model`` from an in-memory HF state dict (e.g. ``torch_model.state_dict()`` as NumPy);
    LoRA matrices, if ``config.lora`` asks for them, start fresh from ``seed``."""
    return model_from_params(params_from_hf(state, config), config, seed)


def hf_state_from_model(model: T5Model) -> dict[str, np.ndarray]:
    """The HF state dict (float32 NumPy) of ``model``, LoRA merged into the kernels."""
    model = lora.merged(model)
    params = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat_params(model).items()}
    return params_to_hf(params, model.config)


def load_hf_t5(directory: str | Path, **overrides: Any) -> tuple[T5Model, T5Config]:
    """Load an HF T5/mT5 directory (config.json + safetensors or pytorch_model.bin).

    ``overrides`` set our config fields, e.g. ``dtype="bfloat16"``, ``attention_impl="xla"``.
    """
    config = T5Config.from_hf(hf_io.read_config(directory), **overrides)
    state = hf_io.read_state_dict(directory)
    return model_from_params(params_from_hf(state, config, source=str(directory)), config), config


def export_hf_t5(model: T5Model, config: T5Config, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` ``from_pretrained`` loads
    (``MT5ForConditionalGeneration`` for model_type ``mt5``, else ``T5ForConditionalGeneration``).
    A LoRA model is written merged (``W + A B * alpha/r``)."""
    if config.to_hf() != model.config.to_hf():
        raise ValueError("export_hf_t5: config does not describe this model's architecture")
    return hf_io.write_checkpoint(directory, config.to_hf(), hf_state_from_model(model))


def export_lora_adapter(
    model: T5Model, directory: str | Path, base_model: str | None = None
) -> Path:
    """Write the model's LoRA update as a peft adapter (``SEQ_2_SEQ_LM``) for the HF model that
    ``export_hf_t5(lora.without_lora(model), ...)`` writes; ``base_model`` is recorded as
    ``base_model_name_or_path``."""
    if model.config.lora is None:
        raise ValueError("export_lora_adapter: the model has no LoRA (T5Config.lora is None)")
    entries = parameter_map(model.config)
    dense = [e for e in entries if e.kind not in ("copy", "vocab_rows")]
    hf_module = {e.ours[:-1]: e.hf.removesuffix(".weight") for e in dense}
    vocab_out = {e.ours[:-1] for e in dense if e.kind == "vocab_linear"}
    weights = {}
    for path, layer in lora.lora_layers(model):
        if path not in hf_module:
            raise ValueError(f"LoRA layer {'/'.join(map(str, path))} has no Hugging Face module")
        a, b = peft_adapter.lora_tensors(layer)
        if path in vocab_out:  # lora_B [padded vocab, r]: the padded rows stay ours
            b = np.ascontiguousarray(vocab_padding.unpad(b, 0, model.config.vocab_size))
        weights[hf_module[path]] = (a, b)
    targets = peft_adapter.target_modules(weights, hf_module.values())
    config = peft_adapter.adapter_config(model.config.lora, "SEQ_2_SEQ_LM", targets, base_model)
    return peft_adapter.write_adapter(directory, config, weights)
