"""Test-wide setup: 8 fake CPU devices (set before jax is imported), the shared real data, and
the opt-in `fast_compiles` fixture. Shared helper functions live in `helpers.py`."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MTL_JAX_CACHE_DIR", "")  # record counts in memory only (test_record_counts)

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MTL_JAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dev sets of ``../shared/data`` (present in CI); skip with a reason elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set MTL_JAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def fast_compiles():
    """``jax_disable_most_optimizations`` for one module, restored afterwards: XLA compile time
    dominates on 2 cores (the sharding passes still run). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("fast_compiles")``."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def clean_registry():
    """Datasets and mixtures a test registers are removed afterwards, sources reset."""
    from mtl_jax.data import mixtures, registry, sources

    before_datasets = set(registry.dataset_names())
    before_mixtures = set(mixtures.mixture_names())
    yield
    for name in set(registry.dataset_names()) - before_datasets:
        registry.unregister_dataset(name)
    for name in set(mixtures.mixture_names()) - before_mixtures:
        mixtures.remove_mixture(name)
    sources.reset_sources()
