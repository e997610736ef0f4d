"""Reading tf.data pipelines into NumPy without tf.data's autotuning.

Autotuning starts one model thread per iterator that sleeps between rounds, each sleep twice the
last, up to a minute; destroying the iterator waits for that sleep to end. The training data path
reopens a task's pipeline at every epoch of a small task, so with autotuning on the mT5 demo
stalled for up to a minute at a time (its 600 steps took over 12 minutes instead of 3). Our
pipelines are small per-example maps that do not need tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import tensorflow as tf


def untuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data autotuning off (no model thread to wait for on teardown)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[Any]:
    """``untuned(ds).as_numpy_iterator()``."""
    return untuned(ds).as_numpy_iterator()
