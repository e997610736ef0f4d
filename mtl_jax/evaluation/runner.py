"""The forward pass of evaluation and prediction: examples in, per-example model outputs out.

Both the ``Evaluator`` (gold labels known) and the ``Predictor`` (labels unknown) run a model
over a list of preprocessed examples the same way: global batches of a fixed size (the last one
padded with rows marked invalid, so one compiled function serves every batch), each process
building its own rows, outputs gathered on every process and the padding dropped. What turns
examples into token batches (tokenising, seqio feature conversion) belongs to the data layer,
so it comes in as an :class:`EvalInputs` the caller provides (``experiment.RunInputs``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax import features as F
from mtl_jax.evaluation.scoring import TaskDescription, label_id
from mtl_jax.models.families import Family
from mtl_jax.models.t5_decoding import greedy_decode, rank_classification
from mtl_jax.training import partitioning as part
from mtl_jax.training.step import CompiledStep, to_host
from mtl_jax.training.train_state import merge_model

VALID = "valid"  # the row mask of an eval batch (mtl_jax.data.eval_sets.VALID)
CANDIDATES = "candidates"  # [B, C, L] label token ids for rank classification
Mode = Literal["rank", "greedy", "head"]


class EvalInputs(Protocol):
    """What the data layer provides to evaluation and prediction (see ``experiment.RunInputs``)."""

    def examples(self, info: TaskDescription, split: str) -> list[dict[str, Any]]:
        """The task's preprocessed examples of ``split``, in file order."""

    def batches(self, info: TaskDescription, examples: Sequence[Mapping[str, Any]], batch_size: int,
                rows: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
        """This process's ``rows`` of each global batch of ``batch_size`` (``VALID`` marks real
        rows)."""

    def candidates(self, info: TaskDescription) -> np.ndarray:
        """Token ids of the task's label names with EOS, 0-padded: ``[num_labels, length]``."""

    def decode(self, tokens: Sequence[int]) -> str:
        """Generated token ids (up to EOS) as text."""


@dataclasses.dataclass
class TaskOutputs:
    """A task's model outputs for every example, in example order (padding rows removed).

    ``predicted``: class ids (-1 for a generation naming no label) or regression scores;
    ``scores``: ``[N, num_labels]`` head logits or rank-classification log-likelihoods (None for
    greedy decoding and regression); ``texts``: the greedy generations (t2t greedy only).
    """

    mode: Mode
    predicted: np.ndarray
    scores: np.ndarray | None = None
    texts: list[str] | None = None


def task_mode(family: Family, info: TaskDescription, eval_mode: str) -> Mode:
    """How a task is predicted: heads for the classifier family; for text-to-text, rank
    classification over the label names, or greedy decoding (always for regression)."""
    if not family.encoder_decoder:
        return "head"
    if info.kind == "regression":
        return "greedy"
    return "greedy" if eval_mode == "greedy" else "rank"


class ModelRunner:
    """Compiled forward passes (one per mode, traced once per batch shape) over the run's mesh.

    ``params``/``rest`` are the model's parameter and other-variable trees placed with
    ``param_shardings``/``rest_shardings`` (a ``TrainState``'s ``params``/``rest``).
    """

    def __init__(self, *, family: Family, graphdef: nnx.GraphDef, mesh: Any, rules: Any,
                 param_shardings: Any, rest_shardings: Any, batch_sharding: Any,
                 batch_size: int, target_length: int,
                 classify: Callable[[nnx.Module, dict[str, jax.Array]], dict[str, jax.Array]] | None = None,
                 ) -> None:
        self.family = family
        self.graphdef = graphdef
        self.mesh = mesh
        self.rules = rules
        self.param_shardings = param_shardings
        self.rest_shardings = rest_shardings
        self.batch_sharding = batch_sharding
        self.target_length = target_length
        self.classify = classify
        # Global eval batches must split over the data-parallel devices and over processes.
        self.dp = math.lcm(part.data_parallel_size(mesh, rules), jax.process_count())
        batch_size = max(int(batch_size), 1)
        self.batch_size = batch_size + (-batch_size) % self.dp
        self._steps: dict[Mode, CompiledStep] = {}

    def _forward(self, mode: Mode) -> Callable[[nnx.Module, dict[str, jax.Array]], dict[str, jax.Array]]:
        if mode == "rank":
            def forward(model, batch):
                cands = batch[CANDIDATES]
                _, scores = rank_classification(model, batch[F.ENCODER_INPUT_TOKENS], cands)
                # A candidate row that is all padding is no label (trimmed label sets).
                scores = jnp.where(cands[..., 0] > 0, scores, -jnp.inf)
                return {"scores": scores, "predictions": jnp.argmax(scores, -1)}
        elif mode == "greedy":
            length = self.target_length

            def forward(model, batch):
                return {"tokens": greedy_decode(model, batch[F.ENCODER_INPUT_TOKENS], length)}
        else:
            if self.classify is None:
                raise ValueError("a classifier run needs `classify` (objective.predict)")
            classify = self.classify

            def forward(model, batch):
                out = classify(model, batch)
                return {"scores": out["logits"], "predictions": out["predictions"],
                        "regression": out["regression"]}
        return forward

    def step(self, mode: Mode) -> CompiledStep:
        if mode not in self._steps:
            forward, graphdef, rules = self._forward(mode), self.graphdef, self.rules

            def run(params: Any, rest: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
                with nnx.logical_axis_rules(rules):
                    out = forward(merge_model(graphdef, params, rest), batch)
                out[VALID] = batch[VALID]
                return out

            jitted = jax.jit(run, in_shardings=(self.param_shardings, self.rest_shardings,
                                                self.batch_sharding),
                             out_shardings=self.batch_sharding)
            self._steps[mode] = CompiledStep(jitted, self.mesh, self.rules)
        return self._steps[mode]

    def run(self, params: Any, rest: Any, info: TaskDescription, examples: Sequence[Mapping[str, Any]],
            inputs: EvalInputs, mode: Mode, progress: Callable[[int], None] | None = None,
            ) -> TaskOutputs:
        """The outputs of every example (all processes take part and all get every output)."""
        if not examples:
            raise ValueError(f"task '{info.name}': no examples to run")
        n = len(examples)
        batch_size = max(min(self.batch_size, n + (-n) % self.dp), self.dp)
        rows = part.local_rows(self.batch_sharding, batch_size)
        cands = _trim_columns(inputs.candidates(info)) if mode == "rank" else None
        outs: list[dict[str, np.ndarray]] = []
        tiled: np.ndarray | None = None  # the candidates per row, built once (every batch alike)
        for local in inputs.batches(info, examples, batch_size, rows):
            local = {k: v for k, v in local.items() if k != F.DECODER_INPUT_TOKENS}
            if cands is not None:
                if tiled is None or len(tiled) != len(local[VALID]):
                    tiled = np.broadcast_to(cands, (len(local[VALID]), *cands.shape)).copy()
                local[CANDIDATES] = tiled
            glob = part.global_batch(local, self.mesh, self.batch_sharding)
            outs.append(to_host(self.step(mode)(params, rest, glob)))
            if progress is not None:
                progress(int(np.sum(outs[-1][VALID])))
        merged = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}
        keep = merged.pop(VALID) > 0
        merged = {k: v[keep] for k, v in merged.items()}
        if int(keep.sum()) != n:
            raise RuntimeError(f"task '{info.name}': {int(keep.sum())} outputs for {n} examples")
        return self._interpret(info, mode, merged, inputs)

    def _interpret(self, info: TaskDescription, mode: Mode, out: dict[str, np.ndarray],
                   inputs: EvalInputs) -> TaskOutputs:
        if mode == "greedy":
            texts = [inputs.decode(row) for row in out["tokens"]]
            if info.kind == "regression":
                from mtl_jax.evaluation.scoring import regression_value

                predicted = np.array([regression_value(t) for t in texts], np.float64)
            else:
                predicted = np.array([label_id(info, t) for t in texts], np.int64)
            return TaskOutputs(mode, predicted, None, texts)
        if mode == "head" and info.kind == "regression":
            return TaskOutputs(mode, out["regression"].astype(np.float64))
        n = len(info.label_names)
        scores = out["scores"][:, :n].astype(np.float64)
        return TaskOutputs(mode, out["predictions"].astype(np.int64), scores)


def _trim_columns(cands: np.ndarray) -> np.ndarray:
    """Drop the padding columns every candidate shares: the decoder runs over B x C x Lc tokens,
    so the longest label, not the target length, sets what rank classification costs."""
    used = np.flatnonzero(np.asarray(cands).any(axis=0))
    return np.asarray(cands)[:, : used[-1] + 1] if used.size else np.asarray(cands)[:, :1]
