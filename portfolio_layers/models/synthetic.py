"""A synthetic market with a planted, learnable signal, for tests, notebooks and sanity checks.

Each asset's daily drift is ``+drift`` or ``-drift`` and flips sign at random (on average every
``persistence`` rows). Because the regime persists, trailing returns reveal which assets currently go up:
a model that reads the history can beat equal weight, which earns about zero drift on average.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from portfolio_layers.errors import ConfigError

__all__ = ["planted_market"]


def planted_market(
    n_assets: int = 5,
    n_rows: int = 700,
    seed: int = 0,
    *,
    drift: float = 0.003,
    volatility: float = 0.01,
    persistence: float = 60.0,
    start: str = "2010-01-01",
) -> pd.DataFrame:
    """Prices of a market with persistent, sign-switching drifts.

    Parameters
    ----------
    n_assets : int
        Number of assets ``n``.
    n_rows : int
        Number of business days.
    seed : int
        Seed of the generator.
    drift : float
        Absolute daily drift of every asset.
    volatility : float
        Daily standard deviation of the Gaussian noise.
    persistence : float
        Mean number of rows between sign flips of an asset's drift.
    start : str
        First date.

    Returns
    -------
    DataFrame of shape (n_rows, n_assets)
        Prices starting near 100, columns ``A0 .. A{n-1}``, business-day index.
    """
    if n_assets < 1 or n_rows < 2 or persistence <= 1 or volatility < 0:
        raise ConfigError(
            f"planted_market needs n_assets >= 1, n_rows >= 2, persistence > 1, volatility >= 0; got "
            f"{n_assets}, {n_rows}, {persistence}, {volatility}"
        )
    rng = np.random.default_rng(seed)
    flips = rng.random((n_rows, n_assets)) < 1.0 / persistence
    first = rng.choice([-1.0, 1.0], size=n_assets)
    signs = first * np.where(np.cumsum(flips, axis=0) % 2 == 1, -1.0, 1.0)
    returns = drift * signs + volatility * rng.standard_normal((n_rows, n_assets))
    prices = 100.0 * np.cumprod(1.0 + returns, axis=0)
    index = pd.bdate_range(start, periods=n_rows)
    return pd.DataFrame(prices, index=index, columns=[f"A{i}" for i in range(n_assets)])
