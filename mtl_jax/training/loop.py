"""The training loop: steps, periodic evaluation, checkpoints, early stopping, resume, preemption.

It knows nothing about data formats or models: it is handed a compiled step, an iterator of local
batches that can report and restore its position, a function that places a local batch on the
mesh, and an evaluator. What it guarantees:

- a run whose MODEL_DIR holds checkpoints resumes from the latest one (state, iterator position,
  early-stopping bookkeeping) and cuts ``metrics.jsonl`` back to that step, so a killed-and-restarted
  run ends with exactly the records and parameters of an uninterrupted one;
- SIGTERM (preemption) finishes the step in flight, saves a checkpoint and returns ``preempted``;
- a step with a non-finite loss, gradient or update is skipped by the step itself (state kept);
  the loop logs it, writes no checkpoint of a skipped step, and after
  ``max_consecutive_skips`` skips in a row stops with ``diverged`` set, so the latest checkpoint
  is the last one before the skips (docs/faults.md); an unreadable latest checkpoint is moved
  aside and the previous one resumed (``CheckpointStore.restore_latest``);
- the best checkpoint by the model-selection score and the last ``keep_last`` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np

from mtl_jax.training.checkpoints import CheckpointStore, abstract_like
from mtl_jax.training.run_log import RunLog

log = logging.getLogger(__name__)


class ResumableIterator(Protocol):
    """This process's rows of each global batch, built from ``num_shards`` data shards; the
    state holds the position of the shards this process builds (``{"shards": {k: ...}}``)."""

    num_shards: int

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class EvalOutcome:
    """What an evaluation returns: the model-selection score and the records to log."""

    score: float
    records: list[dict[str, Any]]
    summary: str = ""


Evaluator = Callable[[Any, int], EvalOutcome]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    num_steps: int
    eval_every: int
    checkpoint_every: int | None = None  # default: eval_every
    keep_last: int = 2
    keep_best: int = 1
    patience: int | None = None  # evaluations without improvement before stopping
    async_checkpoints: bool = True
    max_consecutive_skips: int = 3  # skipped (non-finite) updates in a row before stopping

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.max_consecutive_skips < 1:
            raise ValueError(
                f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


@dataclasses.dataclass
class LoopResult:
    last_step: int
    best_step: int | None
    best_score: float | None
    stopped_early: bool = False
    preempted: bool = False
    resumed_from: int | None = None
    skipped_steps: int = 0  # updates skipped for a non-finite loss, gradient or update
    diverged: str | None = None  # why the run stopped after too many skips in a row


@dataclasses.dataclass
class _Progress:
    """Early-stopping bookkeeping, checkpointed with the iterator position."""

    best_score: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0


class _Preemption:
    """Turns SIGTERM into a step at which to save and stop, the same step on every process.

    One process: a Python handler sets a flag the loop checks after each step. Many processes:
    jax's preemption service (started by ``jax.distributed.initialize``) catches SIGTERM on any
    process, tells the others, and every process learns the same step (the highest step any of
    them had reached, plus one) from ``reached(step)``; our handler stays out of its way.
    """

    def __init__(self, synchronized: bool = False) -> None:
        self.requested = False
        self.synchronized = synchronized
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        if not self.synchronized and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (call once per step, on every process)."""
        if self.synchronized:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                log.warning("preemption notice (SIGTERM on some process): every process saves "
                            "step %d and exits", step)
                self.requested = True
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run_loop(
    config: LoopConfig,
    *,
    state: Any,
    state_shardings: Any,
    train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    batches: ResumableIterator,
    to_global: Callable[[dict[str, np.ndarray]], Any],
    evaluate: Evaluator,
    store: CheckpointStore,
    run_log: RunLog,
    run_config: dict[str, Any],
    count_tokens: Callable[[dict[str, np.ndarray]], int],
    task_names: list[str] | None = None,
    show_progress: bool = True,
    preemption_sync: bool = False,
) -> tuple[Any, LoopResult]:
    """Train from the latest checkpoint in ``store`` (or from ``state``) to ``config.num_steps``.

    ``preemption_sync``: agree on the preemption step through jax's preemption service (many
    processes; see ``_Preemption``)."""
    progress = _Progress()
    start = 0
    resumed_from = None
    resumed = store.restore_latest(abstract_like(state, state_shardings), run_config.get("model"))
    if resumed is not None:
        resumed_from, state, data_state, _ = resumed
        _restore_data(batches, data_state["iterators"])
        progress = _Progress(**data_state.get("loop", {}))
        start = resumed_from
        run_log.truncate_after(resumed_from)
        log.info("resumed from checkpoint %d in %s", resumed_from, store.directory)
    elif dropped := run_log.truncate_after(0):
        log.warning("%s: dropped %d records of an earlier attempt that left no checkpoint "
                    "(this run redoes it from step 0)", run_log.path, dropped)

    checkpoint_every = config.checkpoint_every or config.eval_every
    result = LoopResult(
        last_step=start, best_step=progress.best_step, best_score=progress.best_score,
        resumed_from=resumed_from,
    )

    def save(step: int, score: float | None, force: bool = False) -> None:
        # Every process reads its own shard, so every process's position is saved.
        data_state = {"iterators": _data_state(batches), "loop": dataclasses.asdict(progress)}
        store.save(step, state, data_state, run_config, score=score, force=force)

    bar = _progress_bar(config.num_steps, start, show_progress)
    timer = _Throughput()
    pending: tuple[int, Mapping[str, Any], int] | None = None
    skips = _Skips(config.max_consecutive_skips)
    step = start
    with _Preemption(preemption_sync) as preemption:
        while step < config.num_steps:
            local = next(batches)
            tokens = count_tokens(local)
            state, metrics = train_step(state, to_global(local))
            step += 1
            # Fetch the previous step's metrics after dispatching this one: the host never
            # waits for the device except to read numbers that are already computed.
            if pending is not None:
                skips.add(*_log_train(run_log, bar, timer, *pending, task_names))
            pending = (step, metrics, tokens)

            evaluated = step % config.eval_every == 0 or step == config.num_steps
            due = evaluated or step % checkpoint_every == 0
            if due:  # this step's numbers decide whether it may be evaluated and saved
                skips.add(*_log_train(run_log, bar, timer, *pending, task_names))
                pending = None
                if skips.current:
                    log.warning("step %d skipped its update: no evaluation or checkpoint of it "
                                "(a checkpoint is only written for an applied update)", step)
                if skips.current or skips.tripped:  # tripped: stopping, nothing more is saved
                    evaluated = due = False
            stop = False
            if evaluated:
                outcome = evaluate(state, step)
                for record in outcome.records:
                    run_log.write(record)
                improved = progress.best_score is None or outcome.score > progress.best_score
                if improved:
                    progress = _Progress(outcome.score, step, 0)
                else:
                    progress.evals_since_best += 1
                run_log.write({"step": step, "kind": "eval_summary", "score": outcome.score,
                               "best_score": progress.best_score, "best_step": progress.best_step})
                _say(bar, f"step {step}: score {100 * outcome.score:.2f} "
                          f"(best {100 * progress.best_score:.2f} at step {progress.best_step})"
                     + (f"\n{outcome.summary}" if outcome.summary else ""))
                stop = config.patience is not None and progress.evals_since_best >= config.patience
                save(step, outcome.score)
                timer.tick()  # evaluation time is not training throughput
            elif due:
                save(step, None)
            if preemption.reached(step) or stop or skips.tripped:
                if pending is not None:
                    skips.add(*_log_train(run_log, bar, timer, *pending, task_names))
                    pending = None
                if not due and not skips.current and not skips.tripped:
                    save(step, None, force=True)  # preempted between checkpoint steps
                result.preempted = preemption.requested
                result.stopped_early = stop and not preemption.requested
                break
        if pending is not None:
            skips.add(*_log_train(run_log, bar, timer, *pending, task_names))
    store.wait()
    result.skipped_steps = skips.total
    if skips.tripped:
        latest = store.latest_step()
        kept = (f"the latest checkpoint is still step {latest} ({store.step_path(latest)})"
                if latest is not None else "no checkpoint was written")
        result.diverged = (f"training stopped at step {step}: {skips.tripped}. Skipped steps "
                           f"and the stop itself write no checkpoint: {kept}. {_DIVERGED_ADVICE}")
    run_log.flush()
    if bar is not None:
        bar.close()
    result.last_step = step
    result.best_step, result.best_score = progress.best_step, progress.best_score
    return state, result


def _data_state(batches: ResumableIterator) -> list[Any]:
    """Every data shard's position in shard order (all processes' shards merged; a shard built
    by several processes, when they hold the same rows, has the same position on each)."""
    merged: dict[str, Any] = {}
    for part in _gather_json(batches.get_state()):
        merged.update(part["shards"])
    return [merged[str(k)] for k in range(batches.num_shards)]


def _restore_data(batches: ResumableIterator, saved: list[Any]) -> None:
    if len(saved) != batches.num_shards:
        log.warning(
            "the checkpoint's batches were built from %d data shards, this run builds them from %d "
            "(TrainConfig.data_shards, or the process count it defaults to, changed): the model "
            "and optimizer state are restored exactly, the data order starts afresh. Set "
            "TrainConfig.data_shards to a multiple of both process counts to resume exactly.",
            len(saved), batches.num_shards)
        return
    batches.set_state({"num_shards": len(saved),
                       "shards": {str(k): s for k, s in enumerate(saved)}})


def _gather_json(obj: Any) -> list[Any]:
    """``obj`` of every process, in process order (one all-gather of UTF-8 bytes)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    padded = np.zeros((int(sizes.max()),), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(rows, sizes.ravel(), strict=True)]


_DIVERGED_ADVICE = (
    "Lower the learning rate (TrainConfig.optimizer), or check the data of the steps named in the "
    "warnings above, then rerun the same command: it resumes from the latest checkpoint."
)


class _Skips:
    """Counts updates the step skipped (non-finite loss, gradient or update) and trips after
    ``limit`` in a row. Every process sees the same metrics, so all trip at the same step."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.current = 0  # skips in a row, ending at the last step added
        self.first: int | None = None  # the first step of that run of skips
        self.tripped: str | None = None

    def add(self, step: int, skipped: bool) -> None:
        if not skipped:
            self.current, self.first = 0, None
            return
        self.total += 1
        self.current += 1
        self.first = step if self.first is None else self.first
        if self.current >= self.limit and self.tripped is None:
            self.tripped = (
                f"the updates of steps {self.first}-{step} ({self.current} in a row, "
                f"TrainConfig.max_consecutive_skips={self.limit}) were skipped because the loss, "
                "the gradient norm or the update was not finite"
            )


# Per-task metric arrays (``[num_tasks]``, negative = not applicable) logged as ``PREFIX/task``.
PER_TASK_METRICS = {"selected_fraction": "selected", "pool_entropy": "entropy"}


class _Throughput:
    def __init__(self) -> None:
        self.last = time.perf_counter()

    def tick(self) -> float:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        return max(dt, 1e-9)


def _log_train(
    run_log: RunLog,
    bar: Any,
    timer: _Throughput,
    step: int,
    metrics: Mapping[str, Any],
    tokens: int,
    task_names: list[str] | None,
) -> tuple[int, bool]:
    """Write step ``step``'s train record; returns ``(step, skipped)``."""
    host = jax.device_get(dict(metrics))
    dt = timer.tick()
    record: dict[str, Any] = {"step": step, "kind": "train"}
    for key in ("loss", "z_loss", "grad_norm", "learning_rate", "weight"):
        if key in host:
            record[key] = float(np.asarray(host[key]))
    for key, value in host.items():  # the objective's named extra terms (e.g. r3f_kl)
        if key not in record and key != "skipped" and np.ndim(value) == 0:
            record[key] = float(np.asarray(value))
    if task_names and "per_task_loss" in host:
        losses = np.asarray(host["per_task_loss"])
        weights = np.asarray(host.get("per_task_weight", np.ones_like(losses)))
        for name, value, weight in zip(task_names, losses, weights, strict=False):
            if weight > 0:
                record[f"loss/{name}"] = float(value)
    for key, prefix in PER_TASK_METRICS.items():  # e.g. where MT-Uncertainty sampling goes
        if task_names and key in host:
            for name, value in zip(task_names, np.asarray(host[key]), strict=False):
                if value >= 0:
                    record[f"{prefix}/{name}"] = float(value)
    record["steps_per_sec"] = 1.0 / dt
    record["tokens_per_sec"] = tokens / dt
    skipped = bool(np.asarray(host.get("skipped", 0)))
    if skipped:
        record["skipped"] = 1
        log.warning("step %d: update skipped, %s; parameters and optimizer state kept. Task mix "
                    "of the batch: %s", step, _why_skipped(record), _task_mix(host, task_names))
    run_log.write(record)
    if bar is not None:
        bar.n = step
        bar.set_postfix(
            loss=f"{record.get('loss', float('nan')):.4f}",
            steps_s=f"{record['steps_per_sec']:.2f}",
            tok_s=f"{record['tokens_per_sec']:.0f}",
            refresh=False,
        )
        bar.refresh()
    return step, skipped


def _why_skipped(record: Mapping[str, Any]) -> str:
    loss, norm = record.get("loss", math.nan), record.get("grad_norm", math.nan)
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if not math.isfinite(norm):
        return f"the gradient norm is {norm} (loss {loss:.4g})"
    return (f"the update is not finite (loss {loss:.4g}, gradient norm {norm:.4g}, learning rate "
            f"{record.get('learning_rate', math.nan):.4g})")


def _task_mix(host: Mapping[str, Any], task_names: list[str] | None) -> str:
    """``"xnli (61), ctkfacts_nli (12)"``: the tasks with weight (tokens or examples) in a batch."""
    if "per_task_weight" not in host:
        return "unknown"
    weights = np.asarray(host["per_task_weight"])
    names = task_names or [f"task {i}" for i in range(len(weights))]
    mix = [f"{name} ({w:g})" for name, w in zip(names, weights, strict=False) if w > 0]
    return ", ".join(mix) or "no weighted examples"


def _progress_bar(total: int, initial: int, show: bool) -> Any:
    if not show or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _say(bar: Any, text: str) -> None:
    if jax.process_index() != 0:
        return
    if bar is not None:
        bar.write(text)
    else:
        print(text, flush=True)
