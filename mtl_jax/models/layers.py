"""Building blocks shared by the Flax NNX models: annotated parameters, dense/embedding layers,
RMS/standard layer norms, dropout with call-time keys, attention masks and the attention core.

Every parameter is created through :func:`param`, which attaches *logical* axis names (``embed``,
``vocab``, ``mlp``, ``heads``, ``kv``, ...) as Flax sharding metadata. The mapping to mesh axes lives
in ``mtl_jax.training.partitioning``; no mesh axis name appears here. Parameters are stored in
``param_dtype`` (float32) and cast to the compute ``dtype`` (e.g. bfloat16) at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = Any
Initializer = Callable[..., jax.Array]
AxisNames = tuple[str | None, ...]
AttentionImpl = Literal["auto", "cudnn", "xla"]
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "cudnn", "xla")

_LECUN_NORMAL = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()
_UNIT_NORMAL = nnx.initializers.normal(1.0)

# Same constant as jax.nn.dot_product_attention's XLA path, so both attention paths mask alike
# (a fully masked row becomes a uniform distribution instead of NaN, as in Hugging Face).
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def as_dtype(dtype: str | Dtype) -> jnp.dtype:
    """``"bfloat16"``/``jnp.bfloat16``/``np.float32`` -> a NumPy dtype (gin binds strings)."""
    try:
        return jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'") from e


def eager_sharding_if_mesh() -> Any:
    """Context for model construction: shard parameters at creation only inside ``jax.set_mesh``.

    Flax 0.12 shards annotated variables eagerly and fails without a mesh; switching that off
    outside a mesh keeps plain ``Model(config, rngs=...)`` and ``nnx.eval_shape`` working on one
    device while the logical names stay attached as metadata for the partitioner.
    """
    return nnx.use_eager_sharding(not jax.sharding.get_abstract_mesh().empty)


class ParamKeys:
    """Parameter keys ``fold_in(base, 0), fold_in(base, 1), ...`` with a Python counter.

    Drawing each key from ``nnx.Rngs`` updates its traced counter variable, and under
    ``nnx.eval_shape``/``jit`` Flax 0.12 inspects that tracer's sharding, which walks the whole
    jaxpr so far: model construction becomes quadratic in the number of parameters (~20 s for
    mT5-Large). Models draw one key from ``rngs`` and hand this to their layers instead.
    """

    def __init__(self, rngs: nnx.Rngs | jax.Array) -> None:
        self.base = rngs.params() if isinstance(rngs, nnx.Rngs) else rngs
        self.count = 0

    def __call__(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.base, self.count - 1)


Rngs = nnx.Rngs | ParamKeys


def param(
    rngs: Rngs,
    init: Initializer,
    shape: Sequence[int],
    axis_names: AxisNames,
    param_dtype: Dtype = jnp.float32,
) -> nnx.Param:
    """An ``nnx.Param`` initialised by ``init`` that carries its logical ``axis_names``."""
    if len(axis_names) != len(shape):
        raise ValueError(f"axis names {axis_names} do not match parameter shape {tuple(shape)}")
    key = rngs() if isinstance(rngs, ParamKeys) else rngs.params()
    annotated = nnx.with_partitioning(init, axis_names)
    return nnx.Param(annotated(key, tuple(shape), as_dtype(param_dtype)))


def count_params(module: nnx.Module) -> int:
    """Number of parameter scalars; works on abstract modules from ``nnx.eval_shape``."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return int(sum(math.prod(x.shape) for x in leaves))


def _normalize_features(features: int | Sequence[int]) -> tuple[int, ...]:
    return (features,) if isinstance(features, int) else tuple(features)


class DenseGeneral(nnx.Module):
    """``x @ kernel (+ bias)`` contracting the trailing ``in_features`` axes of ``x``.

    Multi-axis shapes let attention keep heads as their own (shardable) dimension: a query
    projection is ``embed -> (heads, kv)`` and the output projection ``(heads, kv) -> embed``.
    ``deterministic``/``rngs`` are accepted and unused here, so a LoRA-wrapped layer
    (``mtl_jax.models.lora``) can take the place of any dense layer and draw its dropout keys.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis_names: AxisNames,
        use_bias: bool = False,
        kernel_init: Initializer = _LECUN_NORMAL,
        bias_init: Initializer = _ZEROS,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: Rngs,
    ) -> None:
        self.in_features = _normalize_features(in_features)
        self.out_features = _normalize_features(out_features)
        self.dtype = as_dtype(dtype)
        self.axis_names = tuple(axis_names)
        shape = self.in_features + self.out_features
        self.kernel = param(rngs, kernel_init, shape, axis_names, param_dtype)
        if use_bias:
            bias_names = axis_names[len(self.in_features) :]
            self.bias = param(rngs, bias_init, self.out_features, bias_names, param_dtype)
        else:
            self.bias = None

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        del deterministic, rngs
        n_in = len(self.in_features)
        if x.shape[x.ndim - n_in :] != self.in_features:
            raise ValueError(
                f"DenseGeneral expects trailing dims {self.in_features}, got input {x.shape}"
            )
        kernel = self.kernel[...].astype(self.dtype)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding ``[vocab, embed]``; ``attend`` reuses it as a tied output projection."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axis_names: AxisNames = ("vocab", "embed"),
        init: Initializer = _UNIT_NORMAL,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: Rngs,
    ) -> None:
        self.num_embeddings = num_embeddings
        self.dtype = as_dtype(dtype)
        self.embedding = param(rngs, init, (num_embeddings, features), axis_names, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got {ids.dtype}")
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x @ embedding.T``: logits over the vocabulary with the embedding as output layer."""
        return jnp.einsum(
            "...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype)
        )


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm (T5): no mean subtraction, no bias; statistics in float32."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-6,
        axis_name: str = "embed",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: Rngs,
    ) -> None:
        self.eps = eps
        self.dtype = as_dtype(dtype)
        self.scale = param(
            rngs, nnx.initializers.ones_init(), (features,), (axis_name,), param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return y * self.scale[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """Standard layer norm with scale and bias (BERT/RoBERTa); statistics in float32."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        axis_name: str = "embed",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: Rngs,
    ) -> None:
        self.eps = eps
        self.dtype = as_dtype(dtype)
        self.scale = param(
            rngs, nnx.initializers.ones_init(), (features,), (axis_name,), param_dtype
        )
        self.bias = param(
            rngs, nnx.initializers.zeros_init(), (features,), (axis_name,), param_dtype
        )

    def __call__(self, x: jax.Array, scale: jax.Array | None = None) -> jax.Array:
        """``scale`` (broadcasting to ``x``) replaces the learned one: CA-MTL's conditional gain."""
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        scale = self.scale[...] if scale is None else scale
        return y * scale.astype(self.dtype) + self.bias[...].astype(self.dtype)


def dropout(
    x: jax.Array,
    rate: float,
    *,
    deterministic: bool,
    rngs: nnx.Rngs | None,
    stream: str = "dropout",
) -> jax.Array:
    """Inverted dropout whose key comes from ``rngs`` at call time (no key stored in the model),
    so a trainer can derive keys from (seed, step) and resume bit-exactly."""
    if deterministic or rate == 0.0:
        return x
    if rngs is None:
        raise ValueError("dropout is active (deterministic=False) but no rngs were passed")
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(rngs[stream](), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


# ------------------------------------------------------------------------------------------------
# Masks: boolean, broadcastable to [batch, heads, query, key]; True = may attend.
# ------------------------------------------------------------------------------------------------


def add_embedding_noise(embedded: jax.Array, noise: jax.Array | None) -> jax.Array:
    """The embedding lookup plus a perturbation (R3F, SMART), added in float32: a noise of 1e-5
    would vanish if added in bfloat16 to values near 1. None leaves the lookup untouched."""
    if noise is None:
        return embedded
    if noise.shape != embedded.shape:
        raise ValueError(f"embedding noise has shape {noise.shape}, the embeddings {embedded.shape}")
    return (embedded.astype(jnp.float32) + noise.astype(jnp.float32)).astype(embedded.dtype)


def add_probe(x: jax.Array, probe: jax.Array | None, name: str = "probe") -> jax.Array:
    """``x`` plus a zero-valued perturbation input: the gradient of a loss with respect to
    ``probe`` at zero is its gradient with respect to this activation (task embeddings read the
    Fisher information of component outputs this way). None leaves ``x`` untouched."""
    if probe is None:
        return x
    if probe.shape != x.shape:
        raise ValueError(f"probe {name!r} has shape {probe.shape}, the activation {x.shape}")
    return x + probe.astype(x.dtype)


def check_probe_names(probes: Any, known: Sequence[str], where: str) -> None:
    """A probe name the model has no point for is an error listing the points it has."""
    unknown = sorted(set(probes or ()) - set(known))
    if unknown:
        raise ValueError(f"{where} has no probe point(s) {unknown}; it has {list(known)}")


def padding_mask(key_valid: jax.Array) -> jax.Array:
    """``[B, S]`` validity of keys -> ``[B, 1, 1, S]``."""
    return key_valid.astype(bool)[:, None, None, :]


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """Packed sequences: attend only within the same segment. ``[B, T]``, ``[B, S]`` ->
    ``[B, 1, T, S]``."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Key index <= query index. ``[T]``/``[B, T]`` and ``[S]``/``[B, S]`` index arrays ->
    ``[1 or B, 1, T, S]``."""
    q = jnp.atleast_2d(query_positions)
    k = jnp.atleast_2d(key_positions)
    return k[:, None, None, :] <= q[:, None, :, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the given masks (``None`` entries ignored); ``None`` if all are ``None``."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


# ------------------------------------------------------------------------------------------------
# Attention core
# ------------------------------------------------------------------------------------------------


def _einsum_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    scale: float,
    dropout_rate: float,
    deterministic: bool,
    rngs: nnx.Rngs | None,
) -> jax.Array:
    """Plain XLA attention: float32 logits and softmax, then probabilities in the value dtype."""
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
    if scale != 1.0:
        logits = logits * jnp.float32(scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.float32(_MASK_VALUE))
    probs = jax.nn.softmax(logits, axis=-1)
    probs = dropout(probs, dropout_rate, deterministic=deterministic, rngs=rngs)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
    impl: AttentionImpl = "auto",
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
) -> jax.Array:
    """Multi-head attention ``softmax(scale * q k^T + bias, masked) v`` on ``[B, T|S, N, H]``.

    ``impl``: ``"auto"`` calls ``jax.nn.dot_product_attention`` and lets JAX pick the kernel;
    ``"cudnn"`` forces the fused cuDNN kernel (GPU, bf16/fp16 only); ``"xla"`` is the plain einsum
    path. ``bias`` and ``mask`` broadcast to ``[B, N, T, S]``; ``scale=None`` means 1/sqrt(H)
    (T5 passes 1.0). Dropout on the attention probabilities is only expressible on the einsum
    path, so active attention dropout uses it whatever ``impl`` says.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    use_dropout = not deterministic and dropout_rate > 0.0
    if impl == "xla" or use_dropout:
        return _einsum_attention(
            query, key, value, bias, mask, scale, dropout_rate, deterministic, rngs
        )
    if bias is not None:
        # cuDNN requires the bias in the input dtype; XLA adds it to float32 logits either way.
        bias = bias.astype(query.dtype if impl == "cudnn" else jnp.float32)
        bias = jnp.reshape(bias, (1,) * (4 - bias.ndim) + bias.shape)
    if mask is not None:
        mask = jnp.reshape(mask, (1,) * (4 - mask.ndim) + mask.shape)
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=bias,
        mask=mask,
        scale=scale,
        implementation="cudnn" if impl == "cudnn" else None,
    )
