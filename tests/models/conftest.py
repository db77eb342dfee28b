from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.models.synthetic import planted_market


@pytest.fixture
def market() -> pd.DataFrame:
    """Five assets, 700 rows, persistent drifts of +-0.3 %/day: learnable from trailing returns."""
    return planted_market()


def engine_returns(w, R, prev, cost_bps):
    """The engine's recursion by hand: r = h.R, h <- h (1 + R) / (1 + r), the cost on the first row.

    Returns the net returns ``(H,)`` and the drifted weights after the last row.
    """
    h = w.copy()
    out = []
    for row in R:
        r = float(h @ row)
        out.append(r)
        h = h * (1 + row) / (1 + r)
    out[0] -= cost_bps / 1e4 * np.abs(w - prev).sum()
    return np.array(out), h
