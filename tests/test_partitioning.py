"""Mesh construction, logical-axis rules, shardings of params / optimizer state / batches, the
global batch assembly (also across 2 real processes) and the parameter table."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import train_state as ts

T5_TINY = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16)
XLMR_TINY = XLMRConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=32, max_position_embeddings=20,
                       task_num_labels=(3, 2, 1))


def t5_fn() -> T5Model:
    return T5Model(T5_TINY, rngs=nnx.Rngs(0))


def xlmr_fn() -> XLMRMultiTask:
    return XLMRMultiTask(XLMR_TINY, rngs=nnx.Rngs(0))


def _flat(tree) -> dict[str, object]:
    return {part.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# -- mesh -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes, shape",
    [((), (8, 1, 1)), ((2, 2, 2), (2, 2, 2)), ((1, 2, 4), (1, 2, 4)), ((-1, 2, 2), (2, 2, 2)),
     ((2, -1, 1), (2, 4, 1)), ((1, 1, -1), (1, 1, 8))],
)
def test_make_mesh_shapes(sizes, shape):
    mesh = part.make_mesh(*sizes)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == shape
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_on_a_device_subset():
    mesh = part.make_mesh(devices=jax.devices()[:1])
    assert tuple(mesh.shape.values()) == (1, 1, 1)


@pytest.mark.parametrize(
    "sizes, match",
    [((3, 1, 1), "multiply to 3, but there are 8 devices"),
     ((-1, 3, 1), "multiply to 3, which does not divide the 8"),
     ((-1, -1, 1), "at most one -1"),
     ((0, 1, 1), "positive")],
)
def test_make_mesh_errors_name_the_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        part.make_mesh(*sizes)


# -- rules ------------------------------------------------------------------------------------------


def test_rules_tables():
    t5x = dict(part.rules_by_name("t5x"))
    # T5X's standard_logical_axis_rules (model axis named "tensor").
    assert (t5x["batch"], t5x["vocab"], t5x["mlp"], t5x["heads"]) == ("data", "tensor", "tensor",
                                                                      "tensor")
    assert t5x["embed"] is None and t5x["kv"] is None
    fsdp = dict(part.rules_by_name("fsdp"))
    assert fsdp["embed"] == "fsdp" and fsdp["batch"] == ("data", "fsdp")
    with pytest.raises(ValueError, match=r"unknown partitioning rules 'zero'.*fsdp.*t5x"):
        part.rules_by_name("zero")


def test_logical_to_spec_rules(caplog):
    mesh = part.make_mesh(1, 2, 4)
    t5x, fsdp = part.rules_by_name("t5x"), part.rules_by_name("fsdp")
    assert part.logical_to_spec(("embed", "mlp"), (16, 32), mesh, t5x) == P(None, "tensor")
    assert part.logical_to_spec(("embed", "mlp"), (16, 32), mesh, fsdp) == P("fsdp", "tensor")
    assert part.logical_to_spec(("embed", "heads", "kv"), (16, 4, 4), mesh, fsdp) == P(
        "fsdp", "tensor", None)
    assert part.logical_to_spec(None, (3, 3), mesh, t5x) == P()
    # A mesh axis shards at most one dimension of an array.
    assert part.logical_to_spec(("mlp", "heads"), (8, 8), mesh, t5x) == P("tensor", None)
    # XLM-R's 250002-row vocabulary does not split over 4 devices: replicate, and say so.
    with caplog.at_level(logging.WARNING):
        spec = part.logical_to_spec(("vocab", "embed"), (250002, 16), mesh, fsdp, name="emb")
    assert spec == P(None, "fsdp")
    assert "emb: dimension vocab (250002) is not divisible" in caplog.text
    with pytest.raises(ValueError, match=r"w: logical axis 'embd' has no partitioning rule"):
        part.logical_to_spec(("embd",), (4,), mesh, t5x, name="w")
    with pytest.raises(ValueError, match=r"w: 1 logical axes .* shape \(4, 4\)"):
        part.logical_to_spec(("embed",), (4, 4), mesh, t5x, name="w")


def _expected_t5_spec(name: str, rules: str) -> P:
    """Written out by hand from the T5 module layout (independent of the resolver)."""
    e = "fsdp" if rules == "fsdp" else None
    if name == "shared/embedding":
        return P("tensor", e)
    if name == "lm_head/kernel":
        return P(e, "tensor")
    if name.endswith("relpos/embedding") or "relative_attention_bias" in name:
        return P(None, "tensor")
    if any(name.endswith(f"{k}/kernel") for k in ("query", "key", "value")):
        return P(e, "tensor", None)
    if name.endswith("out/kernel"):
        return P("tensor", None, e)
    if "/wi" in name:
        return P(e, "tensor")
    if name.endswith("wo/kernel"):
        return P("tensor", e)
    if name.endswith("scale"):
        return P(e)
    raise AssertionError(f"unexpected T5 parameter {name}")


_STATES: dict[str, tuple] = {}


def _t5_state(rules: str) -> tuple:
    """(graphdef, state) of tiny mT5 + Adafactor on mesh (1, 2, 4), built once per rules."""
    if rules not in _STATES:
        mesh = part.make_mesh(1, 2, 4)
        optimizer = opt.make_optimizer("adafactor", min_dim_size_to_factor=8)
        graphdef, state, _ = ts.create_train_state(t5_fn, optimizer, mesh,
                                                   part.rules_by_name(rules))
        _STATES[rules] = (graphdef, state)
    return _STATES[rules]


@pytest.mark.parametrize("rules", ["t5x", "fsdp"])
def test_t5_params_sharded_as_rules_say(rules):
    mesh = part.make_mesh(1, 2, 4)
    _, state = _t5_state(rules)
    names = _flat(state.params)
    assert len(names) > 10
    for name, x in names.items():
        want = _expected_t5_spec(name, rules)
        assert x.sharding.spec == want, (name, x.sharding.spec, want)
        assert x.sharding.mesh.shape == mesh.shape
        # Each device really holds only its block.
        full = tuple(want) + (None,) * (x.ndim - len(want))
        block = tuple(
            d // math.prod(mesh.shape[a] for a in ((ax,) if isinstance(ax, str) else ax or ()))
            for d, ax in zip(x.shape, full, strict=True)
        )
        assert {s.data.shape for s in x.addressable_shards} == {block}, name
    # Adafactor statistics follow their parameters: wi kernel [16, 32] = (embed, mlp) is
    # factored over dims (d1=0, d0=1): v_row drops d0 (mlp), v_col drops d1 (embed).
    factored = state.opt_state[0]
    wi = "encoder/layers/0/mlp/wi_0/kernel"
    v_row, v_col = _flat(factored.v_row)[wi], _flat(factored.v_col)[wi]
    e = "fsdp" if rules == "fsdp" else None
    assert v_row.shape == (16,) and v_row.sharding.spec == P(e)
    assert v_col.shape == (32,) and v_col.sharding.spec == P("tensor")
    assert factored.count.sharding.spec == P()


def test_xlmr_specs_and_adamw_state_mirror_params():
    mesh = part.make_mesh(2, 2, 2)
    rules = part.rules_by_name("fsdp")
    optimizer = opt.make_optimizer("adamw")
    _, abstract, shardings = ts.train_state_shardings(xlmr_fn, optimizer, mesh, rules)
    specs = {k: s.spec for k, s in _flat(shardings.params).items()}

    def spec(fragment: str) -> P:  # the one parameter whose path contains ``fragment``
        (hit,) = [v for k, v in specs.items() if fragment in k]
        return hit

    assert spec("word_embeddings") == P("tensor", "fsdp")
    assert spec("position_embeddings") == P(None, "fsdp")
    assert spec("layers/0/attention/query/kernel") == P("fsdp", "tensor", None)
    assert spec("layers/0/attention/query/bias") == P("tensor", None)
    assert spec("layers/0/intermediate/kernel") == P("fsdp", "tensor")
    assert spec("heads/dense_kernel") == P(None, "fsdp", "tensor")
    assert spec("heads/out_kernel") == P(None, "tensor", None)
    # AdamW's mu and nu carry exactly the parameter shardings.
    adam = abstract.opt_state[0]
    for moment in (adam.mu, adam.nu):
        got = {k: v.sharding.spec for k, v in _flat(moment).items()}
        assert got == specs


# -- batches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rules, spec", [("t5x", P("data")), ("fsdp", P(("data", "fsdp")))])
def test_global_batch_single_process(rules, spec):
    mesh = part.make_mesh(2, 2, 2)
    sharding = part.batch_sharding(mesh, part.rules_by_name(rules))
    assert sharding.spec == spec
    local = {"input_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
             "task_id": np.arange(8, dtype=np.int32)}
    batch = part.global_batch(local, mesh, sharding)
    for k, v in local.items():
        np.testing.assert_array_equal(np.asarray(batch[k]), v)
        assert batch[k].sharding.spec == spec
    part.check_batch_size(8, mesh, part.rules_by_name(rules), micro_batches=2)
    with pytest.raises(ValueError, match=r"global batch size 6 must be divisible"):
        part.check_batch_size(6, mesh, part.rules_by_name(rules), micro_batches=4)


def test_host_to_global_places_blocks():
    mesh = part.make_mesh(1, 2, 4)
    _, abstract, shardings = ts.train_state_shardings(
        t5_fn, opt.make_optimizer("adafactor"), mesh, part.rules_by_name("fsdp"))
    host = jax.tree.map(lambda a: np.random.default_rng(0).normal(size=a.shape).astype(a.dtype),
                        abstract.params)
    placed = part.host_to_global(host, shardings.params)
    for (p, a), b, s in zip(jax.tree_util.tree_flatten_with_path(placed)[0],
                            jax.tree.leaves(host), jax.tree.leaves(shardings.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert a.sharding == s, part.path_str(p)
    # A train state around given (e.g. pretrained) weights: same values, every leaf in place.
    state = ts.state_from_params(None, placed, {}, opt.make_optimizer("adafactor"), shardings)
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(host), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert a.sharding == s


_MULTI = textwrap.dedent(
    """
    import os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
    import numpy as np
    from jax.experimental import multihost_utils
    from mtl_jax.training import partitioning as part
    pid = jax.process_index()
    mesh = part.make_mesh(-1, 2, 1)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    rules = part.rules_by_name(sys.argv[3])
    sharding = part.batch_sharding(mesh, rules)
    rows = np.arange(16 * 3, dtype=np.int32).reshape(16, 3)
    local = {"x": rows[pid * 8:(pid + 1) * 8]}  # each process holds its own half
    batch = part.global_batch(local, mesh, sharding)
    assert batch["x"].shape == (16, 3), batch["x"].shape
    total = jax.jit(lambda b: (b["x"] * jax.numpy.arange(16)[:, None]).sum())(batch)
    gathered = multihost_utils.process_allgather(batch["x"], tiled=True)
    np.testing.assert_array_equal(gathered, rows)
    assert int(total) == int((rows * np.arange(16)[:, None]).sum())
    print("OK", pid, flush=True)
    """
)


@pytest.mark.parametrize("rules", ["t5x", "fsdp"])
def test_global_batch_across_two_processes(tmp_path: Path, rules):
    script = tmp_path / "multi.py"
    script.write_text(_MULTI)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), rules], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, out[-3000:]
        assert f"OK {i}" in out


# -- parameter table --------------------------------------------------------------------------------


def test_parameter_table_bytes_match_real_shards():
    mesh = part.make_mesh(1, 2, 4)
    rules = part.rules_by_name("fsdp")
    graphdef, state = _t5_state("fsdp")
    _, p_state, _ = ts.abstract_model(t5_fn)
    table = part.parameter_table(p_state, mesh, rules)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "shape", "logical", "axes", "mesh", "sharding",
                                "bytes/device"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:-1]}
    flat = _flat(state.params)
    assert set(rows) == set(flat)
    for name, x in flat.items():
        shard_bytes = x.addressable_shards[0].data.nbytes
        assert int(rows[name][-1].replace(",", "")) == shard_bytes, name
        assert rows[name][1] == "x".join(map(str, x.shape))
    assert rows["shared/embedding"][2:4] == ["vocab,embed", "(tensor,fsdp)"]
    total_dev = sum(x.addressable_shards[0].data.nbytes for x in flat.values())
    assert f"{total_dev:,} bytes per device" in lines[-1]
    n = sum(x.size for x in flat.values())
    assert f"{n:,} parameters" in lines[-1]
    # Works on a live module too (same rows).
    live = ts.merge_model(graphdef, state.params, state.rest)
    assert part.parameter_table(live, mesh, rules) == table


def test_state_shardings_accepts_module_and_state():
    mesh = part.make_mesh(8, 1, 1)
    rules = part.rules_by_name("t5x")
    graphdef, state = _t5_state("t5x")
    model = ts.merge_model(graphdef, state.params, state.rest)
    a = part.state_shardings(nnx.state(model, nnx.Param), mesh, rules)
    b = part.state_shardings(ts.abstract_model(t5_fn)[1], mesh, rules)
    assert jax.tree.map(lambda s: s.spec, a) == jax.tree.map(lambda s: s.spec, b)
    assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(a))


def test_with_logical_constraint_inside_and_outside_a_mesh():
    x = jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16)
    # Outside the step contexts it is the identity (one-device code and tests).
    assert part.with_logical_constraint(x, ("batch", "embed")) is x
    mesh = part.make_mesh(2, 2, 2)
    rules = part.rules_by_name("fsdp")
    fn = jax.jit(lambda a: part.with_logical_constraint(a * 2, ("batch", "embed")))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        y = fn(x)
    # batch takes data+fsdp, so embed (also fsdp) stays whole: one mesh axis per array.
    assert tuple(y.sharding.spec) in {(("data", "fsdp"),), (("data", "fsdp"), None)}
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)
