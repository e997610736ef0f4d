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
    M.register_mixture("toy_temp", names, "temperature", temperature=3.0, fixed={"toy_d": 0.1})
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


# --- the built-in mixtures on the bundled samples -------------------------------------------

XGLUE = ("xnli", "pawsx", "nc", "qadsm", "qam", "wpr")
CONTRACT_MIXTURES = (
    "xglue_t2t",
    "xglue_cls",
    "xglue_mix_t2t",
    "xglue_mix_cls",
    "xglue_mc4_t2t",
    "ctkfacts_t2t",
    "ctkfacts_cls",
    "demo_t2t",
    "demo_cls",
)


def _record_count(task: str) -> int:
    """Training rows read straight from the task's source (not through seqio)."""
    from mtl_jax.data import sources, tasks

    info = tasks.task_info(task)
    if info.dataset == "xnli_mix":
        return len(sources.load_xnli_mix(info.languages))
    return sum(1 for _ in sources.iter_records(info.source_dataset, info.language, "train"))


@pytest.fixture
def bundled():
    from mtl_jax.data import sources

    sources.reset_sources()
    yield sources
    sources.reset_sources()


def test_contract_mixtures_are_registered_seqio_mixtures(bundled):
    for name in CONTRACT_MIXTURES:
        mixture = seqio.get_mixture_or_task(name)
        assert isinstance(mixture, seqio.Mixture), name
        info = M.mixture_info(name)
        assert sorted(t.name for t in mixture.tasks) == sorted(info.tasks)
        assert sum(info.rates) == pytest.approx(1.0)
        assert min(info.rates) > 0
        assert mixture.total_rate == pytest.approx(1.0)
        for task in mixture.tasks:
            assert mixture.get_rate(task) == pytest.approx(info.rate(task.name))
        assert info.evaluation_tasks, name
        for t in info.evaluation_tasks:
            assert "validation" in seqio.get_mixture_or_task(t).splits


@pytest.mark.parametrize("fmt", ["t2t", "cls"])
def test_xglue_rates_are_capped_examples_proportional(fmt, bundled):
    for name, first in (
        (f"xglue_{fmt}", f"xnli_{fmt}_en"),
        (f"xglue_mix_{fmt}", f"xnli_mix_{fmt}"),
    ):
        members = [first, *(f"{d}_{fmt}_en" for d in XGLUE[1:])]
        sizes = np.array([_record_count(t) for t in members], float)
        expected = np.minimum(sizes, 2**17) / np.minimum(sizes, 2**17).sum()
        info = M.mixture_info(name)
        assert info.tasks == tuple(members)
        np.testing.assert_allclose(info.rates, expected)


def test_xglue_mc4_has_a_fixed_small_mc4_share(bundled):
    info = M.mixture_info("xglue_mc4_t2t")
    xglue = M.mixture_info("xglue_t2t")
    mc4 = {t: r for t, r in zip(info.tasks, info.rates, strict=True) if t.startswith("mc4_")}
    assert len(mc4) == 20
    assert sum(mc4.values()) == pytest.approx(M.MC4_TOTAL_SHARE)
    assert list(mc4.values()) == pytest.approx([M.MC4_TOTAL_SHARE / 20] * 20)
    for task, rate in zip(xglue.tasks, xglue.rates, strict=True):
        assert info.rate(task) == pytest.approx((1 - M.MC4_TOTAL_SHARE) * rate)


def test_ctkfacts_and_demo_rates(bundled):
    ctk = M.mixture_info("ctkfacts_t2t")
    assert ctk.tasks == ("ctkfacts_nli_t2t_cs", "ctkfacts_xnli_t2t_cs")
    assert ctk.rates == pytest.approx([0.5, 0.5])
    assert set(ctk.evaluation_tasks) == set(ctk.tasks)
    demo = M.mixture_info("demo_cls")
    assert len(demo.tasks) == 7 and demo.rates == pytest.approx([1 / 7] * 7)


def test_rates_follow_the_configured_source(bundled, tmp_path):
    """Pointing XNLI at another copy (fewer training rows) changes the rates."""
    import shutil

    local = tmp_path / "xnli"
    shutil.copytree(bundled.SAMPLES_DIR / "xnli", local)
    train = local / "multinli" / "multinli.train.en.tsv"
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:31]), encoding="utf-8")  # header + 30 rows
    before = M.mixture_info("xglue_cls")
    bundled.set_source("xnli", str(local))
    after = M.mixture_info("xglue_cls")
    assert after.sizes["xnli_cls_en"] == 30
    sizes = np.array([after.sizes[t] for t in after.tasks], float)
    np.testing.assert_allclose(after.rates, sizes / sizes.sum())
    assert after.rate("xnli_cls_en") < before.rate("xnli_cls_en")
