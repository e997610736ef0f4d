"""The ``Evaluator``: every (task, language) of a run on one split -> metrics, records, a table.

Called by the training loop (``evaluator(state, step)``) and by ``python -m mtl_jax.evaluate``.
Gold labels and group ids (``info.group_field``, e.g. WPR's query) are read from the examples
on the host, in example order; only the model inputs travel to the devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax.evaluation import tables
from mtl_jax.evaluation.runner import EvalInputs, ModelRunner, TaskOutputs, task_mode
from mtl_jax.evaluation.scoring import (
    TaskDescription,
    expected_grade,
    primary_metrics,
    regression_value,
    score_task,
)
from mtl_jax.training.loop import EvalOutcome
from mtl_jax.training.run_log import eval_record


def gold_value(info: TaskDescription, example: Mapping[str, Any]) -> Any:
    """An example's gold label: its ``label`` (class id or score); a regression example without
    one is scored from its target text."""
    if "label" in example:
        value = np.asarray(example["label"]).item()
        return float(value) if info.kind == "regression" else int(value)
    if info.kind == "regression" and "targets_pretokenized" in example:
        return regression_value(example["targets_pretokenized"])
    raise KeyError(f"task '{info.name}': an evaluation example has no 'label'")


def task_metrics(info: TaskDescription, examples: Sequence[Mapping[str, Any]],
                 outputs: TaskOutputs) -> dict[str, float]:
    """The task's metrics from its examples (gold, groups) and the model's outputs. Ranking
    metrics rank by the expected grade under the label scores when there are scores."""
    labels = [gold_value(info, ex) for ex in examples]
    groups = None
    if info.group_field is not None:
        groups = np.array([np.asarray(ex[info.group_field]).item() for ex in examples])
    ranking = None
    if outputs.scores is not None and info.kind == "classification":
        ranking = expected_grade(outputs.scores)
    return score_task(info, labels, outputs.predicted, scores=ranking, groups=groups)


class Evaluator:
    """Evaluates ``infos`` on ``split``; compiles once per mode and batch shape.

    ``runner`` runs the model, ``inputs`` (from the data layer) reads and batches the examples;
    ``eval_mode`` is the text-to-text classification mode (``"rank"`` or ``"greedy"``).
    ``max_examples`` caps each (task, language).
    """

    def __init__(self, runner: ModelRunner, inputs: EvalInputs, infos: Sequence[TaskDescription],
                 split: str, *, eval_mode: str = "rank", max_examples: int | None = None) -> None:
        self.runner = runner
        self.inputs = inputs
        self.infos = list(infos)
        self.split = split
        self.eval_mode = eval_mode
        self.max_examples = max_examples
        self._examples: dict[str, list[dict[str, Any]]] = {}

    def examples(self, info: TaskDescription) -> list[dict[str, Any]]:
        if info.name not in self._examples:
            examples = self.inputs.examples(info, self.split)
            if self.max_examples is not None:
                examples = examples[: self.max_examples]
            self._examples[info.name] = examples
        return self._examples[info.name]

    def outputs(self, params: Any, rest: Any, info: TaskDescription) -> TaskOutputs:
        mode = task_mode(self.runner.family, info, self.eval_mode)
        return self.runner.run(params, rest, info, self.examples(info), self.inputs, mode)

    def evaluate(self, params: Any, rest: Any, step: int) -> EvalOutcome:
        results: dict[tuple[str, str], dict[str, float]] = {}
        records: list[dict[str, Any]] = []
        for info in self.infos:
            metrics = task_metrics(info, self.examples(info), self.outputs(params, rest, info))
            results[(info.dataset, info.language)] = metrics
            for name, value in metrics.items():
                records.append(eval_record(step=step, task=info.dataset, language=info.language,
                                           metric=name, value=value, split=self.split))
        table = tables.build_report(results, self.primary_metrics())
        return EvalOutcome(score=float(table.overall), records=records,
                           summary=tables.format_text(table))

    def __call__(self, state: Any, step: int) -> EvalOutcome:
        """The training loop's hook: ``state`` is a ``TrainState`` (its params and rest)."""
        return self.evaluate(state.params, state.rest, step)

    def primary_metrics(self) -> dict[str, str]:
        return primary_metrics(self.infos)
