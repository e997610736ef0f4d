"""BatchIterator: exact resume, mixture frequencies, determinism, host sharding, batch modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf

from mtl_jax import features as F
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.data.iterator import BatchIterator, mixture_iterator

VOCAB = seqio.PassThroughVocabulary(size=1000)
T2T_FEATURES = {
    "inputs": seqio.Feature(VOCAB, add_eos=False),
    "targets": seqio.Feature(VOCAB, add_eos=False),
}
CLS_FEATURES = {
    "text": seqio.Feature(VOCAB, add_eos=False),
    "text_pair": seqio.Feature(VOCAB, add_eos=False, required=False),
}
# name -> (head, number of examples); sizes differ so tasks roll over epochs at different times.
T2T_TASKS = {"test_it_a": ("ha", 130), "test_it_b": ("hb", 70), "test_it_c": ("hc", 40)}
HEADS = ("ha", "hb", "hc")
LENGTHS = {"inputs": 16, "targets": 8}
SIGNIFICANCE = 1e-4  # the frequency tests fail a correct sampler with probability 1e-4


def _ragged(rows: list[np.ndarray]) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_row_lengths(
        np.concatenate(rows).astype(np.int32), [len(r) for r in rows]
    )


def _t2t_fn(head: str, n: int):
    """Example i: inputs = (1 + i % 7) x token 10+i, targets = (1 + i % 3) x token 10+i."""

    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        idx = np.arange(n) + (0 if split == "train" else 10_000)
        return tf.data.Dataset.from_tensor_slices(
            {
                "inputs": _ragged([np.full(1 + i % 7, 10 + i % 900) for i in idx]),
                "targets": _ragged([np.full(1 + i % 3, 10 + i % 900) for i in idx]),
                "idx": idx.astype(np.int32),
                "task": [head] * n,
            }
        )

    return dataset_fn


def _cls_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    idx = np.arange(120)
    return tf.data.Dataset.from_tensor_slices(
        {
            "text": _ragged([np.full(1 + i % 5, 5 + i) for i in idx]),
            "text_pair": _ragged([np.full(i % 3, 7 + i) for i in idx]),
            "label": (idx % 3).astype(np.int32),
            "idx": idx.astype(np.int32),
            "task": ["hcls"] * len(idx),
        }
    )


@pytest.fixture(scope="module", autouse=True)
def toy_tasks():
    added = []
    for name, (head, n) in T2T_TASKS.items():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                _t2t_fn(head, n),
                splits=["train", "validation"],
                num_input_examples={"train": n, "validation": n},
            ),
            output_features=T2T_FEATURES,
            preprocessors=[],
            shuffle_buffer_size=64,
        )
        added.append(name)
    seqio.TaskRegistry.add(
        "test_it_cls",
        source=seqio.FunctionDataSource(_cls_fn, splits=["train"]),
        output_features=CLS_FEATURES,
        preprocessors=[],
    )
    added.append("test_it_cls")
    seqio.MixtureRegistry.add("test_it_mix", [("test_it_a", 2.0), ("test_it_b", 1.0)])
    yield
    seqio.MixtureRegistry.remove("test_it_mix")
    for name in added:
        seqio.TaskRegistry.remove(name)


def _iterator(
    seed=0,
    batch_mode="heterogeneous",
    pack=False,
    rates=(0.5, 0.3, 0.2),
    batch_size=8,
    shard=None,
    split="train",
    passthrough=(),
    **kw,
) -> BatchIterator:
    return BatchIterator(
        list(T2T_TASKS),
        rates,
        split,
        LENGTHS,
        batch_size,
        EncDecConverter(HEADS, pack=pack, passthrough=passthrough),
        seed=seed,
        shard_info=shard,
        batch_mode=batch_mode,
        **kw,
    )


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"batch {i} feature {k}")


def _take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize(
    "batch_mode,pack,shuffle_window",
    [
        ("heterogeneous", False, 30),  # several windows per epoch: the restore lands inside one
        ("heterogeneous", True, 10_000),  # one window per epoch
        ("homogeneous", True, 10_000),
    ],
)
def test_restore_continues_exactly(batch_mode, pack, shuffle_window):
    def make():
        return _iterator(seed=3, batch_mode=batch_mode, pack=pack, shuffle_window=shuffle_window)

    it = make()
    _take(it, 37)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    streams = state["streams"]
    # Every task is past its first epoch, so the restore skips across a reshuffle.
    assert all(streams[t]["consumed"] > n for t, (_, n) in T2T_TASKS.items()), streams
    assert all(s["epoch"] >= 1 for s in streams.values()), streams
    if shuffle_window == 30:
        assert any(s["position"] % 30 for s in streams.values()), streams
    expected = _take(it, 12)
    resumed = make()
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 12), expected)
    assert resumed.get_state() == it.get_state()


def test_restore_classification_batches():
    def make():
        return BatchIterator(
            ["test_it_cls"], [1.0], "train", {"inputs": 12}, 16,
            ClassificationConverter(("hx", "hcls")), seed=5,
        )  # fmt: skip

    it = make()
    _take(it, 11)
    state = it.get_state()
    expected = _take(it, 6)
    resumed = make()
    resumed.set_state(state)
    got = _take(resumed, 6)
    _assert_same_batches(got, expected)
    assert (got[0][F.TASK_ID] == 1).all()


def test_packing_neither_drops_nor_repeats_examples():
    # The mixed stream does not depend on packing, so the packed batches' segments, read in
    # order, must be exactly the examples of the unpacked stream, across batch boundaries.
    unpacked = _take(_iterator(seed=9, batch_size=4), 60)
    stream = [
        (int(b[F.TASK_ID][r]), b[F.ENCODER_INPUT_TOKENS][r][0]) for b in unpacked for r in range(4)
    ]
    packed = _take(_iterator(seed=9, batch_size=4, pack=True), 12)
    segments = []
    for b in packed:
        for r in range(4):
            seg = b[F.ENCODER_SEGMENT_IDS][r]
            for s in range(1, seg.max() + 1):
                first = np.argmax(seg == s)
                dec = b[F.DECODER_SEGMENT_IDS][r] == s
                segments.append(
                    (int(b[F.DECODER_TASK_IDS][r][dec][0]), b[F.ENCODER_INPUT_TOKENS][r][first])
                )
    assert len(segments) > 4 * 12  # packing really packed
    assert segments == stream[: len(segments)]


def test_task_frequencies_match_rates_heterogeneous():
    rates = np.array([0.55, 0.3, 0.15])
    it = _iterator(seed=11, rates=rates, batch_size=64)
    counts = np.bincount(np.concatenate([b[F.TASK_ID] for b in _take(it, 100)]), minlength=3)
    n = counts.sum()
    # Pearson chi-square goodness of fit, df = 2: reject at significance 1e-4.
    chi2 = ((counts - n * rates) ** 2 / (n * rates)).sum()
    assert chi2 < scipy.stats.chi2.ppf(1 - SIGNIFICANCE, df=2), (counts, n * rates)
    # Per task, a two-sided binomial bound at the same level, with Bonferroni over the tasks.
    z = scipy.stats.norm.ppf(1 - SIGNIFICANCE / (2 * len(rates)))
    for c, p in zip(counts, rates, strict=True):
        assert abs(c - n * p) <= z * np.sqrt(n * p * (1 - p)), (c, n * p)


def test_task_frequencies_match_rates_homogeneous():
    rates = np.array([0.5, 0.3, 0.2])
    it = _iterator(seed=12, rates=rates, batch_size=2, batch_mode="homogeneous")
    tasks = []
    for b in _take(it, 600):
        ids = np.unique(b[F.TASK_ID])
        assert len(ids) == 1, "a homogeneous batch holds one task"
        tasks.append(int(ids[0]))
    counts = np.bincount(tasks, minlength=3)
    chi2 = ((counts - 600 * rates) ** 2 / (600 * rates)).sum()
    assert chi2 < scipy.stats.chi2.ppf(1 - SIGNIFICANCE, df=2), counts


def test_homogeneous_packed_batches_hold_one_task_and_hosts_agree():
    hosts = [
        _iterator(seed=4, batch_mode="homogeneous", pack=True, shard=seqio.ShardInfo(i, 2))
        for i in range(2)
    ]
    for _ in range(20):
        per_host = []
        for it in hosts:
            b = next(it)
            real = b[F.DECODER_SEGMENT_IDS] > 0
            ids = np.unique(b[F.DECODER_TASK_IDS][real])
            assert len(ids) == 1
            per_host.append(int(ids[0]))
        assert per_host[0] == per_host[1], "every process must pick the same task for batch k"


def test_deterministic_per_seed_and_seeds_differ():
    a = _take(_iterator(seed=21), 5)
    _assert_same_batches(_take(_iterator(seed=21), 5), a)
    b = _take(_iterator(seed=22), 5)
    assert any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_process_shards_are_disjoint_and_complete():
    seen = []
    for i in range(2):
        it = _iterator(
            split="validation", shard=seqio.ShardInfo(i, 2), passthrough=("idx",),
            rates=(1.0, 0.0, 0.0), batch_size=32, shuffle=False,
        )  # fmt: skip
        batches = list(it)  # no repeat outside "train": ends after one pass
        idx = np.concatenate([b["idx"] for b in batches])
        real = np.concatenate([b[F.DECODER_LOSS_WEIGHTS].sum(1) > 0 for b in batches])
        assert (idx[~real] == -1).all(), "rows after the last example are padding"
        seen.append(set(idx[real].tolist()))
        assert len(seen[-1]) == real.sum(), "no example twice"
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(10_000, 10_000 + T2T_TASKS["test_it_a"][1]))


def test_heterogeneous_hosts_draw_different_mixes():
    # The task sequence is a function of (seed, process, position) alone: no data needed.
    a, b = (_iterator(seed=2, shard=seqio.ShardInfo(i, 2)) for i in range(2))
    draws = [[it._task_index(i) for i in range(64)] for it in (a, b)]
    assert draws[0] != draws[1]
    assert draws[0] == [
        _iterator(seed=2, shard=seqio.ShardInfo(0, 2))._task_index(i) for i in range(64)
    ]


def test_state_of_another_configuration_is_refused():
    state = _iterator(seed=1).get_state()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        _iterator(seed=2).set_state(state)
    with pytest.raises(ValueError, match="batch_size"):
        _iterator(seed=1, batch_size=4).set_state(state)
    with pytest.raises(ValueError, match="converter"):
        _iterator(seed=1, pack=True).set_state(state)


def test_mixture_iterator_uses_the_mixture_rates():
    it = mixture_iterator("test_it_mix", "train", LENGTHS, 64, EncDecConverter(HEADS), seed=0)
    assert it.tasks == ["test_it_a", "test_it_b"]
    np.testing.assert_allclose(it.rates, [2 / 3, 1 / 3])
    assert set(np.unique(next(it)[F.TASK_ID])) <= {0, 1}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="3 tasks but 2 rates"):
        _iterator(rates=(0.5, 0.5))
    with pytest.raises(ValueError, match="batch_mode"):
        _iterator(batch_mode="mixed")
    with pytest.raises(KeyError, match="no split 'test'"):
        next(_iterator(split="test"))
    with pytest.raises(TypeError, match="Mixture"):
        next(
            BatchIterator(
                ["test_it_mix"], [1.0], "train", LENGTHS, 2, EncDecConverter(HEADS), seed=0
            )
        )


def test_real_bundled_mixture_restores_exactly():
    """The CTKFacts classification mixture on the bundled samples, real tokenizer."""
    from mtl_jax.data import sources, tasks  # registers the project's tasks and mixtures

    if not sources.SAMPLES_DIR.is_dir():
        pytest.skip(f"bundled samples not generated yet at {sources.SAMPLES_DIR}")
    from mtl_jax.data import mixtures  # noqa: F401  (registers ctkfacts_cls)

    members = [t.name for t in seqio.get_mixture_or_task("ctkfacts_cls").tasks]
    heads = tuple(sorted({tasks.task_info(n).head for n in members}))

    def make():
        return mixture_iterator(
            "ctkfacts_cls", "train", {"inputs": 64}, 8, ClassificationConverter(heads), seed=1
        )

    it = make()
    first = _take(it, 6)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 4)
    resumed = make()
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 4), expected)
    for b in first + expected:
        ids, mask = b[F.INPUT_IDS], b[F.ATTENTION_MASK]
        assert (ids[:, 0] == 0).all()  # <s>
        last = mask.sum(1) - 1
        assert (ids[np.arange(len(ids)), last] == 2).all()  # </s>
        assert (ids[mask == 0] == 1).all()  # <pad>
        assert ((b[F.LABELS] >= 0) & (b[F.LABELS] < 3)).all()
    seen = set(np.concatenate([b[F.TASK_ID] for b in first + expected]).tolist())
    assert seen == set(range(len(heads)))  # both formulations appear (equal rates)


def _bundled_mixture_tasks(name: str) -> list[str]:
    from mtl_jax.data import mixtures, sources  # noqa: F401  (registers the project's tasks)

    if not sources.SAMPLES_DIR.is_dir():
        pytest.skip(f"bundled samples not generated yet at {sources.SAMPLES_DIR}")
    return [t.name for t in seqio.get_mixture_or_task(name).tasks]


@pytest.mark.parametrize("mixture", ["demo_t2t"])
def test_process_shards_of_every_bundled_task_partition_the_epoch(mixture):
    """What each process reads of each training task (seqio shard i of 2, shuffled as training
    reads it): together exactly one epoch, nothing twice, nothing missing."""
    from collections import Counter

    for name in _bundled_mixture_tasks(mixture):
        task = seqio.get_mixture_or_task(name)

        def read(shard: seqio.ShardInfo | None, task=task) -> Counter:
            ds = task.get_dataset({"inputs": 64, "targets": 8}, split="train", shuffle=shard is not None,
                                  seed=3, shard_info=shard, num_epochs=1, use_cached=False)
            return Counter(tuple(ex["inputs"].tolist()) for ex in ds.as_numpy_iterator())

        whole = read(None)
        parts = [read(seqio.ShardInfo(i, 2)) for i in range(2)]
        assert sum(parts[0].values()) and sum(parts[1].values()), name
        assert parts[0] + parts[1] == whole, f"{name}: the shards are not one epoch"
        assert abs(sum(parts[0].values()) - sum(parts[1].values())) <= 1, name


def test_sharded_batches_do_not_depend_on_the_process_count():
    """A global batch built by one process from 2 data shards equals the concatenation of what 2
    processes build (one shard each); states merge and restore across the two layouts."""
    from mtl_jax.data.iterator import ShardedBatches

    def shard(k: int, n: int = 2) -> BatchIterator:
        return _iterator(seed=5, batch_size=4, shard=seqio.ShardInfo(k, n))

    one = ShardedBatches({0: shard(0), 1: shard(1)}, 2)
    procs = [ShardedBatches({k: shard(k)}, 2) for k in range(2)]
    for _ in range(3):
        batch = next(one)
        parts = [next(p) for p in procs]
        for key in batch:
            np.testing.assert_array_equal(batch[key], np.concatenate([p[key] for p in parts]))
    # The processes' states, merged, restore the one-process layout exactly (and vice versa).
    merged = {"num_shards": 2, "shards": {}}
    for p in procs:
        merged["shards"].update(json.loads(json.dumps(p.get_state()))["shards"])
    resumed = ShardedBatches({0: shard(0), 1: shard(1)}, 2)
    resumed.set_state(merged)
    expected = _take(one, 2)
    _assert_same_batches(_take(resumed, 2), expected)
    back = ShardedBatches({1: shard(1)}, 2)
    back.set_state(json.loads(json.dumps(one.get_state())))
    np.testing.assert_array_equal(next(back)[F.ENCODER_INPUT_TOKENS],
                                  next(one)[F.ENCODER_INPUT_TOKENS][4:])
    with pytest.raises(ValueError, match="4 shards, this run 2"):
        resumed.set_state({"num_shards": 4, "shards": {}})
