"""No theory, and the same system in other units: discovery is scale-free (issue 12; slow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import sciml

pytestmark = pytest.mark.slow

# A short UDE schedule (an eighth of the quick one's steps): what is checked is that the
# data's units change nothing, and the refit on the data gives the coefficients; each run's
# time is then mostly compilation and selection, not training.
SHORT = dict(collocation_steps=300, windows=(0.5, 1.0), adam_steps=20, lbfgs_steps=10, chunk=10)


def _logistic_csv(path, scale_y=1.0, scale_t=1.0):
    t = np.linspace(0, 10, 100)
    x = 70.0 / (1 + (70.0 / 5.0 - 1) * np.exp(-0.8 * t))
    x = x * (1 + 0.03 * np.random.default_rng(0).standard_normal(len(t)))
    pd.DataFrame({"t": t * scale_t, "x": x * scale_y}).to_csv(path, index=False)
    return path


def test_no_theory_discovery_is_scale_free(tmp_path):
    """With no model file, logistic growth in its own units and in units 1000x larger over a
    time axis 100x shorter gives the same terms, coefficients rescaled accordingly:
    dx/dt = r x - (r/K) x^2  becomes  dX/dT = 100 r X - 0.1 (r/K) X^2."""
    found = []
    for name, sy, st in (("plain", 1.0, 1.0), ("rescaled", 1e3, 1e-2)):
        csv = _logistic_csv(tmp_path / f"{name}.csv", sy, st)
        found_here = sciml.discover(
            csv, None, out=tmp_path / name, engines="sindy", ude=SHORT, show_progress=False
        )
        x = sp.Symbol("x")
        expr = sp.expand(sciml.parse_expression(found_here.equations["x"], {"x": x}, where="t"))
        found.append({k: float(v) for k, v in expr.as_coefficients_dict().items()})
    plain, rescaled = found
    assert set(plain) == {sp.Symbol("x"), sp.Symbol("x") ** 2}, plain
    assert set(rescaled) == set(plain), rescaled
    x = sp.Symbol("x")
    np.testing.assert_allclose(plain[x], 0.8, rtol=0.05)
    np.testing.assert_allclose(rescaled[x] / plain[x], 100.0, rtol=0.02)
    np.testing.assert_allclose(rescaled[x**2] / plain[x**2], 0.1, rtol=0.02)
