"""Orbax checkpoints of a whole run: train state, data-iterator position, RNG and the run's config.

One ``CheckpointStore`` per MODEL_DIR (``MODEL_DIR/checkpoints``). It keeps the last ``keep_last``
checkpoints plus the ``keep_best`` best by the model-selection score, saves asynchronously, and
restores onto abstract arrays carrying the *current* mesh's shardings, so a checkpoint written on
one mesh restores on another. Each checkpoint also stores the model config it was written with;
restoring into a different model fails with a message naming the fields that differ, before any
array is read and without touching the directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

STATE, DATA, CONFIG = "state", "data", "config"
SCORE_KEY = "score"


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written by a model with another configuration."""


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
                    get_metric_fn=lambda m: m[SCORE_KEY],
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            # A step saved without a score (e.g. on SIGTERM between evaluations) is still kept as
            # one of the latest; best_step ignores it.
            best_fn=lambda m: m[SCORE_KEY],
            best_mode="max",
            keep_checkpoints_without_metrics=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA, CONFIG)
        )

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
        """Start an (async) save; ``score`` is the model-selection score if this step was evaluated."""
        metrics = None if score is None else {SCORE_KEY: float(score)}
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
        if saved:
            log.info("checkpoint %d %s", step, "saving (async)" if self._async else "saved")
        return saved

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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def check_compatible(stored: dict[str, Any], expected: dict[str, Any], where: Path | str) -> None:
    """Raise if two model configs differ in any field (both are plain JSON dicts)."""
    keys = sorted(set(stored) | set(expected))
    diffs = [
        f"{k}: checkpoint={stored.get(k)!r} run={expected.get(k)!r}"
        for k in keys
        if _jsonable(stored.get(k)) != _jsonable(expected.get(k))
    ]
    if diffs:
        raise IncompatibleCheckpointError(
            f"checkpoint {where} was written by an incompatible model; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\nPoint MODEL_DIR at a fresh directory or restore the matching model config."
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (restore target on the current mesh)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
