"""Training batches from a pre-tokenized cache (``python -m mtl_jax.cache``), without TF or seqio.

A cache directory holds ``manifest.json`` and, per task and split, NumPy arrays read as memmaps:
``{feature}.tokens.npy`` (every example's token ids, concatenated) with ``{feature}.offsets.npy``
(``n + 1`` int64 boundaries) for a token feature, ``{feature}.npy`` (``[n]``) for a scalar one.
Features that are the same string on every example of a task (its head name, ``task``) live in
the manifest. Memmaps were chosen over ArrayRecord on measured read speed (docs/cache.md).

The examples of shard k of n are rows k, k+n, ... of the arrays: the same examples, in the same
order, that seqio yields for that shard (it shards a one-file source every n-th record, and the
cache holds one example per record; the writer checks). Everything else (windowed shuffle, task
choice, packing, exact resume) is :mod:`mtl_jax.data.batching`, shared with the seqio path, so a
cached and an uncached run with the same seed see the same batches.

This module and everything it imports run on a host without TensorFlow, seqio or gin
(tests/test_cache.py imports it with those blocked).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl_jax.data.batching import (
    SHUFFLE_WINDOW,
    MixtureBatches,
    Shard,
    ShardedBatches,
    shard_indices,
    sharded_batches,
)
from mtl_jax.data.converters import FeatureConverter
from mtl_jax.data.rates import AnnealedRates

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "mtl_jax.cache"
VERSION = 1


class CacheError(ValueError):
    """A cache that cannot serve this run; the message names the task, split or file."""


def file_identity(path: Path) -> list:
    """What a source file's staleness is judged by: [path, size, mtime_ns]."""
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_dir(root: Path, task: str, split: str) -> Path:
    return Path(root) / task / split


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise CacheError(f"no cache at {root}: {path} does not exist (build one with "
                         "python -m mtl_jax.cache --mixture=NAME --output=DIR)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is not valid JSON ({e}): rebuild the cache") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r}, this mtl_jax reads {FORMAT!r} version "
                         f"{VERSION}: rebuild the cache")
    return manifest


class CachedTask:
    """One task split of a cache: memmapped arrays, checked against the manifest on open."""

    def __init__(self, root: Path, task: str, split: str, entry: Mapping[str, Any],
                 constants: Mapping[str, str]):
        self.name, self.split = task, split
        self.num_examples = int(entry["examples"])
        self.constants = dict(constants)
        where = split_dir(root, task, split)
        self.tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scalars: dict[str, np.ndarray] = {}
        for feature in entry["token_features"]:
            tokens = _load(where / f"{feature}.tokens.npy", task, split)
            offsets = _load(where / f"{feature}.offsets.npy", task, split)
            if offsets.shape != (self.num_examples + 1,) or int(offsets[-1]) != tokens.size:
                raise CacheError(f"cache task '{task}' split '{split}': {where}/{feature}.* hold "
                                 f"{offsets.size - 1} examples / {tokens.size} tokens, the "
                                 f"manifest {self.num_examples}: rebuild the cache")
            self.tokens[feature] = (tokens, offsets)
        for feature in entry["scalar_features"]:
            values = _load(where / f"{feature}.npy", task, split)
            if values.shape != (self.num_examples,):
                raise CacheError(f"cache task '{task}' split '{split}': {where}/{feature}.npy has "
                                 f"shape {values.shape}, the manifest {self.num_examples} "
                                 "examples: rebuild the cache")
            self.scalars[feature] = values

    def examples(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The examples at ``rows`` (token features as views into the memmaps)."""
        columns: dict[str, Sequence[Any]] = {}
        for k, (tokens, offsets) in self.tokens.items():
            starts, ends = offsets[rows].tolist(), offsets[rows + 1].tolist()
            columns[k] = [tokens[a:b] for a, b in zip(starts, ends, strict=True)]
        for k, values in self.scalars.items():
            columns[k] = values[rows]
        return [{**self.constants, **{k: c[j] for k, c in columns.items()}}
                for j in range(len(rows))]


def _load(path: Path, task: str, split: str) -> np.ndarray:
    if not path.is_file():
        raise CacheError(f"cache task '{task}' split '{split}': {path} is missing: rebuild the "
                         "cache")
    # A plain ndarray view of the memmap: slicing an np.memmap costs several times more.
    return np.asarray(np.load(path, mmap_mode="r"))


class CachedSource:
    """A cached task's examples on one data shard, in source order (an ExampleSource)."""

    def __init__(self, task: CachedTask, shard: Shard):
        self.name = task.name
        self._task = task
        self._rows = shard_indices(task.num_examples, shard)

    def read(self, epoch: int, start: int, count: int) -> list[dict[str, Any]]:
        del epoch  # every epoch reads the same examples; the order is the caller's
        return self._task.examples(self._rows[start:start + count])


class Cache:
    """An opened cache directory, checked against what a run needs (see :func:`open_cache`)."""

    def __init__(self, root: str | Path, manifest: Mapping[str, Any]):
        self.root = Path(root)
        self.manifest = dict(manifest)
        self._tasks: dict[tuple[str, str], CachedTask] = {}

    @property
    def mixture(self) -> str:
        return self.manifest["mixture"]

    def members(self, split: str) -> list[tuple[str, float]]:
        members = self.manifest["members"].get(split)
        if members is None:
            raise CacheError(f"cache {self.root} (mixture '{self.mixture}') holds the splits "
                             f"{sorted(self.manifest['members'])}, not '{split}': rebuild it "
                             f"with --splits={split}")
        return [(t, float(r)) for t, r in members]

    def task(self, name: str, split: str) -> CachedTask:
        if (name, split) not in self._tasks:
            entry = self.manifest["tasks"].get(name, {})
            if split not in entry.get("splits", {}):
                raise CacheError(f"cache {self.root} has no task '{name}' split '{split}' "
                                 f"(mixture '{self.mixture}'): rebuild the cache")
            self._tasks[(name, split)] = CachedTask(self.root, name, split,
                                                    entry["splits"][split],
                                                    entry.get("constants", {}))
        return self._tasks[(name, split)]


def open_cache(
    root: str | Path,
    mixture: str,
    sequence_length: Mapping[str, int],
    split: str = "train",
    members: Sequence[tuple[str, float]] | None = None,
    vocabularies: Mapping[str, str | Path] | None = None,
) -> Cache:
    """Open a cache and check it serves this run, or raise :class:`CacheError` naming why.

    Checked: the mixture, the sequence lengths, ``members`` ((task, rate) of the mixture now,
    when the caller can tell: missing or extra tasks are named, changed rates too), every member's arrays (present, sizes as
    the manifest says), every source file the cache was built from that exists on this host
    (same size and modification time; absent files are not checked: an accelerator host need not
    hold the raw data), and the vocabulary files given as ``{format: path}`` (same sha256).
    """
    manifest = read_manifest(root)
    cache = Cache(root, manifest)
    if manifest["mixture"] != mixture:
        raise CacheError(f"cache {root} was built for mixture '{manifest['mixture']}', this run "
                         f"trains on '{mixture}'")
    want = {k: int(v) for k, v in sequence_length.items()}
    have = {k: int(v) for k, v in manifest["sequence_length"].items()}
    if want != have:
        raise CacheError(f"cache {root} was built with sequence_length {have}, this run uses "
                         f"{want}: rebuild it (python -m mtl_jax.cache ... with this run's gin "
                         "files)")
    cached = dict(cache.members(split))
    if members is not None:
        total = sum(r for _, r in members)
        now = {t: r / total for t, r in members}
        missing, extra = sorted(set(now) - set(cached)), sorted(set(cached) - set(now))
        if missing or extra:
            raise CacheError(f"cache {root} (mixture '{mixture}', split '{split}') lacks tasks "
                             f"{missing} and has tasks {extra} the mixture does not have: "
                             "rebuild the cache")
        changed = {t: (cached[t], r) for t, r in now.items() if not np.isclose(cached[t], r)}
        if changed:
            raise CacheError(f"cache {root} is stale: the mixing rates changed (cached, now) "
                             f"{changed} (the sources' sizes changed?): rebuild the cache")
    for name in cached:
        cache.task(name, split)  # opens and checks the arrays
        for ident in manifest["tasks"][name]["splits"][split].get("source_files", []):
            path = Path(ident[0])
            if path.exists() and file_identity(path) != list(ident):
                raise CacheError(f"cache {root} is stale: task '{name}' split '{split}' was "
                                 f"tokenized from {path}, which has changed since (size/mtime "
                                 f"{ident[1:]} -> {file_identity(path)[1:]}): rebuild the cache")
    for fmt, path in (vocabularies or {}).items():
        recorded = manifest.get("vocabularies", {}).get(fmt)
        if recorded is not None and recorded["sha256"] != file_sha256(Path(path)):
            raise CacheError(f"cache {root} was tokenized with the {fmt} vocabulary "
                             f"{recorded['file']}, this run uses a different one ({path}): "
                             "rebuild the cache")
    return cache


def cached_mixture_batches(
    cache: Cache,
    split: str,
    sequence_length: Mapping[str, int],
    batch_size: int,
    converter: FeatureConverter,
    seed: int,
    shard: Shard | None = None,
    batch_mode: str = "heterogeneous",
    shuffle: bool = True,
    repeat: bool | None = None,
    shuffle_window: int = SHUFFLE_WINDOW,
    rate_schedule: AnnealedRates | None = None,
) -> MixtureBatches:
    """The cached counterpart of :func:`mtl_jax.data.iterator.mixture_iterator`."""
    shard = shard or Shard(0, 1)
    members = cache.members(split)
    return MixtureBatches(
        [CachedSource(cache.task(t, split), shard) for t, _ in members], [r for _, r in members],
        split, sequence_length, batch_size, converter, seed, shard=shard, batch_mode=batch_mode,
        shuffle=shuffle, repeat=repeat, shuffle_window=shuffle_window,
        rate_schedule=rate_schedule,
    )


def sharded_cache_iterator(
    cache: Cache,
    sequence_length: Mapping[str, int],
    batch_size: int,
    rows: tuple[int, int],
    num_shards: int,
    converter: FeatureConverter,
    seed: int,
    batch_mode: str = "heterogeneous",
    rate_schedule: AnnealedRates | None = None,
) -> ShardedBatches:
    """The cached counterpart of :func:`mtl_jax.data.iterator.sharded_mixture_iterator`."""
    return sharded_batches(
        lambda shard, rows_per_shard: cached_mixture_batches(
            cache, "train", sequence_length, rows_per_shard, converter, seed, shard=shard,
            batch_mode=batch_mode, rate_schedule=rate_schedule),
        batch_size, rows, num_shards)
