"""Feature converters against their references: seqio's EncDecFeatureConverter (packed and
unpacked) and transformers' XLMRobertaTokenizer pair encoding (incl. longest-first truncation)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mtl_jax import features as F
from mtl_jax.data.converters import (
    ClassificationConverter,
    EncDecConverter,
    longest_first,
    task_id_map,
)

HEADS = ("xnli", "pawsx", "mc4")
LENGTHS = {"inputs": 24, "targets": 10}


def _t2t_examples(n: int, seed: int, max_in: int = 30, max_tg: int = 12) -> list[dict]:
    """Random examples ending in EOS (1); some longer than LENGTHS to exercise truncation."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ni, nt = int(rng.integers(1, max_in)), int(rng.integers(1, max_tg))
        out.append(
            {
                "inputs": np.append(rng.integers(2, 500, ni - 1), 1).astype(np.int32),
                "targets": np.append(rng.integers(2, 500, nt - 1), 1).astype(np.int32),
                "task": HEADS[int(rng.integers(0, len(HEADS)))].encode(),
            }
        )
    return out


def _seqio_reference(examples: list[dict], pack: bool) -> list[dict[str, np.ndarray]]:
    # seqio expects Task outputs, which a Task has already cut to the sequence lengths.
    trimmed = [{k: e[k][: LENGTHS[k]] for k in LENGTHS} for e in examples]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(trimmed),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    conv = seqio.EncDecFeatureConverter(pack=pack)
    return list(conv(ds, LENGTHS).as_numpy_iterator())


def _rows(batch: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    return batch[key][:n]


def test_unpacked_matches_seqio():
    examples = _t2t_examples(40, seed=0)
    ours = EncDecConverter(HEADS).convert(examples, LENGTHS)
    ref = _seqio_reference(examples, pack=False)
    assert len(ref) == len(examples)
    for key in F.ENC_DEC_FEATURES:
        np.testing.assert_array_equal(ours[key], np.stack([r[key] for r in ref]), err_msg=key)
    assert ours[F.DECODER_LOSS_WEIGHTS].dtype == np.float32
    want = [HEADS.index(e["task"].decode()) for e in examples]
    np.testing.assert_array_equal(ours[F.TASK_ID], want)
    assert set(ours) == set(F.ENC_DEC_FEATURES) | {F.TASK_ID}


def test_packed_matches_seqio_row_for_row():
    # Fewer examples than max(LENGTHS): seqio packs them as one block, in order, greedily, which
    # is exactly our order; the rows must then be identical.
    examples = _t2t_examples(20, seed=1, max_in=12, max_tg=6)
    ref = _seqio_reference(examples, pack=True)
    ours = EncDecConverter(HEADS, pack=True).convert(examples, LENGTHS, batch_size=len(examples))
    n = len(ref)
    assert 1 < n < len(examples)
    keys = F.ENC_DEC_FEATURES + F.PACKING_FEATURES
    for key in keys:
        np.testing.assert_array_equal(
            _rows(ours, key, n), np.stack([r[key] for r in ref]), err_msg=key
        )
        assert not ours[key][n:].any(), f"{key}: rows after the last packed row must be empty"
    # Every target token carries its own example's task id (0 on padding).
    seg = ours[F.DECODER_SEGMENT_IDS]
    task = ours[F.DECODER_TASK_IDS]
    k = 0
    for r in range(n):
        for s in range(1, seg[r].max() + 1):
            assert (task[r][seg[r] == s] == HEADS.index(examples[k]["task"].decode())).all()
            k += 1
    assert k == len(examples)
    assert (task[seg == 0] == 0).all()
    assert F.TASK_ID not in ours


def _segments(batch: dict[str, np.ndarray]) -> list[tuple[list[int], list[int]]]:
    out = []
    for r in range(batch[F.ENCODER_INPUT_TOKENS].shape[0]):
        es, ds = batch[F.ENCODER_SEGMENT_IDS][r], batch[F.DECODER_SEGMENT_IDS][r]
        for s in range(1, es.max() + 1):
            out.append(
                (
                    batch[F.ENCODER_INPUT_TOKENS][r][es == s].tolist(),
                    batch[F.DECODER_TARGET_TOKENS][r][ds == s].tolist(),
                )
            )
    return out


def test_packed_many_examples_same_segments_as_seqio():
    # With more examples seqio restarts its packing every max(LENGTHS) examples; we do not, so
    # compare the segments' content and order, and check we never need more rows.
    examples = _t2t_examples(150, seed=2, max_in=28, max_tg=8)
    ref = _seqio_reference(examples, pack=True)
    ref_batch = {k: np.stack([r[k] for r in ref]) for k in ref[0]}
    ours = EncDecConverter(HEADS, pack=True).convert(examples, LENGTHS, batch_size=len(examples))
    used = int((ours[F.ENCODER_SEGMENT_IDS].max(axis=1) > 0).sum())
    truncated = [
        (e["inputs"][: LENGTHS["inputs"]].tolist(), e["targets"][: LENGTHS["targets"]].tolist())
        for e in examples
    ]
    assert _segments(ours) == truncated
    assert _segments(ref_batch) == truncated
    assert used <= len(ref)
    # Positions restart at 0 per segment; decoder inputs restart with 0 per segment.
    d_in, d_tg = ours[F.DECODER_INPUT_TOKENS], ours[F.DECODER_TARGET_TOKENS]
    pos, seg = ours[F.DECODER_POSITIONS], ours[F.DECODER_SEGMENT_IDS]
    starts = (pos == 0) & (seg > 0)
    assert (d_in[starts] == 0).all()
    inner = (pos > 0) & (seg > 0)
    assert (d_in[:, 1:][inner[:, 1:]] == d_tg[:, :-1][inner[:, 1:]]).all()


def test_packing_builder_does_not_consume_an_example_that_does_not_fit():
    conv = EncDecConverter(HEADS, pack=True)
    builder = conv.builder(2, LENGTHS)
    long = {"inputs": np.ones(20, np.int32), "targets": np.ones(3, np.int32), "task": "xnli"}
    assert builder.add(long) and builder.add(long)  # one per row
    before = {k: v.copy() for k, v in builder.build().items()}
    assert not builder.add(long)
    assert builder.num_examples == 2
    after = builder.build()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    unpacked = EncDecConverter(HEADS).builder(1, LENGTHS)
    assert unpacked.add(long) and not unpacked.add(long)


def test_task_ids_follow_the_head_list_and_bad_heads_are_named():
    assert task_id_map(["nc", "xnli"]) == {"nc": 0, "xnli": 1}
    with pytest.raises(ValueError, match="more than once"):
        task_id_map(["xnli", "xnli"])
    ex = _t2t_examples(1, seed=3)[0]
    ex["task"] = b"wpr"
    with pytest.raises(KeyError, match="'wpr' is not in the run's head list"):
        EncDecConverter(HEADS).convert([ex], LENGTHS)
    del ex["task"]
    with pytest.raises(KeyError, match="no 'task' feature"):
        EncDecConverter(HEADS).convert([ex], LENGTHS)


def test_passthrough_keeps_query_ids():
    conv = ClassificationConverter(("wpr",), passthrough=("query_id",))
    exs = [
        {"text": [5, 6], "text_pair": [7], "label": 3, "task": "wpr", "query_id": 42},
        {"text": [5], "text_pair": [], "label": 0, "task": "wpr", "query_id": 7},
    ]
    batch = conv.convert(exs, {"inputs": 8}, batch_size=3)
    np.testing.assert_array_equal(batch["query_id"], [42, 7, -1])
    np.testing.assert_array_equal(batch[F.LABELS], [3, 0, -1])
    np.testing.assert_array_equal(batch[F.ATTENTION_MASK][2], 0)
    with pytest.raises(ValueError, match="pack=False"):
        EncDecConverter(HEADS, pack=True, passthrough=("query_id",))


def test_longest_first_keeps_the_budget():
    for la, lb, budget in itertools.product(range(0, 9), range(0, 9), range(0, 12)):
        na, nb = longest_first((la, lb), budget)
        assert 0 <= na <= la and 0 <= nb <= lb
        assert na + nb == min(la + lb, budget)
        if na < la and nb < lb:  # both cut: they end up within one token of each other
            assert abs(na - nb) <= 1
        elif na + nb < la + lb:  # one cut: the longer one, not cut below the other (-1 on ties)
            cut_a = na < la
            assert (la >= lb) if cut_a else (lb >= la)
            assert (na >= nb - 1) if cut_a else (nb >= na - 1)


def _longest_first_reference(lengths: list[int], budget: int) -> list[int]:
    """Brute force: the largest common cap that fits, then the left-over tokens to the longest
    capped texts (the later one on a tie)."""
    if sum(lengths) <= budget:
        return list(lengths)
    cap = max(t for t in range(max(lengths) + 1) if sum(min(n, t) for n in lengths) <= budget)
    kept = [min(n, cap) for n in lengths]
    capped = sorted((i for i, n in enumerate(lengths) if n > cap),
                    key=lambda i: (-lengths[i], -i))
    for i in capped[: budget - sum(kept)]:
        kept[i] += 1
    return kept


def test_longest_first_of_several_texts_matches_brute_force_and_tf():
    from mtl_jax.data.preprocessors import longest_first_tf

    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 5))
        lengths = [int(n) for n in rng.integers(0, 30, k)]
        budget = int(rng.integers(0, 70))
        want = _longest_first_reference(lengths, budget)
        assert longest_first(lengths, budget) == want, (lengths, budget)
        got = longest_first_tf(tf.constant(lengths, tf.int32), budget).numpy().tolist()
        assert got == want, (lengths, budget)
    with pytest.raises(ValueError, match="budget"):
        longest_first([3, 4], -1)


# ------------------------------------------------------------------ XLM-R pair encoding


def _texts(shared: Path | None) -> list[tuple[str, str]]:
    if shared is not None:
        pairs = []
        for lang in ("en", "de", "ru", "el", "ar", "zh"):
            lines = (shared / "xnli" / f"dev-{lang}.tsv").read_text("utf-8").splitlines()[:60]
            pairs += [tuple(line.split("\t")[:2]) for line in lines]
        return pairs
    rng = np.random.default_rng(0)
    words = ["příliš", "žluťoučký", "kůň", "кошка", "λόγος", "数据", "hello", "world", "naïve"]

    def sent():
        return " ".join(rng.choice(words, int(rng.integers(1, 30))))

    return [(sent(), sent()) for _ in range(200)]


@pytest.fixture(scope="module")
def xlmr_tokenizer_and_pairs(tmp_path_factory, request):
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    shared = None
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        pass
    pairs = _texts(shared)
    folder = tmp_path_factory.mktemp("xlmr_spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(itertools.chain.from_iterable(pairs)), "utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "sentencepiece.bpe"),
        vocab_size=800,
        model_type="unigram",
        character_coverage=0.9995,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tok = XLMRobertaTokenizer.from_pretrained(str(folder))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    return tok, pairs


@pytest.mark.parametrize("max_length", [9, 12, 17, 33, 64])
@pytest.mark.parametrize("swap", [False, True])
def test_classification_matches_xlmr_tokenizer(xlmr_tokenizer_and_pairs, max_length, swap):
    tok, pairs = xlmr_tokenizer_and_pairs
    if swap:
        pairs = [(b, a) for a, b in pairs]
    pairs = pairs[::3]
    examples = []
    for i, (a, b) in enumerate(pairs):
        ids_a = tok(a, add_special_tokens=False)["input_ids"]
        ids_b = tok(b, add_special_tokens=False)["input_ids"]
        examples.append({"text": ids_a, "text_pair": ids_b, "label": i % 3, "task": "xnli"})
    batch = ClassificationConverter(("pawsx", "xnli")).convert(examples, {"inputs": max_length})
    ref = tok(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        truncation="longest_first",
        max_length=max_length,
        padding="max_length",
    )
    np.testing.assert_array_equal(batch[F.INPUT_IDS], np.array(ref["input_ids"]))
    np.testing.assert_array_equal(batch[F.ATTENTION_MASK], np.array(ref["attention_mask"]))
    np.testing.assert_array_equal(batch[F.TOKEN_TYPE_IDS], 0)
    np.testing.assert_array_equal(batch[F.LABELS], [i % 3 for i in range(len(pairs))])
    np.testing.assert_array_equal(batch[F.TASK_ID], 1)
    # The comparison means something only if some pairs were really cut on both sides: read the
    # kept lengths off the output (<s> A </s></s> B </s>) and compare with the full texts.
    real = batch[F.ATTENTION_MASK].sum(1)
    kept_a = np.argmax(batch[F.INPUT_IDS] == tok.eos_token_id, axis=1) - 1
    kept_b = real - kept_a - 4
    full_a = np.array([len(e["text"]) for e in examples])
    full_b = np.array([len(e["text_pair"]) for e in examples])
    assert (kept_a <= full_a).all() and (kept_b <= full_b).all()
    both_cut = (kept_a < full_a) & (kept_b < full_b)
    if max_length <= 33:  # at 64 no synthetic pair (used without shared data) needs both cut
        assert both_cut.sum() >= 5, both_cut.sum()
    if max_length <= 17:
        assert (real == max_length).all()


@pytest.mark.parametrize("max_length", [4, 11, 64])
def test_single_text_matches_xlmr_tokenizer(xlmr_tokenizer_and_pairs, max_length):
    tok, pairs = xlmr_tokenizer_and_pairs
    texts = [a for a, _ in pairs[:80]]
    examples = [
        {"text": tok(t, add_special_tokens=False)["input_ids"], "label": 0, "task": "pawsx"}
        for t in texts
    ]
    batch = ClassificationConverter(("pawsx",)).convert(examples, {"inputs": max_length})
    ref = tok(texts, truncation=True, max_length=max_length, padding="max_length")
    np.testing.assert_array_equal(batch[F.INPUT_IDS], np.array(ref["input_ids"]))
    np.testing.assert_array_equal(batch[F.ATTENTION_MASK], np.array(ref["attention_mask"]))
