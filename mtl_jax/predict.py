"""``python -m mtl_jax.predict --checkpoint=RUN --task=xnli [--language=de] --input=FILE --output=preds.jsonl``

Predictions of a trained model for new inputs: FILE (JSON Lines, CSV or TSV with a header) holds
the task's input fields (e.g. XNLI: ``premise``, ``hypothesis``; other column names map with
``--columns premise=sentence1,hypothesis=sentence2``); no label is needed. The output has one JSON
record per input row, in order: ``{"index": i, "prediction": label, "scores": {label: value}}``
(probabilities for XLM-R heads, log-likelihoods for mT5 rank classification), with ``--greedy``
mT5's generated ``"text"``; regression tasks predict a number. Only the checkpoint's parameters
are read, and no dataset file is needed. In a multi-process launch every process runs the model
and process 0 writes the output. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.predict",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", required=True,
                   help="MODEL_DIR of a training run, its checkpoints/ folder, or one step folder")
    p.add_argument("--step", default=None,
                   help="a step number, 'best' or 'latest' (default: best if scored, else latest)")
    p.add_argument("--task", required=True,
                   help="a dataset of the run (xnli, ctkfacts_nli, ...) with --language, or a "
                        "registered task name (xnli_cls_de, ctkfacts_nli_t2t_cs)")
    p.add_argument("--language", default=None,
                   help="the language of --task when it names a dataset (default: the only one "
                        "the run evaluates, if there is one)")
    p.add_argument("--input", required=True, type=Path, help="JSON Lines, CSV or TSV file")
    p.add_argument("--input_format", default=None, choices=("jsonl", "csv", "tsv"),
                   help="default: from the file suffix (.jsonl/.json, .csv, .tsv/.txt)")
    p.add_argument("--columns", default=None,
                   help="FIELD=COLUMN,... when the file's columns have other names")
    p.add_argument("--output", required=True, type=Path, help="output JSON Lines file")
    p.add_argument("--greedy", action="store_true",
                   help="mT5: generate the label text greedily instead of ranking the labels")
    p.add_argument("--batch_size", type=int, default=None,
                   help="examples per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="gin file(s) replacing the configuration stored with the checkpoint")
    p.add_argument("--gin_param", action="append", default=[])
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--log_level", default="WARNING")
    from mtl_jax import distributed

    distributed.add_flags(p)
    return p.parse_args(argv)


def parse_columns(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ValueError(f"--columns {text!r}: expected FIELD=COLUMN[,FIELD=COLUMN...]")
        out[field.strip()] = column.strip()
    return out


def resolve_task(exp, task: str, language: str | None) -> str:
    """The registered task name of ``--task``/``--language`` in the run's format."""
    from mtl_jax.data import tasks

    fmt = exp.family.task_format
    try:
        info = tasks.task_info(task)
    except KeyError:
        info = None
    if info is not None:
        if info.format != fmt:
            raise ValueError(f"--task {task} is a {info.format} task; this run ({exp.cfg.family}) "
                             f"predicts {fmt} tasks")
        return task
    if language is None:
        langs = sorted({tasks.task_info(t).language for t in exp.layout.eval_tasks
                        if tasks.task_info(t).dataset == task})
        if len(langs) != 1:
            raise ValueError(f"--task {task}: name the language with --language"
                             + (f" (the run evaluates {', '.join(langs)})" if langs else ""))
        language = langs[0]
    try:
        return tasks.task_name(task, fmt, language)
    except KeyError:
        known = sorted({i.dataset for i in tasks.all_task_infos() if i.format == fmt})
        raise ValueError(f"--task {task} --language {language}: no such {fmt} task; datasets: "
                         f"{', '.join(known)}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_jax.cli_logging import start

    if (code := start(args)) is not None:
        return code
    import dataclasses

    import jax

    from mtl_jax import experiment, gin_config
    from mtl_jax.data import inference, tasks
    from mtl_jax.training.checkpoints import IncompatibleCheckpointError, RunCheckpoint

    try:
        columns = parse_columns(args.columns)
        rows = inference.read_rows(args.input, args.input_format)
        checkpoint = RunCheckpoint(args.checkpoint, args.step)
        try:
            cfg = gin_config.checkpoint_train_config(checkpoint, args.gin_file, args.gin_param)
            if args.batch_size is not None:
                cfg = dataclasses.replace(cfg, eval_batch_size=args.batch_size)
            exp = experiment.build(cfg, training=False)
            name = resolve_task(exp, args.task, args.language)
            info = tasks.task_info(name)
            if info.kind == "span_corruption":
                raise ValueError(f"--task {name} is a span-corruption task: nothing to predict")
            if info.head not in exp.layout.heads:
                raise ValueError(f"--task {name}: this run has no '{info.head}' head (its heads: "
                                 f"{', '.join(exp.layout.heads)})")
            fields = inference.task_inputs(info, rows, columns, where=str(args.input))
            params, rest = exp.restore_params(checkpoint)
        finally:
            checkpoint.close()
        predictor = exp.predictor(params, rest, greedy=args.greedy)
        examples = inference.examples_from_inputs(name, fields, cfg.sequence_length)
    except (gin_config.GinConfigError, experiment.ConfigError, IncompatibleCheckpointError,
            FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    bar = None
    if args.progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc=f"predict {name}", unit="ex", file=sys.stderr)
    records = predictor.predict(info, examples, progress=bar.update if bar else None)
    if bar is not None:
        bar.close()
    if jax.process_index() != 0:  # every process ran the model; process 0 writes
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            f.write(json.dumps({"index": i, "task": name, **record}, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {len(records)} predictions of {name} (step {checkpoint.step} of "
          f"{checkpoint.directory}) to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
