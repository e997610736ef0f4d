"""XLM-R encoder and per-task heads vs the transformers PyTorch models (the reference).

Random small configs, every HF tensor randomised (LayerNorm and biases too, so a wrong mapping
cannot hide behind HF's ones/zeros init), padded inputs, weights copied with our converter.
Bound held in float32: |ours - hf| <= 1e-5 * max|hf| + 1e-5 * |hf| elementwise (``helpers.xlmr_assert_close``).
The configs and builders live in ``helpers.py`` (shared with the conversion tests).
"""

from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import BertConfig, BertModel

from mtl_jax.models.heads import per_example_loss
from mtl_jax.models.hf_xlmr import (
    encoder_state,
    head_state,
    load_hf_xlmr,
    verify_against_transformers,
)
from mtl_jax.models.xlmr import LOGICAL_AXES, XLMRConfig, XLMRMultiTask

HF_CONFIGS = helpers.XLMR_HF_CONFIGS
RTOL = helpers.XLMR_RTOL


@pytest.mark.parametrize("index", range(len(HF_CONFIGS)))
def test_encoder_matches_xlmroberta_model(tmp_path, index):
    hf = helpers.hf_xlmr("model", HF_CONFIGS[index], seed=index)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"))
    assert cfg.task_num_labels == () and cfg.positions == "roberta"
    ids, mask = helpers.xlmr_inputs(cfg, seed=index)
    with torch.no_grad():
        ref = hf(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask))
    out = helpers.xlmr_forward(model, ids, mask)
    # Padded slots are compared too: HF computes them (queries attend to the real keys).
    abs_h, rel_h = helpers.xlmr_assert_close(out["hidden"], ref.last_hidden_state.numpy(), what="last_hidden_state")
    abs_p, rel_p = helpers.xlmr_assert_close(out["pooled"], ref.pooler_output.numpy(), what="pooler_output")
    print(f"config {index}: hidden max abs {abs_h:.2e} rel {rel_h:.2e}; pooled max abs {abs_p:.2e} rel {rel_p:.2e}")


@pytest.mark.parametrize(("index", "num_labels", "overrides"), [
    (0, 1, {}), (1, 3, {}), (2, 2, {}),
    # scan_layers + remat (models/layer_stack.py) hold the same bounds.
    pytest.param(1, 3, {"scan_layers": True, "remat": "full"}, marks=pytest.mark.slow),
])
def test_classifier_logits_loss_and_grads_match(tmp_path, index, num_labels, overrides):
    """Logits, HF's loss (MSE for num_labels=1, else cross entropy) and gradients of that loss."""
    hf = helpers.hf_xlmr("cls", HF_CONFIGS[index], seed=10 + index, num_labels=num_labels)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"), **overrides)
    assert cfg.task_num_labels == (num_labels,)
    ids, mask = helpers.xlmr_inputs(cfg, seed=index, batch=5)
    rng = np.random.default_rng(index)
    if num_labels == 1:
        labels = rng.normal(size=ids.shape[0]).astype(np.float32)
        hf_labels = torch.from_numpy(labels)
    else:
        labels = rng.integers(0, num_labels, size=ids.shape[0]).astype(np.int32)
        hf_labels = torch.from_numpy(labels).long()

    hf.zero_grad()
    ref = hf(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask), labels=hf_labels)
    ref.loss.backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.grad is not None}

    task_id = jnp.zeros((ids.shape[0],), jnp.int32)

    def loss_fn(m: XLMRMultiTask):
        out = m(jnp.asarray(ids), jnp.asarray(mask), task_id)
        if num_labels == 1:
            loss = per_example_loss(out, jnp.zeros_like(task_id), jnp.asarray(labels)).mean()
        else:
            loss = per_example_loss(out, jnp.asarray(labels)).mean()
        return loss, out

    (loss, out), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    abs_l, rel_l = helpers.xlmr_assert_close(out["logits"][:, :num_labels], ref.logits.detach().numpy(), what="logits")
    if num_labels == 1:
        helpers.xlmr_assert_close(out["regression"], ref.logits.detach().numpy()[:, 0], what="regression")
    helpers.xlmr_assert_close(loss, ref.loss.item(), what="loss")

    # Gradients, mapped to HF names with the same converter (the layouts are linear maps).
    grad_model = nnx.merge(nnx.graphdef(model), grads, nnx.state(model, nnx.Not(nnx.Param)))
    ours = {**encoder_state(grad_model, "roberta.", pooler=False), **head_state(grad_model, 0)}
    checked = [
        "roberta.embeddings.word_embeddings.weight",
        "roberta.embeddings.position_embeddings.weight",
        "roberta.embeddings.LayerNorm.weight",
        "roberta.encoder.layer.0.attention.self.query.weight",
        "roberta.encoder.layer.0.attention.output.dense.weight",
        f"roberta.encoder.layer.{cfg.num_hidden_layers - 1}.intermediate.dense.weight",
        f"roberta.encoder.layer.{cfg.num_hidden_layers - 1}.output.LayerNorm.bias",
        "classifier.dense.weight",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    ]
    worst = 0.0
    for name in checked:
        _, rel = helpers.xlmr_assert_close(ours[name], hf_grads[name], rtol=1e-4, what=f"grad {name}")
        worst = max(worst, rel)
    print(f"config {index} labels {num_labels}: logits max abs {abs_l:.2e} rel {rel_l:.2e}; "
          f"loss {float(loss):.6f} vs {ref.loss.item():.6f}; worst grad rel {worst:.2e}")


def _shared_encoder_classifiers(cfg: dict, label_counts: tuple[int, ...], seed: int):
    """HF classifiers with one encoder (as after multi-task training) and their own heads."""
    models = [helpers.hf_xlmr("cls", cfg, seed=seed + k, num_labels=n) for k, n in enumerate(label_counts)]
    for m in models[1:]:
        m.roberta.load_state_dict(models[0].roberta.state_dict())
    return models


def test_mixed_task_batch_matches_each_hf_classifier(tmp_path):
    label_counts = (3, 2, 1, 5)
    hfs = _shared_encoder_classifiers(HF_CONFIGS[1], label_counts, seed=40)
    dirs = {k: helpers.save(m, tmp_path / f"task{k}") for k, m in enumerate(hfs)}
    model, cfg, _ = load_hf_xlmr(dirs[0], task_num_labels=label_counts, head_dirs=dirs)
    ids, mask = helpers.xlmr_inputs(cfg, seed=3, batch=8)
    task_id = np.array([0, 1, 2, 3, 3, 2, 1, 0], np.int32)

    out = helpers.xlmr_forward(model, ids, mask, task_id)
    logits = np.asarray(out["logits"])
    assert logits.shape == (8, max(label_counts))
    for k, hf in enumerate(hfs):
        rows = np.flatnonzero(task_id == k)
        with torch.no_grad():
            ref = hf(input_ids=helpers.to_torch(ids[rows]), attention_mask=helpers.to_torch(mask[rows])).logits.numpy()
        helpers.xlmr_assert_close(logits[rows, : label_counts[k]], ref, what=f"task {k}")
        if label_counts[k] == 1:
            helpers.xlmr_assert_close(np.asarray(out["regression"])[rows], ref[:, 0], what=f"task {k} regression")

    # Padded classes never win and get no probability mass, even when every real logit is low.
    n = np.asarray(label_counts)[task_id]
    padded = np.arange(logits.shape[1])[None, :] >= n[:, None]
    assert (np.asarray(jnp.argmax(out["logits"], -1)) < n).all()
    probs = np.asarray(jax.nn.softmax(out["logits"], -1))
    assert (probs[padded] == 0.0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    shifted = out["logits"] - 1e6 * (~padded)  # real logits very negative, padded still lose
    assert (np.asarray(jnp.argmax(shifted, -1)) < n).all()


def test_mixed_batch_loss_per_task_matches_hf(tmp_path):
    label_counts = (3, 1)
    hfs = _shared_encoder_classifiers(HF_CONFIGS[0], label_counts, seed=50)
    dirs = {k: helpers.save(m, tmp_path / f"task{k}") for k, m in enumerate(hfs)}
    model, cfg, _ = load_hf_xlmr(dirs[0], task_num_labels=label_counts, head_dirs=dirs)
    ids, mask = helpers.xlmr_inputs(cfg, seed=4, batch=6)
    task_id = np.array([0, 1, 0, 1, 1, 0], np.int32)
    rng = np.random.default_rng(0)
    labels = np.where(task_id == 0, rng.integers(0, 3, 6), 0).astype(np.int32)
    targets = rng.normal(size=6).astype(np.float32)
    out = helpers.xlmr_forward(model, ids, mask, task_id)
    losses = np.asarray(per_example_loss(out, jnp.asarray(labels), jnp.asarray(targets)))
    for k, hf in enumerate(hfs):
        rows = np.flatnonzero(task_id == k)
        hf_labels = torch.from_numpy(targets[rows]) if k == 1 else torch.from_numpy(labels[rows]).long()
        with torch.no_grad():
            ref = hf(input_ids=helpers.to_torch(ids[rows]), attention_mask=helpers.to_torch(mask[rows]), labels=hf_labels).loss
        helpers.xlmr_assert_close(losses[rows].mean(), ref.item(), what=f"task {k} loss")


def test_task_selection_compiles_once():
    """Different task mixes reuse one compiled function (no retrace, no Python branching)."""
    cfg = XLMRConfig(**HF_CONFIGS[0], task_num_labels=(3, 2, 1))
    model = helpers.xlmr_random_model(cfg, seed=0)
    traces = []

    @nnx.jit
    def logits(m, ids, mask, task_id):
        traces.append(1)
        return m(ids, mask, task_id)["logits"]

    ids, mask = helpers.xlmr_inputs(cfg, seed=0, batch=4)
    results = [logits(model, ids, mask, jnp.asarray(t, jnp.int32)) for t in ([0, 0, 0, 0], [2, 1, 0, 2], [1, 1, 2, 2])]
    assert len(traces) == 1
    # The selection is per example: a mixed batch row equals that row run with its task alone.
    np.testing.assert_allclose(results[1][2], results[0][2], rtol=1e-6, atol=1e-7)  # task 0
    np.testing.assert_allclose(results[2][1], results[1][1], rtol=1e-6, atol=1e-7)  # task 1
    np.testing.assert_allclose(results[2][3], results[1][3], rtol=1e-6, atol=1e-7)  # task 2
    assert not np.allclose(results[2][0], results[1][0])  # row 0 changed task: other head


def test_bert_config_switch_matches_bert_model(tmp_path):
    """Absolute positions from 0, 2 token types, eps 1e-12, pad 0: transformers BertModel."""
    config = BertConfig(vocab_size=89, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=20, type_vocab_size=2,
                        attn_implementation="eager")
    torch.manual_seed(0)
    hf = BertModel(config)
    helpers.randomize_torch(hf, seed=7)
    hf.eval()
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "bert"))
    assert (cfg.positions, cfg.type_vocab_size, cfg.layer_norm_eps, cfg.pad_token_id) == ("absolute", 2, 1e-12, 0)
    ids, mask = helpers.xlmr_inputs(cfg, seed=1, batch=3, length=20)  # the full position table is used
    types = np.random.default_rng(0).integers(0, 2, ids.shape).astype(np.int32) * mask
    with torch.no_grad():
        ref = hf(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask), token_type_ids=helpers.to_torch(types))
    out = helpers.xlmr_forward(model, ids, mask, token_type_ids=types)
    helpers.xlmr_assert_close(out["hidden"], ref.last_hidden_state.numpy(), what="bert last_hidden_state")
    helpers.xlmr_assert_close(out["pooled"], ref.pooler_output.numpy(), what="bert pooler_output")


def test_verify_helper_reports_small_difference(tmp_path):
    hf = helpers.hf_xlmr("cls", HF_CONFIGS[2], seed=60, num_labels=4)
    directory = helpers.save(hf, tmp_path / "hf")
    model, _, _ = load_hf_xlmr(directory)
    diffs = verify_against_transformers(model, directory)
    assert diffs["max_rel"] < RTOL
    # The check can fail: a perturbed head is caught.
    model.heads.out_bias.value = model.heads.out_bias[...] + 1e-2
    assert verify_against_transformers(model, directory)["max_abs"] > 5e-3


def test_bfloat16_compute_stays_close_to_float32(tmp_path):
    hf = helpers.hf_xlmr("cls", HF_CONFIGS[2], seed=70, num_labels=3)
    directory = helpers.save(hf, tmp_path / "hf")
    f32 = load_hf_xlmr(directory).model
    bf16 = load_hf_xlmr(directory, dtype="bfloat16").model
    assert bf16.encoder.layers[0].intermediate.kernel[...].dtype == jnp.float32  # params stay f32
    ids, mask = helpers.xlmr_inputs(bf16.config, seed=5, batch=6, length=20)
    t = jnp.zeros((6,), jnp.int32)
    a, b = helpers.xlmr_forward(f32, ids, mask, t), helpers.xlmr_forward(bf16, ids, mask, t)
    assert b["hidden"].dtype == jnp.bfloat16 and b["logits"].dtype == jnp.float32
    for key in ("logits", "hidden"):
        x, y = np.asarray(a[key], np.float64)[..., :3], np.asarray(b[key], np.float64)[..., :3]
        rel = np.abs(x - y).max() / np.abs(x).max()
        print(f"bfloat16 vs float32 {key}: max rel {rel:.2e}")
        assert rel < 3e-2, key


def test_dropout_uses_call_time_keys():
    cfg = XLMRConfig(vocab_size=61, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=24, task_num_labels=(3,))
    model = helpers.xlmr_random_model(cfg, seed=0)
    ids, mask = helpers.xlmr_inputs(cfg, seed=0)
    t = jnp.zeros((ids.shape[0],), jnp.int32)

    @nnx.jit
    def train_logits(model, rngs):
        return model(ids, mask, t, deterministic=False, rngs=rngs)["logits"]

    same1, same2 = train_logits(model, nnx.Rngs(dropout=1)), train_logits(model, nnx.Rngs(dropout=1))
    other = train_logits(model, nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(same1, same2)  # keys come from the caller: reproducible
    assert not np.allclose(same1, other)  # and they are used
    with pytest.raises(ValueError, match="rngs"):
        model(jnp.asarray(ids), jnp.asarray(mask), t, deterministic=False)


def test_dropout_sites_drop_at_their_rates_where_hf_drops(monkeypatch):
    """In a train-mode forward every dropout site is inverted dropout at its configured rate
    (hidden 0.3, attention 0.15, classifier 0.2, so a swapped rate shows): dropped fraction within
    5 binomial sigmas, kept values times exactly 1/(1-p), a fresh mask per site. The sites are
    HF's: our hidden-state and head sites have the shapes of the nn.Dropout calls
    XLMRobertaForSequenceClassification makes in train mode, plus one attention-probability site
    per layer."""
    rates = {4: 0.15, 3: 0.3, 2: 0.2}  # by rank: attention probabilities, hidden states, head
    dims = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=48, hidden_dropout_prob=rates[3],
                attention_probs_dropout_prob=rates[4], classifier_dropout=rates[2])
    cfg = XLMRConfig(**dims, task_num_labels=(3, 2))
    model = helpers.xlmr_random_model(cfg, seed=1)
    b, length = 32, 40
    ids, mask = helpers.xlmr_inputs(cfg, seed=1, batch=b, length=length)
    task_id = jnp.asarray(np.arange(b) % 2, jnp.int32)
    records = helpers.recording_dropout(monkeypatch)

    @nnx.jit
    def train_forward(model, key):
        records.clear()
        model(ids, mask, task_id, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return list(records)

    sites = train_forward(model, jax.random.key(5))
    power = helpers.check_dropout_sites(sites, lambda x: rates[x.ndim])
    assert set(power) == set(rates.values()) and power[rates[2]] >= 2 * b * cfg.hidden_size, power

    hf = helpers.hf_xlmr("cls", dims, seed=1, num_labels=3)
    hf_shapes = []
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda mod, args, out: hf_shapes.append(tuple(out.shape)))
    with torch.no_grad():
        hf.train()(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask))
    ours = [tuple(x.shape) for x, _ in sites]
    assert sorted(s for s in ours if len(s) < 4) == sorted(hf_shapes)
    n = cfg.num_attention_heads
    assert sorted(s for s in ours if len(s) == 4) == [(b, n, length, length)] * cfg.num_hidden_layers


def test_sharded_import_matches_single_device(tmp_path):
    """Under a mesh + rules, parameters carry their logical axes (also abstractly, from
    nnx.eval_shape), import places them sharded, and outputs equal the one-device model's."""
    # Arrays at rest need sizes divisible by their mesh axes (96 % 4 == 0; XLM-R's 250002 is not).
    small = {**HF_CONFIGS[1], "vocab_size": 96}
    hf = helpers.hf_xlmr("cls", small, seed=80, num_labels=3)
    directory = helpers.save(hf, tmp_path / "hf")
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = tuple((name, "tensor" if name in ("vocab", "mlp", "heads") else None) for name in LOGICAL_AXES)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        cfg = XLMRConfig(**small, task_num_labels=(3, 2))
        abstract = nnx.eval_shape(lambda: XLMRMultiTask(cfg, rngs=nnx.Rngs(0)))
        specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
        assert specs["encoder"]["layers"][0]["attention"]["query"]["kernel"].get_value() == jax.P(None, "tensor", None)
        assert specs["heads"]["dense_kernel"].get_value() == jax.P(None, None, "tensor")
        sharded = load_hf_xlmr(directory).model
    kernel = sharded.encoder.layers[0].attention.query.kernel
    assert kernel.get_metadata()["out_sharding"] == ("embed", "heads", "kv")
    assert kernel[...].sharding.spec == jax.P(None, "tensor", None)
    assert sharded.encoder.embeddings.word_embeddings.embedding[...].sharding.spec == jax.P("tensor", None)
    assert sharded.heads.dense_kernel[...].sharding.spec == jax.P(None, None, "tensor")
    plain = load_hf_xlmr(directory).model
    assert len(plain.encoder.layers[0].intermediate.kernel[...].sharding.device_set) == 1
    ids, mask = helpers.xlmr_inputs(plain.config, seed=0, batch=4)
    t = jnp.zeros((4,), jnp.int32)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        got = helpers.xlmr_forward(sharded, ids, mask, t)["logits"]
    np.testing.assert_allclose(got, helpers.xlmr_forward(plain, ids, mask, t)["logits"], rtol=1e-5, atol=1e-6)
