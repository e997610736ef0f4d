"""The project's seqio Mixtures, their mixing rates, and what each one is evaluated on.

A mixture is a list of member tasks, a rate rule from :mod:`mtl_jax.data.rates` applied to the
members' training-set sizes, optionally some tasks held at a fixed share of the total (mC4), and
the evaluation tasks: every per-language validation task of its datasets. Rates are computed
lazily, when a mixture is first used, from the sizes of the sources configured at that moment
(:func:`mtl_jax.data.sources.set_source`), so registering at import time reads no data and a run
that points a dataset at its real release gets rates from the real sizes.

Built-in mixtures (``{fmt}`` is ``t2t`` for mT5 or ``cls`` for XLM-R):

| mixture | members | rate rule (default) |
|---|---|---|
| ``xglue_{fmt}`` | the English train task of XNLI, PAWS-X, NC, QADSM, QAM, WPR | examples-proportional, cap K = 2^17 |
| ``xglue_mix_{fmt}`` | as ``xglue_{fmt}`` with ``xnli_mix_{fmt}`` in place of ``xnli_{fmt}_en`` | examples-proportional, cap K = 2^17 |
| ``xglue_mc4_t2t`` | ``xglue_t2t`` + ``mc4_t2t_{lang}`` for the 20 mC4 languages | XGLUE part as ``xglue_t2t`` scaled to 95 %; mC4 a fixed 5 % split equally (0.25 % per language) |
| ``xglue_mix_mc4_t2t`` | ``xglue_mix_t2t`` + the 20 mC4 languages (the thesis's final mT5 setup) | XGLUE part scaled to 99 %; mC4 a fixed 1 % split equally |
| ``ctkfacts_{fmt}`` | ``ctkfacts_nli_{fmt}_cs`` + ``ctkfacts_xnli_{fmt}_cs`` (both CTKFacts formulations) | equal |
| ``ctkfacts_nli_{fmt}`` / ``ctkfacts_xnli_{fmt}`` | one CTKFacts formulation alone (target fine-tuning; the XNLI format reuses the ``xnli`` head / ``xnli:`` prefix) | equal |
| ``demo_{fmt}`` | ``xnli_mix_{fmt}`` + the five other XGLUE English train tasks + ``ctkfacts_nli_{fmt}_cs``, on the default (bundled) sources | equal |
| ``glue_{fmt}`` | the nine GLUE train tasks (``glue_cola`` ... ``glue_wnli``); evaluated also on ``glue_mnli_mm`` | examples-proportional, cap K = 2^17 |
| ``cs224n_{fmt}`` | ``cs224n_sst``, ``cs224n_quora``, ``cs224n_sts`` | examples-proportional |

Why these defaults: K = 2^17 (131,072) caps XNLI's 392,702 English training pairs to about 1.3x
the 100k of each XGLUE task, so the largest task cannot dominate (T5 sec. 3.5.2 found
examples-proportional mixing with a cap the best of the simple rules); on the bundled samples
every task is below the cap, so the rule is plain examples-proportional there. mC4 is an auxiliary
objective that should regularise, not compete: a small fixed 5 % keeps its share independent of
the (practically unbounded) corpus size. The CTKFacts formulations and the demo use equal rates
(the former are the same rows twice; the latter makes the demo's per-task results comparable).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from mtl_jax.data import rates as rate_rules
from mtl_jax.data import sources, tasks
from mtl_jax.data import tasks as tasks_lib
from mtl_jax.data.tfdata import numpy_iterator

log = logging.getLogger(__name__)

FORMATS = ("t2t", "cls")
XGLUE_DATASETS = ("xnli", "pawsx", "nc", "qadsm", "qam", "wpr")
CTKFACTS_DATASETS = ("ctkfacts_nli", "ctkfacts_xnli")
GLUE_DATASETS = ("glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli",
                 "glue_qnli", "glue_rte", "glue_wnli")
CS224N_DATASETS = ("cs224n_sst", "cs224n_quora", "cs224n_sts")
XGLUE_CAP = 2**17
MC4_TOTAL_SHARE = 0.05
MC4_THESIS_SHARE = 0.01  # the thesis's final mT5 setup mixes span corruption at 1 %
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """What a mixture is made of (no data read): members, rule, fixed shares, evaluation tasks."""

    name: str
    members: tuple[str, ...]  # tasks weighted by the rule
    rule: str
    rule_kwargs: tuple[tuple[str, Any], ...] = ()
    fixed: tuple[tuple[str, float], ...] = ()  # tasks held at a fixed share of the total
    evaluation_tasks: tuple[str, ...] = ()
    description: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.members + tuple(t for t, _ in self.fixed)

    def rule_text(self) -> str:
        args = ", ".join(
            f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}" for k, v in self.rule_kwargs
        )
        text = f"{self.rule}({args})" if args else self.rule
        if self.fixed:
            share = sum(s for _, s in self.fixed)
            text += f" on {1 - share:.0%}, {len(self.fixed)} task(s) fixed at {share:.0%} total"
        return text


@dataclasses.dataclass(frozen=True)
class MixtureInfo:
    """A mixture with its rates resolved against the current sources."""

    name: str
    tasks: tuple[str, ...]
    rates: tuple[float, ...]  # normalised, same order as ``tasks``
    sizes: dict[str, int]  # training examples of each rule-weighted member
    rule: str
    evaluation_tasks: tuple[str, ...]
    description: str

    def rate(self, task: str) -> float:
        try:
            return self.rates[self.tasks.index(task)]
        except ValueError:
            raise KeyError(f"task '{task}' is not a member of mixture '{self.name}'") from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "rates": dict(zip(self.tasks, self.rates, strict=True)),
            "sizes": dict(self.sizes),
            "rule": self.rule,
            "evaluation_tasks": list(self.evaluation_tasks),
            "description": self.description,
        }


_SPECS: dict[str, MixtureSpec] = {}


# --- task sizes ----------------------------------------------------------------------------


def _source_key(task_name: str) -> Any:
    """What the size of a task depends on besides its name: its dataset's configured source."""
    try:
        info = tasks.task_info(task_name)
    except KeyError:
        return None  # a task registered outside the project (tests, user code)
    return sources.get_source(info.source_dataset)


@functools.lru_cache(maxsize=4096)
def _count(task_name: str, split: str, source_key: Any) -> int:
    del source_key  # part of the cache key only
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise TypeError(f"'{task_name}' is a mixture, not a task")
    if split not in task.splits:
        raise KeyError(f"task '{task_name}' has no split '{split}'; it has {list(task.splits)}")
    n = task.num_input_examples(split)
    if n is not None:
        return int(n)
    ds = task.source.get_dataset(split=split, shuffle=False)
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1).numpy())


def num_examples(task_name: str, split: str) -> int:
    """Source examples of a task's split (cached per configured source)."""
    return _count(task_name, split, _source_key(task_name))


# --- registration --------------------------------------------------------------------------


def _rate_of(mixture: str, task: seqio.Task) -> float:
    return mixture_info(mixture).rate(task.name)


def register_mixture(
    name: str,
    members: Sequence[str],
    rule: str = "examples_proportional",
    *,
    fixed: Mapping[str, float] | None = None,
    evaluation_tasks: Sequence[str] = (),
    description: str = "",
    **rule_kwargs: Any,
) -> seqio.Mixture:
    """Register a seqio Mixture whose rates come from ``rule`` (see :mod:`rates`).

    ``members`` are weighted by ``rule`` applied to their training sizes; ``fixed`` maps tasks to
    a fixed share of the total (the members share the rest). Re-registering a name replaces it.
    """
    if rule not in rate_rules.RATE_FUNCTIONS:
        raise ValueError(
            f"mixture '{name}': unknown rate rule {rule!r}; expected one of "
            f"{sorted(rate_rules.RATE_FUNCTIONS)}"
        )
    fixed = dict(fixed or {})
    total_fixed = sum(fixed.values())
    if any(s < 0 for s in fixed.values()) or total_fixed >= 1:
        raise ValueError(f"mixture '{name}': fixed shares must be >= 0 and sum below 1: {fixed}")
    if not members:
        raise ValueError(f"mixture '{name}' has no rule-weighted members")
    dupes = sorted({t for t in [*members, *fixed] if [*members, *fixed].count(t) > 1})
    if dupes:
        raise ValueError(f"mixture '{name}' lists tasks more than once: {dupes}")
    spec = MixtureSpec(
        name=name,
        members=tuple(members),
        rule=rule,
        rule_kwargs=tuple(sorted(rule_kwargs.items())),
        fixed=tuple(fixed.items()),
        evaluation_tasks=tuple(evaluation_tasks),
        description=description,
    )
    seqio.MixtureRegistry.remove(name)
    mixture = seqio.MixtureRegistry.add(
        name, [(t, functools.partial(_rate_of, name)) for t in spec.tasks]
    )
    _SPECS[name] = spec
    return mixture


def remove_mixture(name: str) -> None:
    """Forget a registered mixture (tests; re-registering a name replaces it anyway)."""
    _SPECS.pop(name, None)
    seqio.MixtureRegistry.remove(name)


def mixture_names() -> list[str]:
    """Mixtures registered through this module, in registration order."""
    return list(_SPECS)


def mixture_spec(name: str) -> MixtureSpec:
    if name not in _SPECS:
        raise KeyError(f"unknown mixture '{name}'; registered: {mixture_names()}")
    return _SPECS[name]


def rate_schedule(spec: Mapping[str, Any], tasks: Sequence[str],
                  num_steps: int) -> rate_rules.AnnealedRates:
    """The rate schedule ``spec`` (``TrainConfig.rate_schedule``) over ``tasks``, in that order,
    sized by their training examples (:func:`num_examples`), for ``num_steps`` batches."""
    sizes = [num_examples(t, TRAIN_SPLIT) for t in tasks]
    return rate_rules.rate_schedule(spec, sizes, num_steps)


def mixture_info(name: str, split: str = TRAIN_SPLIT) -> MixtureInfo:
    """Member tasks, normalised rates (from the sizes of ``split``) and evaluation tasks."""
    spec = mixture_spec(name)
    sizes = {t: num_examples(t, split) for t in spec.members}
    try:
        member_rates = rate_rules.compute_rates(
            spec.rule, [sizes[t] for t in spec.members], **dict(spec.rule_kwargs)
        )
    except ValueError as e:
        raise ValueError(f"mixture '{name}' (sizes {sizes}): {e}") from e
    scale = 1.0 - sum(s for _, s in spec.fixed)
    rates = [r * scale for r in member_rates] + [s for _, s in spec.fixed]
    return MixtureInfo(
        name=name,
        tasks=spec.tasks,
        rates=tuple(rates),
        sizes=sizes,
        rule=spec.rule_text(),
        evaluation_tasks=spec.evaluation_tasks,
        description=spec.description,
    )


def declare_mixture(
    name: str,
    tasks: Sequence[str],
    rule: str = "examples_proportional",
    *,
    evaluation_tasks: Sequence[str] | None = None,
    description: str = "",
    **rule_kwargs: Any,
) -> str:
    """Register a mixture from task AND mixture names (what a gin ``TrainConfig.mixtures`` entry
    holds): a named mixture contributes its tasks (fixed shares included, as rule-weighted members)
    and its evaluation tasks. Evaluation tasks default to those of the named mixtures plus every
    per-language validation task of the named tasks' datasets. Returns ``name``."""
    from mtl_jax.data import registry

    members: list[str] = []
    evaluation: list[str] = []
    datasets: dict[str, list[str]] = {}
    for item in tasks:
        if item in _SPECS:
            members += _SPECS[item].tasks
            evaluation += _SPECS[item].evaluation_tasks
            continue
        try:
            info = tasks_lib.task_info(item)
        except KeyError:
            raise KeyError(f"mixture {name!r}: {item!r} is neither a task nor a mixture (see "
                           "python -m mtl_jax.inspect --list)") from None
        members.append(item)
        mix = registry.find_mix_task(info.dataset) if info.language == tasks_lib.MIX_LANGUAGE else None
        datasets.setdefault(info.format, []).append(mix.name if mix else info.dataset)
    if evaluation_tasks is None:
        for fmt, names in datasets.items():
            evaluation += _evaluation_tasks(names, fmt)
        evaluation_tasks = list(dict.fromkeys(evaluation))
    register_mixture(name, list(dict.fromkeys(members)), rule,
                     evaluation_tasks=evaluation_tasks, description=description, **rule_kwargs)
    return name


# --- reading examples (for inspection) -----------------------------------------------------


def task_examples(
    task_name: str,
    split: str,
    sequence_length: Mapping[str, int] | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """A task's preprocessed examples as NumPy dicts, in source order, NOT truncated.

    Untruncated so that length statistics can say how much a given sequence length would cut:
    classification tasks are built without a sequence length (seqio then neither trims nor
    lets ``append_eos_after_trim`` cut); span-corruption tasks need it to size their spans.
    """
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise TypeError(f"'{task_name}' is a mixture, not a task")
    if split not in task.splits:
        raise KeyError(f"task '{task_name}' has no split '{split}'; it has {list(task.splits)}")
    try:
        needs_length = tasks.task_info(task_name).kind == "span_corruption"
    except KeyError:  # a task registered outside the project
        needs_length = True
    ds = task.get_dataset(
        sequence_length=dict(sequence_length) if sequence_length and needs_length else None,
        split=split,
        shuffle=False,
        num_epochs=1,
        trim_output_features=False,
    )
    if limit is not None:
        ds = ds.take(limit)
    yield from numpy_iterator(ds)


def decode_ids(task_name: str, feature: str, ids: Sequence[int]) -> str:
    """Token ids of ``feature`` back to text with that feature's vocabulary (stops at EOS)."""
    task = seqio.get_mixture_or_task(task_name)
    return task.output_features[feature].vocabulary.decode([int(i) for i in ids])


def output_feature_names(task_name: str) -> list[str]:
    return list(seqio.get_mixture_or_task(task_name).output_features)


def feature_adds_eos(task_name: str, feature: str) -> bool:
    return bool(seqio.get_mixture_or_task(task_name).output_features[feature].add_eos)


# --- the built-in mixtures -----------------------------------------------------------------


def _evaluation_tasks(datasets: Sequence[str], fmt: str) -> tuple[str, ...]:
    """Every per-language task of ``datasets`` in ``fmt`` that has a validation split."""
    out = []
    for info in tasks.all_task_infos():
        if info.format != fmt or info.dataset not in datasets or EVAL_SPLIT not in info.splits:
            continue
        if info.name == f"{info.dataset}_{fmt}_{info.language}":
            out.append(info.name)
    return tuple(sorted(out))


def register_builtin_mixtures() -> list[str]:
    """(Re-)register the mixtures of the table in the module docstring."""
    names = []
    for fmt in FORMATS:
        xglue = [f"{ds}_{fmt}_en" for ds in XGLUE_DATASETS]
        xglue_eval = _evaluation_tasks(XGLUE_DATASETS, fmt)
        register_mixture(
            f"xglue_{fmt}",
            xglue,
            "examples_proportional",
            cap=XGLUE_CAP,
            evaluation_tasks=xglue_eval,
            description="the six XGLUE classification tasks, English training data",
        )
        register_mixture(
            f"xglue_mix_{fmt}",
            [f"xnli_mix_{fmt}", *xglue[1:]],
            "examples_proportional",
            cap=XGLUE_CAP,
            evaluation_tasks=xglue_eval,
            description="XGLUE with XNLI_mix (the 15 translated XNLI train sets) for XNLI",
        )
        register_mixture(
            f"ctkfacts_{fmt}",
            [f"ctkfacts_nli_{fmt}_cs", f"ctkfacts_xnli_{fmt}_cs"],
            "equal",
            evaluation_tasks=_evaluation_tasks(CTKFACTS_DATASETS, fmt),
            description="CTKFacts NLI in both formulations (own labels; as XNLI)",
        )
        for ds, what in (("ctkfacts_nli", "own labels (target-only and fresh-head fine-tuning)"),
                         ("ctkfacts_xnli", "as XNLI: xnli head/prefix and labels (XNLI format)")):
            register_mixture(
                f"{ds}_{fmt}",
                [f"{ds}_{fmt}_cs"],
                "equal",
                evaluation_tasks=_evaluation_tasks([ds], fmt),
                description=f"CTKFacts NLI alone, {what}",
            )
            names.append(f"{ds}_{fmt}")
        register_mixture(
            f"demo_{fmt}",
            [f"xnli_mix_{fmt}", *xglue[1:], f"ctkfacts_nli_{fmt}_cs"],
            "equal",
            evaluation_tasks=_evaluation_tasks([*XGLUE_DATASETS, "ctkfacts_nli"], fmt),
            description="demo: XGLUE (XNLI_mix) + CTKFacts NLI on the bundled samples (default sources)",
        )
        register_mixture(
            f"glue_{fmt}",
            [f"{ds}_{fmt}_en" for ds in GLUE_DATASETS],
            "examples_proportional",
            cap=XGLUE_CAP,
            evaluation_tasks=_evaluation_tasks([*GLUE_DATASETS, "glue_mnli_mm"], fmt),
            description="GLUE: nine English tasks (MNLI evaluated on matched and mismatched dev)",
        )
        register_mixture(
            f"cs224n_{fmt}",
            [f"{ds}_{fmt}_en" for ds in CS224N_DATASETS],
            "examples_proportional",
            evaluation_tasks=_evaluation_tasks(CS224N_DATASETS, fmt),
            description="CS224N multitask: SST-5 sentiment, Quora paraphrase, SemEval STS",
        )
        names += [f"xglue_{fmt}", f"xglue_mix_{fmt}", f"ctkfacts_{fmt}", f"demo_{fmt}",
                  f"glue_{fmt}", f"cs224n_{fmt}"]
    mc4 = sources.SPLIT_LANGUAGES["mc4"]["train"]
    register_mixture(
        "xglue_mc4_t2t",
        [f"{ds}_t2t_en" for ds in XGLUE_DATASETS],
        "examples_proportional",
        cap=XGLUE_CAP,
        fixed={f"mc4_t2t_{lang}": MC4_TOTAL_SHARE / len(mc4) for lang in mc4},
        evaluation_tasks=_evaluation_tasks(XGLUE_DATASETS, "t2t"),
        description=f"XGLUE + mC4 span corruption at a fixed {MC4_TOTAL_SHARE:.0%} in total",
    )
    register_mixture(
        "xglue_mix_mc4_t2t",
        ["xnli_mix_t2t", *[f"{ds}_t2t_en" for ds in XGLUE_DATASETS[1:]]],
        "examples_proportional",
        cap=XGLUE_CAP,
        fixed={f"mc4_t2t_{lang}": MC4_THESIS_SHARE / len(mc4) for lang in mc4},
        evaluation_tasks=_evaluation_tasks(XGLUE_DATASETS, "t2t"),
        description=f"XGLUE with XNLI_mix + mC4 span corruption at {MC4_THESIS_SHARE:.0%} in total",
    )
    names += ["xglue_mc4_t2t", "xglue_mix_mc4_t2t"]
    return names


BUILTIN_MIXTURES = tuple(register_builtin_mixtures())
