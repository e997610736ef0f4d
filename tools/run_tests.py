"""Run the test suite: the fast stage (``-m "not slow"``) by default, the slow stage on request.

pytest's exit code 5 ("no tests collected") counts as success so an empty stage never fails CI.
``--slow`` (or ``MTL_JAX_SLOW=1``) runs both stages; ``--slow-only`` only the slow one (CI's second
stage). Other arguments go to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _pytest(*args: str) -> int:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", *args])
    return 0 if code == 5 else code


def main(argv: list[str]) -> int:
    slow_only = "--slow-only" in argv
    slow = slow_only or "--slow" in argv or os.environ.get("MTL_JAX_SLOW") == "1"
    extra = [a for a in argv if a not in ("--slow", "--slow-only")]
    code = 0 if slow_only else _pytest("-m", "not slow", *extra)
    if code == 0 and slow:
        code = _pytest("-m", "slow", *extra)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
