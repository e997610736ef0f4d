"""CheckpointStore: cross-mesh restore, retention (last K + best), incompatible-model errors, and
faults: failed saves (file-size limit, injected EACCES) and unreadable checkpoints."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl_jax.training.checkpoints import (
    CONFIG,
    DATA,
    CheckpointSaveError,
    CheckpointStore,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    abstract_like,
)

MODEL = {"name": "toy", "d_model": 8}


def _mesh(shape: tuple[int, int, int]) -> Mesh:
    n = int(np.prod(shape))
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), ("data", "fsdp", "tensor"))


def _state(mesh: Mesh) -> dict:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8,)).astype(np.float32)
    return {
        "params": {
            "w": jax.device_put(w, NamedSharding(mesh, P(("data", "fsdp"), "tensor"))),
            "b": jax.device_put(b, NamedSharding(mesh, P("tensor"))),
        },
        "step": jax.device_put(np.int32(7), NamedSharding(mesh, P())),
    }


def test_restore_on_other_meshes(tmp_path):
    src = _mesh((4, 2, 1))
    state = _state(src)
    store = CheckpointStore(tmp_path / "ckpt", keep_last=2)
    store.save(7, state, {"batches": 3}, {"model": MODEL})
    store.close()
    for shape in [(1, 1, 8), (1, 1, 1)]:
        mesh = _mesh(shape)
        shardings = {
            "params": {
                "w": NamedSharding(mesh, P(None, "tensor")),
                "b": NamedSharding(mesh, P("tensor")),
            },
            "step": NamedSharding(mesh, P()),
        }
        store = CheckpointStore(tmp_path / "ckpt")
        assert store.latest_step() == 7
        restored, data, config = store.restore(7, abstract_like(state, shardings), MODEL)
        store.close()
        assert data == {"batches": 3} and config["model"] == MODEL
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert restored["params"]["w"].sharding.mesh.devices.shape == shape


def test_keeps_last_and_best(tmp_path):
    mesh = _mesh((1, 1, 1))
    state = _state(mesh)
    store = CheckpointStore(tmp_path / "ckpt", keep_last=2, keep_best=1, async_save=False)
    scores = {1: 0.5, 2: 0.9, 3: 0.4, 4: 0.3, 5: None}
    for step, score in scores.items():
        store.save(step, state, {}, {"model": MODEL}, score=score)
    store.wait()
    assert store.best_step() == 2
    assert set(store.all_steps()) == {2, 4, 5}
    store.close()


def test_a_tie_keeps_the_earlier_best_as_the_training_loop_reports_it(tmp_path):
    """The loop moves its best step only on a strict improvement; the store must keep that
    step's checkpoint when a later evaluation ties it (it once kept the later one instead)."""
    state = _state(_mesh((1, 1, 1)))
    store = CheckpointStore(tmp_path / "ckpt", keep_last=1, keep_best=1, async_save=False)
    for step, score in {4: 0.17, 8: 0.15, 12: 0.17, 13: None}.items():
        store.save(step, state, {}, {"model": MODEL}, score=score)
    store.wait()
    assert store.best_step() == 4
    assert set(store.all_steps()) == {4, 13}
    store.close()


def test_incompatible_model_is_clear_and_harmless(tmp_path):
    mesh = _mesh((1, 1, 1))
    state = _state(mesh)
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    store.save(1, state, {}, {"model": MODEL})
    store.wait()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(IncompatibleCheckpointError, match="d_model: checkpoint=8 run=16"):
        store.restore(1, state, {"name": "toy", "d_model": 16})
    store.close()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_real_train_state_restores_across_meshes(tmp_path):
    """A tiny mT5 train state (params + Adafactor state + rng) saved on mesh (4,2,1) restores on
    (1,1,8) and on one device with identical values and the target mesh's shardings."""
    from flax import nnx

    from mtl_jax.models.t5 import T5Config, T5Model
    from mtl_jax.training import partitioning as part
    from mtl_jax.training.optimizers import make_optimizer
    from mtl_jax.training.train_state import create_train_state, train_state_shardings

    cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    model_fn = lambda: T5Model(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    optimizer = make_optimizer("adafactor", learning_rate=1e-3)
    rules = part.rules_by_name("t5x")
    src = part.make_mesh(4, 2, 1)
    _, state, _ = create_train_state(model_fn, optimizer, src, rules, seed=3)
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    store.save(1, state, {"iterators": []}, {"model": MODEL})
    store.close()
    expected = [np.asarray(x) for x in jax.tree.leaves(state)]
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = part.make_mesh(1, 1, len(devices), devices=devices)
        _, abstract, _ = train_state_shardings(model_fn, optimizer, mesh, rules)
        store = CheckpointStore(tmp_path / "ckpt")
        restored, _, _ = store.restore(1, abstract, MODEL)
        store.close()
        leaves = jax.tree.leaves(restored)
        assert len(leaves) == len(expected)
        for a, b in zip(leaves, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(a), b)
            assert a.sharding.mesh.devices.size == len(devices)


# -- faults: failed saves, unreadable checkpoints ---------------------------------------------------


def _big_state(seed: int) -> dict:
    """~1 MiB of float32, so its data file is far above the file-size limit used below."""
    rng = np.random.default_rng(seed)
    return {"w": jax.numpy.asarray(rng.standard_normal((512, 512)).astype(np.float32)),
            "step": jax.numpy.asarray(np.int32(seed))}


def _saved_store(directory, steps=(1, 2), async_save=True) -> tuple[CheckpointStore, dict]:
    store = CheckpointStore(directory, keep_last=2, keep_best=0, async_save=async_save)
    states = {s: _big_state(s) for s in steps}
    for s in steps:
        store.save(s, states[s], {"iterators": [s]}, {"model": MODEL})
    store.wait()
    return store, states


def _assert_restores(directory, states: dict) -> None:
    """Every step of ``states`` restores bit-identically from a fresh store over ``directory``."""
    store = CheckpointStore(directory, keep_last=2, keep_best=0)
    assert store.all_steps() == sorted(states)
    for step, state in states.items():
        restored, data, _ = store.restore(step, state, MODEL)
        assert data == {"iterators": [step]}
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    store.close()


@pytest.mark.parametrize("async_save", [True, False])
def test_disk_full_save_is_a_clear_error_and_older_checkpoints_restore(tmp_path, async_save):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG (what a full disk looks like
    to tensorstore). The failed save of step 3 (keep_last=2 would have deleted step 1) names the
    step, the folder and the OS error; steps 1 and 2 restore bit-identically afterwards."""
    import resource

    directory = tmp_path / "ckpt"
    store, states = _saved_store(directory, async_save=async_save)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointSaveError) as info:
            store.save(3, _big_state(3), {"iterators": [3]}, {"model": MODEL})
            store.wait()  # the async save fails in the background and surfaces here
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    assert f"could not write checkpoint 3 to {directory / '3'}" in message
    assert "File too large [EFBIG]" in message
    assert "steps 1, 2" in message and "rerun the same command" in message
    store.close()  # the failure was reported once; closing does not raise it again
    _assert_restores(directory, states)  # (and orbax's leftover temporary folder is cleaned up)
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]


def test_unwritable_directory_fails_at_once_and_harms_nothing(tmp_path, monkeypatch):
    """An unwritable checkpoint folder (EACCES injected on the first write into it; see the CLI
    test for a real immutable folder): the save fails before orbax starts its background work."""
    directory = tmp_path / "ckpt"
    store, states = _saved_store(directory)
    real_open = Path.open

    def deny(self, *args, **kwargs):
        if self.parent == directory:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(CheckpointSaveError, match=r"checkpoint 3 .*Permission denied \[EACCES\]"):
        store.save(3, _big_state(3), {"iterators": [3]}, {"model": MODEL})
    monkeypatch.undo()
    store.close()
    _assert_restores(directory, states)


def _corrupt(step_dir: Path, how: str) -> None:
    if how == "state data truncated":
        data = max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
        os.truncate(data, data.stat().st_size // 2)
    elif how == "state manifest truncated":
        manifest = step_dir / "state" / "manifest.ocdbt"
        os.truncate(manifest, manifest.stat().st_size // 2)
    elif how == "data json torn":
        (step_dir / DATA / "metadata").write_text('{"itera')
    elif how == "config json torn":
        (step_dir / CONFIG / "metadata").write_text('{"mod')
    elif how == "empty folder":
        shutil.rmtree(step_dir)
        step_dir.mkdir()


CORRUPTIONS = ["state data truncated", "state manifest truncated", "data json torn",
               "config json torn", "empty folder"]


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_latest_falls_back_to_the_previous_one(tmp_path, caplog, how):
    directory = tmp_path / "ckpt"
    store, states = _saved_store(directory, steps=(1, 2, 3), async_save=False)
    store.close()
    _corrupt(directory / "3", how)
    store = CheckpointStore(directory, keep_last=2, keep_best=0)
    with caplog.at_level(logging.WARNING, logger="mtl_jax.training.checkpoints"):
        step, restored, data, config = store.restore_latest(states[3], MODEL)
    assert step == 2 and data == {"iterators": [2]} and config["model"] == MODEL
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"checkpoint {directory / '3'} cannot be read" in warning
    assert str(directory / "3.corrupt-1") in warning and f"checkpoint {directory / '2'}" in warning
    # Moved aside, not deleted (keep_last=2 had already removed step 1); orbax no longer lists
    # it, and step 3 can be saved again.
    assert sorted(p.name for p in directory.iterdir()) == ["2", "3.corrupt-1"]
    assert store.all_steps() == [2] and store.latest_step() == 2
    store.save(3, states[3], {"iterators": [3]}, {"model": MODEL})
    store.close()
    assert sorted(p.name for p in directory.iterdir()) == ["2", "3", "3.corrupt-1"]


def test_latest_readable_config_skips_a_torn_config_and_touches_nothing(tmp_path):
    directory = tmp_path / "ckpt"
    store, _ = _saved_store(directory, steps=(1, 2), async_save=False)
    store.close()
    _corrupt(directory / "2", "config json torn")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    store = CheckpointStore(directory, keep_last=2, keep_best=0)
    step, config = store.latest_readable_config()
    store.close()
    assert step == 1 and config["model"] == MODEL
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(tmp_path):
    directory = tmp_path / "ckpt"
    store, states = _saved_store(directory, steps=(1, 2), async_save=False)
    store.close()
    _corrupt(directory / "2", "state data truncated")
    _corrupt(directory / "1", "data json torn")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    store = CheckpointStore(directory, keep_last=2, keep_best=0)
    with pytest.raises(CorruptCheckpointError) as info:
        store.restore_latest(states[2], MODEL)
    message = str(info.value)
    assert f"no checkpoint in {directory} can be read" in message
    assert str(directory / "2") in message and str(directory / "1") in message
    assert "No checkpoint was moved or deleted" in message
    assert store.latest_readable_config()[0] == 2  # its config still reads: only the state is bad
    store.close()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_no_checkpoints_is_none(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.restore_latest({"w": np.zeros(2)}) is None
    assert store.latest_readable_config() is None
    store.close()
