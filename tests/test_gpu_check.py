"""``tools/gpu_check.py --smoke`` runs on a CPU with TensorFlow, seqio and gin made unimportable,
as on the GPU image: every section reports ok, GPU-only ones "skipped: no GPU"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("tensorflow", "seqio", "gin")
# Loaded at interpreter start-up: the path finder no longer sees these top-level packages, so
# ``import gin`` raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None, exactly
# as if they were not installed.
BLOCKER = f"""
import importlib.machinery as _m
_find = _m.PathFinder.find_spec
def _find_spec(fullname, path=None, target=None):
    if fullname.split(".")[0] in {ABSENT!r}:
        return None
    return _find(fullname, path, target)
_m.PathFinder.find_spec = staticmethod(_find_spec)
"""


@pytest.mark.slow
def test_gpu_check_smoke_without_tensorflow_seqio_gin(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a plain machine has
    probe = f"import importlib.util as u; print([u.find_spec(n) for n in {ABSENT!r}])"
    seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout
    assert seen.strip() == "[None, None, None]"
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--smoke",
                          "--output", str(out)], env=env, capture_output=True, text=True,
                         timeout=1500, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["device", "parity", "attention", "bench_mt5", "bench_xlmr",
                              "methods"]
    for name, sec in sections.items():
        expected = "skipped: no GPU" if name == "attention" else "ok"
        assert sec["status"] == expected, (name, sec.get("traceback", sec["status"]))
    for family in ("mt5", "xlmr"):
        parity = sections["parity"]["result"][family]
        assert parity["float32_logits_rel"] < 1e-4
        assert parity["bfloat16_logits_rel"] <= parity["bfloat16_bound"]
    for name in ("bench_mt5", "bench_xlmr"):
        ratio = sections[name]["result"]["ratios"]["run / hf eager"]
        assert ratio["p10"] <= ratio["median"] <= ratio["p90"]
    assert set(sections["methods"]["result"]["ratios_vs_plain"]) == {"method=r3f", "method=lora"}
    summary = (out / "summary.txt").read_text()
    assert "target >= 1.5" in summary and "methods: method=r3f / plain" in summary
