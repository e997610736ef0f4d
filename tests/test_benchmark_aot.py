"""``tools/benchmark.py --aot`` (tools/benchmark_aot.py): the trainer's step compiled ahead of time
from abstract inputs on 8 fake CPU devices, its memory read from XLA, each configuration boxed in
time and memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--models", "mt5_tiny", "--vocab", "512", "--layers", "2", "--batch", "16",
        "--inputs", "64", "--targets", "16"]


def _run(tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / "aot.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--aot", *TINY, *extra,
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compile CPU s" in done.stdout  # the table is printed
    return json.loads(out.read_text())["results"]


def test_a_configuration_over_its_time_limit_is_recorded_not_fatal(tmp_path):
    (row,) = _run(tmp_path, "--scan", "on", "--remat", "full", "--timeout", "1")
    assert row["status"] == "not finished: over 1 s"
    assert row["scan"] is True and row["remat"] == "full"


@pytest.mark.slow
def test_remat_lowers_the_step_temporary_memory(tmp_path):
    """Full remat keeps only each layer's input for the backward pass: XLA's buffer assignment
    needs less temporary memory than without remat, for the same step and parameters."""
    rows = _run(tmp_path, "--scan", "on", "--remat", "none,full")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    none, full = rows
    assert none["params"] == full["params"] > 0
    assert none["argument_bytes"] == full["argument_bytes"]
    assert full["temp_bytes"] < 0.8 * none["temp_bytes"]
    for r in rows:
        assert r["peak_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["temp_bytes"])
        assert r["compile_s"] > 0 and r["lower_s"] > 0
