"""Benchmark the real train step on synthetic batches: step time, tokens/s, TFLOP/s and MFU.

    python tools/benchmark.py --model mt5_small --batch 32 --inputs 512 --targets 64 --steps 20
    python tools/benchmark.py --model mt5_base --dtype bfloat16 --compare micro_batches=1,4
    python tools/benchmark.py --model xlmr_base --batch 32 --inputs 256 --compare rules=t5x,fsdp
    python tools/benchmark.py --model mt5_small --compare method=plain,r3f,lora,pcgrad
    python tools/benchmark.py --aot --models mt5_large --scan off,on --remat none,full,save_dots
    python tools/benchmark.py --model xlmr_base --inputs 256 --peer hf   # vs transformers (torch)

What runs is the trainer's own step (``make_train_step`` with the real optimizer, objective,
shardings and donation) on batches named as in ``mtl_jax.features`` and placed through
``partitioning.global_batch``; only the input pipeline is left out (batches are made up front).
Compilation is timed separately (lower + compile), then ``--warmup`` untimed steps, then
``--steps`` timed steps, each ended by ``block_until_ready``.

``--peer hf`` adds transformers' PyTorch train step of the same model, eager and ``torch.compile``,
to the same rounds and prints ours/peer ratios (``tools/benchmark_peer.py`` says what is matched).

``--compare KEY=A,B[,C]`` builds every variant in this one process and interleaves their steps
(A B, B A, A B, ...), so machine noise hits all variants alike; the ratio reported is the median over
rounds of the per-round throughput ratio. Machines here are noisy: trust ratios, not absolutes.

Model sizes come from ``gin_configs/models/NAME.gin`` when gin-config is installed, else from the
built-in table of published sizes below (the GPU image has no gin); flags override single sizes
so a CPU can run a small variant of the real architecture.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Published sizes (Hugging Face config.json of google/mt5-* and FacebookAI/xlm-roberta-*; the
# tiny ones are the project's test configs), identical to gin_configs/models/*.gin (tested).
PUBLISHED_SIZES: dict[str, dict[str, Any]] = {
    "mt5_tiny": dict(vocab_size=250112, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                     num_decoder_layers=2, num_heads=4),
    "mt5_small": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                      num_decoder_layers=8, num_heads=6),
    "mt5_base": dict(vocab_size=250112, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                     num_decoder_layers=12, num_heads=12),
    "mt5_large": dict(vocab_size=250112, d_model=1024, d_kv=64, d_ff=2816, num_layers=24,
                      num_decoder_layers=24, num_heads=16),
    "mt5_xl": dict(vocab_size=250112, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                   num_decoder_layers=24, num_heads=32),
    "xlmr_tiny": dict(vocab_size=250002, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128),
    "xlmr_base": dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
    "xlmr_large": dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                       num_attention_heads=16, intermediate_size=4096),
}
# Shared by every published size of a family (the rest are the config classes' defaults).
_T5_COMMON = dict(model_type="mt5", relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False)
_XLMR_COMMON = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                    max_position_embeddings=514, type_vocab_size=1, initializer_range=0.02,
                    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    positions="roberta", model_type="xlm-roberta")

COMPARABLE = ("micro_batches", "dtype", "rules", "mesh", "attention", "batch", "dropout", "method",
              "scan", "remat")
# --method: the MTL method switched on in the step (thesis settings; docs/methods.md).
METHODS = ("plain", "r3f", "smart", "smart_proximal", "loss_scaling", "pcgrad", "lora", "uncertainty", "ca_mtl")


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mt5_small",
                   help=f"model size name: {', '.join(PUBLISHED_SIZES)}")
    p.add_argument("--sizes", choices=("auto", "gin", "table"), default="auto",
                   help="where sizes come from: gin_configs/models (auto: when gin is installed) "
                        "or the built-in table")
    p.add_argument("--batch", type=int, default=32, help="global batch (examples)")
    p.add_argument("--inputs", type=int, default=512, help="encoder / XLM-R input length")
    p.add_argument("--targets", type=int, default=64, help="decoder length (mT5 only)")
    p.add_argument("--min_fill", type=float, default=1.0,
                   help="real tokens per example drawn uniformly in [min_fill*L, L]; 1 = no padding")
    p.add_argument("--steps", type=int, default=20, help="timed steps (per variant)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1 = the rest)")
    p.add_argument("--rules", default="t5x", help="partitioning rules: t5x | fsdp")
    p.add_argument("--dtype", default=None, help="compute dtype (default: float32 on CPU, "
                                                 "bfloat16 on accelerators)")
    p.add_argument("--micro_batches", type=int, default=1)
    p.add_argument("--method", default="plain",
                   help=f"MTL method in the step: {' | '.join(METHODS)} (R3F sigma 1e-5 lambda "
                        "1e-2; SMART MT-DNN's defaults; smart_proximal: SMART + the proximal "
                        "term, mu 1; LoRA r 32 alpha 32 on q/v, base frozen; "
                        "PCGrad over the tasks of --task_labels; uncertainty: MT-Uncertainty "
                        "selection of --batch rows from a pool of --batch per task, XLM-R only; "
                        "CA-MTL as methods/ca_mtl.gin with L = --inputs)")
    p.add_argument("--attention", default="auto", help="attention impl: auto | cudnn | xla")
    p.add_argument("--scan", default="off", choices=("off", "on"), help="scan_layers")
    p.add_argument("--remat", default="none", help="remat policy: none | full | save_dots")
    p.add_argument("--dropout", default="on", choices=("on", "off"),
                   help="dropout as in training (on) or deterministic steps (off)")
    p.add_argument("--optimizer", default=None,
                   help="adafactor | adamw (default: adafactor for mT5, adamw for XLM-R)")
    p.add_argument("--task_labels", default="3,2,2,2,2,10",
                   help="label count per task (XLM-R heads; mT5 uses the task count for "
                        "per-task losses)")
    p.add_argument("--layers", type=int, help="override: layers (encoder and decoder)")
    p.add_argument("--decoder_layers", type=int, help="override: decoder layers (mT5)")
    p.add_argument("--d_model", type=int, help="override: d_model / hidden_size")
    p.add_argument("--d_ff", type=int, help="override: d_ff / intermediate_size")
    p.add_argument("--heads", type=int, help="override: attention heads")
    p.add_argument("--d_kv", type=int, help="override: per-head size (mT5)")
    p.add_argument("--vocab", type=int, help="override: vocabulary size")
    p.add_argument("--compare", default=None,
                   help=f"KEY=A,B[,...] with KEY in {', '.join(COMPARABLE)}; variants run "
                        "interleaved in this process")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="per-device peak TFLOP/s for MFU (default: the device's spec, "
                        "mtl_jax.training.flops.peak_flops)")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="fake CPU devices (sets XLA_FLAGS before jax starts; for mesh tests)")
    p.add_argument("--peer", choices=("hf",), default=None,
                   help="also run transformers' PyTorch train step (tools/benchmark_peer.py)")
    p.add_argument("--peer_kinds", default="eager,compile",
                   help="peer variants: eager and/or compile (torch.compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all numbers and raw step times here")
    args = p.parse_args(argv)
    if args.model not in PUBLISHED_SIZES:
        p.error(f"--model {args.model!r}: known sizes are {', '.join(PUBLISHED_SIZES)}")
    if not 0.0 < args.min_fill <= 1.0:
        p.error(f"--min_fill must be in (0, 1], got {args.min_fill}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.method not in METHODS:
        p.error(f"--method {args.method!r}: use one of {', '.join(METHODS)}")
    if args.compare is not None:
        key, _, values = args.compare.partition("=")
        if key not in COMPARABLE or not values:
            p.error(f"--compare {args.compare!r}: use KEY=A,B with KEY in {', '.join(COMPARABLE)}")
        # Mesh values contain commas themselves: separate them with ';' or '/'.
        sep = ";" if key == "mesh" else ","
        vals = [v for v in values.replace("/", ";").split(sep) if v]
        if len(vals) < 2:
            p.error(f"--compare {args.compare!r}: give at least two values (mesh: '-1,1,1;1,-1,1')")
    return args


def family_of(model: str) -> str:
    return "xlmr" if model.startswith("xlmr") else "t5"


def variants(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """``(label, args)`` per variant; one variant without ``--compare``."""
    if args.compare is None:
        return [("run", args)]
    key, _, values = args.compare.partition("=")
    sep = ";" if key == "mesh" else ","
    out = []
    for raw in (v for v in values.replace("/", ";").split(sep) if v):
        v = argparse.Namespace(**vars(args))
        value: Any = int(raw) if key in ("micro_batches", "batch") else raw
        setattr(v, key, value)
        out.append((f"{key}={raw}", v))
    return out


# ------------------------------------------------------------------------------------------------
# Model configuration
# ------------------------------------------------------------------------------------------------


def sizes_from_gin(model: str) -> Any:
    """The config that ``gin_configs/models/MODEL.gin`` binds (gin state cleared afterwards)."""
    import gin

    import mtl_jax.configurables  # noqa: F401  (registers T5Config / XLMRConfig)
    from mtl_jax.gin_config import parse
    from mtl_jax.models.t5 import T5Config
    from mtl_jax.models.xlmr import XLMRConfig

    cls = XLMRConfig if family_of(model) == "xlmr" else T5Config
    gin.clear_config()
    try:
        parse([f"models/{model}.gin"])
        return gin.get_configurable(cls)()
    finally:
        gin.clear_config()


def sizes_from_table(model: str) -> Any:
    from mtl_jax.models.t5 import T5Config
    from mtl_jax.models.xlmr import XLMRConfig

    if family_of(model) == "xlmr":
        return XLMRConfig(**_XLMR_COMMON, **PUBLISHED_SIZES[model])
    return T5Config(**_T5_COMMON, **PUBLISHED_SIZES[model])


def base_config(model: str, sizes: str) -> tuple[Any, str]:
    """``(config, source)``: gin when asked or available, else the built-in table."""
    if sizes in ("auto", "gin"):
        try:
            return sizes_from_gin(model), f"gin_configs/models/{model}.gin"
        except ImportError as e:
            if sizes == "gin":
                raise SystemExit(f"--sizes gin: gin-config is not importable ({e})") from e
    return sizes_from_table(model), "built-in table (tools/benchmark.py PUBLISHED_SIZES)"


def model_config(base: Any, args: argparse.Namespace, dtype: str) -> Any:
    """``base`` with the size overrides, compute dtype, attention impl and task heads of ``args``."""
    labels = task_labels(args)
    if family_of(args.model) == "xlmr":
        names = dict(layers="num_hidden_layers", d_model="hidden_size", d_ff="intermediate_size",
                     heads="num_attention_heads", vocab="vocab_size")
        extra: dict[str, Any] = dict(task_num_labels=labels)
        for flag in ("decoder_layers", "d_kv"):
            if getattr(args, flag) is not None:
                raise SystemExit(f"--{flag} applies to mT5 models only")
        if args.inputs > base.max_position_length:
            raise SystemExit(f"--inputs {args.inputs} exceeds XLM-R's {base.max_position_length} "
                             "positions")
    else:
        names = dict(layers="num_layers", d_model="d_model", d_ff="d_ff", heads="num_heads",
                     d_kv="d_kv", vocab="vocab_size")
        extra = {}
        layers = args.decoder_layers or args.layers
        if layers:
            extra["num_decoder_layers"] = layers
    for flag, field in names.items():
        value = getattr(args, flag)
        if value is not None:
            extra[field] = value
    if getattr(args, "method", "plain") == "lora":
        from mtl_jax.models.lora import LoRAConfig

        extra["lora"] = LoRAConfig(rank=32, alpha=32.0, dropout=0.1)
    if getattr(args, "method", "plain") == "ca_mtl":  # methods/ca_mtl.gin: L = --inputs
        from mtl_jax.models.ca_mtl import CAMTLConfig

        extra["ca_mtl"] = CAMTLConfig(max_seq_length=args.inputs)
    return dataclasses.replace(base, dtype=dtype, attention_impl=args.attention,
                               scan_layers=getattr(args, "scan", "off") == "on",
                               remat=getattr(args, "remat", "none"), **extra)


def task_labels(args: argparse.Namespace) -> tuple[int, ...]:
    try:
        labels = tuple(int(x) for x in args.task_labels.split(","))
    except ValueError:
        raise SystemExit(f"--task_labels {args.task_labels!r}: expected e.g. 3,2,2") from None
    if not labels or min(labels) < 2:
        raise SystemExit(f"--task_labels {args.task_labels!r}: every task needs >= 2 labels")
    return labels


def mesh_sizes(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise SystemExit(f"--mesh {text!r}: expected data,fsdp,tensor e.g. -1,1,1")
    return sizes  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# Synthetic batches
# ------------------------------------------------------------------------------------------------


def _real_lengths(rng: Any, batch: int, length: int, min_fill: float, minimum: int) -> Any:
    import numpy as np

    low = max(minimum, math.ceil(min_fill * length))
    if low >= length:
        return np.full((batch,), length, np.int64)
    return rng.integers(low, length + 1, size=(batch,))


def synthetic_batch(family: str, config: Any, args: argparse.Namespace, seed: int,
                    rows: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(batch, lengths)``: random tokens with the names and conventions of mtl_jax.features
    (pad 0 / loss weights for mT5, bos-eos-pad 1 and attention_mask for XLM-R)."""
    import numpy as np

    from mtl_jax import features as F

    rng = np.random.default_rng(seed)
    labels = np.asarray(task_labels(args))
    # Every task present once rows >= tasks (PCGrad's cost grows with the tasks present).
    task = rng.permutation(np.arange(rows) % len(labels)).astype(np.int32)
    vocab = config.vocab_size
    if family == "t5":
        le = _real_lengths(rng, rows, args.inputs, args.min_fill, 1)
        ld = _real_lengths(rng, rows, args.targets, args.min_fill, 1)
        pos_e, pos_d = np.arange(args.inputs)[None], np.arange(args.targets)[None]
        enc = np.where(pos_e < le[:, None], rng.integers(2, vocab, (rows, args.inputs)), 0)
        tgt = np.where(pos_d < ld[:, None], rng.integers(2, vocab, (rows, args.targets)), 0)
        dec_in = np.concatenate([np.zeros((rows, 1), tgt.dtype), tgt[:, :-1]], axis=1)
        batch = {
            F.ENCODER_INPUT_TOKENS: enc.astype(np.int32),
            F.DECODER_INPUT_TOKENS: dec_in.astype(np.int32),
            F.DECODER_TARGET_TOKENS: tgt.astype(np.int32),
            F.DECODER_LOSS_WEIGHTS: (pos_d < ld[:, None]).astype(np.float32),
            F.TASK_ID: task,
        }
        return batch, {"encoder_lengths": le, "decoder_lengths": ld}
    length = args.inputs
    lens = _real_lengths(rng, rows, length, args.min_fill, 2)
    pos = np.arange(length)[None]
    ids = rng.integers(3, vocab, (rows, length))
    ids[:, 0] = config.bos_token_id
    ids = np.where(pos == lens[:, None] - 1, config.eos_token_id, ids)
    ids = np.where(pos < lens[:, None], ids, config.pad_token_id)
    batch = {
        F.INPUT_IDS: ids.astype(np.int32),
        F.ATTENTION_MASK: (pos < lens[:, None]).astype(np.int32),
        F.TASK_ID: task,
        F.LABELS: (rng.integers(0, 1 << 30, (rows,)) % labels[task]).astype(np.int32),
    }
    return batch, {"lengths": lens}


# ------------------------------------------------------------------------------------------------
# One variant: build, compile, step
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    label: str
    args: argparse.Namespace
    config: Any
    compiled: Any
    state: Any
    batches: list[Any]
    tokens: list[int]
    flops_padded: float  # analytic train FLOPs of the batch shape
    flops_useful: float  # analytic train FLOPs of the real tokens (== padded without padding)
    compile_s: float
    xla_flops: float | None
    num_devices: int
    times: list[float] = dataclasses.field(default_factory=list)


def build_variant(label: str, args: argparse.Namespace, base: Any, dtype: str) -> Variant:
    import jax
    import numpy as np
    from flax import nnx

    from mtl_jax import features as F
    from mtl_jax.models.t5 import T5Model
    from mtl_jax.models.xlmr import XLMRMultiTask
    from mtl_jax.training import flops as fl
    from mtl_jax.training import optimizers
    from mtl_jax.training import partitioning as part
    from mtl_jax.training.objectives import ClassificationObjective, EncoderDecoderObjective
    from mtl_jax.training.step import make_train_step
    from mtl_jax.training.train_state import create_train_state

    family = family_of(args.model)
    config = model_config(base, args, dtype)
    mesh = part.make_mesh(*mesh_sizes(args.mesh))
    rules = part.rules_by_name(args.rules)
    part.check_batch_size(args.batch, mesh, rules, args.micro_batches)
    labels = task_labels(args)
    if family == "t5":
        model_cls, objective = T5Model, EncoderDecoderObjective(num_tasks=len(labels))
        opt_name = args.optimizer or "adafactor"
    else:
        model_cls = XLMRMultiTask
        objective = ClassificationObjective(num_tasks=len(labels), num_labels=labels)
        opt_name = args.optimizer or "adamw"
    partition = optimizers.make_partition(train=["heads"], lora=True) if args.method == "lora" \
        else None
    if args.method == "ca_mtl":
        from mtl_jax.models.ca_mtl import frozen_predicate

        partition = optimizers.make_partition(model_frozen=frozen_predicate(config))
    teacher = None
    if args.method == "r3f":
        from mtl_jax.training.objectives import R3FObjective

        objective = R3FObjective(objective, sigma=1e-5, lam=1e-2)
    elif args.method in ("smart", "smart_proximal"):  # proximal: the paper's mu = 1
        from mtl_jax.training.smart import SMARTObjective

        objective = SMARTObjective(objective, mu=1.0 if args.method == "smart_proximal" else 0.0)
        teacher = objective.teacher_momentum(None)
    elif args.method == "loss_scaling":
        objective = dataclasses.replace(objective, loss_scaling="log_classes")
    optimizer = optimizers.make_optimizer(opt_name, learning_rate=1e-3 if family == "t5" else 1e-5,
                                          partition_fn=partition, teacher_momentum=teacher)
    combiner = None
    if args.method == "pcgrad":
        from mtl_jax.training.pcgrad import PCGrad

        combiner = PCGrad()
    sampler, pool = None, 1  # pool: candidate rows per trained row (MT-Uncertainty)
    if args.method == "uncertainty":
        from mtl_jax.training.uncertainty import UncertaintySampler

        if family == "t5":
            raise SystemExit("--method uncertainty needs an XLM-R model (classification heads)")
        sampler, pool = UncertaintySampler(labels, (0,) * len(labels), 1, args.batch), len(labels)
    seed = args.seed
    graphdef, state, shardings = create_train_state(
        lambda: model_cls(config, rngs=nnx.Rngs(seed)), optimizer, mesh, rules, seed
    )
    batch_sh = part.batch_sharding(mesh, rules)
    step = make_train_step(graphdef, objective, optimizer, mesh, shardings, batch_sh,
                           micro_batches=args.micro_batches, rules=rules,
                           deterministic=args.dropout == "off", combiner=combiner,
                           sampler=sampler)
    procs, rank = jax.process_count(), jax.process_index()
    if args.batch % procs:
        raise SystemExit(f"--batch {args.batch} is not divisible by {procs} processes")
    rows = args.batch * pool // procs
    batches, tokens, useful = [], [], []
    for k in range(2):  # two distinct batches, alternated, so no step sees identical inputs
        # Every process draws the whole global batch and keeps its rows: FLOPs and tokens are
        # counted on the global batch, identically on every process.
        # Tokens and FLOPs count the trained batch; a pool's extra forward pass is overhead.
        full, lengths = synthetic_batch(family, config, args, seed=1000 * k + args.seed,
                                        rows=args.batch * pool)
        local = {name: x[rank * rows:(rank + 1) * rows] for name, x in full.items()}
        batches.append(part.global_batch(local, mesh, batch_sh))
        tokens.append(F.count_real_tokens({n: x[:args.batch] for n, x in full.items()}))
        useful.append(fl.model_flops(config, args.batch, args.inputs, args.targets,
                                     **{n: x[:args.batch] for n, x in lengths.items()}).train)
    padded = fl.model_flops(config, args.batch, args.inputs, args.targets).train
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    # XLA counts a loop body once, not once per iteration: with micro-batches (a lax.scan) its
    # number is not comparable, so it is left out.
    xla_flops = _xla_flops(compiled) if args.micro_batches == 1 else None
    return Variant(label, args, config, compiled, state, batches, tokens, float(padded),
                   float(np.mean(useful)), compile_s, xla_flops, mesh.size)


def _xla_flops(compiled: Any) -> float | None:
    """XLA's own FLOP count of the compiled step (per device program), when it offers one."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - optional diagnostics; some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = cost.get("flops") if isinstance(cost, dict) else None
    return float(value) if value is not None and value >= 0 else None


def _peak_memory() -> int | None:
    """Peak bytes in use on device 0 (GPU/TPU allocators report it; CPU does not)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not implemented on every backend
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def run_step(v: Variant, i: int) -> float:
    import jax

    t0 = time.perf_counter()
    v.state, metrics = v.compiled(v.state, v.batches[i % len(v.batches)])
    jax.block_until_ready((v.state, metrics))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(v: Variant, peak: float | None) -> dict[str, Any]:
    from mtl_jax.training import flops as fl

    med = statistics.median(v.times)
    tokens = statistics.mean(v.tokens)
    out = {
        "variant": v.label,
        "compile_s": v.compile_s,
        "step_median_s": med,
        "step_p90_s": percentile(v.times, 0.9),
        "steps_per_s": 1.0 / med,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / med,
        "train_flops_per_step": v.flops_padded,
        "useful_train_flops_per_step": v.flops_useful,
        "tflops_per_s": v.flops_padded / med / 1e12,
        "tflops_per_s_per_device": v.flops_padded / med / 1e12 / v.num_devices,
        "mfu": fl.mfu(v.flops_padded, med, peak, v.num_devices),
        "useful_mfu": fl.mfu(v.flops_useful, med, peak, v.num_devices),
        "xla_flops_per_step_per_device": v.xla_flops,
        "num_devices": v.num_devices,
        "step_times_s": v.times,
    }
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]], padded: bool) -> str:
    head = ["variant", "compile s", "median ms", "p90 ms", "steps/s", "tokens/s",
            "TFLOP/s", "TFLOP/s/dev", "MFU"]
    if not padded:
        head.append("useful MFU")
    head.append("XLA/analytic")
    lines = [head]
    for r in rows:
        xla = r["xla_flops_per_step_per_device"]
        ratio = (None if xla is None else
                 xla * r["num_devices"] / r["train_flops_per_step"])
        cells = [r["variant"], _fmt(r["compile_s"], ".1f"), _fmt(1e3 * r["step_median_s"], ".1f"),
                 _fmt(1e3 * r["step_p90_s"], ".1f"), _fmt(r["steps_per_s"], ".3f"),
                 _fmt(r["tokens_per_s"], ",.0f"), _fmt(r["tflops_per_s"], ".3f"),
                 _fmt(r["tflops_per_s_per_device"], ".3f"),
                 _fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f")]
        if cells[-1] != "-":
            cells[-1] += "%"
        if not padded:
            u = r["useful_mfu"]
            cells.append("-" if u is None else f"{100 * u:.1f}%")
        cells.append(_fmt(ratio, ".3f"))
        lines.append(cells)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if j else str(c).ljust(w)
                     for j, (c, w) in enumerate(zip(row, widths, strict=True))) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def paired_ratios(base: Variant, other: Variant) -> list[float]:
    """Per round: throughput of ``other`` over ``base`` (tokens/s; = time ratio at equal batch)."""
    tb, to = statistics.mean(base.tokens), statistics.mean(other.tokens)
    return [(to / o) / (tb / b) for b, o in zip(base.times, other.times, strict=True)]


def environment() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> Any:
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tools below
    if "--aot" in argv:  # compile time and memory without an accelerator: tools/benchmark_aot.py
        from benchmark_aot import main as aot_main

        return aot_main([a for a in argv if a != "--aot"])
    if "--data" in argv:  # the input pipeline instead of the step: tools/benchmark_data.py
        import benchmark_data

        return benchmark_data.main([a for a in argv if a != "--data"])
    args = parse_args(argv)
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.peer:  # torch shares the accelerator: JAX must not take 75% of it up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import benchmark_peer as peer

        peer.single_task(args)
    try:
        import mtl_jax  # noqa: F401
    except ImportError:  # a checkout that is not pip-installed (e.g. the GPU machine)
        sys.path.insert(0, str(REPO_ROOT))
    import jax

    from mtl_jax.training import flops as fl

    env = environment()
    accelerator = env["platform"] != "cpu"
    default_dtype = "bfloat16" if accelerator else "float32"
    print("versions: " + " ".join(f"{k}={env[k]}" for k in
                                  ("python", "jax", "jaxlib", "flax", "optax")))
    print(f"device: {env['devices']} x {env['device_kind']} ({env['platform']}), "
          f"{env['processes']} process(es), {env['host_cpus']} host CPUs")
    base, source = base_config(args.model, args.sizes)
    print(f"model: {args.model} sizes from {source}")

    built: list[Variant] = []
    for label, vargs in variants(args):
        dtype = vargs.dtype or default_dtype
        v = build_variant(label, vargs, base, dtype)
        built.append(v)
        c = v.config
        print(f"[{label}] compiled in {v.compile_s:.1f} s; dtype={dtype} mesh={vargs.mesh} "
              f"rules={vargs.rules} micro_batches={vargs.micro_batches} batch={vargs.batch} "
              f"attention={vargs.attention} dropout={vargs.dropout}")
    ours = list(built)
    if args.peer:
        built += peer.build_peers(sys.modules[__name__], ours[0],
                                  tuple(k for k in args.peer_kinds.split(",") if k))
    c = built[0].config
    shape = (f"batch {args.batch} x inputs {args.inputs}"
             + (f" -> targets {args.targets}" if family_of(args.model) == "t5" else ""))
    print(f"config: {c}")
    print(f"batch: {shape}, real-token fill >= {args.min_fill:g}")

    for v in built:
        for i in range(args.warmup):
            run_step(v, i)
    for i in range(args.steps):
        # Interleaved: every round runs each variant once, in alternating order (A B, B A, ...)
        # so neither always runs right after the other.
        for v in built if i % 2 == 0 else built[::-1]:
            v.times.append(run_step(v, i))

    memory = _peak_memory()
    if memory is not None:
        print(f"peak device memory (all variants, device 0): {memory / 2**30:.2f} GiB")
    peaks = {}
    for v in built:
        dtype = v.config.dtype
        peak = (args.peak_tflops * 1e12 if args.peak_tflops
                else fl.peak_flops(jax.devices()[0], dtype))
        peaks[v.label] = peak
    rows = [summarize(v, peaks[v.label]) for v in built]
    padded = args.min_fill >= 1.0
    print()
    print(table(rows, padded))
    peak0 = peaks[built[0].label]
    print(f"\nFLOPs: analytic train FLOPs per step {built[0].flops_padded:.4g} (batch shape; "
          f"mtl_jax/training/flops.py); MFU against "
          + ("an unknown peak (CPU): not reported" if peak0 is None
             else f"{peak0 / 1e12:.0f} TFLOP/s per device"))
    parts = fl.model_flops(c, args.batch, args.inputs, args.targets).breakdown
    total = sum(parts.values())
    print("forward FLOPs by component: " + ", ".join(
        f"{k} {100 * x / total:.1f}%" for k, x in sorted(parts.items(), key=lambda kv: -kv[1])
        if x))
    result: dict[str, Any] = {"args": vars(args), "environment": env, "sizes_from": source,
                              "config": dataclasses.asdict(c), "results": rows,
                              "peak_device_memory_bytes": memory}
    if args.peer:
        result["peer"] = peer.report(sys.modules[__name__], ours, built[len(ours):])
    if len(ours) > 1:
        ratios = {}
        print(f"\nside by side, {args.steps} interleaved rounds "
              f"(throughput relative to {built[0].label}; >1 = faster):")
        for other in ours[1:]:
            r = paired_ratios(built[0], other)
            summary = {"median": statistics.median(r), "p10": percentile(r, 0.1),
                       "p90": percentile(r, 0.9)}
            ratios[other.label] = summary
            print(f"  {other.label} / {built[0].label}: {summary['median']:.3f} "
                  f"(p10 {summary['p10']:.3f}, p90 {summary['p90']:.3f})")
        result["ratios_vs_first"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
