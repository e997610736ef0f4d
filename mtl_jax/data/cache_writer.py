"""Write a pre-tokenized cache of a mixture's tasks (read back by :mod:`cache_reader`, no TF).

Each task split is read once through seqio exactly as the uncached trainer reads it
(:class:`mtl_jax.data.iterator.SeqioSource`: ``get_dataset(shuffle=False)``, whole split, source
order) and written as NumPy arrays (see :mod:`mtl_jax.data.cache_reader` for the layout). The
cache is written to a temporary directory beside ``output`` and renamed into place at the end,
so a failed or interrupted build leaves nothing half-written behind.

What cannot be cached, refused with a message naming the task:
- span corruption (mC4): its noise is drawn inside the TF graph from seqio's per-epoch seed, so a
  fixed tokenization cannot reproduce the uncached stream; such mixtures train uncached;
- a task whose preprocessors drop or split records (examples != source records): seqio shards
  records, the cache shards examples, and the two agree only one-to-one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seqio

from mtl_jax.data import mixtures, sources, tasks
from mtl_jax.data.batching import Shard
from mtl_jax.data.cache_reader import (
    FORMAT,
    MANIFEST,
    VERSION,
    CacheError,
    file_identity,
    file_sha256,
    split_dir,
)
from mtl_jax.data.iterator import SeqioSource, get_task, mixture_members

log = logging.getLogger(__name__)

READ_CHUNK = 10_000


def _source_files(task: str, split: str) -> list[list]:
    """Identities of the local files a project task's split is read from (staleness check)."""
    try:
        info = tasks.task_info(task)
    except KeyError:
        return []  # a task registered outside the project: no file list to check
    spec = sources.get_source(info.source_dataset)
    if spec.kind == "hub":
        return []
    return [file_identity(p) for lang in info.languages
            for p in sources.locate(info.source_dataset, lang, split, spec).paths]


def _check_cacheable(task: str) -> None:
    try:
        kind = tasks.task_info(task).kind
    except KeyError:
        return
    if kind == "span_corruption":
        raise CacheError(f"task '{task}' is span corruption: its noise is drawn in TensorFlow from "
                         "the run's seed, which a fixed cache cannot reproduce; train mixtures "
                         "with mC4 uncached (leave TrainConfig.cache_dir unset)")


def _write_split(task: str, split: str, sequence_length: Mapping[str, int], where: Path
                 ) -> dict[str, Any]:
    """Tokenize one task split into ``where``; the manifest entry (and the task's constants)."""
    source = SeqioSource(task, split, sequence_length, seed=0, shard=Shard(0, 1))
    columns: dict[str, list] = {}
    n = 0
    while chunk := source.read(0, n, READ_CHUNK):
        for ex in chunk:
            for k, v in ex.items():
                columns.setdefault(k, []).append(v)
        n += len(chunk)
    expected = mixtures.num_examples(task, split)
    if expected != n:
        raise CacheError(f"task '{task}' split '{split}': its preprocessors made {n} examples of "
                         f"{expected} source records; the cache needs one example per record "
                         "(seqio shards records, the cache examples)")
    where.mkdir(parents=True)
    entry: dict[str, Any] = {"examples": n, "token_features": [], "scalar_features": [],
                             "dropped": [], "tokens": {}}
    constants: dict[str, str] = {}
    for k, values in sorted(columns.items()):
        first = np.asarray(values[0])
        if first.dtype.kind in "SUO":
            texts = {bytes(v).decode() if isinstance(v, bytes | np.bytes_) else str(v)
                     for v in values}
            if len(texts) == 1:
                constants[k] = texts.pop()
            else:
                entry["dropped"].append(k)  # per-example text (e.g. language): no converter reads it
        elif first.ndim == 1:
            lengths = np.fromiter((len(v) for v in values), np.int64, count=n)
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            tokens = np.concatenate(values).astype(np.int32) if n else np.zeros(0, np.int32)
            np.save(where / f"{k}.tokens.npy", tokens)
            np.save(where / f"{k}.offsets.npy", offsets)
            entry["token_features"].append(k)
            entry["tokens"][k] = int(tokens.size)
        elif first.ndim == 0:
            np.save(where / f"{k}.npy", np.asarray(values, dtype=first.dtype))
            entry["scalar_features"].append(k)
        else:
            raise CacheError(f"task '{task}' split '{split}': feature '{k}' has rank "
                             f"{first.ndim}; the cache holds token sequences and scalars")
    entry["source_files"] = _source_files(task, split)
    return {"entry": entry, "constants": constants}


def write_cache(
    mixture: str,
    output: str | Path,
    sequence_length: Mapping[str, int],
    splits: Sequence[str] | None = None,
    vocabularies: Mapping[str, str | Path] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize every member task of ``mixture`` (the ``splits`` asked, default all of each
    task's splits) once into ``output``; returns the manifest.

    ``vocabularies`` ({format: spm file}) are recorded by sha256 so that a run with another
    vocabulary is refused. ``output`` must not exist unless ``overwrite``.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise CacheError(f"{output} exists: choose a new directory (or pass --overwrite)")
    provider = seqio.get_mixture_or_task(mixture)
    all_tasks = [provider.name] if isinstance(provider, seqio.Task) else \
        [t.name for t in provider.tasks]
    if splits is None:
        splits = sorted({s for t in all_tasks for s in get_task(t).splits})
    members: dict[str, list] = {}
    for split in splits:
        try:
            kept = mixture_members(mixture, split)
            total = sum(r for _, r in kept)
            members[split] = [[t, r / total] for t, r in kept]  # normalised
        except ValueError:
            log.info("mixture %s has no task with split %s: not cached", mixture, split)
    if not members:
        raise CacheError(f"mixture '{mixture}' has none of the splits {list(splits)}")
    wanted = {t for m in members.values() for t, _ in m}
    for t in sorted(wanted):
        _check_cacheable(t)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        task_entries: dict[str, Any] = {}
        for split, split_members in members.items():
            for t, _ in split_members:
                start = time.perf_counter()
                out = _write_split(t, split, sequence_length, split_dir(tmp, t, split))
                entry = task_entries.setdefault(t, {"constants": out["constants"], "splits": {}})
                entry["splits"][split] = out["entry"]
                log.info("cached %s %s: %d examples in %.1f s", t, split, out["entry"]["examples"],
                         time.perf_counter() - start)
        manifest = {
            "format": FORMAT, "version": VERSION, "mixture": mixture,
            "sequence_length": {k: int(v) for k, v in sorted(sequence_length.items())},
            "members": members, "tasks": task_entries,
            "vocabularies": {fmt: {"file": str(Path(p).absolute()), "sha256": file_sha256(Path(p))}
                             for fmt, p in (vocabularies or {}).items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
