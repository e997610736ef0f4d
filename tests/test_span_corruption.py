"""T5 span corruption: statistics, sentinel layout, reconstruction, lengths, determinism."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf

from mtl_jax.data import span_corruption as sc

VOCAB_SIZE = 5000  # sentinels: 4999, 4998, ... (tokens below stay under 4000)
EOS = 1
VOCAB = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=EOS)
FEATURES = {"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}
FIRST_SENTINEL = VOCAB_SIZE - 1


def _is_sentinel(tok: int) -> bool:
    return tok >= VOCAB_SIZE - 100


def _documents(n_docs: int, seed: int) -> list[np.ndarray]:
    """Documents of mixed lengths, each a run of distinct token ids (3 .. <4000)."""
    rng = np.random.default_rng(seed)
    docs, start = [], 3
    for _ in range(n_docs):
        n = int(rng.integers(1, 1500))
        docs.append((start + np.arange(n)) % 3990 + 3)
        start += n
    return docs


def _doc_dataset(docs: list[np.ndarray]) -> tf.data.Dataset:
    lengths = [len(d) for d in docs]
    flat = np.concatenate(docs).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(
        {
            "targets": tf.RaggedTensor.from_row_lengths(flat, lengths),
            "doc": np.arange(len(docs), dtype=np.int32),
            "task": ["mc4"] * len(docs),
        }
    )


def _corrupt(docs, sequence_length, map_seed=1234):
    with seqio.utils.map_seed_manager(map_seed):
        ds = sc.span_corruption(_doc_dataset(docs), sequence_length, FEATURES)
    return list(ds.as_numpy_iterator())


def _merge(inputs: np.ndarray, targets: np.ndarray) -> list[int]:
    """Put every span from the targets back in place of its sentinel in the inputs."""
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets.tolist():
        if _is_sentinel(tok):
            current = tok
            spans[current] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            spans[current].append(tok)
    out: list[int] = []
    for tok in inputs.tolist():
        out.extend(spans.pop(tok) if _is_sentinel(tok) else [tok])
    return out


def test_t5_lengths_for_512_inputs():
    # The published T5 / mT5 pre-training setting: 512 inputs <- 568-token chunks, 114 targets.
    assert sc.tokens_length_for(512) == 568
    c = sc.span_counts(568)
    assert (c.noise_tokens, c.noise_spans, c.inputs_length, c.targets_length) == (85, 28, 512, 114)
    # A roomy targets length changes nothing; a short one shortens the chunks.
    assert sc.tokens_length_for(512, 114) == 568
    assert sc.tokens_length_for(512, 113) < 568


@pytest.mark.parametrize("targets_length", [None, 6, 12, 40])
def test_tokens_length_is_the_largest_that_fits(targets_length):
    for inputs_length in range(3, 160):
        n = sc.tokens_length_for(inputs_length, targets_length)

        def fits(m, inputs_length=inputs_length):
            c = sc.span_counts(m)
            ok_t = targets_length is None or c.targets_length <= targets_length
            return c.inputs_length <= inputs_length and ok_t

        assert fits(n)
        assert not any(fits(m) for m in range(n + 1, n + 40)), (inputs_length, n)


def test_noise_density_and_span_length_over_many_tokens():
    docs = _documents(20, seed=0)
    total = sum(len(d) for d in docs)
    assert total >= 10_000
    out = _corrupt(docs, {"inputs": 512, "targets": 114})
    noise_tokens = sum(sum(not _is_sentinel(t) for t in ex["targets"]) for ex in out)
    spans = sum(sum(_is_sentinel(t) for t in ex["inputs"]) for ex in out)
    density = noise_tokens / total
    mean_span = noise_tokens / spans
    assert abs(density - 0.15) <= 0.1 * 0.15, density
    assert abs(mean_span - 3.0) <= 0.1 * 3.0, mean_span


def test_sentinel_layout_and_merge_restores_the_documents():
    docs = _documents(12, seed=1)
    out = _corrupt(docs, {"inputs": 64, "targets": 20})
    chunk = sc.tokens_length_for(64, 20)
    rebuilt: dict[int, list[int]] = collections.defaultdict(list)
    for ex in out:
        inputs, targets = ex["inputs"], ex["targets"]
        assert ex["task"] == b"mc4"
        in_sent = [t for t in inputs.tolist() if _is_sentinel(t)]
        tg_sent = [t for t in targets.tolist() if _is_sentinel(t)]
        # Sentinels descend from <extra_id_0> = vocab_size - 1, one per span, same in both.
        assert in_sent == list(range(FIRST_SENTINEL, FIRST_SENTINEL - len(in_sent), -1))
        assert tg_sent[: len(in_sent)] == in_sent
        assert _is_sentinel(targets[0])
        if len(inputs) > 1:
            # Spans alternate starting with non-noise: inputs open with a real token, targets
            # end with a real token, and no two sentinels touch (no empty span).
            assert not _is_sentinel(inputs[0]) and not _is_sentinel(targets[-1])
            assert tg_sent == in_sent
            for seq in (inputs, targets):
                flags = [_is_sentinel(t) for t in seq.tolist()]
                assert not any(a and b for a, b in itertools.pairwise(flags))
        merged = _merge(inputs, targets)
        assert len(merged) <= chunk
        rebuilt[int(ex["doc"])].extend(merged)
    for i, doc in enumerate(docs):
        assert rebuilt[i] == doc.tolist(), f"document {i} not restored"


def test_masks_are_uniform_over_all_layouts():
    # length 10, density 0.3, mean span 1.5: 3 noise tokens in 2 spans, 7 others in 2 spans.
    # 2 x 6 = 12 layouts, equally likely (the published algorithm's property).
    layouts = collections.Counter()
    draws = 1200

    @tf.function
    def mask(seeds):
        return sc.random_spans_noise_mask(tf.constant(10), seeds, 0.3, 1.5)

    for s in range(draws):
        m = mask(tf.constant([[s, 1], [s, 2]], tf.int32)).numpy()
        assert m.sum() == 3 and not m[0]
        layouts[tuple(m.tolist())] += 1
    assert len(layouts) == 12
    counts = np.array(list(layouts.values()))
    chi2 = (((counts - draws / 12) ** 2) / (draws / 12)).sum()
    assert chi2 < scipy.stats.chi2.ppf(1 - 1e-4, df=11), (chi2, layouts)


def _register_mc4_toy(name: str, docs: list[np.ndarray]):
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return _doc_dataset(docs)

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        output_features=FEATURES,
        preprocessors=[sc.span_corruption, seqio.preprocessors.append_eos_after_trim],
    )


def test_seqio_task_is_deterministic_per_seed_and_fits_lengths():
    docs = _documents(10, seed=2)
    task = _register_mc4_toy("test_span_corruption_toy", docs)
    try:
        lengths = {"inputs": 48, "targets": 12}

        def run(seed):
            ds = task.get_dataset(lengths, split="train", shuffle=False, seed=seed)
            return [
                (ex["inputs"].tolist(), ex["targets"].tolist()) for ex in ds.as_numpy_iterator()
            ]

        a, b, c = run(7), run(7), run(8)
        assert a == b
        assert a != c
        assert len(a) == len(c)
        for inputs, targets in a:
            # EOS is appended and nothing was cut: the chunk length left room for both sides.
            assert inputs[-1] == EOS and targets[-1] == EOS
            assert len(inputs) <= 48 and len(targets) <= 12
            assert _is_sentinel(targets[0])
    finally:
        seqio.TaskRegistry.remove("test_span_corruption_toy")


def test_identical_documents_get_independent_noise():
    doc = np.arange(3, 503)
    out = _corrupt([doc] * 6, {"inputs": 600, "targets": 200})
    assert len({tuple(ex["inputs"].tolist()) for ex in out}) == 6


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="noise_density"):
        sc.span_counts(100, noise_density=1.5)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        sc.span_counts(100, mean_noise_span_length=0.5)
    with pytest.raises(ValueError, match="inputs length"):
        sc.tokens_length_for(1)
