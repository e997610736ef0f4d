"""Orbax checkpoints of a whole run: train state, data-iterator position, RNG and the run's config.

One ``CheckpointStore`` per MODEL_DIR (``MODEL_DIR/checkpoints``). It keeps the last ``keep_last``
checkpoints plus the ``keep_best`` best by the model-selection score, saves asynchronously, and
restores onto abstract arrays carrying the *current* mesh's shardings, so a checkpoint written on
one mesh restores on another. Each checkpoint also stores the model config it was written with;
restoring into a different model fails with a message naming the fields that differ, before any
array is read and without touching the directory.

Faults (docs/faults.md): a save that fails (disk full, directory not writable) raises
``CheckpointSaveError`` naming the step, the directory and the OS error; orbax only deletes old
checkpoints after a new one is complete, so the earlier ones stay restorable. A latest checkpoint
that cannot be read (a crash mid-write without atomic rename) is moved aside to
``<step>.corrupt-<n>`` and the next older one is restored, with a warning naming both; when none
can be read, ``CorruptCheckpointError`` says so instead of silently starting over.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mtl_jax.models import vocab_padding

log = logging.getLogger(__name__)

STATE, DATA, CONFIG = "state", "data", "config"
SCORE_KEY = "score"
STEP_KEY = "step"
# Among equal scores the EARLIER step is the best, as in the training loop (which moves its best
# only on a strict improvement): otherwise orbax could keep a later tied step and delete the
# checkpoint the run reports as best.
_TIE_BREAK = 1e-12


def _ranking(metrics: dict[str, Any]) -> float:
    return float(metrics[SCORE_KEY]) - _TIE_BREAK * float(metrics.get(STEP_KEY, 0))


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written by a model with another configuration."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read (the message says which and what to do)."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed (disk full, directory not writable, ...)."""


class CorruptCheckpointError(CheckpointError):
    """The directory holds checkpoints but none of them can be read."""


class CheckpointStore:
    """Save/restore (state, data-iterator state, run config) triples under ``directory``."""

    def __init__(
        self,
        directory: str | Path,
        keep_last: int = 2,
        keep_best: int = 1,
        async_save: bool = True,
    ) -> None:
        self.directory = Path(directory).absolute()
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep_last)]
        if keep_best > 0:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_ranking,
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            # A step saved without a score (e.g. on SIGTERM between evaluations) is still kept as
            # one of the latest; best_step ignores it.
            best_fn=_ranking,
            best_mode="max",
            keep_checkpoints_without_metrics=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA, CONFIG)
        )
        self._in_flight: int | None = None  # the step an async save is still writing

    # -- queries -------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    # -- save / restore ------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        data_state: dict[str, Any],
        config: dict[str, Any],
        score: float | None = None,
        force: bool = False,
    ) -> bool:
        """Start an (async) save; ``score`` is the model-selection score if this step was evaluated.

        Raises ``CheckpointSaveError`` if this save, or the previous async one, failed.
        """
        metrics = None if score is None else {SCORE_KEY: float(score), STEP_KEY: int(step)}
        self.wait()  # a failed background save surfaces here, under its own step
        # Orbax creates the step's folder in a background thread; if that fails, waiting for the
        # save blocks for the coordination timeout (minutes). A small synchronous write first
        # turns an unwritable directory into an immediate error.
        self._check_writable(step)
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE: ocp.args.StandardSave(state),
                        DATA: ocp.args.JsonSave(data_state),
                        CONFIG: ocp.args.JsonSave(config),
                    }
                ),
                metrics=metrics,
                force=force,
            )
        except Exception as e:
            raise self._save_error(step, e) from e
        if saved:
            self._in_flight = step if self._async else None
            log.info("checkpoint %d %s", step, "saving (async)" if self._async else "saved")
        return saved

    def _check_writable(self, step: int) -> None:
        probe = self.directory / f".write-check.{jax.process_index()}"
        error: OSError | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with probe.open("wb") as f:
                f.write(b"ok")
            probe.unlink()
        except OSError as e:
            error = e
        # All processes stop together (one that went on would wait in orbax's barriers).
        if not everywhere(error is None):
            raise self._save_error(step, error or OSError("another process could not write"))

    def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        which = f"checkpoint {step}" if step is not None else "a checkpoint"
        where = self.step_path(step) if step is not None else self.directory
        complete = self._steps_on_disk()
        kept = (f"the complete checkpoints already there (steps {', '.join(map(str, complete))}) "
                "are untouched" if complete else "no earlier checkpoint exists")
        return CheckpointSaveError(
            f"could not write {which} to {where}: {_os_reason(error)}. Training stopped; {kept}. "
            f"Free disk space or make {self.directory} writable, then rerun the same command: it "
            "resumes from the latest complete checkpoint."
        )

    def _steps_on_disk(self) -> list[int]:
        """Step folders orbax has finalised (it writes into a temporary name and renames)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    @property
    def _async(self) -> bool:
        return bool(self._manager._options.enable_async_checkpointing)  # noqa: SLF001

    def read_config(self, step: int) -> dict[str, Any]:
        """The run config stored with ``step`` (cheap: reads one JSON file)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
        )
        return dict(restored[CONFIG])

    def restore(
        self,
        step: int,
        abstract_state: Any,
        expected_model: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Restore ``step`` onto ``abstract_state`` (ShapeDtypeStructs with target shardings).

        ``expected_model`` is compared with the stored ``config["model"]`` first; a mismatch raises
        ``IncompatibleCheckpointError`` naming the differing fields.
        """
        config = self.read_config(step)
        if expected_model is not None:
            check_compatible(config.get("model", {}), expected_model, self.step_path(step))
        self._check_state_layout(step, abstract_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardRestore(abstract_state),
                    DATA: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[STATE], dict(restored[DATA]), config

    def _check_state_layout(self, step: int, abstract_state: Any) -> None:
        """Raise ``IncompatibleCheckpointError`` when the stored train state holds other arrays
        than this run's (same model, but e.g. another optimizer, partition or SMART teacher):
        without this, orbax's mismatch would read as an unreadable checkpoint. Unreadable
        metadata is left to the restore (and the corrupt-checkpoint handling)."""
        try:
            stored = self._manager.item_metadata(step)[STATE]
            stored = getattr(stored, "tree", stored)
        except Exception:  # noqa: BLE001 - damage is the restore's to report
            return
        diffs = state_layout_differences(stored, abstract_state)
        if diffs:
            raise IncompatibleCheckpointError(
                f"checkpoint {self.step_path(step)} holds a train state of another layout than "
                "this run's:\n  " + "\n  ".join(diffs) + "\nThe optimizer or its options "
                "changed since it was written (TrainConfig.optimizer, its train/freeze/LoRA "
                "partition, TrainConfig.smart's 'mu' teacher). Resume with the settings it was "
                "written with, or point MODEL_DIR at a fresh directory.")

    def latest_readable_config(self) -> tuple[int, dict[str, Any]] | None:
        """``(step, config)`` of the newest checkpoint whose config reads; None if there are no
        checkpoints, ``CorruptCheckpointError`` if none reads. Touches nothing (a probe before the
        run owns the directory)."""
        failures: list[tuple[int, BaseException]] = []
        for step in reversed(self.all_steps()):
            try:
                return step, self.read_config(step)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                log.info("checkpoint %s: config unreadable (%s)", self.step_path(step), _short(e))
                failures.append((step, e))
        if failures:
            raise self._corrupt_error(failures)
        return None

    def restore_latest(
        self, abstract_state: Any, expected_model: dict[str, Any] | None = None
    ) -> tuple[int, Any, dict[str, Any], dict[str, Any]] | None:
        """``(step, state, data_state, config)`` of the newest checkpoint that restores.

        Newer checkpoints that fail to read (truncated or missing files) are moved aside to
        ``<step>.corrupt-<n>`` with a warning naming them and the one restored, so orbax no
        longer sees them and a later save of the same step does not collide; nothing is deleted.
        None if there are no checkpoints; ``CorruptCheckpointError`` (nothing moved) if none
        restores. ``IncompatibleCheckpointError`` propagates: a different model is not damage.
        """
        failures: list[tuple[int, BaseException]] = []
        for step in reversed(self.all_steps()):
            error: BaseException | None = None
            try:
                state, data, config = self.restore(step, abstract_state, expected_model)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - try the next older checkpoint
                error = e
            # Every process falls back together if any one cannot read its part.
            if not everywhere(error is None):
                failures.append((step, error or RuntimeError("another process could not read it")))
                continue
            for bad, error in failures:
                aside = self._move_aside(bad)
                log.warning(
                    "checkpoint %s cannot be read (%s): moved it to %s and resumed from the "
                    "previous checkpoint %s instead",
                    self.step_path(bad), _short(error), aside, self.step_path(step),
                )
            if failures:
                self._manager.reload()
            return step, state, data, config
        if failures:
            raise self._corrupt_error(failures)
        return None

    def _move_aside(self, step: int) -> Path:
        """Rename ``<step>`` to the first free ``<step>.corrupt-<n>`` (process 0; all wait)."""
        n = 1
        while (self.directory / f"{step}.corrupt-{n}").exists():
            n += 1
        target = self.directory / f"{step}.corrupt-{n}"
        if jax.process_index() == 0:
            try:
                os.replace(self.step_path(step), target)
            except OSError as e:
                raise CorruptCheckpointError(
                    f"checkpoint {self.step_path(step)} cannot be read and could not be moved "
                    f"aside ({_os_reason(e)}); move it out of {self.directory} by hand and rerun"
                ) from e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mtl_jax: checkpoint {step} moved aside")
        return target

    def _corrupt_error(self, failures: list[tuple[int, BaseException]]) -> CorruptCheckpointError:
        lines = "\n  ".join(f"{self.step_path(s)}: {_short(e)}" for s, e in failures)
        return CorruptCheckpointError(
            f"no checkpoint in {self.directory} can be read:\n  {lines}\nNo checkpoint was moved "
            "or deleted. Restore the directory from a backup, or move it aside to train from "
            "scratch."
        )

    def wait(self) -> None:
        """Block until the async save in flight is complete; raise ``CheckpointSaveError`` if
        it failed."""
        step, self._in_flight = self._in_flight, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(step, e) from e

    def close(self) -> None:
        self.wait()
        self._manager.close()


def everywhere(ok: bool) -> bool:
    """True only if ``ok`` holds on every process: a branch all processes must take together."""
    if jax.process_count() == 1:
        return bool(ok)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(bool(ok)))).all())


def check_compatible(stored: dict[str, Any], expected: dict[str, Any], where: Path | str) -> None:
    """Raise if two model configs differ in any field (both are plain JSON dicts)."""
    diffs = model_differences(stored, expected)
    if diffs:
        raise IncompatibleCheckpointError(
            f"checkpoint {where} was written by an incompatible model; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\nPoint MODEL_DIR at a fresh directory or restore the matching model config."
        )


def state_layout_differences(stored: Any, abstract_state: Any) -> list[str]:
    """``"opt_state: checkpoint 12 arrays, run 20"`` per top-level field of the train state
    whose arrays (counted with their shapes) differ; [] when they match or the stored tree is not
    a field dict."""
    if not isinstance(stored, dict):
        return []

    def shapes(tree: Any) -> list[tuple[int, ...]]:
        return sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))

    diffs = []
    for field in sorted(stored):
        if not hasattr(abstract_state, field):
            continue
        have, want = shapes(stored[field]), shapes(getattr(abstract_state, field))
        if have != want:
            diffs.append(f"{field}: checkpoint {len(have)} arrays, run {len(want)}"
                         + ("" if len(have) != len(want) else " (of other shapes)"))
    return diffs


def model_differences(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"field: checkpoint=... run=..."`` for every field two model records disagree on (a
    record from before vocabulary padding reads as ``vocab_pad_multiple=1``)."""
    stored, expected = (vocab_padding.stored_fields(r) if r else r for r in (stored, expected))
    return [
        f"{k}: checkpoint={stored.get(k)!r} run={expected.get(k)!r}"
        for k in sorted(set(stored) | set(expected))
        if _jsonable(stored.get(k)) != _jsonable(expected.get(k))
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _os_reason(error: BaseException) -> str:
    """The OS error behind ``error`` in words (``File too large [EFBIG] (ValueError: ...)``)."""
    code = getattr(error, "errno", None)
    if code is None:  # tensorstore reports I/O errors as ValueError(... os_error_code='27' ...)
        match = re.search(r"os_error_code='?(\d+)", str(error))
        code = int(match.group(1)) if match else None
    text = _short(error)
    if code is None:
        return text
    return f"{os.strerror(code)} [{errno.errorcode.get(code, code)}] ({text})"


def _short(error: BaseException, limit: int = 300) -> str:
    """First line of an error, capped (tensorstore's messages embed whole specs)."""
    lines = str(error).strip().splitlines()
    first = (lines[0] if lines else "").split(" See full TensorStore details")[0]
    text = f"{type(error).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (restore target on the current mesh)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


# ------------------------------------------------------------------------------------------------
# Reading a training run's parameters (evaluate, predict, convert): one lookup, one step rule
# ------------------------------------------------------------------------------------------------


class CheckpointLookupError(ValueError):
    """No checkpoint where one was named, or no step of the kind asked for (the message lists
    what is there)."""


def locate_checkpoints(path: str | Path) -> tuple[Path, int | None]:
    """``(checkpoints folder, step or None)`` for a training MODEL_DIR, its ``checkpoints/``
    folder or one ``checkpoints/<step>/`` folder (then the step is that folder's)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.is_dir() and path.name.isdigit() and (path / STATE).is_dir():
        return path.parent, int(path.name)
    if path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        return path, None
    raise CheckpointLookupError(
        f"{path} is not a training run: expected MODEL_DIR (with checkpoints/<step>/), a "
        "checkpoints/ folder or one checkpoints/<step>/ folder"
    )


def choose_step(all_steps: list[int], best: int | None, latest: int | None,
                requested: str | int | None, where: Path | str) -> int:
    """The step to read: ``requested`` (a number, ``"best"`` or ``"latest"``), or by default the
    best-scored step, else the latest. A missing step or an unscored ``best`` is an error that
    lists the available steps."""
    if not all_steps:
        raise CheckpointLookupError(f"no checkpoints in {where}")
    listing = (f"available steps: {', '.join(map(str, all_steps))} (best: "
               f"{best if best is not None else 'none scored'}, latest: {latest})")
    if requested is None:
        return best if best is not None else int(latest if latest is not None else all_steps[-1])
    if requested == "latest":
        return int(latest if latest is not None else all_steps[-1])
    if requested == "best":
        if best is None:
            raise CheckpointLookupError(f"no step in {where} has a model-selection score, so there "
                                        f"is no best step; {listing}")
        return best
    try:
        step = int(requested)
    except ValueError:
        raise CheckpointLookupError(
            f"--step must be an integer, 'best' or 'latest', got {requested!r}") from None
    if step not in all_steps:
        raise CheckpointLookupError(f"step {step} is not in {where}; {listing}")
    return step


class RunCheckpoint:
    """One step of a training run, opened read-only for its parameters (no optimizer state, no
    data-iterator state is read). ``config`` is the run config stored with the step (its
    ``["model"]`` record names the family, heads and architecture)."""

    def __init__(self, path: str | Path, step: str | int | None = None) -> None:
        self.directory, hinted = locate_checkpoints(path)
        options = ocp.CheckpointManagerOptions(read_only=True, best_fn=_ranking, best_mode="max")
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options,
                                              item_names=(STATE, DATA, CONFIG))
        try:
            self.step = choose_step(sorted(self._manager.all_steps()), self._manager.best_step(),
                                    self._manager.latest_step(),
                                    hinted if hinted is not None else step, self.directory)
            self.config: dict[str, Any] = dict(self._manager.restore(
                self.step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG] or {})
        except BaseException:
            self._manager.close()
            raise

    @property
    def model_record(self) -> dict[str, Any]:
        return dict(self.config.get("model") or {})

    @property
    def where(self) -> Path:
        return self.directory / str(self.step)

    def restore(self, target: dict[str, Any]) -> dict[str, Any]:
        """The subtrees of the stored ``TrainState`` named in ``target`` (e.g. ``{"params": ...}``
        or ``{"params": ..., "rest": ...}``). Leaves that are ShapeDtypeStructs with a sharding
        are restored onto it (each process reads its shards); others come back as NumPy."""

        def args(leaf: Any) -> Any:
            sharding = getattr(leaf, "sharding", None)
            if sharding is not None:
                return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape,
                                            dtype=leaf.dtype)
            import numpy as np

            return ocp.RestoreArgs(restore_type=np.ndarray)

        restore_args = jax.tree.map(args, target)
        return self._manager.restore(self.step, args=ocp.args.Composite(**{
            STATE: ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                          partial_restore=True)}))[STATE]

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> RunCheckpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
