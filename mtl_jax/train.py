"""``python -m mtl_jax.train --gin_file=F [--gin_file=G ...] [--gin_param=NAME=VALUE ...]``

Trains one model on a mixture of tasks, evaluates every (task, language) validation split every
``TrainConfig.eval_every`` steps, keeps the best and the last checkpoints, and ends with the
task x language table (printed, and saved as results.{md,csv,json} plus curves.png in MODEL_DIR).
A MODEL_DIR that already holds checkpoints is resumed. SIGTERM saves a checkpoint and exits 0.
Exit codes: 2 a configuration or input error, 3 stopped after too many non-finite steps in a row,
4 a checkpoint could not be written or none could be read (docs/faults.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

log = logging.getLogger("mtl_jax.train")

EXIT_CONFIG = 2
EXIT_DIVERGED = 3  # TrainConfig.max_consecutive_skips non-finite steps in a row
EXIT_CHECKPOINT = 4  # a checkpoint save failed, or no checkpoint could be read


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.train", description=__doc__.split("\n\n")[1])
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable); "
                   "resolved from the working directory or the package's gin_configs/")
    p.add_argument("--gin_param", action="append", default=[],
                   help="binding NAME=VALUE (repeatable, later wins); bare strings need no quotes")
    p.add_argument("--log_level", default="INFO")
    from mtl_jax import distributed

    distributed.add_flags(p)
    args = p.parse_args(argv)
    if not args.gin_file:
        p.error("at least one --gin_file is required (e.g. --gin_file=demo_mt5.gin)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_jax.cli_logging import start

    if (code := start(args)) is not None:
        return code
    from mtl_jax import configurables, gin_config
    from mtl_jax.experiment import ConfigError
    from mtl_jax.training.checkpoints import CheckpointError, IncompatibleCheckpointError

    try:
        gin_config.parse(args.gin_file, args.gin_param)
        cfg = configurables.train_config()
        return run(cfg)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except (gin_config.GinConfigError, ConfigError, IncompatibleCheckpointError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as e:
        # Library code raises ValueError with a message naming the bad input (a task, a file
        # row, a batch size); show it plainly unless debugging.
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def run(cfg) -> int:
    import gin
    import jax

    from mtl_jax import experiment, transfer
    from mtl_jax.distributed import agree, preemption_sync_available
    from mtl_jax.evaluation import plots, tables
    from mtl_jax.features import count_real_tokens
    from mtl_jax.training.checkpoints import CheckpointStore, check_compatible
    from mtl_jax.training.loop import LoopConfig, run_loop
    from mtl_jax.training.run_log import RunLog, read_records

    exp = experiment.build(cfg)
    cfg = exp.cfg  # num_steps resolved (TrainConfig.num_epochs)
    model_dir = Path(cfg.model_dir)
    store_dir = model_dir / "checkpoints"
    latest = None
    init_record = None  # where this run started (TrainConfig.init_from), kept across resumes
    # Every process must take the same branch (orbax synchronises processes inside): process 0's
    # view of the directory decides, before anyone writes to it.
    if agree(store_dir.is_dir()):
        probe = CheckpointStore(store_dir, keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                                async_save=False)
        found = probe.latest_readable_config()  # an unreadable newest one: run_loop moves it aside
        if found is not None:
            latest, stored = found
            check_compatible(stored.get("model", {}), exp.model_record(), probe.step_path(latest))
            init_record = stored.get("init_from")
        probe.close()
    source = None
    if latest is None and cfg.init_from:
        source = transfer.resolve(exp)  # every check of the source before anything is written
        init_record = source.as_record()
    elif cfg.init_from:
        log.info("MODEL_DIR has checkpoints of its own: resuming from step %d (TrainConfig."
                 "init_from only sets the start of a fresh run)", latest)
    final_split = cfg.final_eval_split
    if final_split is not None:
        experiment.check_final_split(exp, final_split)
    # From here on MODEL_DIR is ours to write.
    model_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        tables.write_atomic(model_dir / "config.gin", gin.config_str())
        print(exp.parameter_table(), flush=True)
    store = CheckpointStore(store_dir, keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                            async_save=cfg.async_checkpoints)
    if agree(latest is not None):
        state = exp.abstract_state
    elif source is not None:
        state = transfer.initial_state(exp, source)
    else:
        state = exp.initial_state()
    run_log = RunLog(model_dir)
    if source is not None:
        run_log.write({"step": 0, "kind": "init_from", "source": init_record})
    evaluator = exp.evaluator()
    loop_cfg = LoopConfig(
        num_steps=cfg.num_steps, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
        keep_last=cfg.keep_last, keep_best=cfg.keep_best, patience=cfg.patience,
        async_checkpoints=cfg.async_checkpoints, max_consecutive_skips=cfg.max_consecutive_skips,
    )
    run_config = {"model": exp.model_record(), "gin": gin.config_str(), "mixture": cfg.mixture,
                  # the tokenizer an export ships (convert jax-to-hf) and predict reads
                  "vocabulary": {"file": str(exp.vocabulary_file().absolute()),
                                 "extra_ids": int(getattr(exp.vocab, "extra_ids", 0) or 0)}}
    if init_record is not None:
        run_config["init_from"] = init_record
    state, result = run_loop(
        loop_cfg, state=state, state_shardings=exp.shardings, train_step=exp.train_step(),
        batches=exp.train_batches(), to_global=exp.to_global, evaluate=evaluator, store=store,
        run_log=run_log, run_config=run_config, count_tokens=count_real_tokens,
        task_names=list(exp.layout.heads), show_progress=cfg.progress,
        preemption_sync=preemption_sync_available(),
    )
    store.close()
    run_log.close()
    if result.preempted:
        log.warning("preempted at step %d: checkpoint saved, exiting", result.last_step)
        return 0
    if result.diverged:
        print(f"error: {result.diverged}", file=sys.stderr)
        return EXIT_DIVERGED
    extra = {"init_from": init_record} if init_record is not None else {}
    final_table = None
    if final_split is not None and result.best_step is not None:
        final_table = _evaluate_best(exp, store_dir, result.best_step, final_split, extra)
    if jax.process_index() == 0:
        records = list(read_records(model_dir))
        primary = evaluator.primary_metrics()
        if result.best_step is not None:
            _, results = plots.eval_results(records, step=result.best_step)
            table = tables.build_report(results, primary, extra=extra)
            tables.save_report(table, model_dir, "results")
            print(f"\nValidation results at the best step {result.best_step} "
                  f"(model-selection score {100 * result.best_score:.2f}):")
            print(tables.format_text(table))
            if tables.has_secondary_metrics(table):  # e.g. F1 beside accuracy, Spearman
                every = tables.format_metrics_markdown(table)
                tables.write_atomic(model_dir / "results_metrics.md", every)
                print(f"Every metric (results_metrics.md):\n{every}")
        if final_table is not None:
            tables.save_report(final_table, model_dir, f"results_{final_split}")
            print(f"\n{final_split} results of the best step {result.best_step}:")
            print(tables.format_text(final_table))
            print(f"wrote {model_dir}/results_{final_split}.md, .csv, .json")
        plots.plot_validation_curves(records, model_dir / "curves.png", primary_metrics=primary)
        print(f"\nwrote {model_dir}/results.md, results.csv, results.json, curves.png, metrics.jsonl")
    return 0


def _evaluate_best(exp, store_dir: Path, step: int, split: str, extra: dict):
    """The best checkpoint's parameters evaluated on ``split`` (TrainConfig.final_eval_split)."""
    from mtl_jax.training.checkpoints import RunCheckpoint

    with RunCheckpoint(store_dir, step) as checkpoint:
        params, rest = exp.restore_params(checkpoint)
    _, table = exp.evaluate_split(params, rest, step, split,
                                  extra={"step": step, "split": split, **extra})
    return table


if __name__ == "__main__":
    sys.exit(main())
