"""``python -m mtl_jax.task_embed textemb|taskemb|rank ...``: task embeddings and source-task choice.

Vu et al. (2020): TextEmb (mean final token state of an encoder over a task's examples) and
TaskEmb (diagonal empirical Fisher of a model fine-tuned on the task), written as one ``.npz`` per
task plus ``embeddings.json`` in a folder; ``rank`` orders source tasks for a target by cosine
similarity per component fused with reciprocal rank fusion, and writes a table, JSON and a
picture of each target's best source. See docs/task_embeddings.md.

    python -m mtl_jax.task_embed textemb --checkpoint RUN_OR_HF_DIR --mixture demo_cls --output emb/text
    python -m mtl_jax.task_embed taskemb --run xnli_mix_cls=runs/xnli --run ctkfacts_nli_cls_cs=runs/ctk --output emb/task
    python -m mtl_jax.task_embed rank --embeddings emb/task --embeddings emb/text --target ctkfacts_nli --output_dir report
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _names(values: list[str]) -> list[str]:
    return [n for item in values for n in item.split(",") if n]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.task_embed",
                                description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)

    def data_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--split", default="train", help="the split the embedding reads")
        q.add_argument("--max_examples", type=int, default=None,
                       help="at most this many examples per task (default: all)")
        q.add_argument("--batch_size", type=int, default=32)
        q.add_argument("--sequence_length", type=int, default=None,
                       help="input tokens per example (default: the run's; 128 for an HF "
                            "checkpoint)")
        q.add_argument("--output", required=True, type=Path, help="the embedding folder")
        q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
        q.add_argument("--log_level", default="WARNING")

    text = sub.add_parser("textemb", help="TextEmb from an encoder (no labels)")
    text.add_argument("--checkpoint", required=True,
                      help="a training run (MODEL_DIR, checkpoints/ or one step folder) or a "
                           "Hugging Face checkpoint directory (config.json + weights)")
    text.add_argument("--step", default=None, help="a run's step: number, 'best' or 'latest'")
    text.add_argument("--tasks", action="append", default=[],
                      help="registered task names (comma-separated or repeated)")
    text.add_argument("--mixture", default=None,
                      help="every training task of this mixture (default for a run: its own)")
    data_flags(text)

    task = sub.add_parser("taskemb", help="TaskEmb (Fisher) from one fine-tuned run per task")
    task.add_argument("--run", action="append", default=[], required=True,
                      help="TASK=RUN_DIR[@STEP]: the run fine-tuned on the registered task TASK "
                           "(repeat per task; STEP: number, best or latest)")
    task.add_argument("--params", default="default",
                      help="regex of parameter paths whose Fisher is kept: 'default' (all but "
                           "embedding tables and heads), 'none', or a regex")
    data_flags(task)

    rank = sub.add_parser("rank", help="rank source tasks for targets (cosine + RRF)")
    rank.add_argument("--embeddings", action="append", default=[], required=True, type=Path,
                      help="an embedding folder (repeat to fuse TaskEmb and TextEmb)")
    rank.add_argument("--target", action="append", default=[],
                      help="target task(s) (default: every task of the folders)")
    rank.add_argument("--sources", action="append", default=[],
                      help="only these source tasks (default: every other task)")
    rank.add_argument("--components", default=None,
                      help="regex of the components compared (default: all)")
    rank.add_argument("--output_dir", type=Path, default=None,
                      help="write ranking.md/.json/.png here (default: only print)")
    rank.add_argument("--log_level", default="WARNING")
    return p.parse_args(argv)


def _label(name: str, infos: Sequence[Any]) -> str:
    """The task's name in the embedding folder: its dataset (so embeddings made from XLM-R and
    mT5 tasks of one dataset meet), or the full task name if two chosen tasks share a dataset."""
    mine = next(i for i in infos if i.name == name)
    shared = sum(1 for i in infos if i.dataset == mine.dataset)
    return mine.dataset if shared == 1 else name


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", file=sys.stderr)


def _task_infos(names: Sequence[str]) -> list[Any]:
    from mtl_jax.data import tasks

    infos = []
    for name in names:
        try:
            infos.append(tasks.task_info(name))
        except KeyError:
            close = sorted(i.name for i in tasks.all_task_infos()
                           if i.dataset == name or i.name.startswith(name))
            hint = f"; did you mean one of {', '.join(close[:12])}" if close else ""
            raise ValueError(f"unknown task {name!r}: give a registered task name{hint}") from None
    return infos


def _load_run(path: str, step: str | None, sequence_length: int | None) -> tuple[Any, Any]:
    """``(experiment, model)`` of a training run's step (parameters only)."""
    from mtl_jax import experiment, gin_config
    from mtl_jax.training.checkpoints import RunCheckpoint
    from mtl_jax.training.train_state import merge_model

    if not Path(path).exists():
        raise FileNotFoundError(f"run {path} does not exist")
    checkpoint = RunCheckpoint(path, step)
    try:
        cfg = gin_config.checkpoint_train_config(checkpoint)
        if sequence_length is not None:
            cfg = dataclasses.replace(cfg, sequence_length={**cfg.sequence_length,
                                                            "inputs": sequence_length})
        exp = experiment.build(cfg, training=False)
        params, rest = exp.restore_params(checkpoint)
    finally:
        checkpoint.close()
    print(f"loaded {checkpoint.directory} step {checkpoint.step}", file=sys.stderr)
    return exp, merge_model(exp.graphdef, params, rest)


def _load_hf(directory: Path, infos: Sequence[Any], sequence_length: int | None) -> tuple[Any, Any, Any]:
    """``(cfg, vocab, model)`` of a Hugging Face checkpoint directory (no task heads used)."""
    from mtl_jax import experiment
    from mtl_jax.models import families, hf_io
    from mtl_jax.run_config import TrainConfig

    model_type = hf_io.read_config(directory).get("model_type")
    family = families.family_of_hf_model_type(model_type)
    if family is None:
        raise ValueError(f"{directory}: model_type {model_type!r} is no family mtl_jax reads")
    cfg = TrainConfig(family=family.name, pretrained=str(directory), model_dir=str(directory),
                      sequence_length={"inputs": sequence_length or 128, "targets": 8})
    vocab = experiment.configure_vocabulary(cfg)
    layout = _layout(infos)
    config = experiment.model_config(cfg, layout, vocab.vocab_size)
    return cfg, vocab, experiment.pretrained_model(family.name, config, str(directory))


def _layout(infos: Sequence[Any]) -> Any:
    from mtl_jax import experiment

    heads = list(dict.fromkeys(i.head for i in infos))
    labels = []
    for h in heads:
        info = next(i for i in infos if i.head == h)
        labels.append({"classification": info.num_classes, "regression": 1}.get(info.kind, 0))
    return experiment.TaskLayout((), tuple(i.name for i in infos), tuple(heads), tuple(labels))


def _batches(cfg: Any, layout: Any, vocab: Any, info: Any, args: argparse.Namespace):
    """The task's examples of ``--split`` as unpacked batches (the data layer's eval batches)."""
    from mtl_jax import experiment
    from mtl_jax.data import eval_sets

    if info.kind == "span_corruption":
        raise ValueError(f"task {info.name!r} is span corruption: no task embedding for it")
    if args.split not in info.splits:
        raise ValueError(f"task {info.name!r} has no {args.split!r} split; it has "
                         f"{list(info.splits)}")
    examples = eval_sets.load_examples(info.name, args.split, cfg.sequence_length,
                                       args.max_examples)
    if not examples:
        raise ValueError(f"task {info.name!r}: split {args.split!r} is empty")
    conv = experiment.converter(cfg, layout, vocab, pack=False)
    return examples, eval_sets.eval_batches(examples, conv, cfg.sequence_length, args.batch_size)


def textemb(args: argparse.Namespace) -> int:
    import jax

    from mtl_jax.data import mixtures
    from mtl_jax.evaluation import task_embeddings as te
    from mtl_jax.evaluation import task_ranking as tr

    names = _names(args.tasks)
    directory = Path(args.checkpoint)
    is_hf = (directory / "config.json").is_file()
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint {directory} does not exist")
    exp = None
    if not is_hf:
        exp, model = _load_run(args.checkpoint, args.step, args.sequence_length)
        mixture = args.mixture or (None if names else exp.cfg.mixture)
    else:
        mixture = args.mixture
    if mixture:
        names += [t for t in mixtures.mixture_spec(mixture).tasks if t not in names]
    if not names:
        raise ValueError("name the tasks: --tasks NAME,... or --mixture NAME")
    infos = _task_infos(names)
    if is_hf:
        cfg, vocab, model = _load_hf(directory, infos, args.sequence_length)
    else:
        cfg, vocab = exp.cfg, exp.vocab
    layout = _layout(infos)
    fmt = "t2t" if cfg.family == "t5" else "cls"
    wrong = [i.name for i in infos if i.format != fmt]
    if wrong:
        raise ValueError(f"tasks {wrong} are not {fmt} tasks, which this {cfg.family} encoder reads")
    for info in infos:
        examples, batches = _batches(cfg, layout, vocab, info, args)
        bar = _progress_bar(args.progress, len(examples), f"TextEmb {info.name}")
        vectors = te.text_embedding(model, batches, progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        label = _label(info.name, infos)
        if jax.process_index() == 0:
            path = tr.save_embedding(args.output, "textemb", label, vectors, {
                "task": info.name, "checkpoint": str(directory), "split": args.split,
                "examples": len(examples), "family": cfg.family})
            print(f"TextEmb {label} ({info.name}, {len(examples)} examples) -> {path}")
    return 0


def _parse_run(spec: str) -> tuple[str, str, str | None]:
    task, sep, run = spec.partition("=")
    if not sep or not task or not run:
        raise ValueError(f"--run {spec!r}: expected TASK=RUN_DIR[@STEP]")
    run, _, step = run.partition("@")
    return task, run, step or None


def taskemb(args: argparse.Namespace) -> int:
    import jax

    from mtl_jax import experiment
    from mtl_jax.evaluation import task_embeddings as te
    from mtl_jax.evaluation import task_ranking as tr

    specs = [_parse_run(s) for s in args.run]
    infos = _task_infos([t for t, _, _ in specs])
    pattern = {"default": te.DEFAULT_PARAMS, "none": None}.get(args.params, args.params)
    for (name, run, step), info in zip(specs, infos, strict=True):
        exp, model = _load_run(run, step, args.sequence_length)
        if info.head not in exp.layout.heads:
            raise ValueError(f"run {run} has no head for task {name!r} (its heads: "
                             f"{', '.join(exp.layout.heads)}): TaskEmb needs the run fine-tuned "
                             "on the task")
        if info.format != exp.family.task_format:
            raise ValueError(f"task {name!r} is a {info.format} task; run {run} is "
                             f"{exp.cfg.family} ({exp.family.task_format} tasks)")
        # The task loss alone (no R3F term), as a mean over the batch (the reference's).
        objective = experiment.objective(
            dataclasses.replace(exp.cfg, r3f=None, loss_normalization=None), exp.layout,
            exp.config.vocab_size)
        examples, batches = _batches(exp.cfg, exp.layout, exp.vocab, info, args)
        bar = _progress_bar(args.progress, len(examples), f"TaskEmb {name}")
        vectors = te.fisher_embedding(model, te.objective_loss(objective), batches, pattern,
                                      progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        label = _label(name, infos)
        if jax.process_index() == 0:
            path = tr.save_embedding(args.output, "taskemb", label, vectors, {
                "task": name, "run": str(run), "step": step or "default (best, else latest)",
                "split": args.split, "examples": len(examples), "family": exp.cfg.family,
                "params": pattern})
            print(f"TaskEmb {label} ({name}, {len(examples)} examples) -> {path}")
    return 0


def rank(args: argparse.Namespace) -> int:
    from mtl_jax.evaluation import task_ranking as tr

    sets = [tr.load_embeddings(d) for d in args.embeddings]
    targets = _names(args.target) or sets[0].tasks
    sources = _names(args.sources) or None
    rankings = [tr.rank_sources(t, sets, sources=sources, components=args.components)
                for t in targets]
    for r in rankings:
        print(tr.ranking_table(r))
        print(f"best source for {r.target}: {r.best}\n")
    if args.output_dir is not None:
        paths = tr.save_rankings(rankings, args.output_dir)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One process: the embeddings are sums over a task's batches on this host's devices (a
    # multi-process launch is not supported; the work is one forward/backward pass per batch).
    from mtl_jax.cli_logging import setup_logging

    setup_logging(args.log_level)
    from mtl_jax import experiment, gin_config
    from mtl_jax.evaluation.task_ranking import EmbeddingError
    from mtl_jax.training.checkpoints import CheckpointLookupError, IncompatibleCheckpointError

    command = {"textemb": textemb, "taskemb": taskemb, "rank": rank}[args.command]
    try:
        return command(args)
    except (gin_config.GinConfigError, experiment.ConfigError, IncompatibleCheckpointError,
            CheckpointLookupError, EmbeddingError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
