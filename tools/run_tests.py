"""Run the test suite: the fast stage (``-m "not slow"``) by default, the slow stage on request.

pytest's exit code 5 ("no tests collected") counts as success so an empty stage never fails CI.
``--slow`` (or ``MTL_JAX_SLOW=1``) runs all three stages; ``--slow-only`` only the slow tests
without the demo seeds (CI's second stage), ``--seeds-only`` the demos on seeds 1-4 (its third).
Other arguments go to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _pytest(*args: str) -> int:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", *args])
    return 0 if code == 5 else code


def main(argv: list[str]) -> int:
    stages = {"--slow-only": ("slow and not seeds",), "--seeds-only": ("seeds",)}
    chosen = [flag for flag in stages if flag in argv]
    slow = "--slow" in argv or os.environ.get("MTL_JAX_SLOW") == "1"
    extra = [a for a in argv if a not in ("--slow", *stages)]
    if chosen:
        markers = [m for flag in chosen for m in stages[flag]]
    else:
        markers = ["not slow", "slow and not seeds", "seeds"] if slow else ["not slow"]
    code = 0
    for marker in markers:
        code = _pytest("-m", marker, *extra)
        if code != 0:
            break
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
