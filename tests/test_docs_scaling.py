"""The commands of docs/scaling.md that can run on one machine, run as written (2 local
processes x 4 CPU devices): the demo trained by 2 processes told their place by environment
variables, then evaluated by 2 processes told by flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cli_runs as runs
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"


def _tested_blocks() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- tested: ([\w-]+) -->\s*```bash\n(.*?)```", text, re.S))


def _run(block: str, model_dir: Path, port: int) -> None:
    env = runs.env_for(1)
    env.pop("XLA_FLAGS")
    env.update(MODEL_DIR=str(model_dir), PORT=str(port),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, timeout=1200,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_page_marks_its_local_commands():
    assert set(_tested_blocks()) == {"scaling-env", "scaling-flags"}


@pytest.mark.slow
def test_local_two_process_commands_run_as_written(tmp_path):
    blocks = _tested_blocks()
    model_dir = tmp_path / "run"
    _run(blocks["scaling-env"], model_dir, runs.free_port())
    logs = [Path(f"{model_dir}.p{i}.log").read_text() for i in (0, 1)]
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    assert "Validation results at the best step 40" in logs[0]
    assert "Validation results" not in logs[1]
    assert [r["step"] for r in runs.records(model_dir, "train")] == list(range(1, 41))
    report = json.loads((model_dir / "results.json").read_text())

    _run(blocks["scaling-flags"], model_dir, runs.free_port())
    evaluated = json.loads((model_dir / "eval_validation_step40.json").read_text())
    assert evaluated["scores"] == report["scores"]
    assert "wrote" not in Path(f"{model_dir}.eval.p1.log").read_text()
