"""Example counts of file-backed tasks (``RecordsSource.num_input_examples``) are read once per
file version: memoised in the process and in a small JSON cache, recounted when a file changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import seqio

from mtl_jax.data import sources, tasks


@pytest.fixture
def counted(monkeypatch, tmp_path: Path):
    """Every full read a count makes, as a list of (task, split); counts cached under tmp_path."""
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_COUNTS", {})
    reads: list[tuple[str, str]] = []
    real = tasks.source_examples

    def spy(name: str, split: str, **kw):
        reads.append((name, split))
        return real(name, split, **kw)

    monkeypatch.setattr(tasks, "source_examples", spy)
    yield reads
    sources.reset_sources()


def test_count_is_read_once_and_follows_the_file(shared_data: Path, tmp_path: Path, counted,
                                                 monkeypatch):
    root = tmp_path / "xnli"
    root.mkdir()
    dev = root / "dev-de.tsv"
    shutil.copyfile(shared_data / "xnli" / "dev-de.tsv", dev)
    direct = sum(1 for line in dev.read_text(encoding="utf-8").splitlines() if line.strip())
    sources.set_source("xnli", str(root))
    task = seqio.get_mixture_or_task("xnli_cls_de")

    assert task.num_input_examples("validation") == direct == 2490
    assert task.num_input_examples("validation") == direct
    assert counted == [("xnli_cls_de", "validation")]  # the second call did not read

    # A new process (empty memo) takes the count from the cache file, without reading.
    cache = tmp_path / "cache" / sources.COUNTS_FILE
    assert list(json.loads(cache.read_text()).values()) == [direct]
    monkeypatch.setattr(sources, "_COUNTS", {})
    assert task.num_input_examples("validation") == direct and len(counted) == 1

    # A changed file is a new identity: counted again, in this process and in the next.
    first = dev.read_text(encoding="utf-8").splitlines()[0]
    with dev.open("a", encoding="utf-8") as f:
        f.write(first + "\n")
    assert task.num_input_examples("validation") == direct + 1 and len(counted) == 2
    monkeypatch.setattr(sources, "_COUNTS", {})
    assert task.num_input_examples("validation") == direct + 1 and len(counted) == 2

    # MTL_JAX_CACHE_DIR="" keeps counts in memory only; an unreadable cache file is ignored.
    monkeypatch.setenv(sources.CACHE_DIR_ENV, "")
    monkeypatch.setattr(sources, "_COUNTS", {})
    assert task.num_input_examples("validation") == direct + 1 and len(counted) == 3
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(tmp_path / "cache"))
    cache.write_text("{not json")
    monkeypatch.setattr(sources, "_COUNTS", {})
    assert task.num_input_examples("validation") == direct + 1 and len(counted) == 4
    assert list(json.loads(cache.read_text()).values()) == [direct + 1]
