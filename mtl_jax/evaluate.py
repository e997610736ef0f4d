"""``python -m mtl_jax.evaluate --checkpoint=RUN [--split validation|test] [--step N|best|latest] [--tasks ...] [--languages ...]``

Evaluates a training checkpoint on every (task, language) of the run's evaluation tasks (or the
ones named by ``--tasks``/``--languages``) and prints the task x language table; saves it as
``eval_{split}_step{N}.{md,csv,json}`` next to the checkpoints (or in ``--output_dir``). The run's
configuration is the one stored with the checkpoint; ``--gin_file``/``--gin_param`` replace or
amend it (e.g. ``TrainConfig.sources`` pointing at other files). Only the parameters are read and
only the evaluated split's files are needed. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _names(values: list[str]) -> list[str]:
    return [n for item in values for n in item.split(",") if n]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.evaluate",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", required=True,
                   help="MODEL_DIR of a training run, its checkpoints/ folder, or one step folder")
    p.add_argument("--gin_file", action="append", default=[],
                   help="gin file(s) replacing the configuration stored with the checkpoint")
    p.add_argument("--gin_param", action="append", default=[],
                   help="gin binding(s) applied on top, e.g. TrainConfig.sources={'xnli': '/data'}")
    p.add_argument("--split", default="validation",
                   help="the split to evaluate (validation, test, or any split the tasks have)")
    p.add_argument("--step", default=None,
                   help="a step number, 'best' or 'latest' (default: best if any step has a "
                        "score, else latest)")
    p.add_argument("--tasks", action="append", default=[],
                   help="only these datasets or task names (comma-separated or repeated)")
    p.add_argument("--languages", action="append", default=[],
                   help="only these languages (comma-separated or repeated)")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--log_level", default="WARNING")
    from mtl_jax import distributed

    distributed.add_flags(p)
    args = p.parse_args(argv)
    args.tasks, args.languages = _names(args.tasks), _names(args.languages)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_jax.cli_logging import start

    if (code := start(args)) is not None:
        return code
    from mtl_jax import experiment, gin_config
    from mtl_jax.evaluation import tables
    from mtl_jax.training.checkpoints import IncompatibleCheckpointError, RunCheckpoint

    try:
        checkpoint = RunCheckpoint(args.checkpoint, args.step)
        try:
            cfg = gin_config.checkpoint_train_config(checkpoint, args.gin_file, args.gin_param)
            exp = experiment.build(cfg, training=False)
            infos = exp.eval_infos(args.split, args.tasks, args.languages)
            if not infos:
                raise experiment.ConfigError(
                    f"no evaluation task of mixture {cfg.mixture!r} has a {args.split!r} split"
                    + (" among the chosen tasks/languages" if args.tasks or args.languages else ""))
            params, rest = exp.restore_params(checkpoint)
        finally:
            checkpoint.close()
    except (gin_config.GinConfigError, experiment.ConfigError, IncompatibleCheckpointError,
            FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    step = checkpoint.step
    try:
        outcome, table = exp.evaluate_split(params, rest, step, args.split, infos)  # every process
    except (FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() != 0:
        return 0
    print(f"{args.split} results of {checkpoint.directory} step {step} "
          f"(average over all tasks and languages {100 * outcome.score:.2f}):")
    print(outcome.summary)
    out_dir = Path(args.output_dir) if args.output_dir else checkpoint.directory.parent
    paths = tables.save_report(table, out_dir, f"eval_{args.split}_step{step}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
