"""Mixtures: rates from the rules on the members' sizes, fixed shares, seqio's view, built-ins."""

from __future__ import annotations

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from mtl_jax.data import mixtures as M  # noqa: E402

TOY_SIZES = {"toy_a": 7, "toy_b": 40, "toy_c": 300, "toy_d": 12}


def _toy_task(name: str, n: int, declare_size: bool) -> None:
    """A seqio task with ``n`` train examples (size declared to seqio or not: both paths)."""

    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        count = n if split == "train" else 3
        ids = tf.range(count, dtype=tf.int32)
        return tf.data.Dataset.from_tensor_slices({"inputs": tf.stack([ids, ids], axis=1)})

    vocab = seqio.PassThroughVocabulary(size=1000, eos_id=1)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn,
            splits=("train", "validation"),
            num_input_examples={"train": n, "validation": 3} if declare_size else None,
        ),
        preprocessors=[],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
    )


@pytest.fixture(scope="module")
def toy_tasks():
    for i, (name, n) in enumerate(TOY_SIZES.items()):
        _toy_task(name, n, declare_size=bool(i % 2))
    yield TOY_SIZES
    for name in TOY_SIZES:
        seqio.TaskRegistry.remove(name)


def test_num_examples_counts_both_ways(toy_tasks):
    for name, n in toy_tasks.items():
        assert M.num_examples(name, "train") == n
        assert M.num_examples(name, "validation") == 3
    with pytest.raises(KeyError, match="toy_a.*no split 'test'"):
        M.num_examples("toy_a", "test")


def test_examples_proportional_rates_and_seqio_agree(toy_tasks):
    names = list(toy_tasks)
    mixture = M.register_mixture("toy_prop", names, "examples_proportional", cap=50)
    info = M.mixture_info("toy_prop")
    capped = np.minimum([toy_tasks[t] for t in names], 50).astype(float)
    expected = capped / capped.sum()
    np.testing.assert_allclose(info.rates, expected)
    assert sum(info.rates) == pytest.approx(1.0)
    assert info.sizes == toy_tasks
    # What seqio (and so the batch iterator's mixture_iterator) sees.
    assert mixture is seqio.get_mixture_or_task("toy_prop")
    seqio_rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert seqio_rates == pytest.approx(dict(zip(names, expected, strict=True)))
    assert mixture.total_rate == pytest.approx(1.0)


def test_temperature_and_fixed_shares(toy_tasks):
    names = ["toy_a", "toy_b", "toy_c"]
    M.register_mixture(
        "toy_temp", names, "temperature", temperature=3.0, fixed={"toy_d": 0.1}
    )
    info = M.mixture_info("toy_temp")
    p = np.array([toy_tasks[t] for t in names], float)
    q = (p / p.sum()) ** (1 / 3)
    expected = [*(0.9 * q / q.sum()), 0.1]
    assert info.tasks == (*names, "toy_d")
    np.testing.assert_allclose(info.rates, expected)
    assert info.rate("toy_d") == pytest.approx(0.1)
    assert "temperature" in info.rule and "10%" in info.rule
    with pytest.raises(KeyError, match="not a member"):
        info.rate("toy_zzz")


def test_unimax_and_equal_and_explicit(toy_tasks):
    names = list(toy_tasks)
    M.register_mixture("toy_unimax", names, "unimax", budget=200, max_epochs=2)
    # smallest first: 7 -> min(50, 14)=14; 12 -> min(62, 24)=24; 40 -> min(81, 80)=80; 300 -> 82
    alloc = {"toy_a": 14, "toy_d": 24, "toy_b": 80, "toy_c": 82}
    info = M.mixture_info("toy_unimax")
    assert dict(zip(info.tasks, info.rates, strict=True)) == pytest.approx(
        {t: v / 200 for t, v in alloc.items()}
    )
    M.register_mixture("toy_equal", names, "equal")
    assert M.mixture_info("toy_equal").rates == pytest.approx([0.25] * 4)
    M.register_mixture("toy_explicit", names, "explicit", weights=[1, 1, 2, 0])
    assert M.mixture_info("toy_explicit").rates == pytest.approx([0.25, 0.25, 0.5, 0.0])


def test_registration_errors(toy_tasks):
    with pytest.raises(ValueError, match="unknown rate rule"):
        M.register_mixture("toy_bad", ["toy_a"], "proportional")
    with pytest.raises(ValueError, match="sum below 1"):
        M.register_mixture("toy_bad", ["toy_a"], "equal", fixed={"toy_b": 1.0})
    with pytest.raises(ValueError, match="more than once"):
        M.register_mixture("toy_bad", ["toy_a", "toy_b"], "equal", fixed={"toy_a": 0.1})
    with pytest.raises(KeyError, match="unknown mixture 'toy_nope'"):
        M.mixture_info("toy_nope")
    M.register_mixture("toy_bad_kw", ["toy_a"], "temperature")  # T missing: found when used
    with pytest.raises(TypeError, match="toy_bad_kw|temperature"):
        M.mixture_info("toy_bad_kw")
