"""T5 v1.1 / mT5 encoder-decoder in Flax NNX (and original T5 through config switches).

Numerically it follows Hugging Face's ``T5ForConditionalGeneration``/``MT5ForConditionalGeneration``
(the parity tests hold it to float32 tolerance): RMS layer norms, relative position bias computed
once per stack and shared by its layers, attention without 1/sqrt(d) scaling, gated-GELU (tanh) or
ReLU feed-forward, pre-norm residual blocks with dropout, and an untied LM head (mT5 / T5 v1.1) or
the tied head with the d_model**-0.5 rescaling of original T5. Inputs use the batch names of
``mtl_jax.features``; packed batches add segment ids and positions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax.models import vocab_padding
from mtl_jax.models.layer_stack import check_stack_options, run_layers
from mtl_jax.models.layers import (
    ATTENTION_IMPLS,
    DenseGeneral,
    Embed,
    ParamKeys,
    RMSNorm,
    Rngs,
    add_embedding_noise,
    add_probe,
    as_dtype,
    causal_mask,
    check_probe_names,
    combine_masks,
    dot_product_attention,
    dropout,
    eager_sharding_if_mesh,
    padding_mask,
    param,
    segment_mask,
)
from mtl_jax.models.lora import LoRAConfig, apply_lora
from mtl_jax.models.losses import masked_logits

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
_MODEL_TYPES = ("t5", "mt5")

# Hugging Face's per-class defaults, used for keys a config.json leaves out.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "t5": dict(
        vocab_size=32128,
        d_model=512,
        d_kv=64,
        d_ff=2048,
        num_layers=6,
        num_heads=8,
        feed_forward_proj="relu",
    ),
    "mt5": dict(
        vocab_size=250112,
        d_model=512,
        d_kv=64,
        d_ff=1024,
        num_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
    ),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture (Hugging Face field names) plus our numerics switches.

    ``tie_word_embeddings=True`` is original T5: the LM head is the shared embedding and the decoder
    output is scaled by ``d_model**-0.5`` before it. ``False`` (mT5, T5 v1.1) has a separate
    ``lm_head`` and no scaling. ``dtype`` is the compute dtype (parameters stay in ``param_dtype``);
    ``attention_impl`` is ``"auto"`` (``jax.nn.dot_product_attention`` picks), ``"cudnn"`` or
    ``"xla"`` (plain einsum). ``attention_dropout_rate=None`` means ``dropout_rate`` (as HF).
    ``lora`` wraps the dense layers its targets name with LoRA (``mtl_jax.models.lora``).
    ``vocab_pad_multiple``: the embedding and LM-head tables hold ``padded_vocab_size`` rows
    (``models.vocab_padding``; 1 = none); logits over the padded rows are masked.
    ``scan_layers`` runs each stack as one ``jax.lax.scan`` (one compiled layer body per stack)
    and ``remat`` (``none``/``full``/``save_dots``) recomputes each layer's activations in the
    backward pass; neither changes parameters or results (``mtl_jax.models.layer_stack``).
    """

    vocab_size: int = 250112
    vocab_pad_multiple: int = vocab_padding.DEFAULT_MULTIPLE
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_decoder_layers: int | None = None
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    attention_dropout_rate: float | None = None
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    model_type: str = "mt5"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    lora: LoRAConfig | None = None
    scan_layers: bool = False
    remat: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", LoRAConfig.coerce(self.lora))
        check_stack_options(self.scan_layers, self.remat, "T5Config")
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
        vocab_padding.check_multiple("T5Config", self.vocab_pad_multiple)
        if self.num_decoder_layers <= 0:
            raise ValueError(
                f"T5Config.num_decoder_layers must be positive, got {self.num_decoder_layers}"
            )
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be >= 4, got "
                f"{self.relative_attention_num_buckets}"
            )
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                "T5Config.relative_attention_max_distance must exceed relative_attention_num_buckets"
                f" // 2 (the log-spaced buckets divide by log(max_distance / exact buckets)); got "
                f"{self.relative_attention_max_distance} with {self.relative_attention_num_buckets} buckets"
            )
        self._parse_feed_forward()
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"T5Config.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.model_type not in _MODEL_TYPES:
            raise ValueError(
                f"T5Config.model_type must be one of {_MODEL_TYPES}, got {self.model_type!r}"
            )
        for name in ("dtype", "param_dtype"):
            try:
                as_dtype(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"T5Config.{name}: {e}") from None
        for name in ("dropout_rate", "attention_dropout_rate"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"T5Config.{name} must be in [0, 1), got {rate}")

    def _parse_feed_forward(self) -> tuple[bool, str]:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"T5Config.feed_forward_proj must be 'ACT' or 'gated-ACT', got {self.feed_forward_proj!r}"
            )
        gated = len(parts) == 2
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"T5Config.feed_forward_proj: unknown activation {act!r}; known: {sorted(_ACTIVATIONS)}"
            )
        return gated, act

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and LM-head parameters (``vocab_size`` rounded up)."""
        return vocab_padding.padded_size(self.vocab_size, self.vocab_pad_multiple)

    @property
    def is_gated(self) -> bool:
        return self._parse_feed_forward()[0]

    @property
    def activation(self) -> str:
        """Hugging Face's ``dense_act_fn`` name (``gated-gelu`` means tanh GELU, ``gelu_new``)."""
        return self._parse_feed_forward()[1]

    @property
    def attention_dropout(self) -> float:
        return (
            self.dropout_rate
            if self.attention_dropout_rate is None
            else self.attention_dropout_rate
        )

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides: Any) -> T5Config:
        """Build from a Hugging Face ``config.json`` dict (``t5`` or ``mt5``); ``overrides`` set
        our own fields (``dtype``, ``attention_impl``, ...) or replace HF ones.

        transformers 5 never rescales mT5's decoder output and records original T5's rescaling
        as ``scale_decoder_outputs`` (older files only as ``tie_word_embeddings``); that flag is
        what our ``tie_word_embeddings`` means.
        """
        model_type = hf.get("model_type", "t5")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"config.json model_type {model_type!r} is not a T5/mT5 model (expected one of {_MODEL_TYPES})"
            )
        defaults = _HF_DEFAULTS[model_type]

        def get(key: str, default: Any) -> Any:
            value = hf.get(key)
            return default if value is None else value

        if model_type == "mt5":
            tied = False
        else:
            tied = bool(get("scale_decoder_outputs", get("tie_word_embeddings", True)))
        eos = get("eos_token_id", 1)
        pad = int(get("pad_token_id", 0))
        kwargs: dict[str, Any] = dict(
            vocab_size=int(get("vocab_size", defaults["vocab_size"])),
            d_model=int(get("d_model", defaults["d_model"])),
            d_kv=int(get("d_kv", defaults["d_kv"])),
            d_ff=int(get("d_ff", defaults["d_ff"])),
            num_layers=int(get("num_layers", defaults["num_layers"])),
            num_decoder_layers=int(
                get("num_decoder_layers", get("num_layers", defaults["num_layers"]))
            ),
            num_heads=int(get("num_heads", defaults["num_heads"])),
            relative_attention_num_buckets=int(get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(get("relative_attention_max_distance", 128)),
            dropout_rate=float(get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(get("layer_norm_epsilon", 1e-6)),
            feed_forward_proj=str(get("feed_forward_proj", defaults["feed_forward_proj"])),
            tie_word_embeddings=tied,
            pad_token_id=pad,
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            decoder_start_token_id=int(get("decoder_start_token_id", pad)),
            model_type=model_type,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict that transformers loads into the same architecture."""
        if self.model_type == "mt5" and self.tie_word_embeddings:
            raise ValueError(
                "T5Config: a tied (rescaled) head cannot be exported as model_type 'mt5' because "
                "transformers' MT5 never rescales the decoder output; use model_type='t5'"
            )
        arch = (
            "MT5ForConditionalGeneration"
            if self.model_type == "mt5"
            else "T5ForConditionalGeneration"
        )
        out: dict[str, Any] = dict(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            initializer_factor=1.0,
            feed_forward_proj=self.feed_forward_proj,
            is_encoder_decoder=True,
            use_cache=True,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
        )
        if self.model_type == "t5":
            out["scale_decoder_outputs"] = self.tie_word_embeddings
        return out


# ------------------------------------------------------------------------------------------------
# Relative position bias
# ------------------------------------------------------------------------------------------------


def relative_position_bucket_table(
    num_buckets: int, max_distance: int, bidirectional: bool
) -> np.ndarray:
    """Bucket of each distance ``0..max_distance`` (within one direction's half when bidirectional).

    Computed once in NumPy float32 with the exact operation order of Mesh TensorFlow / Hugging
    Face, because the log-spaced boundaries fall on exact integers (e.g. distance 16 with 32
    buckets): XLA's ``log`` differs from PyTorch's by an ulp there and would flip buckets. Distances
    beyond ``max_distance`` all map to the last bucket, so the table is complete.
    """
    n = num_buckets // 2 if bidirectional else num_buckets
    max_exact = n // 2
    distance = np.arange(max_distance + 1)
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    scaled = (
        np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(n - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), n - 1)
    table = np.where(distance < max_exact, distance, large).astype(np.int32)
    if table[-1] != n - 1:  # pragma: no cover - guarded by T5Config's validation
        raise ValueError(
            f"relative position table does not saturate: {num_buckets=} {max_distance=}"
        )
    return table


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucket of ``key_position - query_position`` (int32), via the exact lookup table."""
    table = jnp.asarray(relative_position_bucket_table(num_buckets, max_distance, bidirectional))
    rp = relative_position.astype(jnp.int32)
    if bidirectional:
        offset = jnp.where(rp > 0, num_buckets // 2, 0)
        distance = jnp.abs(rp)
    else:
        offset = jnp.zeros_like(rp)
        distance = jnp.maximum(-rp, 0)
    return offset + table[jnp.minimum(distance, max_distance)]


class RelativePositionBias(nnx.Module):
    """Learned per-head bias for each relative-position bucket; ``[buckets, heads]`` like HF."""

    def __init__(self, config: T5Config, *, bidirectional: bool, rngs: Rngs) -> None:
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.embedding = param(
            rngs,
            nnx.initializers.normal(config.d_model**-0.5),
            (self.num_buckets, config.num_heads),
            ("relpos_buckets", "heads"),
            config.param_dtype,
        )

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """Positions ``[T]``/``[B, T]`` and ``[S]``/``[B, S]`` -> float32 bias ``[1|B, N, T, S]``."""
        q = jnp.atleast_2d(query_positions)
        k = jnp.atleast_2d(key_positions)
        buckets = relative_position_bucket(
            k[:, None, :] - q[:, :, None],
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        values = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)  # [B,T,S,N]
        return jnp.transpose(values, (0, 3, 1, 2))


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


def _normal(std: float) -> Callable[..., jax.Array]:
    return nnx.initializers.normal(std)


class T5Attention(nnx.Module):
    """Multi-head attention with ``[embed, heads, kv]`` projections (``d_kv`` independent of
    ``d_model / heads``), no logit scaling, relative bias and masks passed in by the stack."""

    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        d, n, h = config.d_model, config.num_heads, config.d_kv
        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        self.query = DenseGeneral(
            d,
            (n, h),
            axis_names=("embed", "heads", "kv"),
            kernel_init=_normal((d * h) ** -0.5),
            **kw,
        )
        self.key = self._kv_proj(d, n, h, kw)
        self.value = self._kv_proj(d, n, h, kw)
        self.out = DenseGeneral(
            (n, h),
            d,
            axis_names=("heads", "kv", "embed"),
            kernel_init=_normal((n * h) ** -0.5),
            **kw,
        )
        self.impl = config.attention_impl
        self.dropout_rate = config.attention_dropout

    @staticmethod
    def _kv_proj(d: int, n: int, h: int, kw: dict[str, Any]) -> DenseGeneral:
        return DenseGeneral(
            d, (n, h), axis_names=("embed", "heads", "kv"), kernel_init=_normal(d**-0.5), **kw
        )

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        *,
        bias: jax.Array | None,
        mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        probe: jax.Array | None = None,
    ) -> jax.Array:
        drop = dict(deterministic=deterministic, rngs=rngs)
        return self.attend(
            self.query(x, **drop),
            self.key(context, **drop),
            self.value(context, **drop),
            bias=bias,
            mask=mask,
            deterministic=deterministic,
            rngs=rngs,
            probe=probe,
        )

    def attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        *,
        bias: jax.Array | None,
        mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        probe: jax.Array | None = None,
    ) -> jax.Array:
        """Attention on already projected ``[B, T|S, N, H]`` tensors (the cached decode path).
        ``probe`` ``[B, T, N, H]`` is added to the heads' output before the out projection."""
        out = dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            scale=1.0,
            impl=self.impl,
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
            rngs=rngs,
        )
        return self.out(add_probe(out, probe, "attention"), deterministic=deterministic, rngs=rngs)


class T5MLP(nnx.Module):
    """``wo(act(wi_0 x) * wi_1 x)`` (gated, T5 v1.1/mT5) or ``wo(act(wi x))`` (original T5)."""

    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        d, f = config.d_model, config.d_ff
        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        self.gated = config.is_gated
        self.activation = config.activation
        self.dropout_rate = config.dropout_rate

        def wi() -> DenseGeneral:
            return DenseGeneral(
                d, f, axis_names=("embed", "mlp"), kernel_init=_normal(d**-0.5), **kw
            )

        if self.gated:
            self.wi_0 = wi()
            self.wi_1 = wi()
        else:
            self.wi = wi()
        self.wo = DenseGeneral(
            f, d, axis_names=("mlp", "embed"), kernel_init=_normal(f**-0.5), **kw
        )

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        drop = dict(deterministic=deterministic, rngs=rngs)
        if self.gated:
            h = act(self.wi_0(x, **drop)) * self.wi_1(x, **drop)
        else:
            h = act(self.wi(x, **drop))
        h = dropout(h, self.dropout_rate, **drop)
        return self.wo(h, **drop)


def _norm(config: T5Config, rngs: Rngs) -> RMSNorm:
    return RMSNorm(
        config.d_model,
        eps=config.layer_norm_epsilon,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


class T5EncoderLayer(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        self.attention_norm = _norm(config, rngs)
        self.attention = T5Attention(config, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = T5MLP(config, rngs=rngs)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self,
        x: jax.Array,
        *,
        bias: jax.Array,
        mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        probes: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """``probes`` (``"attention"``, ``"output"``): zero perturbations of the heads' output
        before its projection and of the block's output (``T5Model.probe_shapes``)."""
        probes = probes or {}
        drop = dict(deterministic=deterministic, rngs=rngs)
        h = self.attention_norm(x)
        a = self.attention(h, h, bias=bias, mask=mask, probe=probes.get("attention"), **drop)
        x = x + dropout(a, self.dropout_rate, **drop)
        h = self.mlp(self.mlp_norm(x), **drop)
        return add_probe(x + dropout(h, self.dropout_rate, **drop), probes.get("output"), "output")


class T5DecoderLayer(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        self.self_attention_norm = _norm(config, rngs)
        self.self_attention = T5Attention(config, rngs=rngs)
        self.cross_attention_norm = _norm(config, rngs)
        self.cross_attention = T5Attention(config, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = T5MLP(config, rngs=rngs)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        *,
        bias: jax.Array,
        self_mask: jax.Array | None,
        cross_mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        drop = dict(deterministic=deterministic, rngs=rngs)
        h = self.self_attention_norm(x)
        h = self.self_attention(h, h, bias=bias, mask=self_mask, **drop)
        x = x + dropout(h, self.dropout_rate, **drop)
        h = self.cross_attention(
            self.cross_attention_norm(x), encoded, bias=None, mask=cross_mask, **drop
        )
        x = x + dropout(h, self.dropout_rate, **drop)
        return x + dropout(self.mlp(self.mlp_norm(x), **drop), self.dropout_rate, **drop)

    def step(
        self,
        x: jax.Array,
        cache: dict[str, jax.Array],
        index: jax.Array,
        *,
        bias: jax.Array,
        self_mask: jax.Array,
        cross_mask: jax.Array | None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One decoding position ``x`` ``[B, 1, D]`` against the cache; writes this position's
        key/value at ``index`` and returns the updated cache."""
        h = self.self_attention_norm(x)
        attn = self.self_attention
        k = jax.lax.dynamic_update_slice_in_dim(
            cache["k"], attn.key(h).astype(cache["k"].dtype), index, axis=1
        )
        v = jax.lax.dynamic_update_slice_in_dim(
            cache["v"], attn.value(h).astype(cache["v"].dtype), index, axis=1
        )
        x = x + attn.attend(
            attn.query(h), k, v, bias=bias, mask=self_mask, deterministic=True, rngs=None
        )
        h = self.cross_attention_norm(x)
        cross = self.cross_attention
        x = x + cross.attend(
            cross.query(h),
            cache["cross_k"],
            cache["cross_v"],
            bias=None,
            mask=cross_mask,
            deterministic=True,
            rngs=None,
        )
        x = x + self.mlp(self.mlp_norm(x), deterministic=True, rngs=None)
        return x, {**cache, "k": k, "v": v}


class _T5Stack(nnx.Module):
    """What the encoder and decoder stacks share: one relative position bias computed per call
    and given to every layer, dropout on the embeddings, and a final norm plus dropout."""

    def __init__(
        self,
        config: T5Config,
        layer: Callable[..., nnx.Module],
        num_layers: int,
        *,
        bidirectional: bool,
        rngs: Rngs,
    ) -> None:
        self.relpos = RelativePositionBias(config, bidirectional=bidirectional, rngs=rngs)
        self.layers = nnx.List([layer(config, rngs=rngs) for _ in range(num_layers)])
        self.final_norm = _norm(config, rngs)
        self.dropout_rate = config.dropout_rate
        self.scan_layers = config.scan_layers
        self.remat = config.remat

    def _run(
        self,
        x: jax.Array,
        *layer_args: jax.Array,
        positions: jax.Array,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        probes: dict[str, jax.Array] | None = None,
        **layer_kwargs: jax.Array | None,
    ) -> jax.Array:
        """``probes`` ``layers/{i}/{point}`` go to layer i as ``{point: array}``."""
        drop = dict(deterministic=deterministic, rngs=rngs)
        bias = self.relpos(positions, positions)
        x = dropout(x, self.dropout_rate, **drop)
        per_layer = []
        for i in range(len(self.layers)):
            prefix = f"layers/{i}/"
            per_layer.append(
                {k[len(prefix):]: v for k, v in (probes or {}).items() if k.startswith(prefix)}
            )
        x = run_layers(
            self.layers, x, *layer_args, bias=bias, **layer_kwargs, probes=per_layer,
            scan=self.scan_layers, remat=self.remat, where="T5Config", **drop,
        )
        return dropout(self.final_norm(x), self.dropout_rate, **drop)


class T5Encoder(_T5Stack):
    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        super().__init__(config, T5EncoderLayer, config.num_layers, bidirectional=True, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        probes: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        return self._run(x, positions=positions, mask=mask, deterministic=deterministic, rngs=rngs,
                         probes=probes)


class T5Decoder(_T5Stack):
    def __init__(self, config: T5Config, *, rngs: Rngs) -> None:
        super().__init__(
            config, T5DecoderLayer, config.num_decoder_layers, bidirectional=False, rngs=rngs
        )

    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        *,
        positions: jax.Array,
        self_mask: jax.Array,
        cross_mask: jax.Array | None,
        deterministic: bool,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        return self._run(
            x,
            encoded,
            positions=positions,
            self_mask=self_mask,
            cross_mask=cross_mask,
            deterministic=deterministic,
            rngs=rngs,
        )


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

DecodeCache = tuple[dict[str, jax.Array], ...]


class T5Model(nnx.Module):
    """Encoder-decoder with LM head. ``__call__`` returns float32 logits ``[B, Lt, vocab]``
    (``vocab`` = ``config.padded_vocab_size``; columns from ``config.vocab_size`` on are masked)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs) -> None:
        self.config = config
        rngs = ParamKeys(rngs)
        with eager_sharding_if_mesh():
            vocab, padded = config.vocab_size, config.padded_vocab_size
            self.shared = Embed(
                padded,
                config.d_model,
                init=vocab_padding.padded_init(_normal(1.0), vocab, axis=0),
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
            )
            self.encoder = T5Encoder(config, rngs=rngs)
            self.decoder = T5Decoder(config, rngs=rngs)
            if config.tie_word_embeddings:
                self.lm_head = None
            else:
                self.lm_head = DenseGeneral(
                    config.d_model,
                    padded,
                    axis_names=("embed", "vocab"),
                    kernel_init=vocab_padding.padded_init(_normal(config.d_model**-0.5), vocab, 1),
                    dtype=config.dtype,
                    param_dtype=config.param_dtype,
                    rngs=rngs,
                )
            apply_lora(self, config.lora, rngs)  # last: base weights do not depend on LoRA

    # -- masks ------------------------------------------------------------------------------------

    def _encoder_valid(self, encoder_input_tokens: jax.Array) -> jax.Array:
        return encoder_input_tokens != self.config.pad_token_id

    @staticmethod
    def _positions(tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
        return jnp.arange(tokens.shape[1])[None, :] if positions is None else positions

    def probe_shapes(self, batch: int, length: int) -> dict[str, tuple[int, ...]]:
        """Every probe point of the encoder and its shape (``length``: encoder tokens): per
        layer the heads' output before the out projection (``encoder/layers/{i}/attention``,
        ``[batch, length, heads, d_kv]``) and the block output (``encoder/layers/{i}/output``,
        ``[batch, length, d_model]``, before the final norm)."""
        c = self.config
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(c.num_layers):
            shapes[f"encoder/layers/{i}/attention"] = (batch, length, c.num_heads, c.d_kv)
            shapes[f"encoder/layers/{i}/output"] = (batch, length, c.d_model)
        return shapes

    # -- forward ----------------------------------------------------------------------------------

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        embedding_noise: jax.Array | None = None,
        probes: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Encoder output ``[B, S, D]`` in the compute dtype. Padding = token 0; when packed,
        attention stays within each segment. ``embedding_noise`` ``[B, S, D]`` is added to the
        encoder's token-embedding lookup before dropout (R3F, SMART). ``probes`` maps names of
        ``probe_shapes`` to zero arrays added there (task embeddings differentiate with respect
        to them)."""
        if probes:
            check_probe_names(probes, tuple(self.probe_shapes(1, 1)), "T5Model")
        enc_probes = {k[len("encoder/"):]: v for k, v in (probes or {}).items()}
        _check_tokens("encoder_input_tokens", encoder_input_tokens)
        mask = combine_masks(
            padding_mask(self._encoder_valid(encoder_input_tokens)),
            None
            if encoder_segment_ids is None
            else segment_mask(encoder_segment_ids, encoder_segment_ids),
        )
        return self.encoder(
            add_embedding_noise(self.shared(encoder_input_tokens), embedding_noise),
            positions=self._positions(encoder_input_tokens, encoder_positions),
            mask=mask,
            deterministic=deterministic,
            rngs=rngs,
            probes=enc_probes,
        )

    def decode(
        self,
        encoded: jax.Array,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Float32 logits ``[B, Lt, vocab]`` for teacher-forced ``decoder_input_tokens``.

        Decoder self-attention is causal (plus same-segment when packed); as in Hugging Face and
        T5X the decoder input's own zeros are not masked (position 0 is the pad start token).
        """
        _check_tokens("decoder_input_tokens", decoder_input_tokens)
        idx = jnp.arange(decoder_input_tokens.shape[1])
        packed = decoder_segment_ids is not None
        if packed and encoder_segment_ids is None:
            raise ValueError(
                "decoder_segment_ids given without encoder_segment_ids (packed batches need both)"
            )
        self_mask = combine_masks(
            causal_mask(idx, idx),
            segment_mask(decoder_segment_ids, decoder_segment_ids) if packed else None,
        )
        cross_mask = combine_masks(
            padding_mask(self._encoder_valid(encoder_input_tokens)),
            segment_mask(decoder_segment_ids, encoder_segment_ids) if packed else None,
        )
        hidden = self.decoder(
            self.shared(decoder_input_tokens),
            encoded,
            positions=self._positions(decoder_input_tokens, decoder_positions),
            self_mask=self_mask,
            cross_mask=cross_mask,
            deterministic=deterministic,
            rngs=rngs,
        )
        return self.logits(hidden)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head on decoder output: tied (rescaled by d_model**-0.5) or separate; float32
        ``[..., padded_vocab_size]`` with the padded rows masked (``losses.masked_logits``)."""
        c = self.config
        if c.tie_word_embeddings:
            hidden = hidden * jnp.asarray(c.d_model**-0.5, hidden.dtype)
            out = self.shared.attend(hidden)
        else:
            out = self.lm_head(hidden)
        out = out.astype(jnp.float32)
        return masked_logits(out, c.vocab_size) if c.padded_vocab_size > c.vocab_size else out

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        embedding_noise: jax.Array | None = None,
        probes: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            deterministic=deterministic,
            rngs=rngs,
            embedding_noise=embedding_noise,
            probes=probes,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            deterministic=deterministic,
            rngs=rngs,
        )

    # -- incremental decoding ----------------------------------------------------------------------

    def init_cache(self, encoded: jax.Array, max_decode_len: int) -> DecodeCache:
        """Per decoder layer: empty self-attention keys/values ``[B, max_decode_len, N, H]`` and the
        cross-attention keys/values of ``encoded``, projected once."""
        b = encoded.shape[0]
        c = self.config
        dtype = as_dtype(c.dtype)
        empty = jnp.zeros((b, max_decode_len, c.num_heads, c.d_kv), dtype)
        return tuple(
            {
                "k": empty,
                "v": empty,
                "cross_k": layer.cross_attention.key(encoded),
                "cross_v": layer.cross_attention.value(encoded),
            }
            for layer in self.decoder.layers
        )

    def decode_step(
        self,
        cache: DecodeCache,
        tokens: jax.Array,
        index: jax.Array,
        encoder_input_tokens: jax.Array,
    ) -> tuple[jax.Array, DecodeCache]:
        """Logits ``[B, vocab]`` (float32) for decoder position ``index`` given its input token
        ``[B]``, attending to the cached positions ``<= index``; returns the updated cache."""
        max_len = cache[0]["k"].shape[1]
        keys = jnp.arange(max_len)
        query = jnp.reshape(index, (1,)).astype(jnp.int32)
        bias = self.decoder.relpos(query, keys)  # [1, N, 1, L]
        self_mask = (keys <= index)[None, None, None, :]
        cross_mask = padding_mask(self._encoder_valid(encoder_input_tokens))
        x = self.shared(tokens[:, None])
        new_cache = []
        for layer, layer_cache in zip(self.decoder.layers, cache, strict=True):
            x, layer_cache = layer.step(
                x, layer_cache, index, bias=bias, self_mask=self_mask, cross_mask=cross_mask
            )
            new_cache.append(layer_cache)
        return self.logits(self.decoder.final_norm(x))[:, 0], tuple(new_cache)


def _check_tokens(name: str, tokens: jax.Array) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got {tokens.dtype}")
