from __future__ import annotations

import pandas as pd
import pytest

from portfolio_layers.models.synthetic import planted_market


@pytest.fixture
def market() -> pd.DataFrame:
    """Five assets, 700 rows, persistent drifts of +-0.3 %/day: learnable from trailing returns."""
    return planted_market()
