"""The docs cannot drift from the code: every relative link resolves, and every shell block a page
marks with ``<!-- tested: NAME -->`` (or ``<!-- tested-slow: NAME -->``) runs as written.

A marked block runs with ``bash -euo pipefail`` in a fresh temporary directory (``$WORK``, also the
working directory, with ``tools/`` linked in) with the project's Python first on ``PATH``; it carries its own checks (``test``,
``grep``), so a block that stops doing what the page says fails here. docs/scaling.md's blocks need
two processes and have their own test (tests/test_docs_scaling.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"<!-- (tested|tested-slow): ([\w-]+) -->\s*```bash\n(.*?)```", re.S)
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
OWN_TESTS = {"scaling-env", "scaling-flags"}


def _blocks() -> list[tuple[str, str, str, str]]:
    """``(page, kind, name, script)`` of every marked block."""
    out = []
    for page in PAGES:
        for kind, name, script in _BLOCK.findall(page.read_text()):
            if name not in OWN_TESTS:
                out.append((page.name, kind, name, script))
    return out


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in _LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_block_names_are_unique():
    names = [name for _, _, name, _ in _blocks()]
    assert len(names) == len(set(names)), names


def _params():
    for page, kind, name, script in _blocks():
        marks = [pytest.mark.slow] if kind == "tested-slow" else []
        yield pytest.param(script, id=f"{page}:{name}", marks=marks)


@pytest.mark.parametrize("script", list(_params()))
def test_marked_block_runs_as_written(script, tmp_path):
    (tmp_path / "tools").symlink_to(ROOT / "tools")  # pages run `python tools/...` from the root
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(WORK=str(tmp_path), PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          timeout=1500, capture_output=True, text=True)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
