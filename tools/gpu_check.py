"""The GPU check in one command: parity, attention paths, speed against the PyTorch peer, MFU.

    python tools/gpu_check.py --output gpu_check_out          # an H100/H200: under 8 minutes
    python tools/gpu_check.py --smoke --output /tmp/smoke     # tiny configs on any CPU

Needs only what an accelerator image has (jax with CUDA, flax, optax, orbax, transformers, torch,
numpy): no TensorFlow, seqio or gin (sizes come from tools/benchmark.py's built-in table). Each
section runs in its own process (JAX and torch both hold GPU memory until exit; a hung or failed
section loses nothing else) under a time budget, and the whole run under ``--budget`` seconds.
Sections, in priority order:

- ``device``: versions, device kind, vendor peak, and a measured bf16 matmul rate (TFLOP/s);
- ``parity``: our mT5 and XLM-R against transformers on the device, float32 (full-precision
  matmuls on both sides) and bfloat16 (ours in bf16 must be no further from the float32 truth
  than transformers under bf16 autocast, x2, with a floor);
- ``attention``: the ``cudnn`` and ``xla`` attention paths agree (bf16, forward and gradients),
  GPU only;
- ``bench_mt5``: mT5-base 512 -> 128 bf16, ours vs HF eager vs torch.compile
  (``tools/benchmark.py --peer hf``);
- ``bench_xlmr``: XLM-R base at 256, the same;
- ``methods``: R3F and LoRA step time relative to the plain step (XLM-R base at 256).

Writes ``OUTPUT/gpu_check.json`` (every section's numbers, status and time) and
``OUTPUT/summary.txt`` (the headline numbers beside the targets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO_ROOT = TOOLS.parent
# Targets of issue 14, printed beside the results.
TARGETS = {"ours / hf eager": 1.5, "ours / hf compile": 1.15, "mfu_mt5_base": 0.40,
           "mfu_xlmr_base": 0.45}
NO_GPU = "skipped: no GPU"


def _setup_path() -> None:
    for p in (str(REPO_ROOT), str(TOOLS)):
        if p not in sys.path:
            sys.path.insert(0, p)


def _on_gpu() -> bool:
    import jax

    return jax.devices()[0].platform == "gpu"


# ------------------------------------------------------------------------------------------------
# Sections (each runs in a fresh process and returns a JSON-able dict)
# ------------------------------------------------------------------------------------------------


def section_device(smoke: bool) -> dict[str, Any]:
    """Versions, device, vendor peak and a measured matmul rate (the practical ceiling)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mtl_jax.training import flops as fl

    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "transformers",
                 "numpy"):
        try:
            versions[name] = __import__(name, fromlist=["_"]).__version__
        except Exception as e:  # noqa: BLE001 - report what is missing, keep going
            versions[name] = f"unavailable ({type(e).__name__})"
    dev = jax.devices()[0]
    gpu = _on_gpu()
    dtype = jnp.bfloat16 if gpu else jnp.float32
    n, iters = (8192, 30) if gpu and not smoke else (512, 5)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    mm = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(mm(a, a))
    t0 = time.perf_counter()
    for _ in range(iters):
        out = mm(a, a)
    jax.block_until_ready(out)
    rate = 2 * n**3 * iters / (time.perf_counter() - t0)
    peak = fl.peak_flops(dev, "bfloat16")
    return {"versions": versions, "platform": dev.platform, "device_kind": dev.device_kind,
            "devices": jax.device_count(), "vendor_peak_bf16_tflops": peak and peak / 1e12,
            "matmul": {"n": n, "dtype": str(jnp.dtype(dtype)), "tflops": rate / 1e12,
                       "fraction_of_peak": peak and rate / peak}}


def _rel(ours: Any, ref: Any) -> float:
    import numpy as np

    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def _hf_models(smoke: bool, tmp: Path) -> dict[str, tuple[Any, Path, dict[str, Any]]]:
    """Random-weight transformers mT5 and XLM-R classifier saved to ``tmp``, with inputs."""
    import numpy as np
    import torch
    import transformers

    d, layers, length = (64, 1, 12) if smoke else (256, 2, 64)
    torch.manual_seed(0)
    t5 = transformers.MT5ForConditionalGeneration(transformers.MT5Config(
        vocab_size=512, d_model=d, d_kv=d // 4, d_ff=2 * d, num_layers=layers,
        num_decoder_layers=layers, num_heads=4, dropout_rate=0.0, tie_word_embeddings=False,
        decoder_start_token_id=0)).eval()
    xlmr = transformers.XLMRobertaForSequenceClassification(transformers.XLMRobertaConfig(
        vocab_size=512, hidden_size=d, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * d, max_position_embeddings=length + 2, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    rng = np.random.default_rng(0)
    batch, dec = 4, max(4, length // 4)
    lengths = np.array([length, length - 3, length // 2, 3])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    enc = np.where(mask == 1, rng.integers(2, 512, (batch, length)), 0)
    labels = rng.integers(2, 512, (batch, dec))
    labels[1:, dec - 2:] = -100
    ids = np.where(mask == 1, rng.integers(3, 512, (batch, length)), 1)
    ids[:, 0] = 0
    out = {}
    for name, model, inputs in (
        ("mt5", t5, {"input_ids": enc, "attention_mask": mask, "labels": labels}),
        ("xlmr", xlmr, {"input_ids": ids, "attention_mask": mask,
                        "labels": rng.integers(0, 3, batch)}),
    ):
        model.save_pretrained(tmp / name)
        out[name] = (model, tmp / name, inputs)
    return out


def _ours_forward(name: str, directory: Path, inputs: dict[str, Any], dtype: str,
                  attention: str = "auto") -> tuple[Any, float]:
    """Our logits and loss (as training normalises it) for the saved HF model."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from mtl_jax.models import hf_t5, hf_xlmr, losses

    if name == "mt5":
        model, _ = hf_t5.load_hf_t5(directory, dtype=dtype, attention_impl=attention)
        labels = inputs["labels"]
        weights = (labels != -100).astype(np.float32)
        targets = np.where(labels == -100, 0, labels)
        dec_in = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)

        @nnx.jit
        def run(m, enc, dec_in, targets, weights):
            logits = m(enc, dec_in)
            ce, _ = losses.token_cross_entropy(logits, targets, weights)
            return logits, losses.normalize(jnp.sum(ce), weights, "tokens")

        logits, loss = run(model, inputs["input_ids"], dec_in, targets, weights)
    else:
        model = hf_xlmr.load_hf_xlmr(directory, dtype=dtype, attention_impl=attention).model

        @nnx.jit
        def run(m, ids, mask, labels):
            logits = m(ids, mask, jnp.zeros(ids.shape[:1], jnp.int32))["logits"][:, :3]
            logp = jax.nn.log_softmax(logits.astype(jnp.float32))
            return logits, -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

        logits, loss = run(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    return np.asarray(logits.astype(jnp.float32)), float(loss)


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32) while tracing and running under it."""
    import jax

    scoped = getattr(jax, "default_matmul_precision", None)
    if scoped is not None:
        with scoped("highest"):
            yield
        return
    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", old)


def section_parity(smoke: bool) -> dict[str, Any]:
    """Ours vs transformers on this device: float32 tight, bfloat16 as close as HF's own bf16."""
    import torch

    device = "cuda" if _on_gpu() else "cpu"
    out: dict[str, Any] = {}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (hf, directory, inputs) in _hf_models(smoke, Path(tmp)).items():
            hf = hf.to(device)
            tin = {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}
            with torch.no_grad():
                ref = hf(**tin)
                with torch.autocast(device, dtype=torch.bfloat16):
                    ref16 = hf(**tin)
            ref_logits = ref.logits.float().cpu().numpy()
            with _full_precision():  # no TF32: torch's float32 matmuls are full precision
                logits32, loss32 = _ours_forward(name, directory, inputs, "float32")
            logits16, loss16 = _ours_forward(name, directory, inputs, "bfloat16")
            r = {
                "float32_logits_rel": _rel(logits32, ref_logits),
                "float32_loss_rel": abs(loss32 - ref.loss.item()) / abs(ref.loss.item()),
                "bfloat16_logits_rel": _rel(logits16, ref_logits),
                "hf_bfloat16_logits_rel": _rel(ref16.logits.float().cpu().numpy(), ref_logits),
                "bfloat16_loss_rel": abs(loss16 - ref.loss.item()) / abs(ref.loss.item()),
            }
            r["bfloat16_bound"] = max(2 * r["hf_bfloat16_logits_rel"], 2e-2)
            if r["float32_logits_rel"] > 1e-4 or r["float32_loss_rel"] > 1e-4:
                failures.append(f"{name} float32")
            if r["bfloat16_logits_rel"] > r["bfloat16_bound"] or r["bfloat16_loss_rel"] > 2e-2:
                failures.append(f"{name} bfloat16")
            out[name] = r
    if failures:
        raise AssertionError(f"parity out of bounds: {failures}: {json.dumps(out)}")
    return out


def section_attention(smoke: bool) -> dict[str, Any]:
    """The fused cuDNN kernel and the einsum path agree (bf16 logits and loss gradients)."""
    if not _on_gpu():
        return {"status": NO_GPU}
    import jax
    import jax.numpy as jnp
    from flax import nnx

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = _hf_models(smoke, Path(tmp))
        for name, (_, directory, inputs) in models.items():
            res = {}
            for impl in ("xla", "cudnn"):
                res[impl] = _ours_forward(name, directory, inputs, "bfloat16", attention=impl)
            out[name] = {"logits_rel": _rel(res["cudnn"][0], res["xla"][0]),
                         "loss_abs": abs(res["cudnn"][1] - res["xla"][1])}
        # Gradients through the kernel's backward: XLM-R's input-embedding gradient norm.
        from mtl_jax.models import hf_xlmr

        _, directory, inputs = models["xlmr"]
        grads = {}
        for impl in ("xla", "cudnn"):
            model = hf_xlmr.load_hf_xlmr(directory, dtype="bfloat16", attention_impl=impl).model

            @nnx.jit
            def grad(m, ids, mask):
                def f(m):
                    logits = m(ids, mask, jnp.zeros(ids.shape[:1], jnp.int32))["logits"]
                    return jnp.sum(logits.astype(jnp.float32) ** 2)
                g = nnx.grad(f)(m)
                return jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2)
                                    for x in jax.tree.leaves(g)))

            grads[impl] = float(grad(model, jnp.asarray(inputs["input_ids"]),
                                     jnp.asarray(inputs["attention_mask"])))
        out["xlmr_grad_norm_rel"] = abs(grads["cudnn"] - grads["xla"]) / grads["xla"]
    bad = [k for k, v in out.items() if isinstance(v, dict) and v["logits_rel"] > 3e-2]
    if bad or out["xlmr_grad_norm_rel"] > 3e-2:
        raise AssertionError(f"cudnn and xla attention disagree: {json.dumps(out)}")
    return out


def _bench(argv: list[str]) -> dict[str, Any]:
    """``tools/benchmark.py`` in this process; its JSON result."""
    import benchmark

    return benchmark.main(argv)


def _bench_args(model: str, smoke: bool, batch: int, extra: list[str]) -> list[str]:
    if smoke:
        sizes = (["--layers", "1", "--vocab", "1000", "--inputs", "32", "--targets", "8"]
                 if model.startswith("mt5") else
                 ["--layers", "1", "--vocab", "1000", "--inputs", "32"])
        return ["--model", model.replace("base", "tiny"), *sizes, "--batch", "8", "--steps", "2",
                "--warmup", "1", *extra]
    return ["--model", model, "--batch", str(batch), "--steps", "10", "--warmup", "2",
            "--dtype", "bfloat16", *extra]


def _peer_section(model: str, length: list[str], smoke: bool, batch: int) -> dict[str, Any]:
    kinds = "eager" if smoke else "eager,compile"  # torch.compile on a CPU takes minutes
    res = _bench(_bench_args(model, smoke, batch, [*([] if smoke else length), "--peer", "hf",
                                                   "--peer_kinds", kinds, "--task_labels", "3"]))
    rows = {r["variant"]: r for r in res["results"]}
    return {"config": res["config"], "args": res["args"],
            "ratios": res["peer"]["ratios"], "peer_versions": res["peer"]["versions"],
            "peer_failed": res["peer"]["failed"],
            "variants": {k: {f: r[f] for f in ("compile_s", "step_median_s", "step_p90_s",
                                               "tokens_per_s", "tflops_per_s_per_device", "mfu")}
                         for k, r in rows.items()},
            "peak_device_memory_bytes": res["peak_device_memory_bytes"]}


def section_bench_mt5(smoke: bool, batch: int = 32) -> dict[str, Any]:
    return _peer_section("mt5_base", ["--inputs", "512", "--targets", "128"], smoke, batch)


def section_bench_xlmr(smoke: bool, batch: int = 32) -> dict[str, Any]:
    return _peer_section("xlmr_base", ["--inputs", "256"], smoke, batch)


def section_methods(smoke: bool, batch: int = 32) -> dict[str, Any]:
    res = _bench(_bench_args("xlmr_base", smoke, batch,
                             [*([] if smoke else ["--inputs", "256"]),
                              "--compare", "method=plain,r3f,lora"]))
    return {"ratios_vs_plain": res["ratios_vs_first"],
            "step_median_s": {r["variant"]: r["step_median_s"] for r in res["results"]}}


SECTIONS: dict[str, tuple[Callable[..., dict[str, Any]], int]] = {
    # name: (function, time budget in seconds on the GPU; --smoke scales them)
    "device": (section_device, 30),
    "parity": (section_parity, 50),
    "attention": (section_attention, 40),
    "bench_mt5": (section_bench_mt5, 200),
    "bench_xlmr": (section_bench_xlmr, 100),
    "methods": (section_methods, 100),
}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def run_section(name: str, smoke: bool, batch: int, path: Path) -> None:
    """Child process: run one section, write ``{"status", "result" | "error"}`` to ``path``."""
    _setup_path()
    fn = SECTIONS[name][0]
    try:
        kwargs = {"batch": batch} if name.startswith(("bench", "methods")) else {}
        result = fn(smoke, **kwargs)
        status = result.pop("status", "ok") if isinstance(result, dict) else "ok"
        payload = {"status": status, "result": result}
    except Exception as e:  # noqa: BLE001 - the parent records the failure and goes on
        payload = {"status": f"error: {type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
    path.write_text(json.dumps(payload, indent=2, default=str))


def summarize(report: dict[str, Any]) -> str:
    """The headline numbers beside the targets."""
    s = report["sections"]
    lines = [f"gpu_check ({'smoke' if report['smoke'] else 'full'}) on "
             f"{s.get('device', {}).get('result', {}).get('device_kind', '?')}, "
             f"{report['total_s']:.0f} s"]
    for name, sec in s.items():
        lines.append(f"  {name:<10} {sec['status'][:150]} ({sec['seconds']:.0f} s)")
    dev = s.get("device", {}).get("result", {})
    matmul = dev.get("matmul", {}).get("tflops")
    if matmul:
        lines.append(f"matmul: {matmul:.1f} TFLOP/s measured ({dev['matmul']['dtype']}), vendor "
                     f"peak {dev.get('vendor_peak_bf16_tflops') or '-'} TFLOP/s bf16")
    for name, target in (("bench_mt5", "mfu_mt5_base"), ("bench_xlmr", "mfu_xlmr_base")):
        res = s.get(name, {}).get("result")
        if not res:
            continue
        for key, r in res["ratios"].items():
            goal = TARGETS.get("ours / " + key.split(" / ", 1)[1])
            lines.append(f"{name}: {key} {r['median']:.3f} (p10 {r['p10']:.3f}, p90 "
                         f"{r['p90']:.3f}); target >= {goal}: "
                         f"{'met' if r['median'] >= goal else 'MISSED'}")
        ours = res["variants"]["run"]
        mfu = ours["mfu"]
        vs_matmul = (ours["tflops_per_s_per_device"] / matmul) if matmul else None
        lines.append(
            f"{name}: ours {ours['tokens_per_s']:,.0f} tokens/s, "
            f"{ours['tflops_per_s_per_device']:.2f} TFLOP/s, MFU "
            + ("- (no vendor peak)" if mfu is None else
               f"{100 * mfu:.1f}% (target >= {100 * TARGETS[target]:.0f}%: "
               f"{'met' if mfu >= TARGETS[target] else 'MISSED'})")
            + ("" if vs_matmul is None else f", {100 * vs_matmul:.1f}% of the measured matmul"))
    m = s.get("methods", {}).get("result")
    if m:
        lines.append("methods: " + ", ".join(f"{k} / plain {v['median']:.3f}"
                                             for k, v in m["ratios_vs_plain"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="directory for gpu_check.json + summary.txt")
    p.add_argument("--smoke", action="store_true", help="tiny configs (any CPU)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--batch", type=int, default=32, help="global batch of the benchmarks")
    p.add_argument("--budget", type=float, default=470.0,
                   help="seconds for the whole run (sections left when it is spent are skipped)")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section here
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.section:
        run_section(args.section, args.smoke, args.batch, out / f"section_{args.section}.json")
        return {}
    names = [n for n in args.sections.split(",") if n]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # torch shares the GPU
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    report: dict[str, Any] = {"smoke": args.smoke, "argv": sys.argv[1:], "sections": {}}
    for name in names:
        left = args.budget - (time.perf_counter() - start)
        budget = SECTIONS[name][1] * (3 if args.smoke else 1)
        t0 = time.perf_counter()
        path = out / f"section_{name}.json"
        path.unlink(missing_ok=True)
        if left < 15:
            entry = {"status": "skipped: total time budget spent"}
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name,
                   "--output", str(out), "--batch", str(args.batch),
                   *(["--smoke"] if args.smoke else [])]
            log = out / f"section_{name}.log"
            try:
                with log.open("w") as f:
                    subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                   timeout=min(budget, left), check=False)
                entry = (json.loads(path.read_text()) if path.is_file() else
                         {"status": f"error: no result (see {log.name})"})
            except subprocess.TimeoutExpired:
                entry = {"status": f"timeout after {min(budget, left):.0f} s (see {log.name})"}
        entry["seconds"] = time.perf_counter() - t0
        report["sections"][name] = entry
        print(f"[{name}] {entry['status'][:200]} ({entry['seconds']:.0f} s)", flush=True)
    report["total_s"] = time.perf_counter() - start
    summary = summarize(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "summary.txt").write_text(summary)
    print("\n" + summary, end="")
    return report


if __name__ == "__main__":
    main()
