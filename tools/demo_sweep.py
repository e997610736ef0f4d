"""Run a demo over several seeds (and XLA settings) and score every task against chance.

One run of a from-scratch demo is one draw: its scores move with the seed and with the CPU's
rounding. This runs ``python -m mtl_jax.train`` once per seed, reads each ``results.json`` and
prints, per task (the mean of its primary metric over the languages the mixture trains it on),
the score of every seed, their minimum and median, and the task's chance level from
:mod:`mtl_jax.evaluation.chance` (the better of the majority class and the 99th percentile of
random predictors on the same validation labels).

    python tools/demo_sweep.py --gin_file=demo_mt5.gin --seeds 0 1 2 3 4 --out /tmp/sweep_mt5
    python tools/demo_sweep.py --gin_file=demo_xlmr.gin --xla_flags=--xla_cpu_enable_fast_math=true

Runs already finished under ``--out`` (their ``results.json`` exists) are reused, so an
interrupted sweep continues where it stopped. Writes ``summary.json`` and ``summary.md`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def trained_cells(mixture: str) -> set[tuple[str, str]]:
    """(dataset, language) pairs that the mixture's training tasks cover (XNLI_mix: all 15)."""
    from mtl_jax.data import mixtures, tasks

    cells = set()
    for name in mixtures.mixture_info(mixture).tasks:
        info = tasks.task_info(name)
        for lang in info.languages:
            cells.update({(info.dataset, lang), (info.source_dataset, lang)})
    return cells


def task_chances(mixture: str, split: str = "validation") -> dict[str, dict]:
    """Per dataset: its primary metric, trained languages and chance levels over those cells."""
    import numpy as np

    from mtl_jax.data import eval_sets, mixtures, tasks
    from mtl_jax.evaluation import chance

    trained = trained_cells(mixture)
    by_task: dict[str, dict] = {}
    for name in mixtures.mixture_info(mixture).evaluation_tasks:
        info = tasks.task_info(name)
        if (info.dataset, info.language) not in trained:
            continue
        length = {"inputs": 8, "targets": 8} if info.format == "t2t" else {"inputs": 8}
        examples = eval_sets.load_examples(name, split, length)
        labels = np.array([int(e["label"]) for e in examples])
        groups = (np.array([int(e["query_id"]) for e in examples])
                  if examples and "query_id" in examples[0] else None)
        entry = by_task.setdefault(info.dataset, {
            "metric": info.metrics[0], "num_classes": info.num_classes, "languages": [],
            "rows": [], "cells": []})
        entry["languages"].append(info.language)
        entry["rows"].append(len(labels))
        entry["cells"].append(chance.Cell(labels, groups))
    for entry in by_task.values():
        c = chance.chance(entry["metric"], entry["num_classes"], entry.pop("cells"))
        entry.update(majority=c.majority, random_mean=c.random_mean,
                     random_p99=c.random_quantile, chance=c.level)
    return by_task


def task_scores(report: Mapping, chances: Mapping[str, Mapping]) -> dict[str, float]:
    """Each task's score in a ``results.json`` report: its primary metric averaged over the
    languages it trains on."""
    out = {}
    for dataset, entry in chances.items():
        values = [report["metrics"][dataset][lang][entry["metric"]] for lang in entry["languages"]]
        out[dataset] = float(sum(values) / len(values))
    return out


def run_demo(gin_file: str, model_dir: Path, seed: int, xla_flags: str,
             gin_params: Sequence[str]) -> float:
    """One demo run (reused if finished); returns its wall time in seconds (0 if reused)."""
    if (model_dir / "results.json").exists():
        return 0.0
    env = dict(os.environ, XLA_FLAGS=xla_flags, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mtl_jax.train", f"--gin_file={gin_file}",
           f"--gin_param=TrainConfig.model_dir={model_dir}", f"--gin_param=TrainConfig.seed={seed}",
           "--gin_param=TrainConfig.progress=False", *(f"--gin_param={p}" for p in gin_params)]
    start = time.perf_counter()
    log = model_dir.parent / f"{model_dir.name}.log"
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        raise RuntimeError(f"seed {seed}: the demo exited with {code}; see {log}")
    return time.perf_counter() - start


def summarise(scores: Mapping[int, Mapping[str, float]], chances: Mapping[str, Mapping]) -> str:
    """A markdown table: task x seed, min, median, chance level and the smallest margin."""
    seeds = sorted(scores)
    head = ["task", *(f"seed {s}" for s in seeds), "min", "median", "chance", "min - chance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in sorted(chances):
        values = [scores[s][task] for s in seeds]
        low, level = min(values), chances[task]["chance"]
        row = [task, *(f"{100 * v:.1f}" for v in values), f"{100 * low:.1f}",
               f"{100 * statistics.median(values):.1f}", f"{100 * level:.1f}",
               f"{100 * (low - level):+.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="demo_mt5.gin")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--xla_flags", default="", help="XLA_FLAGS for the runs (default: none)")
    p.add_argument("--gin_param", action="append", default=[], help="extra binding (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="default /tmp/demo_sweep_<gin name>")
    args = p.parse_args(argv)
    out = args.out or Path("/tmp") / f"demo_sweep_{Path(args.gin_file).stem}"
    out.mkdir(parents=True, exist_ok=True)

    from mtl_jax import configurables, gin_config

    gin_config.parse([args.gin_file], args.gin_param)
    mixture = configurables.train_config().mixture
    chances = task_chances(mixture)
    scores, walls = {}, {}
    for seed in args.seeds:
        model_dir = out / f"seed{seed}"
        walls[seed] = run_demo(args.gin_file, model_dir, seed, args.xla_flags, args.gin_param)
        report = json.loads((model_dir / "results.json").read_text())
        scores[seed] = task_scores(report, chances)
        print(f"seed {seed}: " + ", ".join(f"{t} {100 * v:.1f}" for t, v in
                                          sorted(scores[seed].items()))
              + (f" ({walls[seed]:.0f} s)" if walls[seed] else " (reused)"), flush=True)
    table = summarise(scores, chances)
    title = (f"{args.gin_file}, seeds {args.seeds}, XLA_FLAGS={args.xla_flags!r}, "
             f"extra bindings {args.gin_param}")
    (out / "summary.md").write_text(f"{title}\n\n{table}\n")
    (out / "summary.json").write_text(json.dumps({
        "gin_file": args.gin_file, "xla_flags": args.xla_flags, "gin_params": args.gin_param,
        "scores": scores, "wall_s": walls, "chance": chances}, indent=1, default=str))
    print(f"\n{title}\n\n{table}")
    failed = [t for t in chances if min(scores[s][t] for s in scores) <= chances[t]["chance"]]
    if failed:
        print(f"\nbelow chance on some seed: {', '.join(sorted(failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
