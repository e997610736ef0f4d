"""CheckpointStore: cross-mesh restore, retention (last K + best), incompatible-model errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl_jax.training.checkpoints import CheckpointStore, IncompatibleCheckpointError, abstract_like

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
