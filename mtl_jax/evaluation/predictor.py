"""The label-free ``Predictor``: a trained model's predictions for new inputs of one task.

It runs exactly the Evaluator's forward pass (:class:`~mtl_jax.evaluation.runner.ModelRunner`)
on examples built from the caller's records (by the data layer: ``data.inference``), and turns
the outputs into one JSON-ready record per input:

- classifier heads: ``{"prediction": label, "scores": {label: probability}}``;
- mT5 rank classification: ``{"prediction": label, "scores": {label: log-likelihood}}``;
- mT5 greedy decoding: ``{"prediction": label or null, "text": generation}``;
- regression: ``{"prediction": score}`` (mT5 also ``"text"``; unparsable text scores -1.0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax.evaluation.runner import EvalInputs, ModelRunner, TaskOutputs, task_mode
from mtl_jax.evaluation.scoring import TaskDescription


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def output_records(info: TaskDescription, outputs: TaskOutputs) -> list[dict[str, Any]]:
    """One record per example (module docstring)."""
    names = info.label_names
    records: list[dict[str, Any]] = []
    probs = softmax(outputs.scores) if outputs.mode == "head" and outputs.scores is not None else None
    for i, predicted in enumerate(outputs.predicted):
        record: dict[str, Any] = {}
        if info.kind == "regression":
            record["prediction"] = float(predicted)
        else:
            k = int(predicted)
            record["prediction"] = names[k] if 0 <= k < len(names) else None
            if probs is not None:
                record["scores"] = {n: float(p) for n, p in zip(names, probs[i], strict=True)}
            elif outputs.scores is not None:
                record["scores"] = {n: float(s) for n, s in zip(names, outputs.scores[i], strict=True)}
        if outputs.texts is not None:
            record["text"] = outputs.texts[i]
        records.append(record)
    return records


class Predictor:
    """Predictions of a restored model (``params``, ``rest``) for one task at a time.

    ``greedy`` makes a text-to-text model generate (instead of ranking the label names).
    """

    def __init__(self, runner: ModelRunner, inputs: EvalInputs, params: Any, rest: Any, *,
                 greedy: bool = False) -> None:
        self.runner = runner
        self.inputs = inputs
        self.params = params
        self.rest = rest
        self.greedy = greedy

    def outputs(self, info: TaskDescription, examples: Sequence[Mapping[str, Any]],
                progress: Callable[[int], None] | None = None) -> TaskOutputs:
        mode = task_mode(self.runner.family, info, "greedy" if self.greedy else "rank")
        return self.runner.run(self.params, self.rest, info, examples, self.inputs, mode,
                               progress=progress)

    def predict(self, info: TaskDescription, examples: Sequence[Mapping[str, Any]],
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """One output record per example, in order (``examples``: preprocessed, labels unused)."""
        return output_records(info, self.outputs(info, examples, progress))
