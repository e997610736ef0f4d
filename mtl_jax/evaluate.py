"""``python -m mtl_jax.evaluate --gin_file=F --checkpoint=DIR [--split validation|test] [--step N|best|latest]``

Evaluates a training checkpoint on every (task, language) of the run's mixture and prints the
task x language table; saves it as ``eval_{split}_step{N}.{md,csv,json}`` next to the checkpoints
(or in ``--output_dir``). Use the same gin files as the training run (the model and optimizer
shapes must match the checkpoint; a mismatch is reported field by field).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--gin_file", action="append", default=[], required=True)
    p.add_argument("--gin_param", action="append", default=[])
    p.add_argument("--checkpoint", required=True,
                   help="MODEL_DIR of a training run, its checkpoints/ folder, or one step folder")
    p.add_argument("--split", default="validation", choices=["validation", "test"])
    p.add_argument("--step", default="best", help="a step number, 'best' or 'latest'")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--log_level", default="WARNING")
    from mtl_jax import distributed

    distributed.add_flags(p)
    return p.parse_args(argv)


def checkpoint_dir(path: Path) -> tuple[Path, int | None]:
    """(the checkpoints/ folder, the step if ``path`` names one step folder)."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and path.parent.is_dir():
        return path.parent, int(path.name)
    return path, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_jax.cli_logging import setup_logging

    setup_logging(args.log_level)
    from mtl_jax import distributed

    try:
        distributed.initialize(distributed.launch_from(args))
    except distributed.DistributedConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mtl_jax import configurables, experiment, gin_config
    from mtl_jax.evaluation import tables
    from mtl_jax.training.checkpoints import CheckpointStore, IncompatibleCheckpointError

    try:
        gin_config.parse(args.gin_file, args.gin_param)
        cfg = configurables.train_config()
        ckpt_dir, step = checkpoint_dir(Path(args.checkpoint))
        if not ckpt_dir.is_dir():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such directory")
        import dataclasses

        cfg = dataclasses.replace(cfg, model_dir=str(ckpt_dir.parent))
        exp = experiment.build(cfg)
        store = CheckpointStore(ckpt_dir, async_save=False)
        steps = store.all_steps()
        if not steps:
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no checkpoints in {ckpt_dir}")
        if step is None:
            if args.step == "latest":
                step = store.latest_step()
            elif args.step == "best":
                step = store.best_step() or store.latest_step()
            elif args.step.isdigit():
                step = int(args.step)
            else:
                raise ValueError(f"--step must be a number, 'best' or 'latest', got {args.step!r}")
        if step not in steps:
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no step {step}; steps: {steps}")
        state, _, _ = store.restore(step, exp.abstract_state, exp.model_record())
        store.close()
    except (gin_config.GinConfigError, experiment.ConfigError, IncompatibleCheckpointError,
            FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    evaluator = exp.evaluator(args.split)
    if not evaluator.infos:
        print(f"error: no evaluation task of mixture {cfg.mixture!r} has a {args.split!r} split",
              file=sys.stderr)
        return 2
    outcome = evaluator(state, step)  # every process takes part; process 0 reports
    import jax

    if jax.process_index() != 0:
        return 0
    print(f"{args.split} results of {ckpt_dir} step {step} "
          f"(average over all tasks and languages {100 * outcome.score:.2f}):")
    print(outcome.summary)
    from mtl_jax.evaluation.plots import eval_results

    _, results = eval_results(outcome.records, split=args.split)
    table = tables.build_report(results, evaluator.primary_metrics())
    out_dir = Path(args.output_dir) if args.output_dir else ckpt_dir.parent
    paths = tables.save_report(table, out_dir, f"eval_{args.split}_step{step}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
