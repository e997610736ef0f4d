"""The evaluation layer (ModelRunner, Evaluator, Predictor) against independent computations.

Tiny models on the 8 fake CPU devices: eval batches are sharded 8 ways, so a task of 11 examples
runs as two global batches of 8 whose last holds 5 padding rows. References are computed on the
unsharded model, one plain forward pass over exactly the real examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import log_softmax
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, ndcg_score

from mtl_jax.data import eval_sets, tasks
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.evaluation.evaluator import Evaluator, task_metrics
from mtl_jax.evaluation.predictor import Predictor
from mtl_jax.evaluation.runner import VALID, ModelRunner, TaskOutputs, _trim_columns
from mtl_jax.models.families import get_family
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import optimizers
from mtl_jax.training import partitioning as part
from mtl_jax.training.objectives import ClassificationObjective
from mtl_jax.training.train_state import create_train_state, merge_model

pytestmark = pytest.mark.usefixtures("fast_compiles")

N = 11  # examples per task: 8 + 3 (the last global batch has 5 padding rows)
LENGTHS = {"inputs": 12, "targets": 6}


class FakeInputs:
    """``EvalInputs`` over hand-made token examples, batched by the data layer's converters."""

    def __init__(self, converter: Any, examples: Sequence[Mapping[str, Any]],
                 candidates: np.ndarray | None = None) -> None:
        self.converter, self._examples, self._candidates = converter, list(examples), candidates

    def examples(self, info: Any, split: str) -> list[dict[str, Any]]:
        return list(self._examples)

    def batches(self, info, examples, batch_size, rows):
        return eval_sets.eval_batches(examples, self.converter, LENGTHS, batch_size, rows)

    def candidates(self, info: Any) -> np.ndarray:
        return self._candidates

    def decode(self, tokens: Sequence[int]) -> str:
        ids = [int(t) for t in tokens]
        ids = ids[: ids.index(1)] if 1 in ids else ids
        return " ".join(map(str, ids))


def _runner(model_fn, family: str, classify=None, target_length: int = 6):
    mesh, rules = part.make_mesh(-1, 1, 1), part.rules_by_name("t5x")
    opt = optimizers.make_optimizer(name="adamw", learning_rate=1e-3, total_steps=1)
    graphdef, state, shardings = create_train_state(model_fn, opt, mesh, rules)
    runner = ModelRunner(family=get_family(family), graphdef=graphdef, mesh=mesh, rules=rules,
                         param_shardings=shardings.params, rest_shardings=shardings.rest,
                         batch_sharding=part.batch_sharding(mesh, rules), batch_size=8,
                         target_length=target_length, classify=classify)
    host = merge_model(graphdef, jax.device_get(state.params), jax.device_get(state.rest))
    return runner, state, host


# --------------------------------------------------------------------------- XLM-R heads

XLMR = XLMRConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, task_num_labels=(3, 1))
HEADS = ("ctkfacts_nli", "sts")


@pytest.fixture(scope="module")
def xlmr():
    objective = ClassificationObjective(num_tasks=2, num_labels=(3, 1))
    runner, state, model = _runner(lambda: XLMRMultiTask(XLMR, rngs=nnx.Rngs(0)), "xlmr",
                                   classify=objective.predict)
    conv = ClassificationConverter(HEADS, bos_id=0, pad_id=1, eos_id=2)
    rng = np.random.default_rng(0)

    def examples(head: str, regression: bool) -> list[dict[str, Any]]:
        out = []
        for i in range(N):
            out.append({"text": rng.integers(5, 64, int(rng.integers(2, 6))).astype(np.int32),
                        "text_pair": rng.integers(5, 64, int(rng.integers(1, 4))).astype(np.int32),
                        "task": head.encode(),
                        "label": float(rng.uniform(0, 5)) if regression else int(i % 3)})
        return out

    def reference(exs):  # one unpadded batch of exactly the real examples, no mesh
        batch = {k: jnp.asarray(v) for k, v in conv.convert(
            [{**e, "label": int(e["label"])} for e in exs], LENGTHS, len(exs)).items()}
        return jax.tree.map(np.asarray, objective.predict(model, batch))

    return runner, state, conv, examples, reference


def test_padding_rows_of_the_last_eval_batch_are_dropped(xlmr):
    runner, state, conv, examples, reference = xlmr
    info = tasks.task_info("ctkfacts_nli_cls_cs")
    exs = examples("ctkfacts_nli", False)
    inputs = FakeInputs(conv, exs)
    batches = list(inputs.batches(info, exs, 8, (0, 8)))
    assert [int(b[VALID].sum()) for b in batches] == [8, 3], "the setup must pad the last batch"
    ref = reference(exs)
    out = runner.run(state.params, state.rest, info, exs, inputs, "head")
    assert out.scores.shape == (N, 3)
    np.testing.assert_allclose(out.scores, ref["logits"][:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.predicted, ref["logits"][:, :3].argmax(-1))
    # The Evaluator's metrics are those of the real rows only.
    evaluator = Evaluator(runner, inputs, [info], "validation")
    outcome = evaluator(state, 7)
    gold = [e["label"] for e in exs]
    pred = ref["logits"][:, :3].argmax(-1)
    got = {r["metric"]: r["value"] for r in outcome.records}
    assert got["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=[0, 1, 2], average="macro"))
    assert {r["step"] for r in outcome.records} == {7}
    # The Predictor gives the same rows as probabilities.
    records = Predictor(runner, inputs, state.params, state.rest).predict(info, exs)
    probs = np.exp(ref["logits"][:, :3]) / np.exp(ref["logits"][:, :3]).sum(-1, keepdims=True)
    names = info.label_names
    assert [r["prediction"] for r in records] == [names[k] for k in pred]
    np.testing.assert_allclose([[r["scores"][n] for n in names] for r in records], probs, rtol=1e-5)


def test_regression_head_is_scored_by_pearson_on_its_output(xlmr):
    runner, state, conv, examples, reference = xlmr
    base = tasks.task_info("ctkfacts_nli_cls_cs")
    info = dataclasses.replace(base, name="sts_cls_en", dataset="sts", head="sts", language="en",
                               label_names=(), metrics=("pearson", "spearman"), kind="regression")
    exs = examples("sts", True)
    inputs = FakeInputs(conv, exs)
    ref = reference(exs)["regression"]
    out = runner.run(state.params, state.rest, info, exs, inputs, "head")
    np.testing.assert_allclose(out.predicted, ref, rtol=1e-5, atol=1e-6)
    metrics = task_metrics(info, exs, out)
    assert metrics["pearson"] == pytest.approx(pearsonr([e["label"] for e in exs], ref)[0], abs=1e-5)
    records = Predictor(runner, inputs, state.params, state.rest).predict(info, exs)
    np.testing.assert_allclose([r["prediction"] for r in records], ref, rtol=1e-5, atol=1e-6)
    assert "scores" not in records[0]


def test_wpr_is_ranked_by_expected_grade_within_its_group_field():
    info = tasks.task_info("wpr_cls_de")
    rng = np.random.default_rng(5)
    qids = np.repeat(np.arange(6), 4)
    gold = rng.integers(0, 5, len(qids))
    logits = rng.normal(size=(len(qids), 5)) * 2
    examples = [{"label": int(g), "query_id": int(q)} for g, q in zip(gold, qids, strict=True)]
    out = TaskOutputs("head", logits.argmax(-1), logits)
    grade = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)) @ np.arange(5)
    want = np.mean([ndcg_score([gold[qids == q]], [grade[qids == q]]) for q in range(6)])
    assert task_metrics(info, examples, out) == {"ndcg": pytest.approx(want)}


# --------------------------------------------------------------------------- mT5

T5 = T5Config(vocab_size=48, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
              num_decoder_layers=1, dropout_rate=0.0)


@pytest.fixture(scope="module")
def t5():
    runner, state, model = _runner(lambda: T5Model(T5, rngs=nnx.Rngs(1)), "t5", target_length=6)
    conv = EncDecConverter(("xnli",), pack=False)
    rng = np.random.default_rng(1)
    exs = [{"inputs": np.append(rng.integers(3, 48, int(rng.integers(3, 10))), 1).astype(np.int32),
            "targets": np.array([5, 1], np.int32), "task": b"xnli", "label": i % 3}
           for i in range(N)]
    return runner, state, model, conv, exs


def _padded(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _log_likelihoods(model, encs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> np.ndarray:
    """sum_t log p(target_t | enc, target_<t) per (enc, target) pair, straight from the model's
    logits in one plain forward pass (0-padded rows; padding positions are not summed)."""
    tgt = _padded(targets)
    dec_in = np.concatenate([np.zeros((len(tgt), 1), np.int32), tgt[:, :-1]], axis=1)
    logp = log_softmax(np.asarray(model(jnp.asarray(_padded(encs)), jnp.asarray(dec_in)),
                                  np.float64), axis=-1)
    picked = np.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return np.where(tgt > 0, picked, 0.0).sum(-1)


def test_rank_classification_scores_trimmed_candidates_like_the_model(t5):
    runner, state, model, conv, exs = t5
    info = tasks.task_info("xnli_t2t_de")
    cands = np.zeros((3, 6), np.int32)  # padded to the target length; the longest label is 3
    for k, ids in enumerate(([7, 8, 1], [9, 1], [10, 11, 1])):
        cands[k, : len(ids)] = ids
    assert _trim_columns(cands).shape == (3, 3)
    inputs = FakeInputs(conv, exs, cands)
    out = runner.run(state.params, state.rest, info, exs, inputs, "rank")
    pairs = [(e["inputs"], np.trim_zeros(c, "b")) for e in exs for c in cands]
    ref = _log_likelihoods(model, [p[0] for p in pairs], [p[1] for p in pairs]).reshape(N, 3)
    np.testing.assert_allclose(out.scores, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out.predicted, ref.argmax(-1))
    records = Predictor(runner, inputs, state.params, state.rest).predict(info, exs)
    np.testing.assert_allclose([[r["scores"][n] for n in info.label_names] for r in records], ref,
                               rtol=1e-4, atol=1e-4)


def _greedy_reference(model, encs: Sequence[np.ndarray], length: int) -> list[list[int]]:
    """Argmax decoding by re-running the whole decoder on the prefix (no cache), all rows at
    once; each row is cut after its first EOS."""
    enc = jnp.asarray(_padded(encs))
    tokens = np.zeros((len(encs), 1), np.int32)
    for _ in range(length):
        logits = np.asarray(model(enc, jnp.asarray(tokens)))[:, -1]
        tokens = np.concatenate([tokens, logits.argmax(-1)[:, None].astype(np.int32)], axis=1)
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[: row.index(1) + 1] if 1 in row else row)
    return out


def test_greedy_path_decodes_like_the_model_and_parses_regression_text(t5):
    runner, state, model, conv, exs = t5
    inputs = FakeInputs(conv, exs)
    info = tasks.task_info("xnli_t2t_de")
    out = runner.run(state.params, state.rest, info, exs, inputs, "greedy")
    generated = _greedy_reference(model, [e["inputs"] for e in exs], 6)
    want = [inputs.decode(g) for g in generated]
    assert out.texts == want
    assert list(out.predicted) == [-1] * N  # random models generate no label name
    # Regression text-to-text: the generated text parsed as a number, unparsable -> -1.0.
    reg = dataclasses.replace(info, name="sts_t2t_en", dataset="sts", label_names=(),
                              metrics=("pearson",), kind="regression")

    class NumberInputs(FakeInputs):
        def decode(self, tokens):  # "4.2"-like text from the first token, or garbage
            first = int(tokens[0])
            return f"{first / 10:.1f}" if first % 2 == 0 else "not a number"

    out = runner.run(state.params, state.rest, reg, exs, NumberInputs(conv, exs), "greedy")
    firsts = [g[0] for g in generated]
    np.testing.assert_allclose(out.predicted, [f / 10 if f % 2 == 0 else -1.0 for f in firsts],
                               atol=1e-9)


def test_eval_batches_of_a_packing_run_hold_one_example_per_row(tmp_path):
    from mtl_jax import experiment
    from mtl_jax.run_config import TrainConfig

    cfg = TrainConfig(model_dir=str(tmp_path), family="t5", model_config=T5, pack=True,
                      mixture="ctkfacts_t2t", sequence_length={"inputs": 64, "targets": 8},
                      batch_size=8, max_eval_examples=5)
    exp = experiment.build(cfg, training=False)
    info = tasks.task_info("ctkfacts_nli_t2t_cs")
    inputs = exp.inputs()
    exs = inputs.examples(info, "validation")
    (batch,) = list(inputs.batches(info, exs, 8, (0, 8)))
    real = (np.asarray(batch["encoder_input_tokens"]) > 0).any(-1)
    assert real.tolist() == [True] * 5 + [False] * 3 == (batch[VALID] > 0).tolist()
    for row, ex in zip(batch["encoder_input_tokens"][:5], exs, strict=True):
        np.testing.assert_array_equal(np.trim_zeros(row, "b"), ex["inputs"])
