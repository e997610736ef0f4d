"""tf.data pipelines are read without autotuning: its per-iterator model thread made destroying
an iterator wait for the thread's current sleep (up to a minute), which stalled training at every
epoch of a small task (mtl_jax/data/tfdata.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from mtl_jax.data.tfdata import numpy_iterator, untuned

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_jax"


def test_untuned_turns_autotuning_off_and_keeps_the_elements():
    ds = tf.data.Dataset.range(10).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    assert ds.options().autotune.enabled is not False
    assert untuned(ds).options().autotune.enabled is False
    np.testing.assert_array_equal(list(numpy_iterator(ds)), np.arange(10) * 2)


def test_every_pipeline_of_the_package_is_read_through_numpy_iterator():
    """A new ``ds.as_numpy_iterator()`` elsewhere would bring the stalls back."""
    direct = re.compile(r"\.as_numpy_iterator\(|tfds\.as_numpy\(")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "tfdata.py"
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if direct.search(line) and not line.lstrip().startswith("#")]
    assert not offenders, offenders
