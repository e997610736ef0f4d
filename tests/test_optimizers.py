"""Optax chains against independent references: PyTorch's AdamW and Hugging Face's Adafactor
(their own implementations), HF's linear schedule, T5's rsqrt formula, and the partition hook's
defining property (frozen parameters: no update, no state)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mtl_jax.training import optimizers as opt


def _params(rng: np.random.Generator) -> dict:
    return {
        "encoder": {
            "dense": {"kernel": rng.normal(size=(6, 5)).astype(np.float32),
                      "bias": rng.normal(size=(5,)).astype(np.float32)},
            "layer_norm": {"scale": rng.normal(size=(5,)).astype(np.float32),
                           "bias": rng.normal(size=(5,)).astype(np.float32)},
        },
        "head": {"kernel": rng.normal(size=(5, 3)).astype(np.float32)},
    }


def _grads(rng: np.random.Generator, params: dict, steps: int) -> list[dict]:
    return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
            for _ in range(steps)]


def _run(tx: optax.GradientTransformation, params: dict, grads: list[dict]) -> tuple[dict, object]:
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


# -- schedules --------------------------------------------------------------------------------------


def test_linear_schedule_matches_hugging_face():
    from transformers import get_linear_schedule_with_warmup

    lr, warmup, total = 3e-4, 7, 25
    fn = opt.make_schedule("linear", lr, warmup_steps=warmup, total_steps=total)
    p = torch.nn.Parameter(torch.zeros(1))
    torch_opt = torch.optim.SGD([p], lr=lr)
    sched = get_linear_schedule_with_warmup(torch_opt, warmup, total)
    expected = []
    for _ in range(total + 3):
        expected.append(torch_opt.param_groups[0]["lr"])
        torch_opt.step()
        sched.step()
    got = [float(fn(s)) for s in range(total + 3)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_rsqrt_schedule_is_t5_formula():
    # T5: lr(step) = 1 / sqrt(max(step, warmup)), i.e. learning_rate = 1/sqrt(warmup) at peak.
    warmup = 10_000
    fn = opt.make_schedule("rsqrt", 1.0 / math.sqrt(warmup), warmup_steps=warmup)
    for step in (0, 1, 5_000, 9_999, 10_000, 10_001, 40_000, 1_000_000):
        assert float(fn(step)) == pytest.approx(1.0 / math.sqrt(max(step, warmup)), rel=1e-6)


def test_constant_schedule_with_and_without_warmup():
    assert [float(opt.make_schedule("constant", 0.5)(s)) for s in (0, 3, 100)] == [0.5] * 3
    fn = opt.make_schedule("constant", 0.5, warmup_steps=4)
    np.testing.assert_allclose([float(fn(s)) for s in range(6)], [0, 0.125, 0.25, 0.375, 0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="cosine"), "unknown schedule"),
        (dict(schedule="linear", total_steps=None), "total_steps"),
        (dict(schedule="rsqrt"), "warmup_steps > 0"),
    ],
)
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        opt.make_schedule(learning_rate=1.0, **kwargs)


# -- AdamW ------------------------------------------------------------------------------------------


def test_weight_decay_mask_rule():
    assert opt.default_weight_decay("encoder/layers/0/mlp/kernel")
    assert opt.default_weight_decay("embeddings/word_embeddings")
    assert not opt.default_weight_decay("encoder/layers/0/mlp/bias")
    assert not opt.default_weight_decay("encoder/layers/0/attention_norm/scale")
    assert not opt.default_weight_decay("embeddings/layer_norm/bias")
    assert not opt.default_weight_decay("decoder/final_norm/scale")


def test_adamw_decay_only_update_leaves_norms_and_biases():
    params = _params(np.random.default_rng(0))
    zero = [jax.tree.map(np.zeros_like, params)]
    optimizer = opt.make_optimizer("adamw", learning_rate=0.1, weight_decay=0.5)
    new, _ = _run(optimizer.tx, params, zero)
    flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, value in jax.tree_util.tree_flatten_with_path(new)[0]:
        name = "/".join(k.key for k in path)
        old = flat_old[path]
        if name.endswith("bias") or "norm" in name:
            np.testing.assert_array_equal(value, old, err_msg=name)
        else:  # decoupled decay: p <- p - lr * wd * p
            np.testing.assert_allclose(value, old * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=name)


def test_adamw_matches_torch_with_param_groups():
    rng = np.random.default_rng(1)
    params = _params(rng)
    grads = _grads(rng, params, 4)
    lr, wd = 1e-2, 0.1
    optimizer = opt.make_optimizer("adamw", learning_rate=lr, weight_decay=wd, eps=1e-8)
    ours, _ = _run(optimizer.tx, params, grads)

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(k.key for k in p) for p, _ in flat]
    tparams = [torch.nn.Parameter(torch.tensor(v)) for _, v in flat]
    decay = [p for n, p in zip(names, tparams, strict=True) if opt.default_weight_decay(n)]
    no_decay = [p for n, p in zip(names, tparams, strict=True) if not opt.default_weight_decay(n)]
    assert decay and no_decay
    torch_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8,
    )
    for g in grads:
        for tp, gv in zip(tparams, treedef.flatten_up_to(g), strict=True):
            tp.grad = torch.tensor(gv)
        torch_opt.step()
    for n, tp, ov in zip(names, tparams, jax.tree.leaves(ours), strict=True):
        np.testing.assert_allclose(np.asarray(ov), tp.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=n)


def test_global_norm_clipping_matches_torch_clip_grad_norm():
    # eps=1 makes Adam sensitive to the gradient scale, so an unclipped run would differ.
    rng = np.random.default_rng(6)
    params = _params(rng)
    grads = [jax.tree.map(lambda g: 10 * g, g) for g in _grads(rng, params, 3)]
    optimizer = opt.make_optimizer("adamw", learning_rate=0.1, weight_decay=0.0, eps=1.0,
                                   clip_grad_norm=0.5)
    ours, _ = _run(optimizer.tx, params, grads)
    unclipped, _ = _run(opt.make_optimizer("adamw", learning_rate=0.1, weight_decay=0.0,
                                           eps=1.0).tx, params, grads)

    flat, treedef = jax.tree_util.tree_flatten(params)
    tparams = [torch.nn.Parameter(torch.tensor(v)) for v in flat]
    torch_opt = torch.optim.AdamW(tparams, lr=0.1, eps=1.0, weight_decay=0.0)
    for g in grads:
        for tp, gv in zip(tparams, treedef.flatten_up_to(g), strict=True):
            tp.grad = torch.tensor(gv)
        torch.nn.utils.clip_grad_norm_(tparams, 0.5)
        torch_opt.step()
    for tp, ov, uv in zip(tparams, jax.tree.leaves(ours), jax.tree.leaves(unclipped), strict=True):
        np.testing.assert_allclose(np.asarray(ov), tp.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(uv), tp.detach().numpy(), atol=1e-4)


# -- Adafactor --------------------------------------------------------------------------------------


def test_adafactor_factored_state_shapes():
    params = {"kernel": jnp.zeros((256, 130)), "wide": jnp.zeros((4, 300, 200)),
              "bias": jnp.zeros((130,)), "small": jnp.zeros((64, 130))}
    state = opt.make_optimizer("adafactor").tx.init(params)
    factored = state[0]
    assert isinstance(factored, optax.FactoredState)
    # [256, 130]: rows (mean over the largest dim 256 removed) and columns.
    assert factored.v_row["kernel"].shape == (130,)
    assert factored.v_col["kernel"].shape == (256,)
    assert factored.v["kernel"].shape == (1,)
    # 3-D: the two largest dims (300, 200) are factored, the leading one kept.
    assert factored.v_row["wide"].shape == (4, 200)
    assert factored.v_col["wide"].shape == (4, 300)
    # Vectors and matrices with a dim < min_dim_size_to_factor (128) keep a full second moment.
    assert factored.v["bias"].shape == (130,)
    assert factored.v["small"].shape == (64, 130)
    assert factored.v_row["small"].shape == (1,)
    # T5 default: no momentum (no first-moment buffer anywhere in the state).
    assert not any(isinstance(s, optax.EmaState) for s in state)


def test_adafactor_matches_hugging_face_adafactor():
    from transformers.optimization import Adafactor

    rng = np.random.default_rng(2)
    params = {"kernel": rng.normal(size=(130, 140)).astype(np.float32),
              "bias": rng.normal(size=(140,)).astype(np.float32)}
    grads = _grads(rng, params, 3)
    lr = 1e-2
    ours, _ = _run(opt.make_optimizer("adafactor", learning_rate=lr).tx, params, grads)

    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    hf = Adafactor(list(tparams.values()), lr=lr, eps=(1e-30, 1e-3), clip_threshold=1.0,
                   decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True,
                   relative_step=False, warmup_init=False)
    for g in grads:
        for k, tp in tparams.items():
            tp.grad = torch.tensor(g[k])
        hf.step()
    for k, tp in tparams.items():
        np.testing.assert_allclose(np.asarray(ours[k]), tp.detach().numpy(), rtol=2e-5,
                                   atol=1e-6, err_msg=k)


# -- partition hook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_frozen_params_get_no_update_and_no_state(name):
    rng = np.random.default_rng(3)
    params = _params(rng)
    grads = _grads(rng, params, 3)
    freeze = opt.freeze_matching(r"^encoder/")
    optimizer = opt.make_optimizer(name, learning_rate=0.1, partition_fn=freeze,
                                   min_dim_size_to_factor=2)
    new, state = _run(optimizer.tx, params, grads)
    for a, b in zip(jax.tree.leaves(new["encoder"]), jax.tree.leaves(params["encoder"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The head trains exactly as with the optimizer applied to the head alone.
    alone = opt.make_optimizer(name, learning_rate=0.1, min_dim_size_to_factor=2)
    head, head_state = _run(alone.tx, {"head": params["head"]},
                            [{"head": g["head"]} for g in grads])
    np.testing.assert_allclose(new["head"]["kernel"], head["head"]["kernel"], rtol=1e-6)
    # No state leaf mirrors a frozen parameter: the state holds exactly as many array leaves as
    # the head-only optimizer's state.
    leaf_paths = ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p)
                  for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert not any("encoder" in p for p in leaf_paths), leaf_paths
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(head_state))
    assert np.asarray(optimizer.frozen_mask(params)["encoder"]["dense"]["kernel"])
    assert not np.asarray(optimizer.frozen_mask(params)["head"]["kernel"])


def test_partition_label_errors_name_the_parameter():
    optimizer = opt.make_optimizer("adamw", partition_fn=lambda path: "lora")
    with pytest.raises(ValueError, match=r"parameter 'encoder/dense/bias' as 'lora'"):
        optimizer.tx.init(_params(np.random.default_rng(0)))


def test_extra_transform_label():
    params = _params(np.random.default_rng(4))
    grads = _grads(np.random.default_rng(5), params, 1)
    optimizer = opt.make_optimizer(
        "adamw", learning_rate=0.1, weight_decay=0.0,
        partition_fn=lambda p: "sgd" if p.startswith("head/") else "trainable",
        extra_transforms={"sgd": optax.sgd(1.0)},
    )
    new, _ = _run(optimizer.tx, params, grads)
    np.testing.assert_allclose(new["head"]["kernel"],
                               params["head"]["kernel"] - grads[0]["head"]["kernel"], rtol=1e-6)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'sgdd'"):
        opt.make_optimizer("sgdd")
