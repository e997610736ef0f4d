"""Look at tasks and mixtures before training on them: ``python -m mtl_jax.inspect``.

``--list [--json]`` lists every registered task and mixture (dataset, format, languages, splits,
source). ``NAME`` shows a task or mixture: member tasks with their normalised rates, example
counts per split, token-length statistics against a sequence length (mean, p95, max, share that
would be truncated), and decoded examples with their targets/labels. Everything is read from the
configured sources (the bundled samples unless ``--source`` says otherwise), offline.
Your own datasets and mixtures come in with ``--dataset_module MOD`` (a module that calls
``register_dataset``) or ``--gin_file F`` (a run's ``TrainConfig.datasets`` / ``mixtures`` /
``dataset_modules`` / ``sources``), as in ``python -m mtl_jax.train``.

This module is a CLI edge: it never imports TensorFlow or seqio itself, only ``mtl_jax.data``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_SEQUENCE_LENGTH = {"t2t": {"inputs": 512, "targets": 128}, "cls": {"inputs": 512}}
DEFAULT_MAX_EXAMPLES = 2000
CLS_SPECIAL_TOKENS = {False: 2, True: 4}  # <s> a </s>  |  <s> a </s></s> b </s>


def _data():
    """The data layer (imports TensorFlow/seqio; kept out of module import for a fast --help)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mtl_jax.data import mixtures, sources, tasks

    return mixtures, sources, tasks


# --- listing ------------------------------------------------------------------------------


def task_row(info: Any, sources: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "kind": "task",
        "dataset": info.dataset,
        "format": info.format,
        "languages": list(info.languages),
        "splits": list(info.splits),
        "source": sources.describe_source(info.source_dataset),
        "head": info.head,
        "labels": list(info.label_names),
        "metrics": list(info.metrics),
    }


def mixture_row(name: str, mixtures: Any, sources: Any, tasks: Any) -> dict[str, Any]:
    spec = mixtures.mixture_spec(name)
    infos = [tasks.task_info(t) for t in spec.tasks]
    return {
        "name": name,
        "kind": "mixture",
        "dataset": sorted({i.dataset for i in infos}),
        "format": "/".join(sorted({i.format for i in infos})),
        "languages": sorted({lang for i in infos for lang in i.languages}),
        "splits": sorted(
            {s for i in infos for s in i.splits}, key=["train", "validation", "test"].index
        ),
        "source": "; ".join(sorted({sources.describe_source(i.source_dataset) for i in infos})),
        "tasks": list(spec.tasks),
        "rule": spec.rule_text(),
        "evaluation_tasks": list(spec.evaluation_tasks),
        "description": spec.description,
    }


def list_rows() -> list[dict[str, Any]]:
    mixtures, sources, tasks = _data()
    rows = [task_row(i, sources) for i in sorted(tasks.all_task_infos(), key=lambda i: i.name)]
    rows += [mixture_row(n, mixtures, sources, tasks) for n in mixtures.mixture_names()]
    return rows


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[_cell(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _short_source(source: str) -> str:
    """``bundled (/long/path)`` -> ``bundled`` for the table (``--json`` keeps the path)."""
    return "bundled" if source.startswith("bundled") else source


def print_list(rows: list[dict[str, Any]], out) -> None:
    header = ("name", "kind", "format", "dataset", "languages", "splits", "source")
    body = []
    for r in rows:
        langs = r["languages"] if len(r["languages"]) <= 8 else [f"{len(r['languages'])} langs"]
        source = "; ".join(sorted({_short_source(s) for s in r["source"].split("; ")}))
        body.append([r["name"], r["kind"], r["format"], r["dataset"], langs, r["splits"], source])
    print(_table(body, header), file=out)
    n_tasks = sum(r["kind"] == "task" for r in rows)
    print(f"\n{n_tasks} tasks, {len(rows) - n_tasks} mixtures", file=out)


# --- one task or mixture -------------------------------------------------------------------


def parse_sequence_length(text: str | None) -> dict[str, int] | None:
    """``inputs=512,targets=8`` -> ``{"inputs": 512, "targets": 8}``."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(
                f"bad --sequence_length item {part!r}; expected FEATURE=POSITIVE_INT items "
                f"separated by commas, e.g. inputs=512,targets=8"
            )
        out[key.strip()] = int(value)
    return out


def length_stats(lengths: Sequence[int], limit: int | None) -> dict[str, Any]:
    """Mean, p95, max and (against ``limit``) the share of examples longer than it."""
    if not lengths:
        return {"n": 0}
    ordered = sorted(lengths)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest-rank percentile
    stats = {
        "n": len(lengths),
        "mean": sum(lengths) / len(lengths),
        "p95": p95,
        "max": ordered[-1],
    }
    if limit is not None:
        stats["limit"] = limit
        stats["truncated"] = sum(n > limit for n in lengths) / len(lengths)
    return stats


def _to_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        value = value.tolist()
        return _to_text(value) if isinstance(value, bytes) else value
    return value


def _measure(
    task: str, info: Any, examples: Iterable[Mapping[str, Any]], seq_len: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    lengths: dict[str, list[int]] = {}
    for ex in examples:
        if info.format == "t2t":
            for f in ("inputs", "targets"):
                lengths.setdefault(f, []).append(len(ex[f]))
        else:
            a, b = len(ex["text"]), len(ex.get("text_pair", ()))
            lengths.setdefault("text", []).append(a)
            lengths.setdefault("text_pair", []).append(b)
            lengths.setdefault("inputs", []).append(a + b + CLS_SPECIAL_TOKENS[b > 0])
    del task
    return {f: length_stats(v, seq_len.get(f)) for f, v in lengths.items()}


def _count(mixtures: Any, sources: Any, info: Any, split: str) -> int | str:
    """A split's example count, or why there is none (absent file; hub data is not counted,
    since counting would download the whole split)."""
    if sources.get_source(info.source_dataset).kind == "hub":
        return "not counted (hub)"
    try:
        return mixtures.num_examples(info.name, split)
    except FileNotFoundError:
        return "missing"


def _decode_example(mixtures: Any, task: str, info: Any, ex: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("task", "language", info.group_field):
        if key and key in ex:
            out[key] = _to_text(ex[key])
    if info.format == "t2t":
        out["inputs"] = mixtures.decode_ids(task, "inputs", ex["inputs"])
        out["targets"] = mixtures.decode_ids(task, "targets", ex["targets"])
    else:
        out["text"] = mixtures.decode_ids(task, "text", ex["text"])
        out["text_pair"] = mixtures.decode_ids(task, "text_pair", ex.get("text_pair", []))
        if info.kind == "regression":
            out["score"] = float(_to_text(ex["label"]))
            return out
        label = int(_to_text(ex["label"]))
        out["label"] = label
        if 0 <= label < len(info.label_names):
            out["label_name"] = info.label_names[label]
    return out


def describe(
    name: str,
    split: str | None = None,
    n: int = 3,
    sequence_length: Mapping[str, int] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    rate_schedule: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``inspect NAME`` prints, as a JSON-serialisable dict; with ``rate_schedule``
    (``TrainConfig.rate_schedule``) a mixture's report adds its rates at the start, middle and end
    of training."""
    mixtures, sources, tasks = _data()
    known_tasks = {i.name for i in tasks.all_task_infos()}
    if name in mixtures.mixture_names():
        mix = mixtures.mixture_info(name)
        members = list(zip(mix.tasks, mix.rates, strict=True))
        report: dict[str, Any] = mixture_row(name, mixtures, sources, tasks)
        report["rates"] = dict(members)
        if rate_schedule is not None:
            report["schedule"] = scheduled_rates(mixtures, members, rate_schedule)
        default_split = "train"
    elif name in known_tasks:
        info = tasks.task_info(name)
        members = [(name, 1.0)]
        report = task_row(info, sources)
        default_split = "train" if "train" in info.splits else info.splits[0]
    else:
        candidates = sorted(known_tasks | set(mixtures.mixture_names()))
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown task or mixture {name!r}{hint} (`python -m mtl_jax.inspect --list` "
            f"lists all {len(candidates)})"
        )
    split = split or default_split
    report["split"] = split
    fmt = tasks.task_info(members[0][0]).format
    seq_len = dict(sequence_length or DEFAULT_SEQUENCE_LENGTH[fmt])
    report["sequence_length"] = seq_len
    report["members"] = []
    for task, rate in members:
        info = tasks.task_info(task)
        entry: dict[str, Any] = {
            "task": task,
            "rate": rate,
            "counts": {s: _count(mixtures, sources, info, s) for s in info.splits},
        }
        if split in info.splits:
            examples = list(mixtures.task_examples(task, split, seq_len, limit=max_examples))
            entry["lengths"] = _measure(task, info, examples, seq_len)
            entry["examples"] = [_decode_example(mixtures, task, info, ex) for ex in examples[:n]]
        else:
            entry["lengths"] = {}
            entry["examples"] = []
            entry["note"] = f"no split {split!r}"
        report["members"].append(entry)
    return report


SCHEDULE_POINTS = ("start", "middle", "end")


def scheduled_rates(mixtures: Any, members: Sequence[tuple[str, float]],
                    spec: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule's α and rates at the start, middle and end of training, over the members with
    a rate > 0 (those the training iterator mixes)."""
    tasks = [t for t, r in members if r > 0]
    # Three batches: 0, 1 and 2 are the start, the middle and the end of a 3-batch run.
    sched = mixtures.rate_schedule(spec, tasks, num_steps=len(SCHEDULE_POINTS))
    steps = range(len(SCHEDULE_POINTS))
    by_step = [dict(zip(tasks, sched.rates(k), strict=True)) for k in steps]
    return {"spec": dict(spec), "points": list(SCHEDULE_POINTS),
            "alpha": [sched.alpha(k) for k in steps],
            "rates": {t: [r.get(t, 0.0) for r in by_step] for t, _ in members}}


def print_report(report: Mapping[str, Any], out) -> None:
    kind = report["kind"]
    print(f"{kind} {report['name']}  ({report['format']})", file=out)
    if kind == "mixture":
        print(f"  {report['description']}", file=out)
        print(f"  rate rule: {report['rule']}", file=out)
    print(f"  source: {report['source']}", file=out)
    splits = ["train", "validation", "test"]
    rows = []
    for m in report["members"]:
        counts = [m["counts"].get(s, "-") for s in splits]
        rows.append([m["task"], f"{m['rate']:.4f}", *counts])
    print("\nmember tasks, normalised rates and examples per split:", file=out)
    print(_table(rows, ["task", "rate", *splits]), file=out)
    if "schedule" in report:
        sched = report["schedule"]
        alphas = ", ".join(f"{p} {a:g}" for p, a in zip(sched["points"], sched["alpha"],
                                                          strict=True))
        print(f"\nrate schedule {sched['spec']} (α: {alphas}), in place of the rates above:",
              file=out)
        rows = [[t, *(f"{r:.4f}" for r in rs)] for t, rs in sched["rates"].items()]
        print(_table(rows, ["task", *sched["points"]]), file=out)

    seq = ",".join(f"{k}={v}" for k, v in report["sequence_length"].items())
    print(
        f"\ntoken lengths on split '{report['split']}' (truncated = longer than {seq}):", file=out
    )
    rows = []
    for m in report["members"]:
        for feature, s in m["lengths"].items():
            if not s.get("n"):
                continue
            trunc = f"{s['truncated']:.1%}" if "truncated" in s else "-"
            rows.append([m["task"], feature, s["n"], f"{s['mean']:.1f}", s["p95"], s["max"], trunc])
    print(_table(rows, ["task", "feature", "n", "mean", "p95", "max", "truncated"]), file=out)

    for m in report["members"]:
        if not m["examples"]:
            continue
        print(f"\n{m['task']}: {len(m['examples'])} example(s) from '{report['split']}'", file=out)
        for i, ex in enumerate(m["examples"]):
            print(f"  [{i}]", file=out)
            for key, value in ex.items():
                print(f"    {key}: {value}", file=out)
    if kind == "mixture" and report["evaluation_tasks"]:
        ev = report["evaluation_tasks"]
        print(f"\nevaluation tasks ({len(ev)}): {', '.join(ev)}", file=out)


# --- CLI ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtl_jax.inspect",
        description="List or inspect the registered seqio tasks and mixtures (offline).",
    )
    p.add_argument("name", nargs="?", help="a task or mixture name (see --list)")
    p.add_argument("--list", action="store_true", help="list every task and mixture")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--split", help="split for lengths/examples (default: train, else the first)")
    p.add_argument("-n", type=int, default=3, help="decoded examples per task (default 3)")
    p.add_argument(
        "--sequence_length",
        help="FEATURE=LEN,... for the truncation share (default inputs=512,targets=128; "
        "classification: inputs=512, counted with <s>/</s>)",
    )
    p.add_argument(
        "--max_examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        help=f"examples per task read for length statistics (default {DEFAULT_MAX_EXAMPLES})",
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="DATASET=SPEC",
        help="read DATASET from SPEC: bundled, hub, hub:owner/name, or a local directory "
        "(repeatable)",
    )
    p.add_argument("--dataset_module", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers datasets/mixtures; repeatable)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="a run's gin file: its TrainConfig.dataset_modules, datasets, mixtures and "
                   "sources are applied (repeatable)")
    p.add_argument("--gin_param", action="append", default=[], help="binding NAME=VALUE")
    return p


def apply_declarations(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Register the datasets/mixtures named by --dataset_module / --gin_file; the gin run's
    ``TrainConfig.sources`` (to be set after registration) and ``rate_schedule``."""
    from mtl_jax.data import declarations

    modules, datasets, mixtures_, run_sources = list(args.dataset_module), [], [], {}
    schedule = None
    if args.gin_file:
        from mtl_jax import configurables, gin_config

        gin_config.parse(args.gin_file, args.gin_param)
        cfg = configurables.train_config()
        modules += list(cfg.dataset_modules)
        datasets, mixtures_, run_sources = list(cfg.datasets), list(cfg.mixtures), cfg.sources
        schedule = cfg.rate_schedule
    declarations.apply(modules, datasets, mixtures_)
    return dict(run_sources), schedule


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list == bool(args.name):
        parser.error("give either --list or a task/mixture NAME")
    if args.n < 0 or args.max_examples < 1:
        parser.error("-n must be >= 0 and --max_examples >= 1")
    try:
        seq_len = parse_sequence_length(args.sequence_length)
    except ValueError as e:
        parser.error(str(e))
    _, sources, _ = _data()
    try:
        run_sources, schedule = apply_declarations(args)
        for dataset, spec in run_sources.items():
            sources.set_source(dataset, spec)
    except (ValueError, KeyError) as e:
        parser.error(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    for item in args.source:
        dataset, sep, spec = item.partition("=")
        if not sep:
            parser.error(f"bad --source {item!r}; expected DATASET=SPEC")
        try:
            sources.set_source(dataset, spec)
        except (KeyError, ValueError) as e:
            parser.error(f"--source {item!r}: {e}")
    if args.list:
        rows = list_rows()
        if args.json:
            json.dump(rows, sys.stdout, ensure_ascii=False, indent=1)
            print()
        else:
            print_list(rows, sys.stdout)
        return 0
    try:
        report = describe(args.name, args.split, args.n, seq_len, args.max_examples, schedule)
    except KeyError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1, default=_to_text)
        print()
    else:
        print_report(report, sys.stdout)
    return 0


def _main_for_pipes() -> int:
    """``main()``; a reader that stops early (``| grep -q``, ``| head``) is not an error."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    return code


if __name__ == "__main__":
    sys.exit(_main_for_pipes())
