"""XLM-R (RoBERTa architecture) encoder and the multi-task model with one head per task.

The same modules cover BERT/mBERT-style checkpoints through config switches only (absolute
positions from 0, type vocabulary, layer-norm epsilon, activation), so one code path is tested
against transformers and shared by every encoder-classifier run.

Parameters are float32 and carry logical axis names (``LOGICAL_AXES``); activations run in
``XLMRConfig.dtype``. Outside a mesh the names are kept as metadata only, so the model also builds
on one device without any sharding context; inside ``jax.set_mesh`` + ``nnx.logical_axis_rules``
Flax shards every parameter eagerly at creation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_jax.models import ca_mtl, vocab_padding
from mtl_jax.models.ca_mtl import CAMTLConfig
from mtl_jax.models.heads import TaskHeads, siamese_score
from mtl_jax.models.layer_stack import check_stack_options, run_layers
from mtl_jax.models.layers import (
    ATTENTION_IMPLS,
    DenseGeneral,
    Embed,
    LayerNorm,
    add_embedding_noise,
    add_probe,
    as_dtype,
    check_probe_names,
    dot_product_attention,
    dropout,
    eager_sharding_if_mesh,
    padding_mask,
)
from mtl_jax.models.lora import LoRAConfig, apply_lora

# Every logical axis name a parameter of this file or of heads.py carries; a rules table must map
# each of them (to a mesh axis or None), because Flax passes unknown names through as mesh axes.
LOGICAL_AXES = (
    "vocab",
    "embed",
    "mlp",
    "heads",
    "kv",
    "position_embeddings",
    "token_types",
    "tasks",
    "classes",
    ca_mtl.AXIS,
)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf), as HF's "gelu"
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
POSITION_STYLES = ("roberta", "absolute")

# transformers' defaults for fields a config.json may omit (its class defaults, not ours).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "xlm-roberta": dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, classifier_dropout=None,
    ),
    "bert": dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, bos_token_id=None,
        eos_token_id=None, classifier_dropout=None,
    ),
}
_HF_DEFAULTS["roberta"] = {**_HF_DEFAULTS["xlm-roberta"], "bos_token_id": 0}
_HF_ARCH_FIELDS = tuple(_HF_DEFAULTS["xlm-roberta"])


@dataclasses.dataclass(frozen=True)
class XLMRConfig:
    """Architecture, per-task head sizes and compute policy of an XLM-R/BERT encoder classifier.

    Defaults are the published ``xlm-roberta-base``. ``task_num_labels[k]`` is the label count of
    task k's head (1 = regression, HF's convention). ``positions="roberta"`` numbers real tokens
    from ``pad_token_id + 1`` (fairseq/RoBERTa); ``"absolute"`` numbers every slot from 0 (BERT).
    ``lora`` wraps the dense layers its targets name with LoRA (``mtl_jax.models.lora``).
    ``ca_mtl`` adds CA-MTL's task-conditioned modules (``mtl_jax.models.ca_mtl``).
    ``vocab_pad_multiple``: the word embeddings hold ``padded_vocab_size`` rows, so they shard
    (``models.vocab_padding``; 1 = none). ``task_siamese[k]``: task k is a siamese similarity
    head (``XLMRMultiTask``; 1 label, needs the pooler); empty = none.
    """

    vocab_size: int = 250002
    vocab_pad_multiple: int = vocab_padding.DEFAULT_MULTIPLE
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    positions: str = "roberta"
    model_type: str = "xlm-roberta"
    add_pooling_layer: bool = True
    task_num_labels: tuple[int, ...] = ()
    task_siamese: tuple[bool, ...] = ()
    # R4F: spectrally normalise each task head's out projection (heads.TaskHeads).
    head_spectral_norm: bool = False
    dtype: str = "float32"
    # "auto": jax.nn.dot_product_attention picks the kernel; "cudnn": fused GPU kernel; "xla": einsum.
    attention_impl: str = "auto"
    lora: LoRAConfig | None = None
    ca_mtl: CAMTLConfig | None = None
    # One jax.lax.scan over the layers; per-layer rematerialisation (models/layer_stack.py).
    scan_layers: bool = False
    remat: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_num_labels", tuple(int(n) for n in self.task_num_labels))
        object.__setattr__(self, "task_siamese", tuple(bool(s) for s in self.task_siamese))
        self._check_siamese()
        object.__setattr__(self, "lora", LoRAConfig.coerce(self.lora))
        vocab_padding.check_multiple("XLMRConfig", self.vocab_pad_multiple)
        check_stack_options(self.scan_layers, self.remat, "XLMRConfig")
        object.__setattr__(self, "ca_mtl", CAMTLConfig.coerce(self.ca_mtl))
        if self.ca_mtl is not None:
            self.ca_mtl.check(self.hidden_size, self.num_hidden_layers, self.scan_layers)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"XLMRConfig.hidden_size={self.hidden_size} is not a multiple of "
                f"XLMRConfig.num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"XLMRConfig.hidden_act={self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.positions not in POSITION_STYLES:
            raise ValueError(f"XLMRConfig.positions={self.positions!r}: expected one of {POSITION_STYLES}")
        if self.positions == "roberta" and self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(
                f"XLMRConfig.max_position_embeddings={self.max_position_embeddings} leaves no room "
                f"after the RoBERTa offset pad_token_id + 1 = {self.pad_token_id + 1}"
            )
        if any(n < 1 for n in self.task_num_labels):
            raise ValueError(f"XLMRConfig.task_num_labels={self.task_num_labels}: every task needs >= 1 label")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"XLMRConfig.attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        as_dtype(self.dtype)  # raises on an unknown dtype name

    def _check_siamese(self) -> None:
        if not any(self.task_siamese):
            return
        if len(self.task_siamese) != len(self.task_num_labels):
            raise ValueError(f"XLMRConfig.task_siamese has {len(self.task_siamese)} entries for "
                             f"{len(self.task_num_labels)} tasks (task_num_labels)")
        wrong = [k for k, s in enumerate(self.task_siamese) if s and self.task_num_labels[k] != 1]
        if wrong:
            raise ValueError(f"XLMRConfig.task_siamese: tasks {wrong} have more than one label; a "
                             "siamese head predicts one similarity score (a regression task)")
        if not self.add_pooling_layer:
            raise ValueError("XLMRConfig.task_siamese needs add_pooling_layer=True: a siamese head "
                             "compares the two texts' pooled vectors")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word-embedding parameter (``vocab_size`` rounded up)."""
        return vocab_padding.padded_size(self.vocab_size, self.vocab_pad_multiple)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return as_dtype(self.dtype)

    @property
    def classifier_dropout_rate(self) -> float:
        """HF falls back to the hidden dropout when ``classifier_dropout`` is unset."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    @property
    def max_position_length(self) -> int:
        """Longest input the position table supports."""
        if self.positions == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **overrides: Any) -> XLMRConfig:
        """Our config from an HF ``config.json`` dict (XLM-R, RoBERTa or BERT ``model_type``).

        ``overrides`` sets our own fields (``task_num_labels``, ``dtype``, ...) or replaces HF ones.
        """
        model_type = hf_config.get("model_type", "xlm-roberta")
        if model_type not in _HF_DEFAULTS:
            raise ValueError(f"model_type {model_type!r} is not an XLM-R/RoBERTa/BERT encoder")
        if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
            raise ValueError("decoder/cross-attention configs (is_decoder=True) are not supported")
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type={position_type!r} is not supported (only 'absolute')")
        values = {k: hf_config.get(k, v) for k, v in _HF_DEFAULTS[model_type].items()}
        if isinstance(values["eos_token_id"], list):
            values["eos_token_id"] = values["eos_token_id"][0] if values["eos_token_id"] else None
        values["positions"] = "absolute" if model_type == "bert" else "roberta"
        values["model_type"] = "bert" if model_type == "bert" else "xlm-roberta"
        values.update(overrides)
        return cls(**values)

    def to_hf(self, num_labels: int | None = None, id2label: Sequence[str] | None = None) -> dict[str, Any]:
        """An HF ``config.json`` dict: an encoder (``num_labels=None``) or a sequence classifier."""
        expected = "absolute" if self.model_type == "bert" else "roberta"
        if self.positions != expected:
            raise ValueError(
                f"positions={self.positions!r} has no HF {self.model_type!r} equivalent (needs {expected!r})"
            )
        prefix = "Bert" if self.model_type == "bert" else "XLMRoberta"
        out: dict[str, Any] = {f: getattr(self, f) for f in _HF_ARCH_FIELDS}
        out["model_type"] = self.model_type
        out["architectures"] = [f"{prefix}Model"]
        if num_labels is not None:
            names = list(id2label) if id2label is not None else [f"LABEL_{i}" for i in range(num_labels)]
            if len(names) != num_labels:
                raise ValueError(f"id2label has {len(names)} names for {num_labels} labels")
            out["architectures"] = [f"{prefix}ForSequenceClassification"]
            out["id2label"] = {str(i): n for i, n in enumerate(names)}
            out["label2id"] = {n: i for i, n in enumerate(names)}
            out["problem_type"] = "regression" if num_labels == 1 else "single_label_classification"
        return out


def _normal(stddev: float, zero_row: int | None = None) -> Callable[..., jax.Array]:
    """HF's init: N(0, initializer_range), optionally with a zeroed padding row (nn.Embedding)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        x = stddev * jax.random.normal(key, shape, dtype)
        return x if zero_row is None or not 0 <= zero_row < shape[0] else x.at[zero_row].set(0)

    return init


def _dense(config: XLMRConfig, in_f, out_f, axis_names, rngs: nnx.Rngs) -> DenseGeneral:
    return DenseGeneral(
        in_f, out_f, axis_names=axis_names, use_bias=True, kernel_init=_normal(config.initializer_range),
        dtype=config.compute_dtype, rngs=rngs,
    )


def _layer_norm(config: XLMRConfig, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=config.compute_dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """Bidirectional multi-head self-attention with biases, scaled by 1/sqrt(head_dim)."""

    def __init__(self, config: XLMRConfig, *, rngs: nnx.Rngs):
        h, n, d = config.hidden_size, config.num_attention_heads, config.head_dim
        self.query = _dense(config, h, (n, d), ("embed", "heads", "kv"), rngs)
        self.key = _dense(config, h, (n, d), ("embed", "heads", "kv"), rngs)
        self.value = _dense(config, h, (n, d), ("embed", "heads", "kv"), rngs)
        self.out = _dense(config, (n, d), h, ("heads", "kv", "embed"), rngs)
        self.dropout_rate = config.attention_probs_dropout_prob
        self.impl = config.attention_impl
        self.ca_attention: ca_mtl.ConditionalAttentionBias | None = None  # set by ca_mtl.attach

    def __call__(
        self, x: jax.Array, mask: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None,
        probe: jax.Array | None = None, task_embedding: jax.Array | None = None,
    ) -> jax.Array:
        """``mask`` ``[batch, 1, 1, length]``: padded keys get no weight (queries are all kept).
        ``probe`` ``[batch, length, heads, head_dim]`` is added to the heads' output before the
        out projection (``layers.add_probe``). ``task_embedding`` ``[batch, dim]``: CA-MTL's z."""
        drop = dict(deterministic=deterministic, rngs=rngs)
        bias = None if self.ca_attention is None else self.ca_attention(task_embedding, x.shape[1])
        ctx = dot_product_attention(
            self.query(x, **drop), self.key(x, **drop), self.value(x, **drop), bias=bias, mask=mask,
            impl=self.impl, dropout_rate=self.dropout_rate, **drop,
        )
        return self.out(add_probe(ctx, probe, "attention"), **drop)


class XLMRLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: XLMRConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.attention_norm = _layer_norm(config, rngs)
        self.intermediate = _dense(config, config.hidden_size, config.intermediate_size, ("embed", "mlp"), rngs)
        self.output = _dense(config, config.intermediate_size, config.hidden_size, ("mlp", "embed"), rngs)
        self.output_norm = _layer_norm(config, rngs)
        self.activation = config.hidden_act
        self.dropout_rate = config.hidden_dropout_prob
        # CA-MTL (conditional layer norm gains, adapter): set by ca_mtl.attach.
        self.ca_attention_norm: ca_mtl.FiLM | None = None
        self.ca_output_norm: ca_mtl.FiLM | None = None
        self.ca_adapter: ca_mtl.ConditionalAdapter | None = None

    def __call__(
        self, x: jax.Array, mask: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None,
        probes: Mapping[str, jax.Array] | None = None, task_embedding: jax.Array | None = None,
    ) -> jax.Array:
        """``probes`` (``"attention"``, ``"output"``): zero perturbations of the heads' output
        before its projection and of the block's output (``XLMRMultiTask.probe_shapes``).
        ``task_embedding`` ``[batch, dim]``: CA-MTL's z (used only by its modules)."""
        probes = probes or {}
        z = task_embedding
        a = self.attention(x, mask, deterministic=deterministic, rngs=rngs,
                           probe=probes.get("attention"), task_embedding=z)
        gain = ca_mtl.conditional_gain(self.ca_attention_norm, self.attention_norm.scale[...], z)
        x = self.attention_norm(dropout(a, self.dropout_rate, deterministic=deterministic, rngs=rngs) + x, gain)
        drop = dict(deterministic=deterministic, rngs=rngs)
        h = self.output(ACTIVATIONS[self.activation](self.intermediate(x, **drop)), **drop)
        if self.ca_adapter is not None:
            h = h + self.ca_adapter(h, z)
        gain = ca_mtl.conditional_gain(self.ca_output_norm, self.output_norm.scale[...], z)
        out = self.output_norm(dropout(h, self.dropout_rate, deterministic=deterministic, rngs=rngs) + x, gain)
        return add_probe(out, probes.get("output"), "output")


class XLMREmbeddings(nnx.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, config: XLMRConfig, *, rngs: nnx.Rngs):
        h, std = config.hidden_size, config.initializer_range
        pad_position = config.pad_token_id if config.positions == "roberta" else None
        # Tables are summed in float32 (as HF does), then LayerNorm emits the compute dtype.
        self.word_embeddings = Embed(
            config.padded_vocab_size, h, axis_names=("vocab", "embed"),
            init=vocab_padding.padded_init(_normal(std, config.pad_token_id), config.vocab_size, 0),
            rngs=rngs,
        )
        self.position_embeddings = Embed(
            config.max_position_embeddings, h, axis_names=("position_embeddings", "embed"),
            init=_normal(std, pad_position), rngs=rngs,
        )
        self.token_type_embeddings = Embed(
            config.type_vocab_size, h, axis_names=("token_types", "embed"), init=_normal(std), rngs=rngs
        )
        self.layer_norm = _layer_norm(config, rngs)
        self.positions = config.positions
        self.pad_token_id = config.pad_token_id
        self.dropout_rate = config.hidden_dropout_prob

    def position_ids(self, attention_mask: jax.Array) -> jax.Array:
        """RoBERTa: real tokens numbered from pad+1 in order, padding slots get pad (HF/fairseq).

        Counted on ``attention_mask`` rather than on ``input_ids == pad`` so a data pipeline that
        pads with another id still gets the right positions (identical when pads are pad ids).
        """
        length = attention_mask.shape[-1]
        if self.positions == "absolute":
            return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), attention_mask.shape)
        real = (attention_mask != 0).astype(jnp.int32)
        return jnp.cumsum(real, axis=-1) * real + self.pad_token_id

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
    ) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = add_embedding_noise(self.word_embeddings(input_ids), embedding_noise)
        x = x + self.position_embeddings(self.position_ids(attention_mask))
        x = x + self.token_type_embeddings(token_type_ids)
        x = dropout(self.layer_norm(x), self.dropout_rate, deterministic=deterministic, rngs=rngs)
        return add_embedding_noise(x, embedding_output_noise)


class XLMREncoder(nnx.Module):
    """Embeddings, ``num_hidden_layers`` post-LN blocks and the optional tanh pooler (first token)."""

    def __init__(self, config: XLMRConfig, *, rngs: nnx.Rngs):
        with eager_sharding_if_mesh():
            self.embeddings = XLMREmbeddings(config, rngs=rngs)
            self.layers = nnx.List([XLMRLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.pooler = self.make_pooler(config, rngs=rngs) if config.add_pooling_layer else None
        self.config = config
        # CA-MTL's task embedding and conditional alignment: set by ca_mtl.attach.
        self.ca_task: ca_mtl.TaskEmbedding | None = None
        self.ca_alignment: ca_mtl.FiLM | None = None

    @staticmethod
    def make_pooler(config: XLMRConfig, *, rngs: nnx.Rngs) -> DenseGeneral:
        """A freshly initialised pooler (also used when a checkpoint has none)."""
        with eager_sharding_if_mesh():
            return _dense(config, config.hidden_size, config.hidden_size, ("embed", "mlp"), rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
        probes: Mapping[str, jax.Array] | None = None,
        task_id: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """``(hidden [batch, length, hidden], pooled [batch, hidden] or None)`` in the compute dtype.

        ``embedding_noise`` ``[batch, length, hidden]`` is added to the word-embedding lookup,
        before position/type embeddings, layer norm and dropout (R3F); ``embedding_output_noise``
        (same shape) to the embeddings' output, after layer norm and dropout (SMART). ``probes``: zero
        perturbations ``layers/{i}/attention`` and ``layers/{i}/output`` (see
        ``XLMRMultiTask.probe_shapes``) whose gradients are those of the activations.
        ``task_id`` ``[batch]``: each example's task, needed with CA-MTL (``XLMRConfig.ca_mtl``)."""
        if input_ids.shape[-1] > self.config.max_position_length:
            raise ValueError(
                f"input length {input_ids.shape[-1]} exceeds the position table "
                f"(max {self.config.max_position_length} for XLMRConfig.max_position_embeddings="
                f"{self.config.max_position_embeddings})"
            )
        mask = padding_mask(attention_mask)
        x = self.embeddings(input_ids, attention_mask, token_type_ids, deterministic=deterministic,
                            rngs=rngs, embedding_noise=embedding_noise,
                            embedding_output_noise=embedding_output_noise)
        z = None
        if self.ca_task is not None:
            if task_id is None:
                raise ValueError("XLMRConfig.ca_mtl conditions the encoder on the task: pass task_id [batch]")
            z = self.ca_task(task_id)
            if self.ca_alignment is not None:
                x = self.ca_alignment.modulate(x, z)
        probes = probes or {}
        per_layer = [
            {k: probes[f"layers/{i}/{k}"] for k in ("attention", "output") if f"layers/{i}/{k}" in probes}
            for i in range(len(self.layers))
        ]
        c = self.config
        x = run_layers(self.layers, x, mask, deterministic=deterministic, rngs=rngs, probes=per_layer,
                       scan=c.scan_layers, remat=c.remat, where="XLMRConfig", task_embedding=z)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return x, pooled


class XLMRMultiTask(nnx.Module):
    """Shared encoder + one RoBERTa classification/regression head per task (``task_num_labels``).

    A siamese task (``task_siamese``, the CS224N/Sentence-BERT similarity head) encodes its two
    texts separately with the shared encoder (``input_ids`` and ``pair_input_ids``) and predicts
    ``heads.siamese_score`` of the two pooled vectors (the tanh pooler over the first token,
    BERT's ``pooler_output``) instead of its head's output. A batch that holds a siamese row runs
    the second pass over all its rows (static shapes; only siamese rows use it); a batch without
    one skips it (``jax.lax.cond``), so one-task batches of other tasks cost one pass.
    """

    def __init__(self, config: XLMRConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = XLMREncoder(config, rngs=rngs)
        self.heads = self.make_heads(config, rngs=rngs) if config.task_num_labels else None
        with eager_sharding_if_mesh():
            apply_lora(self, config.lora, rngs)  # last: base weights do not depend on LoRA
            if config.ca_mtl is not None:  # nor on CA-MTL
                ca_mtl.attach(self.encoder, ca_mtl.build(config, rngs))

    @staticmethod
    def make_heads(config: XLMRConfig, *, rngs: nnx.Rngs) -> TaskHeads:
        """Freshly initialised heads for ``config.task_num_labels`` (also used by the importer)."""
        with eager_sharding_if_mesh():
            return TaskHeads(
                config.hidden_size,
                config.task_num_labels,
                dropout_rate=config.classifier_dropout_rate,
                initializer_range=config.initializer_range,
                rngs=rngs,
                spectral_norm=config.head_spectral_norm,
            )

    def probe_shapes(self, batch: int, length: int) -> dict[str, tuple[int, ...]]:
        """Every probe point and its shape: per layer the heads' output before the out
        projection (``layers/{i}/attention``, ``[batch, length, heads, head_dim]``) and the
        block output (``layers/{i}/output``), and the first-token state the heads read (``cls``,
        ``[batch, hidden]``; the heads use it, not the pooler)."""
        c = self.config
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(c.num_hidden_layers):
            shapes[f"layers/{i}/attention"] = (batch, length, c.num_attention_heads, c.head_dim)
            shapes[f"layers/{i}/output"] = (batch, length, c.hidden_size)
        shapes["cls"] = (batch, c.hidden_size)
        return shapes

    def post_update(self) -> None:
        """Called by the train step after each optimizer update (R4F's power iteration)."""
        if self.heads is not None:
            self.heads.update_spectral()

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        task_id: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
        probes: Mapping[str, jax.Array] | None = None,
        pair_input_ids: jax.Array | None = None,
        pair_attention_mask: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Per-example outputs; every example uses its own task's head (selected inside the jit).

        ``probes`` maps names of ``probe_shapes`` to zero arrays added at those points (task
        embeddings differentiate the loss with respect to them); parameters are unaffected.

        Returns ``logits`` ``[batch, max_labels]`` float32 with classes beyond the example's task
        masked to the most negative float, ``regression`` ``[batch]`` float32 (the head's first
        output; meaningful for 1-label tasks), ``is_regression`` ``[batch]`` bool, ``num_labels``
        ``[batch]``, ``hidden`` ``[batch, length, hidden]`` and ``pooled`` (when a pooler exists).
        With siamese tasks, ``pair_input_ids``/``pair_attention_mask`` (the second texts) are
        required, ``pair_pooled`` is their pooled vector (zeros when no row is siamese) and
        ``regression`` on siamese rows is
        ``siamese_score(pooled, pair_pooled)`` (both after the head dropout). The embedding noise
        and probes apply to the first pass only.
        A ``task_id`` outside ``[0, T)`` cannot raise inside a jit: its row comes out NaN (JAX's
        out-of-bounds fill), which the loss then shows.
        """
        if probes:
            check_probe_names(probes, tuple(self.probe_shapes(1, 1)), "XLMRMultiTask")
        probes = dict(probes or {})
        cls_probe = probes.pop("cls", None)
        hidden, pooled = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs,
            embedding_noise=embedding_noise, embedding_output_noise=embedding_output_noise,
            probes=probes, task_id=task_id,
        )
        out: dict[str, jax.Array] = {"hidden": hidden}
        if pooled is not None:
            out["pooled"] = pooled
        if self.heads is not None:
            if task_id is None:
                raise ValueError("XLMRMultiTask has task heads: pass task_id [batch] (int32)")
            first = add_probe(hidden[:, 0], cls_probe, "cls")
            out.update(self.heads(first, task_id, deterministic=deterministic, rngs=rngs))
            if any(self.config.task_siamese):
                out.update(self._siamese(out, task_id, pair_input_ids, pair_attention_mask,
                                         deterministic=deterministic, rngs=rngs))
        return out

    def _siamese(self, out: dict[str, jax.Array], task_id: jax.Array,
                 pair_input_ids: jax.Array | None, pair_attention_mask: jax.Array | None, *,
                 deterministic: bool, rngs: nnx.Rngs | None) -> dict[str, jax.Array]:
        """The second texts' pass and the siamese rows' scores."""
        if pair_input_ids is None or pair_attention_mask is None:
            raise ValueError("XLMRMultiTask has siamese tasks: pass pair_input_ids and "
                             "pair_attention_mask (the converter's siamese_heads features)")
        siamese = jnp.take(jnp.asarray(self.config.task_siamese), jnp.asarray(task_id, jnp.int32))

        # A batch without siamese rows (most batches of one-task-per-batch runs) skips the pass.
        # A plain lax.cond over the encoder's state (read, never written) and a dropout key drawn
        # here: unlike nnx.cond it writes nothing back, so it also runs inside the inner
        # transforms of the objectives (SMART's ascent, PCGrad's per-task VJPs).
        graphdef, state = nnx.split(self.encoder)
        stream = None if deterministic or rngs is None else getattr(rngs, "dropout", None)
        key = jax.random.key(0) if stream is None else stream()

        def second_pass(state: Any, key: jax.Array) -> jax.Array:
            inner = None if stream is None else nnx.Rngs(dropout=key)
            return nnx.merge(graphdef, state)(pair_input_ids, pair_attention_mask,
                                              deterministic=deterministic, rngs=inner,
                                              task_id=task_id)[1]

        def skipped(state: Any, key: jax.Array) -> jax.Array:
            return jnp.zeros_like(out["pooled"])

        pair_pooled = jax.lax.cond(jnp.any(siamese), second_pass, skipped, state, key)
        rate = self.config.classifier_dropout_rate
        a, b = (dropout(p.astype(jnp.float32), rate, deterministic=deterministic, rngs=rngs)
                for p in (out["pooled"], pair_pooled))
        return {"pair_pooled": pair_pooled,
                "regression": jnp.where(siamese, siamese_score(a, b), out["regression"])}
