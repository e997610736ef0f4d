"""The CS224N multitask recipe: the siamese cosine STS head against independent references (each
sentence tokenized alone by transformers; the cosine recomputed in NumPy from the model's pooled
vectors), and ``cs224n_mtl.gin`` end to end on the bundled samples with its every-metric table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from mtl_jax import features as F
from mtl_jax import train as train_cli
from mtl_jax.data import sources
from mtl_jax.data.converters import ClassificationConverter
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training.objectives import ClassificationObjective

pytestmark = pytest.mark.usefixtures("fast_compiles")

HEADS = ("cs224n_sst", "cs224n_quora", "cs224n_sts")
SIAMESE = ("cs224n_sts",)


def _dev_rows(stem: str) -> list[dict[str, str]]:
    """The bundled dev file read with the csv module (tab-separated, quoted, index column)."""
    path = sources.SAMPLES_DIR / "cs224n" / f"{stem}-dev.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def hf_xlmr_tokenizer(tmp_path_factory):
    """transformers' XLM-R tokenizer over the demo vocabulary the recipe's smoke run uses."""
    import helpers

    from mtl_jax.data import vocab

    d = tmp_path_factory.mktemp("xlmr_vocab")
    (d / vocab.XLMR_SPM_FILENAME).write_bytes(vocab.DEMO_XLMR_SPM.read_bytes())
    return helpers.hf_tokenizer(d, "xlmr")


@pytest.mark.parametrize("length", [12, 48])
def test_siamese_features_are_each_sentence_tokenized_alone(hf_xlmr_tokenizer, length):
    """STS rows: input_ids = tokenizer(sentence1), pair_input_ids = tokenizer(sentence2), each cut
    alone; a Quora row in the same batch keeps the joint pair encoding and empty pair features."""
    from mtl_jax.data import eval_sets

    tok = hf_xlmr_tokenizer
    seq = {"inputs": length}
    sts = eval_sets.load_examples("cs224n_sts_cls_en", "validation", seq)
    quora = eval_sets.load_examples("cs224n_quora_cls_en", "validation", seq, limit=3)
    rows = _dev_rows("sts")
    assert len(sts) == len(rows)
    conv = ClassificationConverter(HEADS, regression=True, siamese_heads=SIAMESE)
    batch = conv.convert([*sts, *quora], seq)
    n = len(sts)

    def ref(texts):
        return tok(texts, truncation=True, max_length=length, padding="max_length")

    first, second = ref([r["sentence1"] for r in rows]), ref([r["sentence2"] for r in rows])
    np.testing.assert_array_equal(batch[F.INPUT_IDS][:n], first["input_ids"])
    np.testing.assert_array_equal(batch[F.ATTENTION_MASK][:n], first["attention_mask"])
    np.testing.assert_array_equal(batch[F.PAIR_INPUT_IDS][:n], second["input_ids"])
    np.testing.assert_array_equal(batch[F.PAIR_ATTENTION_MASK][:n], second["attention_mask"])
    np.testing.assert_allclose(batch[F.REGRESSION_TARGETS][:n],
                               [float(r["similarity"]) for r in rows])
    if length == 12:  # the short length really cuts sentences
        assert (np.asarray(first["attention_mask"]).sum(1) == length).all()
    q_rows = _dev_rows("quora")[:3]
    joint = tok([r["sentence1"] for r in q_rows], [r["sentence2"] for r in q_rows],
                truncation="longest_first", max_length=length, padding="max_length")
    np.testing.assert_array_equal(batch[F.INPUT_IDS][n:], joint["input_ids"])
    assert (batch[F.PAIR_ATTENTION_MASK][n:] == 0).all() and (batch[F.PAIR_INPUT_IDS][n:] == 1).all()
    np.testing.assert_array_equal(batch[F.TASK_ID], [2] * n + [1] * 3)


def test_without_siamese_heads_the_batch_is_unchanged():
    examples = [{"text": [5, 6, 7], "text_pair": [8, 9], "label": np.float32(3.2), "task": "cs224n_sts"}]
    plain = ClassificationConverter(HEADS, regression=True).convert(examples, {"inputs": 10})
    assert not set(F.SIAMESE_FEATURES) & set(plain)
    np.testing.assert_array_equal(plain[F.INPUT_IDS][0], [0, 5, 6, 7, 2, 2, 8, 9, 2, 1])
    with pytest.raises(ValueError, match="siamese head 'cs224n_sts' has no 'text_pair'"):
        ClassificationConverter(HEADS, regression=True, siamese_heads=SIAMESE).convert(
            [{**examples[0], "text_pair": []}], {"inputs": 10})


def _tiny(siamese: tuple[bool, ...]) -> XLMRConfig:
    return XLMRConfig(vocab_size=60, vocab_pad_multiple=1, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
                      task_num_labels=(5, 2, 1), task_siamese=siamese)


def test_siamese_prediction_is_the_scaled_cosine_of_the_pooled_vectors():
    """A mixed batch (SST, Quora, STS rows): STS rows predict 2.5 * (cos + 1) of the two pooled
    vectors (recomputed in NumPy; the second one equals a separate pass over the second
    sentences), the other rows are exactly the plain model's; the loss and the evaluation
    path (``predict``) use that score."""
    rng = np.random.default_rng(0)
    b, length = 6, 9
    ids = rng.integers(3, 60, (b, length)).astype(np.int32)
    pair = rng.integers(3, 60, (b, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, (b, 1))).astype(np.int32)
    pair_mask = (np.arange(length)[None] < rng.integers(3, length + 1, (b, 1))).astype(np.int32)
    task = np.array([0, 2, 1, 2, 2, 0], np.int32)
    siamese = task == 2
    pair_mask[~siamese] = 0  # as the converter leaves them
    batch = {F.INPUT_IDS: ids, F.ATTENTION_MASK: mask, F.TASK_ID: task, F.PAIR_INPUT_IDS: pair,
             F.PAIR_ATTENTION_MASK: pair_mask, F.LABELS: np.where(siamese, -1, task % 2),
             F.REGRESSION_TARGETS: rng.uniform(0, 5, b).astype(np.float32)}
    model = XLMRMultiTask(_tiny((False, False, True)), rngs=nnx.Rngs(3))
    out = jax.tree.map(np.asarray, model(ids, mask, task, pair_input_ids=pair,
                                         pair_attention_mask=pair_mask))
    _, alone = model.encoder(pair, pair_mask)
    np.testing.assert_allclose(out["pair_pooled"], np.asarray(alone), rtol=1e-6, atol=1e-7)
    a, p = out["pooled"].astype(np.float64), out["pair_pooled"].astype(np.float64)
    cos = (a * p).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1))
    np.testing.assert_allclose(out["regression"][siamese], 2.5 * (cos[siamese] + 1), rtol=1e-5)
    assert np.all((out["regression"][siamese] >= 0) & (out["regression"][siamese] <= 5))

    plain = XLMRMultiTask(_tiny(()), rngs=nnx.Rngs(3))  # same weights: siamese adds no parameter
    ref = jax.tree.map(np.asarray, plain(ids, mask, task))
    np.testing.assert_array_equal(out["regression"][~siamese], ref["regression"][~siamese])
    np.testing.assert_array_equal(out["logits"], ref["logits"])

    objective = ClassificationObjective(num_tasks=3, normalization="examples", num_labels=(5, 2, 1))
    np.testing.assert_array_equal(np.asarray(objective.predict(model, batch)["regression"]),
                                  out["regression"])
    _, aux = objective(model, batch)
    want = np.mean((2.5 * (cos[siamese] + 1) - batch[F.REGRESSION_TARGETS][siamese]) ** 2)
    np.testing.assert_allclose(np.asarray(aux["per_task_loss"])[2], want, rtol=1e-5)
    # A batch without siamese rows skips the second pass (pair_pooled zeros), same outputs.
    other = task[~siamese]
    args = (ids[~siamese], mask[~siamese], other)
    skipped = model(*args, pair_input_ids=pair[~siamese], pair_attention_mask=pair_mask[~siamese])
    assert not np.asarray(skipped["pair_pooled"]).any()
    np.testing.assert_array_equal(np.asarray(skipped["regression"]),
                                  np.asarray(plain(*args)["regression"]))
    with pytest.raises(ValueError, match="pass pair_input_ids"):
        model(ids, mask, task)


def test_siamese_needs_a_one_label_task_and_the_pooler():
    with pytest.raises(ValueError, match="more than one label"):
        _tiny((False, True, False))
    with pytest.raises(ValueError, match="add_pooling_layer"):
        dataclasses.replace(_tiny((False, False, True)), add_pooling_layer=False)


def test_recipe_resolves_to_the_course_settings():
    """cs224n_mtl.gin binds what docs/methods.md says it does (the starter code's numbers)."""
    from mtl_jax import configurables, gin_config

    gin_config.parse(["cs224n_mtl.gin"])
    cfg = configurables.train_config()
    assert (cfg.family, cfg.mixture, cfg.batch_mode) == ("xlmr", "cs224n_cls", "round_robin")
    assert cfg.siamese_heads == SIAMESE and cfg.require_pretrained
    assert (cfg.batch_size, cfg.num_epochs, cfg.model_config.classifier_dropout) == (8, 10, 0.3)
    assert cfg.optimizer == {"name": "adamw", "learning_rate": 1e-5, "schedule": "constant",
                             "weight_decay": 0.0}


@pytest.mark.parametrize("param, message", [
    ("TrainConfig.siamese_heads=('cs224n_quora',)", "not regression tasks"),
    ("TrainConfig.siamese_heads=('glue_stsb',)", "not heads of mixture"),
    ("TrainConfig.pack=True", "packing cannot be used"),
])  # fmt: skip
def test_bad_siamese_bindings_stop_the_run(tmp_path, capsys, param, message):
    args = ["--gin_file=cs224n_mtl.gin", "--gin_file=cs224n_smoke.gin",
            f"--gin_param=TrainConfig.model_dir={tmp_path}", f"--gin_param={param}"]
    assert train_cli.main(args) != 0
    assert message in capsys.readouterr().err


SMOKE = ["--gin_file=cs224n_mtl.gin", "--gin_file=cs224n_smoke.gin"]


def _train(run, *params: str) -> dict:
    args = [*SMOKE, f"--gin_param=TrainConfig.model_dir={run}", *[f"--gin_param={p}" for p in params]]
    assert train_cli.main(args) == 0
    return json.loads((run / "results.json").read_text())


def _train_records(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_recipe_runs_end_to_end_on_the_bundled_samples(tmp_path):
    """``cs224n_mtl.gin`` + ``cs224n_smoke.gin``: 6 round-robin steps (one task per batch, the
    tasks in turn), then the table with SST accuracy, Quora accuracy and F1, STS Pearson and
    Spearman."""
    run = tmp_path / "run"
    report = _train(run)
    assert sorted(report["tasks"]) == sorted(HEADS)
    metrics = {t: report["metrics"][t]["en"] for t in HEADS}
    assert set(metrics["cs224n_sst"]) == {"accuracy"}
    assert set(metrics["cs224n_quora"]) == {"accuracy", "f1"}
    assert set(metrics["cs224n_sts"]) == {"pearson", "spearman"}
    assert all(math.isfinite(v) and -1 <= v <= 1 for m in metrics.values() for v in m.values())
    table = (run / "results_metrics.md").read_text()
    for task, metric in [("cs224n_sst", "accuracy"), ("cs224n_quora", "f1"),
                         ("cs224n_sts", "spearman")]:
        assert f"| {task} | {metric} | {100 * metrics[task][metric]:.1f} |" in table
    steps = _train_records(run)
    assert len(steps) == 6
    trained = [[k[len("loss/"):] for k in r if k.startswith("loss/")] for r in steps]
    assert all(len(t) == 1 for t in trained), trained  # one task per batch
    cycle = [t for (t,) in trained[:3]]
    assert sorted(cycle) == sorted(HEADS) and [t for (t,) in trained] == cycle * 2  # in turn


@pytest.mark.slow
def test_recipe_runs_with_smart_and_pcgrad(tmp_path):
    """Both switches as the docs give them: methods/smart.gin and methods/pcgrad.gin over
    heterogeneous batches (so a batch holds several tasks, STS rows among them)."""
    run = tmp_path / "smart_pcgrad"
    args = [*SMOKE, "--gin_file=methods/smart.gin", "--gin_file=methods/pcgrad.gin",
            f"--gin_param=TrainConfig.model_dir={run}",
            "--gin_param=TrainConfig.batch_mode='heterogeneous'"]
    assert train_cli.main(args) == 0
    report = json.loads((run / "results.json").read_text())
    assert set(report["metrics"]["cs224n_sts"]["en"]) == {"pearson", "spearman"}
    steps = _train_records(run)
    assert any(len([k for k in r if k.startswith("loss/")]) > 1 for r in steps)
    smart = [r[k] for r in steps for k in r if k.startswith("smart")]
    assert smart and all(math.isfinite(v) and v >= 0 for v in smart) and max(smart) > 0
