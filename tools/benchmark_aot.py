"""Compile time and per-device memory of the real train step, without an accelerator.

    python tools/benchmark.py --aot --models mt5_large,mt5_xl --scan off,on \
        --remat none,full,save_dots --batch 128 --inputs 512 --targets 128 --mesh 1,8,1

Each configuration is lowered and compiled ahead of time on fake CPU devices
(``--xla_force_host_platform_device_count``) from abstract inputs only (``jax.ShapeDtypeStruct``
state and batch carrying the trainer's shardings: no parameter is ever initialised), with the
trainer's own step (``training/step.make_train_step``, real optimizer, donation, shardings from
``training/partitioning``). ``compiled.memory_analysis()`` gives the per-device program's
argument, output, alias and temporary sizes; the peak is ``argument + output - alias + temp``.

Every configuration runs in its own subprocess with a wall-clock limit (``--timeout``) and a
resident-memory limit (``--max_rss_gib``), so one that would take too long or too much RAM on a
small machine is recorded as not finished instead of stopping the table. CPU memory figures are
XLA:CPU's buffer assignment: the same program on a GPU fuses differently, so read them as
relative costs of the switches (scan, remat), not as a GPU's exact footprint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
# The options tests/helpers.py uses (FAST_COMPILE): LLVM's optimisation, not XLA's HLO passes.
FAST_CODEGEN = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mt5_large,mt5_xl",
                   help="comma-separated sizes of tools/benchmark.py (PUBLISHED_SIZES)")
    p.add_argument("--scan", default="off,on", help="scan_layers values: off,on")
    p.add_argument("--remat", default="none,full,save_dots", help="remat policies")
    p.add_argument("--batch", type=int, default=128, help="global batch (examples)")
    p.add_argument("--inputs", type=int, default=512)
    p.add_argument("--targets", type=int, default=128)
    p.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
    p.add_argument("--rules", default="fsdp")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices")
    p.add_argument("--layers", type=int, help="override: layers (small runs, tests)")
    p.add_argument("--d_model", type=int, help="override: d_model / hidden_size")
    p.add_argument("--d_ff", type=int, help="override: d_ff / intermediate_size")
    p.add_argument("--heads", type=int, help="override: attention heads")
    p.add_argument("--vocab", type=int, help="override: vocabulary size")
    p.add_argument("--codegen", choices=("fast", "default"), default="fast",
                   help="XLA:CPU code generation: 'fast' skips LLVM's expensive passes (the HLO "
                        "passes, SPMD partitioning and buffer assignment, hence the memory "
                        "figures, are unchanged; compile times shrink)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    p.add_argument("--max_rss_gib", type=float, default=12.0,
                   help="kill a configuration whose process grows beyond this resident size")
    p.add_argument("--json", default=None, help="write every configuration's result here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config
    return p.parse_args(argv)


def _switch(text: str) -> bool:
    if text not in ("off", "on"):
        raise SystemExit(f"--scan values are off/on, got {text!r}")
    return text == "on"


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"model": m, "scan": s, "remat": r}
            for m in args.models.split(",") for s in args.scan.split(",")
            for r in args.remat.split(",")]


# ------------------------------------------------------------------------------------------------
# One configuration (in its own process)
# ------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, model: str, scan: bool, remat: str) -> dict[str, Any]:
    """Lower and compile the train step of one configuration from abstract inputs."""
    import benchmark
    import flax
    import jax
    import jaxlib
    import numpy as np
    from flax import nnx

    from mtl_jax.models.t5 import T5Model
    from mtl_jax.models.xlmr import XLMRMultiTask
    from mtl_jax.training import optimizers
    from mtl_jax.training import partitioning as part
    from mtl_jax.training.objectives import ClassificationObjective, EncoderDecoderObjective
    from mtl_jax.training.step import make_train_step
    from mtl_jax.training.train_state import train_state_shardings

    family = benchmark.family_of(model)
    base, _ = benchmark.base_config(model, "auto")
    bargs = argparse.Namespace(
        model=model, layers=args.layers, decoder_layers=None, d_model=args.d_model,
        d_ff=args.d_ff, heads=args.heads, d_kv=None, vocab=args.vocab, attention="xla",
        inputs=args.inputs, targets=args.targets, task_labels="3,2,2,2,2,10", min_fill=1.0,
        method="plain", scan="on" if scan else "off", remat=remat)
    config = benchmark.model_config(base, bargs, args.dtype)
    mesh = part.make_mesh(*benchmark.mesh_sizes(args.mesh))
    rules = part.rules_by_name(args.rules)
    part.check_batch_size(args.batch, mesh, rules)
    labels = benchmark.task_labels(bargs)
    if family == "t5":
        model_cls, objective = T5Model, EncoderDecoderObjective(num_tasks=len(labels))
        optimizer = optimizers.make_optimizer("adafactor", learning_rate=1e-3)
    else:
        model_cls = XLMRMultiTask
        objective = ClassificationObjective(num_tasks=len(labels), num_labels=labels)
        optimizer = optimizers.make_optimizer("adamw", learning_rate=1e-5)
    t0 = time.perf_counter()
    graphdef, state, shardings = train_state_shardings(
        lambda: model_cls(config, rngs=nnx.Rngs(0)), optimizer, mesh, rules)
    batch_sh = part.batch_sharding(mesh, rules)
    example, _ = benchmark.synthetic_batch(family, config, bargs, seed=0, rows=2)
    batch = {k: jax.ShapeDtypeStruct((args.batch,) + v.shape[1:], v.dtype, sharding=batch_sh)
             for k, v in example.items()}
    step = make_train_step(graphdef, objective, optimizer, mesh, shardings, batch_sh, rules=rules)
    t1, c1 = time.perf_counter(), time.process_time()
    lowered = step.lower(state, batch)
    t2, c2 = time.perf_counter(), time.process_time()
    compiled = lowered.compile(FAST_CODEGEN if args.codegen == "fast" else None)
    t3, c3 = time.perf_counter(), time.process_time()
    mem = compiled.memory_analysis()
    out: dict[str, Any] = {
        "model": model, "scan": scan, "remat": remat, "status": "ok",
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "setup_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
        # CPU seconds of this process: what the wall times would be on an unloaded machine
        # (XLA:CPU compiles mostly on one thread), when others share the cores.
        "lower_cpu_s": c2 - c1, "compile_cpu_s": c3 - c2,
        "hlo_chars": len(lowered.as_text()),
        "versions": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}",
    }
    if mem is not None:
        sizes = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
                 ("argument", "output", "alias", "temp", "generated_code")}
        out.update({f"{k}_bytes": v for k, v in sizes.items()})
        out["peak_bytes"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    return out


# ------------------------------------------------------------------------------------------------
# The driver: one subprocess per configuration, time- and memory-boxed
# ------------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_boxed(argv: list[str], cfg: dict[str, Any], timeout: float, max_rss: float) -> dict[str, Any]:
    """Run one configuration in a child process; never longer than ``timeout`` seconds or
    larger than ``max_rss`` bytes resident."""
    one = json.dumps(cfg)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", one]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "tools"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_rss, status = 0, None
    while proc.poll() is None:
        peak_rss = max(peak_rss, _rss_bytes(proc.pid))
        elapsed = time.perf_counter() - start
        if elapsed > timeout:
            status = f"not finished: over {timeout:.0f} s"
        elif peak_rss > max_rss:
            status = f"not finished: host memory over {max_rss / GIB:.0f} GiB"
        if status:
            proc.kill()
            break
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    result = {**cfg, "wall_s": wall, "host_rss_peak_bytes": peak_rss}
    if status:
        return {**result, "status": status}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = stderr.strip().splitlines()[-3:]
        return {**result, "status": f"failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return {**result, **json.loads(lines[-1])}


def _gib(x: Any) -> str:
    return f"{x / GIB:.2f}" if isinstance(x, int) else "-"


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<10} {'scan':<4} {'remat':<9} {'lower s':>8} {'compile s':>9} "
            f"{'compile CPU s':>13} "
            f"{'temp GiB':>8} {'args GiB':>8} {'peak GiB':>8} {'host RSS GiB':>12}  status")
    out = [head, "-" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        out.append(
            f"{r['model']:<10} {'on' if r['scan'] else 'off':<4} {r['remat']:<9} "
            f"{r['lower_s'] if ok else float('nan'):>8.1f} {r['compile_s'] if ok else float('nan'):>9.1f} "
            f"{r.get('compile_cpu_s', float('nan')):>13.1f} "
            f"{_gib(r.get('temp_bytes')):>8} {_gib(r.get('argument_bytes')):>8} "
            f"{_gib(r.get('peak_bytes')):>8} {_gib(r.get('host_rss_peak_bytes')):>12}  {r['status']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one is not None:  # the child: set the fake devices before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
        cfg = json.loads(args.one)
        print(json.dumps(measure(args, cfg["model"], cfg["scan"], cfg["remat"])), flush=True)
        return []
    print(f"AOT train step: batch {args.batch} x {args.inputs} -> {args.targets}, mesh "
          f"{args.mesh} ({args.rules} rules), compute {args.dtype}, {args.devices} fake CPU "
          f"devices, {args.codegen} codegen; limits {args.timeout:.0f} s and {args.max_rss_gib:g} GiB per configuration",
          flush=True)
    rows = []
    for cfg in configurations(args):
        cfg = {**cfg, "scan": _switch(cfg["scan"])}
        row = run_boxed(argv, cfg, args.timeout, args.max_rss_gib * GIB)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    main()
