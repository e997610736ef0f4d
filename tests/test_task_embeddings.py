"""Task embeddings (TextEmb, TaskEmb) against independent PyTorch computations on tiny random
transformers models, and the ranking (cosine per component, reciprocal rank fusion) on hand-made
vectors and rankings."""

from __future__ import annotations

import json

import helpers
import numpy as np
import pytest
import torch
from flax import nnx

from mtl_jax.evaluation import task_embeddings as te
from mtl_jax.evaluation import task_ranking as tr
from mtl_jax.models.hf_xlmr import load_hf_xlmr
from mtl_jax.training.objectives import ClassificationObjective, EncoderDecoderObjective

pytestmark = pytest.mark.usefixtures("fast_compiles")

CFG = helpers.XLMR_HF_CONFIGS[1]  # 2 layers, 4 heads, hidden 32


def _xlmr_batches(cfg, seeds=(1, 2), batch=3, length=11, num_labels=3):
    out = []
    for seed in seeds:
        ids, mask = helpers.xlmr_inputs(cfg, seed, batch=batch, length=length)
        labels = np.random.default_rng(seed).integers(0, num_labels, batch).astype(np.int32)
        out.append({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                    "task_id": np.zeros(batch, np.int32), "labels": labels})
    return out


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.double()[..., None]
    return ((states.double() * m).sum(1) / m.sum(1)).detach().numpy()


def test_textemb_xlmr_matches_transformers(tmp_path):
    hf = helpers.hf_xlmr("model", CFG, seed=3)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"))
    batches = _xlmr_batches(cfg)
    got = te.text_embedding(model, batches)
    per_example = []
    with torch.no_grad():
        for b in batches:
            ids, mask = helpers.to_torch(b["input_ids"]), helpers.to_torch(b["attention_mask"])
            states = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            per_example.append(_masked_mean(states, mask))
    want = np.concatenate(per_example).mean(axis=0)
    assert list(got) == [te.TEXT_COMPONENT]
    helpers.xlmr_assert_close(got[te.TEXT_COMPONENT], want, rtol=1e-5, what="TextEmb XLM-R")


def test_textemb_mt5_matches_transformers():
    hf = helpers.make_hf("mt5_a", seed=4)
    model = helpers.ours_from_hf(hf)
    data = helpers.random_batch(hf.config.vocab_size, seed=5, batch=4)
    batch = {"encoder_input_tokens": data["enc"].astype(np.int32),
             "decoder_input_tokens": data["dec_in"].astype(np.int32)}
    got = te.text_embedding(model, [batch])[te.TEXT_COMPONENT]
    with torch.no_grad():
        enc = torch.tensor(data["enc"])
        mask = (enc != 0).long()
        states = hf.encoder(input_ids=enc, attention_mask=mask).last_hidden_state
    want = _masked_mean(states, mask).mean(axis=0)
    helpers.assert_close(got, want, 1e-5, 1e-6, "TextEmb mT5")


def _reference_fisher(batches, forward, grads_of):
    """The reference implementation's accumulation, written out in torch: per batch the mean
    loss is backpropagated; a parameter adds grad**2, a token component adds
    (sum over real tokens of grad)**2 / real tokens, the first-token state adds
    (sum over examples of grad)**2 / real tokens; the sums are divided by the examples."""
    totals, examples = {}, 0
    for b in batches:
        captured, loss = forward(b)
        loss.backward()
        mask = torch.tensor(b["mask"]).double()
        tokens = mask.sum()
        for name, t in captured.items():
            g = t.grad.double()
            summed = g.sum(0) if g.ndim == 2 else torch.einsum("blh,bl->h", g, mask)
            value = (summed**2 / tokens).numpy()
            totals[name] = totals.get(name, 0) + value
        for name, g in grads_of().items():
            totals[name] = totals.get(name, 0) + g.double().numpy() ** 2
        examples += int((mask.sum(1) > 0).sum())
    return {k: v / examples for k, v in totals.items()}


def test_taskemb_xlmr_fisher_matches_torch_autograd(tmp_path):
    hf = helpers.hf_xlmr("cls", CFG, seed=6, num_labels=3)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"))
    assert cfg.task_num_labels == (3,)
    batches = _xlmr_batches(cfg)
    objective = ClassificationObjective(num_tasks=1, num_labels=(3,))
    got = te.fisher_embedding(model, te.objective_loss(objective), batches,
                              param_pattern=r"layers/0/attention/query/kernel$|layers/1/output/bias$")
    # torch: capture the attention context (input of the output projection), each layer output
    # and the first-token state the classifier reads, with retained gradients.
    layers = hf.roberta.encoder.layer

    def forward(b):
        captured = {}

        def keep(name, index=None):
            def hook(module, args, output=None):
                t = args[0] if output is None else (output[0] if isinstance(output, tuple) else output)
                if index is not None:
                    t = t[:, 0]
                t.retain_grad()
                captured[name] = t
            return hook

        handles = []
        for i, layer in enumerate(layers):
            handles.append(layer.attention.output.dense.register_forward_pre_hook(
                keep(f"layers/{i}/attention")))
            handles.append(layer.output.register_forward_hook(keep(f"layers/{i}/output")))
        features = {}

        def first_token(module, args):
            args[0].retain_grad()
            features["x"] = args[0]

        handles.append(hf.classifier.register_forward_pre_hook(first_token))
        hf.zero_grad()
        out = hf(input_ids=helpers.to_torch(b["input_ids"]),
                 attention_mask=helpers.to_torch(b["attention_mask"]),
                 labels=torch.tensor(b["labels"]).long())
        for h in handles:
            h.remove()
        captured["cls"] = _FirstToken(features["x"])
        b["mask"] = b["attention_mask"]
        return captured, out.loss

    def grads_of():
        n, d = cfg.num_attention_heads, cfg.head_dim
        q = layers[0].attention.self.query.weight.grad  # [out, in]
        return {
            "param/encoder/layers/0/attention/query/kernel": q.T.reshape(cfg.hidden_size, n, d),
            "param/encoder/layers/1/output/bias": layers[1].output.dense.bias.grad,
        }

    want = _reference_fisher([dict(b) for b in batches], forward, grads_of)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for name, value in want.items():
        assert np.max(value) > 0, name  # every compared component carries signal
        helpers.assert_close(got[name], value, 1e-4, 1e-9 * np.max(value), name)


class _FirstToken:
    """The gradient of the classifier input at the first token (what the heads read)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    @property
    def grad(self) -> torch.Tensor:
        return self.features.grad[:, 0]


def test_taskemb_mt5_encoder_fisher_matches_torch_autograd():
    hf = helpers.make_hf("mt5_b", seed=7)
    model = helpers.ours_from_hf(hf)
    batches = []
    for seed in (8, 9):
        data = helpers.random_batch(hf.config.vocab_size, seed=seed, batch=3)
        batches.append({"encoder_input_tokens": data["enc"].astype(np.int32),
                        "decoder_input_tokens": data["dec_in"].astype(np.int32),
                        "decoder_target_tokens": data["targets"].astype(np.int32),
                        "decoder_loss_weights": data["weights"], "labels_hf": data["labels"],
                        "task_id": np.zeros(3, np.int32)})
    objective = EncoderDecoderObjective(num_tasks=1)
    got = te.fisher_embedding(model, te.objective_loss(objective),
                              [{k: v for k, v in b.items() if k != "labels_hf"} for b in batches],
                              param_pattern=r"^encoder/layers/1/mlp/wo/kernel$")
    blocks = hf.encoder.block

    def forward(b):
        captured = {}

        def keep(name, pre):
            def hook(module, args, output=None):
                t = args[0] if pre else (output[0] if isinstance(output, tuple) else output)
                t.retain_grad()
                captured[name] = t
            return hook

        handles = []
        for i, block in enumerate(blocks):
            handles.append(block.layer[0].SelfAttention.o.register_forward_pre_hook(
                keep(f"encoder/layers/{i}/attention", True)))
            handles.append(block.register_forward_hook(keep(f"encoder/layers/{i}/output", False)))
        hf.zero_grad()
        enc = torch.tensor(b["encoder_input_tokens"]).long()
        out = hf(input_ids=enc, attention_mask=(enc != 0).long(),
                 labels=torch.tensor(b["labels_hf"]).long())
        for h in handles:
            h.remove()
        b["mask"] = (b["encoder_input_tokens"] != 0).astype(np.int64)
        return captured, out.loss

    def grads_of():
        return {"param/encoder/layers/1/mlp/wo/kernel": blocks[1].layer[1].DenseReluDense.wo.weight.grad.T}

    want = _reference_fisher([dict(b) for b in batches], forward, grads_of)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for name, value in want.items():
        assert np.max(value) > 0, name
        helpers.assert_close(got[name], value, 1e-4, 1e-9 * np.max(value), name)


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def test_reciprocal_rank_fusion_on_hand_made_rankings():
    a = {"x": 1, "y": 2, "z": 3}
    b = {"y": 1, "z": 2, "x": 3}
    c = {"y": 1, "x": 2, "z": 3}
    got = tr.reciprocal_rank_fusion([a, b, c])
    assert got["x"] == pytest.approx(1 / 61 + 1 / 63 + 1 / 62)
    assert got["y"] == pytest.approx(1 / 62 + 1 / 61 + 1 / 61)
    assert got["z"] == pytest.approx(1 / 63 + 1 / 62 + 1 / 63)
    assert tr.ranks(got) == {"y": 1, "x": 2, "z": 3}
    with pytest.raises(tr.EmbeddingError, match="different items"):
        tr.reciprocal_rank_fusion([a, {"x": 1}])


def _write(tmp_path, method, vectors):
    for task, comps in vectors.items():
        tr.save_embedding(tmp_path / method, method, task, comps, {"source": "hand-made"})
    return tr.load_embeddings(tmp_path / method)


def test_ranking_cosines_rrf_and_self_first(tmp_path):
    rng = np.random.default_rng(0)
    base = {f"c{i}": rng.normal(size=8) for i in range(3)}
    vectors = {
        "target": base,
        "near": {k: v + 0.1 * rng.normal(size=8) for k, v in base.items()},
        "far": {k: rng.normal(size=8) for k in base},
    }
    vectors["mixed"] = {"c0": base["c0"] * 2.0, "c1": -base["c1"], "c2": rng.normal(size=8)}
    emb = _write(tmp_path, "taskemb", vectors)
    ranking = tr.rank_sources("target", [emb], include_target=True)
    assert ranking.best == "target"  # a task compared with itself ranks first
    assert ranking.sources[1] == "near"
    # per component cosines are plain cosines; the method score is RRF over their ranks
    for comp in base:
        for src in vectors:
            a, b = vectors["target"][comp], vectors[src][comp]
            want = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert ranking.cosines["taskemb"][comp][src] == pytest.approx(want, rel=1e-6)
    comp_ranks = [tr.ranks(ranking.cosines["taskemb"][c]) for c in base]
    for src in vectors:
        assert ranking.fused[src] == pytest.approx(sum(1 / (60 + r[src]) for r in comp_ranks))
    # without include_target the target is no candidate
    assert "target" not in tr.rank_sources("target", [emb]).sources


def test_two_methods_fused_by_rrf_and_outputs(tmp_path):
    rng = np.random.default_rng(1)
    tasks = ["t", "a", "b", "c"]
    task_vecs = {t: {"l0": rng.normal(size=6), "param/w": rng.normal(size=(2, 3))} for t in tasks}
    text_vecs = {t: {"text": rng.normal(size=5)} for t in tasks}
    sets = [_write(tmp_path, "taskemb", task_vecs), _write(tmp_path, "textemb", text_vecs)]
    ranking = tr.rank_sources("t", sets)
    assert set(ranking.cosines["taskemb"]) == {"l0", "params"}
    method_ranks = [tr.ranks(ranking.method_scores[m]) for m in ("taskemb", "textemb")]
    for s in ("a", "b", "c"):
        assert ranking.fused[s] == pytest.approx(sum(1 / (60 + r[s]) for r in method_ranks))
    paths = tr.save_rankings([ranking, tr.rank_sources("a", sets)], tmp_path / "out")
    table = paths["md"].read_text()
    assert "target: t" in table and "target: a" in table
    data = json.loads(paths["json"].read_text())
    assert [d["target"] for d in data] == ["t", "a"]
    assert data[0]["sources"][0]["source"] == ranking.best
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_ranking_errors_name_the_problem(tmp_path):
    emb = _write(tmp_path, "taskemb", {"x": {"l0": np.ones(3)}, "y": {"l0": np.ones(4)}})
    with pytest.raises(tr.EmbeddingError, match="target task 'z' has no embedding"):
        tr.rank_sources("z", [emb])
    with pytest.raises(tr.EmbeddingError, match="shape"):
        tr.rank_sources("x", [emb])
    with pytest.raises(tr.EmbeddingError, match="no embeddings.json"):
        tr.load_embeddings(tmp_path / "nothing")
    with pytest.raises(tr.EmbeddingError, match="holds taskemb"):
        tr.save_embedding(tmp_path / "taskemb", "textemb", "x", {"text": np.ones(2)}, {})


def test_zero_probes_leave_the_outputs_unchanged_and_unknown_names_fail():
    from mtl_jax.models.xlmr import XLMRConfig

    config = XLMRConfig(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=24, task_num_labels=(3,))
    model = helpers.xlmr_random_model(config, 0)
    ids, mask = helpers.xlmr_inputs(config, 1, batch=2, length=7)
    task = np.zeros(2, np.int32)
    probes = {k: np.zeros(s, np.float32) for k, s in model.probe_shapes(2, 7).items()}
    assert sorted(probes) == ["cls", "layers/0/attention", "layers/0/output",
                              "layers/1/attention", "layers/1/output"]
    run = nnx.jit(lambda m, p: m(ids, mask, task, probes=p)["logits"])
    np.testing.assert_array_equal(np.asarray(run(model, None)), np.asarray(run(model, probes)))
    with pytest.raises(ValueError, match=r"no probe point\(s\) \['layers/2/output'\]"):
        run(model, {"layers/2/output": np.zeros((2, 7, 16), np.float32)})
    with pytest.raises(ValueError, match="probe 'output' has shape"):
        run(model, {"layers/0/output": np.zeros((2, 6, 16), np.float32)})
