"""The regression text convention against T5's STS-B rule (round(score * 5) / 5, "%.1f")."""

import math

import numpy as np
import pytest

from mtl_jax import labels


@pytest.mark.parametrize("score", np.linspace(0, 5, 101).tolist() + [0.09, 0.11, 4.99, 2.5])
def test_target_text_matches_t5_rule(score):
    assert labels.regression_target_text(score) == "%.1f" % (round(score * 5) / 5)


def test_parse_round_trip_and_unparsable():
    for v in np.arange(0, 5.01, 0.2):
        assert math.isclose(labels.parse_regression_text(labels.regression_target_text(v)), v,
                            abs_tol=1e-9)
    assert labels.parse_regression_text(" 3.4 ") == 3.4
    assert labels.parse_regression_text(b"1.0") == 1.0
    for bad in ("", "three", "nan", "inf", "3.4.1"):
        assert labels.parse_regression_text(bad) == labels.UNPARSABLE_SCORE
    with pytest.raises(ValueError, match="finite"):
        labels.regression_target_text(float("nan"))
