"""The pre-tokenized cache: identical batches to the seqio path, exact resume, TF-free reading,
and clear errors for a cache that cannot serve a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mtl_jax import features as F
from mtl_jax.data.batching import Shard
from mtl_jax.data.cache_reader import (
    CacheError,
    cached_mixture_batches,
    file_identity,
    open_cache,
    read_manifest,
)
from mtl_jax.data.cache_writer import write_cache
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.data.iterator import mixture_iterator

REPO = Path(__file__).resolve().parents[1]
VOCAB = seqio.PassThroughVocabulary(size=1000)
LENGTHS = {"inputs": 16, "targets": 8}
# name -> (head, examples); sizes differ so the tasks roll over epochs at different times.
TOY = {"test_cache_a": ("ha", 130), "test_cache_b": ("hb", 70), "test_cache_c": ("hc", 41)}
HEADS = ("ha", "hb", "hc")
MIX = "test_cache_mix"


def _ragged(rows):
    return tf.RaggedTensor.from_row_lengths(np.concatenate(rows).astype(np.int32),
                                            [len(r) for r in rows])


def _toy_fn(head: str, n: int):
    """Example i: inputs (1 + i % 11) tokens, targets (1 + i % 3) tokens, all 10 + i."""

    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        idx = np.arange(n) + (0 if split == "train" else 5000)
        return tf.data.Dataset.from_tensor_slices({
            "inputs": _ragged([np.full(1 + i % 11, 10 + i % 900) for i in idx]),
            "targets": _ragged([np.full(1 + i % 3, 10 + i % 900) for i in idx]),
            "idx": idx.astype(np.int32),
            "language": [["en", "de"][i % 2] for i in idx],  # per-example text: dropped
            "task": [head] * n,
        })

    return dataset_fn


def toy_mixture_cache(tmp_path_factory, toy: dict, mix: str, rates: list):
    """Register ``toy``'s seqio tasks (name -> (head, examples)) and mixture ``mix`` with
    ``rates``, write its cache; yield the cache directory, then unregister them."""
    features = {"inputs": seqio.Feature(VOCAB, add_eos=False),
                "targets": seqio.Feature(VOCAB, add_eos=False)}
    for name, (head, n) in toy.items():
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
            _toy_fn(head, n), splits=["train", "validation"],
            num_input_examples={"train": n, "validation": n}),
            output_features=features, preprocessors=[])
    seqio.MixtureRegistry.add(mix, rates)
    root = tmp_path_factory.mktemp("cache") / "toy"
    write_cache(mix, root, LENGTHS)
    yield root
    seqio.MixtureRegistry.remove(mix)
    for name in toy:
        seqio.TaskRegistry.remove(name)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    yield from toy_mixture_cache(tmp_path_factory, TOY, MIX, [
        ("test_cache_a", 5.0), ("test_cache_b", 3.0), ("test_cache_c", 2.0)])


def _pair(root, mode, pack, shard, seed=7, split="train", **kw):
    conv = EncDecConverter(HEADS, pack=pack, passthrough=() if pack else ("idx",))
    uncached = mixture_iterator(MIX, split, LENGTHS, 6, conv, seed, shard_info=shard,
                                batch_mode=mode, **kw)
    cached = cached_mixture_batches(open_cache(root, MIX, LENGTHS, split=split), split, LENGTHS,
                                    6, conv, seed, shard=shard, batch_mode=mode, **kw)
    return uncached, cached


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: feature {k}")


@pytest.mark.parametrize("mode", ["heterogeneous", "homogeneous"])
@pytest.mark.parametrize("pack", [False, True])
def test_cached_and_uncached_batches_are_identical(toy_cache, mode, pack):
    """Same seed -> the same batches on both paths, for each of 2 process shards, across several
    epochs of every task (so across reshuffles); the shards' examples are disjoint."""
    seen = []
    for k in range(2):
        uncached, cached = _pair(toy_cache, mode, pack, Shard(k, 2))
        ids = set()
        for i in range(40):
            a, b = next(uncached), next(cached)
            _same(a, b, f"shard {k} batch {i}")
            if not pack:
                ids |= set(a["idx"].tolist())
        state = cached.get_state()["streams"]
        assert all(s["epoch"] >= 1 for s in state.values()), state
        seen.append(ids)
    if not pack:
        assert not seen[0] & seen[1]


def test_orders_are_permutations_that_change_each_epoch(toy_cache):
    """Each epoch hands out every example of the shard once, in a new order (and the order is
    not the source order)."""
    cached = cached_mixture_batches(open_cache(toy_cache, MIX, LENGTHS), "train", LENGTHS, 1,
                                    EncDecConverter(HEADS, passthrough=("idx",)), seed=3,
                                    shard=Shard(0, 1))
    stream = cached._streams[2]  # test_cache_c, 41 examples
    epochs = [[int(stream.pop()["idx"]) for _ in range(41)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(41))
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_cached_resume_mid_epoch_is_exact_and_states_cross_paths(toy_cache):
    uncached, cached = _pair(toy_cache, "heterogeneous", True, Shard(1, 2), shuffle_window=16)
    for _ in range(23):
        next(uncached), next(cached)
    state = json.loads(json.dumps(cached.get_state()))
    assert state == json.loads(json.dumps(uncached.get_state()))
    assert any(s["position"] % 16 for s in state["streams"].values())  # mid-window
    expected = [next(cached) for _ in range(10)]
    for resumed in _pair(toy_cache, "heterogeneous", True, Shard(1, 2), shuffle_window=16):
        resumed.set_state(state)  # a cached state resumes uncached too, and vice versa
        for i, b in enumerate(expected):
            _same(next(resumed), b, f"resumed batch {i}")


def test_validation_split_ends_after_one_pass(toy_cache):
    uncached, cached = _pair(toy_cache, "heterogeneous", False, Shard(0, 1), split="validation",
                             shuffle=False)
    a, b = list(uncached), list(cached)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        _same(x, y, "validation")


def test_manifest_records_the_mixture(toy_cache):
    m = read_manifest(toy_cache)
    assert m["members"]["train"] == [["test_cache_a", 0.5], ["test_cache_b", 0.3],
                                     ["test_cache_c", 0.2]]
    entry = m["tasks"]["test_cache_c"]
    assert entry["constants"] == {"task": "hc"}
    assert entry["splits"]["train"]["examples"] == 41
    assert "language" in entry["splits"]["train"]["dropped"]
    offsets = np.load(toy_cache / "test_cache_c" / "train" / "inputs.offsets.npy")
    np.testing.assert_array_equal(np.diff(offsets), 1 + np.arange(41) % 11)


def test_reader_imports_without_tensorflow_seqio_or_gin(toy_cache, tmp_path):
    """The cached training path on a host without TF/seqio/gin: a subprocess whose imports of
    them fail builds the same batches as this process."""
    conv = EncDecConverter(HEADS, pack=True)
    cached = cached_mixture_batches(open_cache(toy_cache, MIX, LENGTHS), "train", LENGTHS, 4,
                                    conv, seed=5, shard=Shard(0, 2))
    expected = [next(cached) for _ in range(5)]
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "seqio", "gin", "tensorflow_text"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from mtl_jax.data.batching import Shard
        from mtl_jax.data.cache_reader import cached_mixture_batches, open_cache
        from mtl_jax.data.converters import EncDecConverter
        it = cached_mixture_batches(open_cache({str(toy_cache)!r}, {MIX!r}, {LENGTHS!r}), "train",
                                    {LENGTHS!r}, 4, EncDecConverter({HEADS!r}, pack=True), seed=5,
                                    shard=Shard(0, 2))
        np.savez({str(tmp_path / "out.npz")!r},
                 **{{f"{{i}}/{{k}}": v for i in range(5) for k, v in next(it).items()}})
        assert not any(m.split(".")[0] in ("tensorflow", "seqio", "gin") for m in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for i, b in enumerate(expected):
        for k, v in b.items():
            np.testing.assert_array_equal(got[f"{i}/{k}"], v, err_msg=f"batch {i} {k}")


def test_bad_caches_are_refused_by_name(toy_cache, tmp_path):
    with pytest.raises(CacheError, match="sequence_length"):
        open_cache(toy_cache, MIX, {"inputs": 32, "targets": 8})
    with pytest.raises(CacheError, match="built for mixture 'test_cache_mix'"):
        open_cache(toy_cache, "other_mix", LENGTHS)
    with pytest.raises(CacheError, match=r"lacks tasks \['test_cache_d'\]"):
        open_cache(toy_cache, MIX, LENGTHS,
                   members=[("test_cache_a", .5), ("test_cache_b", .3), ("test_cache_c", .1),
                            ("test_cache_d", .1)])
    with pytest.raises(CacheError, match="rates changed"):
        open_cache(toy_cache, MIX, LENGTHS,
                   members=[("test_cache_a", .6), ("test_cache_b", .2), ("test_cache_c", .2)])
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "nowhere", MIX, LENGTHS)
    # A copy with a task's array gone, then one whose source file changed after caching.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(toy_cache, broken)
    (broken / "test_cache_b" / "train" / "targets.offsets.npy").unlink()
    with pytest.raises(CacheError, match="test_cache_b.*targets.offsets.npy is missing"):
        open_cache(broken, MIX, LENGTHS)
    stale = tmp_path / "stale"
    shutil.copytree(toy_cache, stale)
    source = tmp_path / "source.tsv"
    source.write_text("a\n")
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["tasks"]["test_cache_a"]["splits"]["train"]["source_files"] = [file_identity(source)]
    (stale / "manifest.json").write_text(json.dumps(manifest))
    open_cache(stale, MIX, LENGTHS)  # unchanged source: fine
    source.write_text("a\nb\n")
    with pytest.raises(CacheError, match=f"stale: task 'test_cache_a' .*{source.name}"):
        open_cache(stale, MIX, LENGTHS)


def test_writer_refuses_what_it_cannot_reproduce(toy_cache, tmp_path):
    from mtl_jax.data import mixtures  # noqa: F401  (registers the project's tasks)

    with pytest.raises(CacheError, match="exists"):
        write_cache(MIX, toy_cache, LENGTHS)
    with pytest.raises(CacheError, match="mc4_t2t_en' is span corruption"):
        write_cache("mc4_t2t_en", tmp_path / "mc4", LENGTHS)
    assert not (tmp_path / "mc4").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-written


def test_real_bundled_mixture_cached_equals_uncached(tmp_path):
    """The bundled CTKFacts classification mixture with the real XLM-R demo tokenizer: the cache
    CLI's library call, then identical batches on 2 shards."""
    from mtl_jax.data import mixtures, sources, tasks

    if not sources.SAMPLES_DIR.is_dir():
        pytest.skip(f"bundled samples not generated yet at {sources.SAMPLES_DIR}")
    lengths = {"inputs": 48}
    write_cache("ctkfacts_cls", tmp_path / "c", lengths, splits=["train"])
    members = [t.name for t in seqio.get_mixture_or_task("ctkfacts_cls").tasks]
    heads = tuple(sorted({tasks.task_info(n).head for n in members}))
    conv = ClassificationConverter(heads)
    cache = open_cache(tmp_path / "c", "ctkfacts_cls", lengths,
                       members=[(t, mixtures.mixture_info("ctkfacts_cls").rate(t))
                                for t in members])
    for k in range(2):
        a = mixture_iterator("ctkfacts_cls", "train", lengths, 8, conv, seed=1,
                             shard_info=Shard(k, 2))
        b = cached_mixture_batches(cache, "train", lengths, 8, conv, seed=1, shard=Shard(k, 2))
        for i in range(6):
            x, y = next(a), next(b)
            _same(x, y, f"shard {k} batch {i}")
        assert set(np.unique(x[F.LABELS])) <= {0, 1, 2}


def _cache_cli(tmp_path: Path, *extra: str) -> Path:
    import cli_runs as runs

    from mtl_jax import cache as cache_cli

    out = tmp_path / "cache"
    params = [f"--gin_param={p}" for p in [*runs.TINY, *extra]]
    assert cache_cli.main(["--gin_file=demo_mt5.gin", *params, f"--output={out}",
                           "--splits", "train"]) == 0
    return out


def test_train_refuses_a_cache_of_other_lengths_before_writing(tmp_path, capsys):
    """A cache built with other sequence lengths stops the run (exit 2) naming the binding and
    both lengths; the model directory is never created."""
    import cli_runs as runs

    from mtl_jax import train as train_cli

    out = _cache_cli(tmp_path, "TrainConfig.sequence_length={'inputs': 32, 'targets': 4}")
    model_dir = tmp_path / "run"
    code = train_cli.main(runs.cli_args(model_dir, f"TrainConfig.cache_dir='{out}'"))
    assert code == 2
    err = capsys.readouterr().err
    assert "TrainConfig.cache_dir" in err and "sequence_length" in err and "'inputs': 32" in err
    assert not model_dir.exists()


@pytest.mark.slow
def test_cached_training_run_equals_the_uncached_one(tmp_path):
    """python -m mtl_jax.cache, then the same tiny run with and without TrainConfig.cache_dir:
    identical losses and gradient norms at every step."""
    import cli_runs as runs

    out = _cache_cli(tmp_path)
    steps = ["TrainConfig.num_steps=6", "TrainConfig.eval_every=6", "TrainConfig.pack=True"]
    ref, cached = tmp_path / "ref", tmp_path / "cached"
    assert runs.launch_train(ref, *steps).wait(timeout=900) == 0
    assert runs.launch_train(cached, *steps, f"TrainConfig.cache_dir='{out}'").wait(
        timeout=900) == 0
    a, b = runs.records(ref, "train"), runs.records(cached, "train")
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert (x["loss"], x["grad_norm"]) == (y["loss"], y["grad_norm"]), x["step"]
