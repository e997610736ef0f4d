"""Label conventions shared by the data layer (targets) and evaluation (parsing predictions).

Pure Python, no framework imports, so both sides of the layering can use one definition: a
regression score is written as text on a 0.2 grid for text-to-text models (T5's STS-B convention)
and read back from generated text, an unparsable text scoring as T5 scores it (-1.0).
"""

from __future__ import annotations

import math

REGRESSION_GRID = 0.2
UNPARSABLE_SCORE = -1.0


def regression_target_text(value: float, grid: float = REGRESSION_GRID) -> str:
    """The target string of a score: rounded to the nearest multiple of ``grid``, one decimal."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"regression score must be finite, got {value!r}")
    per_unit = 1.0 / grid  # 5 for the 0.2 grid: round(score * 5) / 5, exactly T5's arithmetic
    return f"{round(value * per_unit) / per_unit:.1f}"


def parse_regression_text(text: str | bytes, default: float = UNPARSABLE_SCORE) -> float:
    """A generated score back as a float; ``default`` when the text is not a finite number."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        value = float(text.strip())
    except ValueError:
        return default
    return value if math.isfinite(value) else default
