"""Helpers several test modules share, kept here so no test module imports another.

- generic: ``tool_module`` (a script of tools/ as a module), ``host`` (device tree -> NumPy), ``assert_same_tensors`` (bit-exact state dicts),
  ``hf_tokenizer`` (transformers' tokenizer over one of our sentencepiece models);
- T5 / mT5 references: random-weight transformers models, our copies through the converter under
  test, batches, the relative bound ``assert_close`` and cheap-to-compile ``fast_jit``;
- XLM-R references: random-weight transformers encoders / classifiers, our random models, inputs;
- dropout: ``recording_dropout`` wraps the one dropout function every model calls, so a test can
  check each site's mask statistics inside a real forward pass (``check_dropout_sites``).

Imported as a plain module (``import helpers``): pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from mtl_jax.models import hf_t5
from mtl_jax.models import layers as model_layers
from mtl_jax.models.hf_xlmr import random_padded_inputs
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask

# ------------------------------------------------------------------------------------------------
# Generic
# ------------------------------------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]


@functools.cache
def tool_module(name: str) -> Any:
    """``tools/NAME.py`` imported as module ``mtl_NAME`` (tools/ is not a package)."""
    import sys

    spec = importlib.util.spec_from_file_location(f"mtl_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"mtl_{name}"] = module
    spec.loader.exec_module(module)
    return module


def host(tree: Any) -> Any:
    """Every leaf as a NumPy array on the host (fetched from its devices first)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_same_tensors(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], where: str
) -> None:
    """Same names, dtypes, shapes and bits (a conversion round trip must be exact)."""
    assert sorted(got) == sorted(want), (where, sorted(set(got) ^ set(want)))
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, (where, key)
        np.testing.assert_array_equal(got[key], value, err_msg=f"{where}: {key}")


def hf_tokenizer(directory: Path, kind: str):
    """transformers' slow tokenizer for the vocabulary file in ``directory`` ("mt5" or "xlmr")."""
    if kind == "mt5":
        return transformers.T5Tokenizer.from_pretrained(str(directory), extra_ids=100)
    return transformers.XLMRobertaTokenizer.from_pretrained(str(directory))


# ------------------------------------------------------------------------------------------------
# T5 / mT5 against transformers' PyTorch models
# ------------------------------------------------------------------------------------------------

LOGIT_RTOL, LOGIT_ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7

# Random small configs: depth (also decoder != encoder), heads, d_kv != d_model / heads, buckets,
# max distance (below and above the sequence lengths used) and vocabulary all vary.
MT5_CONFIGS: dict[str, dict[str, Any]] = {
    "mt5_a": dict(
        vocab_size=97,
        d_model=24,
        d_kv=5,
        d_ff=40,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=3,
        relative_attention_num_buckets=12,
        relative_attention_max_distance=20,
    ),
    "mt5_b": dict(
        vocab_size=131,
        d_model=32,
        d_kv=16,
        d_ff=48,
        num_layers=3,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    ),
    "mt5_c": dict(
        vocab_size=64,
        d_model=16,
        d_kv=3,
        d_ff=24,
        num_layers=1,
        num_decoder_layers=2,
        num_heads=6,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=9,
    ),
}
T5_CONFIGS: dict[str, dict[str, Any]] = {
    "t5_relu_a": dict(
        vocab_size=80,
        d_model=20,
        d_kv=7,
        d_ff=36,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=30,
        feed_forward_proj="relu",
    ),
    "t5_gated_b": dict(
        vocab_size=113,
        d_model=28,
        d_kv=4,
        d_ff=44,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=5,
        relative_attention_num_buckets=10,
        relative_attention_max_distance=12,
        feed_forward_proj="gated-gelu",
    ),
    "t5_relu_c": dict(
        vocab_size=50,
        d_model=12,
        d_kv=6,
        d_ff=20,
        num_layers=1,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=64,
        feed_forward_proj="relu",
    ),
}
T5_ALL_CONFIGS = {**MT5_CONFIGS, **T5_CONFIGS}


def make_hf(name: str, seed: int = 0, **extra: Any):
    """A random-weight HF model in eval mode: MT5ForConditionalGeneration with an untied head for
    ``mt5_*`` names, tied T5ForConditionalGeneration (rescaled head) otherwise."""
    kwargs = {**T5_ALL_CONFIGS[name], "dropout_rate": 0.0, "decoder_start_token_id": 0, **extra}
    torch.manual_seed(seed)
    if name.startswith("mt5"):
        model = transformers.MT5ForConditionalGeneration(
            transformers.MT5Config(**kwargs, attn_implementation="eager")
        )
    else:
        model = transformers.T5ForConditionalGeneration(
            transformers.T5Config(**kwargs, tie_word_embeddings=True, attn_implementation="eager")
        )
    _randomize_t5(model, untie_head=name.startswith("mt5"))
    return model.eval()


def _randomize_t5(model, untie_head: bool) -> None:
    """Weights large enough that every part of the network shapes the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)
        if untie_head:
            # transformers 5 builds MT5 with the head tied; real mT5 checkpoints have their own.
            vocab, d = model.shared.weight.shape
            model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d) * d**-0.5)
            model.all_tied_weights_keys.pop("lm_head.weight", None)


def hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def ours_from_hf(model, **overrides: Any) -> T5Model:
    """Our model holding the HF model's weights, through the converter under test."""
    config = T5Config.from_hf(model.config.to_dict(), **overrides)
    return hf_t5.model_from_hf_state(hf_state(model), config)


def random_batch(vocab: int, seed: int = 0, batch: int = 3, enc_len: int = 13, dec_len: int = 9):
    """Encoder tokens with per-row right padding, HF labels (-100 = ignored) and our shifted
    decoder inputs / targets / loss weights."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (batch, enc_len))
    labels = rng.integers(2, vocab, (batch, dec_len))
    for b in range(1, batch):
        enc[b, enc_len - 3 * b :] = 0
        labels[b, dec_len - 2 * b :] = -100
    labels[:, -1] = np.where(labels[:, -1] == -100, -100, 1)  # some EOS tokens
    targets = np.where(labels == -100, 0, labels)
    dec_in = np.zeros_like(targets)
    dec_in[:, 1:] = targets[:, :-1]
    return dict(
        enc=enc,
        labels=labels,
        targets=targets,
        dec_in=dec_in,
        weights=(labels != -100).astype(np.float32),
    )


def hf_forward(model, batch, with_grad: bool = False):
    enc = torch.tensor(batch["enc"])
    out = model(
        input_ids=enc, attention_mask=(enc != 0).long(), labels=torch.tensor(batch["labels"])
    )
    if with_grad:
        model.zero_grad()
        out.loss.backward()
    return out


def assert_close(ours, ref, rtol: float, atol: float, what: str) -> float:
    """Assert max|ours - ref| <= rtol * max|ref| + atol; return the max abs diff."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    diff = float(np.max(np.abs(ours - ref)))
    bound = rtol * float(np.max(np.abs(ref))) + atol
    assert diff <= bound, f"{what}: max abs diff {diff:.3e} > bound {bound:.3e}"
    return diff


# XLA's CPU backend spends most of the T5 tests compiling; skipping LLVM's expensive passes halves
# that and changes no HLO-level numerics (test_t5_parity also checks one case at the defaults).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def model_jit(fn, compiler_options: dict[str, Any] | None = None):
    """``jax.jit`` of ``fn(model, *args)`` over the model's (graphdef, state)."""

    @functools.partial(jax.jit, static_argnums=0, compiler_options=compiler_options)
    def run(graphdef, state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    def call(model, *args):
        graphdef, state = nnx.split(model)
        return run(graphdef, state, *args)

    return call


def fast_jit(fn):
    """``model_jit`` with the cheap-to-compile ``FAST_COMPILE`` options."""
    return model_jit(fn, FAST_COMPILE)


@fast_jit
def t5_forward_padded(model, enc, dec_in):
    """Our logits as the model returns them: ``padded_vocab_size`` wide, the padding masked."""
    return model(enc, dec_in)


def t5_forward(model, enc, dec_in):
    """Our logits over the real vocabulary (``real_vocab``), comparable with transformers'."""
    return real_vocab(t5_forward_padded(model, enc, dec_in), model.config)


def real_vocab(logits, config):
    """``logits[..., :vocab_size]`` after checking that every padded column is masked to the
    most negative float32 (``T5Config.padded_vocab_size`` > ``vocab_size``)."""
    assert logits.shape[-1] == config.padded_vocab_size, (logits.shape, config.padded_vocab_size)
    tail = np.asarray(logits[..., config.vocab_size:])
    assert (tail == np.finfo(np.float32).min).all(), "padded vocabulary columns are not masked"
    return logits[..., : config.vocab_size]


# ------------------------------------------------------------------------------------------------
# XLM-R against transformers' PyTorch models
# ------------------------------------------------------------------------------------------------

XLMR_RTOL = 1e-5

# Vary depth, heads, head_dim, hidden/intermediate sizes, vocab, positions, type vocab, eps.
XLMR_HF_CONFIGS = [
    dict(
        vocab_size=61,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=24,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    ),
    dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    ),
    dict(
        vocab_size=257,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=100,
        max_position_embeddings=66,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    ),
]


def randomize_torch(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Every parameter random: LayerNorm weights near 1, everything else N(0, scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.copy_(1.0 + noise if name.endswith("LayerNorm.weight") else noise)


def hf_xlmr(kind: str, cfg: dict, seed: int, num_labels: int = 2) -> torch.nn.Module:
    """A randomised HF XLM-R model ("model" or "cls") in eval mode with eager attention."""
    config = transformers.XLMRobertaConfig(
        **cfg, num_labels=num_labels, attn_implementation="eager"
    )
    torch.manual_seed(seed)
    if kind == "model":
        model = transformers.XLMRobertaModel(config)
    else:
        model = transformers.XLMRobertaForSequenceClassification(config)
    randomize_torch(model, seed)
    return model.eval()


def save(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def xlmr_assert_close(ours, ref, rtol: float = XLMR_RTOL, what: str = "") -> tuple[float, float]:
    """|ours - ref| <= rtol * max|ref| + rtol * |ref| elementwise; returns (max abs, max rel)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale, err_msg=what)
    diff = np.abs(ours - ref).max()
    return float(diff), float(diff / scale)


def xlmr_inputs(cfg: XLMRConfig, seed: int, batch: int = 4, length: int = 13):
    ids, mask = random_padded_inputs(cfg, batch, length, seed)
    assert (mask == 0).any(), "the inputs must contain padding"
    return ids, mask


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).long()


def xlmr_random_model(config: XLMRConfig, seed: int, scale: float = 0.1) -> XLMRMultiTask:
    """Our model with host-random parameters (no per-shape PRNG compiles, so tests stay fast);
    padded head columns stay zero as the real initialiser leaves them."""
    model = nnx.eval_shape(lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = rng.normal(size=var.get_value().shape).astype(np.float32) * scale
        if path[-1] == "scale":
            value += 1.0
        if path[-1] in ("out_kernel", "out_bias"):
            valid = np.arange(value.shape[-1]) < np.asarray(config.task_num_labels)[:, None]
            value *= valid[:, None, :] if value.ndim == 3 else valid
        var.set_value(jnp.asarray(value))
    return model


@nnx.jit
def xlmr_forward(model: XLMRMultiTask, ids, mask, task_id=None, token_type_ids=None) -> dict:
    """One compiled forward (op-by-op eager dispatch is several times slower on CPU)."""
    return model(ids, mask, task_id, token_type_ids=token_type_ids)


# ------------------------------------------------------------------------------------------------
# Dropout inside the models
# ------------------------------------------------------------------------------------------------

# Every module that calls the shared dropout by name (layers' attention core looks it up there).
_DROPOUT_USERS = (
    "mtl_jax.models.layers",
    "mtl_jax.models.t5",
    "mtl_jax.models.xlmr",
    "mtl_jax.models.heads",
    "mtl_jax.models.lora",
)


def recording_dropout(monkeypatch: pytest.MonkeyPatch) -> list[tuple[jax.Array, jax.Array]]:
    """Route every model's dropout through a wrapper that records ``(input, output)`` of each
    active call, in call order, and otherwise returns exactly what the real dropout returns.

    Under ``jax.jit`` the records are tracers of that trace: return them from the jitted function.
    """
    real = model_layers.dropout
    records: list[tuple[jax.Array, jax.Array]] = []

    def wrapper(x, rate, *, deterministic, rngs, stream="dropout"):
        out = real(x, rate, deterministic=deterministic, rngs=rngs, stream=stream)
        if not deterministic and rate > 0.0:
            records.append((x, out))
        return out

    for name in _DROPOUT_USERS:
        module = importlib.import_module(name)
        assert module.dropout is real, name  # nothing else may sit in between
        monkeypatch.setattr(module, "dropout", wrapper)
    return records


def check_dropout_sites(records: list[tuple[np.ndarray, np.ndarray]], rate_of) -> dict[float, int]:
    """Each recorded site is inverted dropout at the rate ``rate_of(input)`` expects.

    Per site and pooled per rate: every output element is exactly 0 or its input times 1/(1-p)
    (to 2e-7 relative, about one float32 ulp: measured 1 ulp off NumPy's division on ~10% of the
    elements, as from multiplying by a rounded reciprocal), and the dropped fraction of the
    elements that can tell (normal, nonzero inputs; masked attention probabilities are exact
    zeros) lies within 5 binomial standard deviations of p. Sites of the same shape must draw
    different masks (no reused key). Returns the pooled number of informative elements per rate,
    so a caller can check that the test had power.
    """
    pooled: dict[float, list[int]] = {}
    masks: dict[tuple[int, ...], list[np.ndarray]] = {}
    for i, (x, y) in enumerate(records):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        p = float(rate_of(x))
        assert x.shape == y.shape, i
        informative = np.abs(x) >= np.finfo(np.float32).tiny  # XLA may flush subnormals
        dropped = (y == 0) & informative
        kept = informative & ~dropped
        np.testing.assert_array_equal(y[x == 0], 0.0, err_msg=f"site {i}: zero stays zero")
        np.testing.assert_allclose(
            y[kept],
            x[kept] / np.float32(1.0 - p),
            rtol=2e-7,
            atol=0,
            err_msg=f"site {i}: kept values scaled by 1/(1-{p})",
        )
        n, k = int(informative.sum()), int(dropped.sum())
        _assert_binomial(k, n, p, f"site {i} {x.shape}")
        counts = pooled.setdefault(p, [0, 0])
        counts[0] += n
        counts[1] += k
        masks.setdefault(x.shape, []).append(dropped | ~informative)
    for p, (n, k) in pooled.items():
        _assert_binomial(k, n, p, f"all sites at rate {p}")
    for shape, same in masks.items():
        for a in range(len(same)):
            for b in range(a + 1, len(same)):
                assert not np.array_equal(same[a], same[b]), f"sites {shape}: identical masks"
    return {p: n for p, (n, _) in pooled.items()}


def _assert_binomial(dropped: int, n: int, p: float, what: str) -> None:
    assert n > 0, what
    sigma = math.sqrt(p * (1 - p) / n)
    frac = dropped / n
    assert abs(frac - p) <= 5 * sigma, (
        f"{what}: dropped {frac:.4f} of {n}, expected {p} +- {5 * sigma:.4f}"
    )
