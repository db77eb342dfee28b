"""Backtest losses for end-to-end training, consistent with the walk-forward engine.

A training sample is a decision at a rebalance row ``t``: target weights ``w`` (held from row ``t+1``), the
drifted weights ``h_prev`` just before the trade, and the realised simple returns ``R`` of the next ``H`` rows
``t+1 .. t+H``. The losses replay exactly what the engine does with these (``portfolio_layers.backtest``):

- weights drift with prices between rebalances, so the portfolio's return on row ``s`` is
  ``r_s = V_s / V_{s-1} - 1`` with ``V_s = sum_i w_i prod_{u<=s} (1 + R_{u,i}) + (1 - sum_i w_i)``
  (cash earns 0);
- the trade costs ``cost_bps / 1e4 * sum_i |w_i - h_prev_i|``, subtracted from the return of the first row.

Every loss is a number to *minimise* (negative Sharpe, negative utility, negative Sortino). Annualised
quantities use ``A = periods_per_year``, the number of return rows per year of the data (252 for daily rows,
the default; 52 weekly, 12 monthly), as the backtest's metrics do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.checks import Range

#: Default number of return rows per year (daily data).
PERIODS_PER_YEAR = 252
#: The values ``periods_per_year`` accepts.
PERIODS = Range(low=0, low_open=True)

__all__ = [
    "LOSSES",
    "PERIODS_PER_YEAR",
    "mse_loss",
    "negative_sharpe",
    "negative_sortino",
    "negative_utility",
    "portfolio_returns",
    "portfolio_loss",
    "returns_loss",
    "turnover",
]


def _check(weights: Tensor, future_returns: Tensor) -> None:
    if weights.dim() != 2 or future_returns.dim() != 3:
        raise ShapeError(
            f"expected weights (batch, n) and future_returns (batch, H, n), got {tuple(weights.shape)} "
            f"and {tuple(future_returns.shape)}"
        )
    if future_returns.shape[0] != weights.shape[0] or future_returns.shape[2] != weights.shape[1]:
        raise ShapeError(
            f"weights {tuple(weights.shape)} and future_returns {tuple(future_returns.shape)} disagree on "
            "batch or number of assets"
        )


def turnover(weights: Tensor, previous: Tensor | None) -> Tensor:
    """One-way turnover ``sum_i |w_i - h_prev_i|`` of a trade.

    Parameters
    ----------
    weights : Tensor of shape (batch, n)
        Target weights.
    previous : Tensor of shape (batch, n) or None
        Drifted weights just before the trade; ``None`` means no position (the first trade).

    Returns
    -------
    Tensor of shape (batch,)
    """
    if previous is None:
        return weights.abs().sum(-1)
    return (weights - previous).abs().sum(-1)


def portfolio_returns(
    weights: Tensor, future_returns: Tensor, previous: Tensor | None = None, cost_bps: float = 0.0
) -> Tensor:
    """Net simple returns of holding ``weights`` (with drift) over the next ``H`` rows, as the engine does.

    Parameters
    ----------
    weights : Tensor of shape (batch, n)
        Target weights set at the rebalance row.
    future_returns : Tensor of shape (batch, H, n)
        Simple returns of the ``H`` rows after the rebalance row.
    previous : Tensor of shape (batch, n) or None
        Drifted weights just before the trade (for the cost); ``None`` skips the cost when ``cost_bps == 0``
        and charges the full position otherwise.
    cost_bps : float
        Proportional cost in basis points of the traded value, charged on the first row.

    Returns
    -------
    Tensor of shape (batch, H)
        Per-row portfolio returns, net of the trading cost.
    """
    _check(weights, future_returns)
    growth = torch.cumprod(1.0 + future_returns, dim=1)  # (batch, H, n)
    cash = 1.0 - weights.sum(-1, keepdim=True)  # (batch, 1)
    value = torch.einsum("bhn,bn->bh", growth, weights) + cash  # V_1 .. V_H
    start = weights.sum(-1, keepdim=True) + cash  # V_0 = 1
    values = torch.cat([start, value], dim=1)
    returns = values[:, 1:] / values[:, :-1] - 1.0
    if cost_bps:
        cost = cost_bps / 1e4 * turnover(weights, previous)
        returns = torch.cat([returns[:, :1] - cost[:, None], returns[:, 1:]], dim=1)
    return returns


def _reduce_moments(returns: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
    """Mean and variance of per-row returns, pooled over the batch or per sample (shape (batch,))."""
    if pooled:
        flat = returns.reshape(-1)
        return flat.mean(), flat.var(unbiased=flat.numel() > 1)
    return returns.mean(-1), returns.var(-1, unbiased=returns.shape[-1] > 1)


def negative_sharpe(
    returns: Tensor, *, pooled: bool = True, eps: float = 1e-8, periods_per_year: float = PERIODS_PER_YEAR
) -> Tensor:
    """Minus the annualised Sharpe ratio ``mean(r) * A / (std(r) * sqrt(A))`` (rf = 0).

    Parameters
    ----------
    returns : Tensor of shape (batch, H)
        Per-row portfolio returns.
    pooled : bool
        ``True``: one Sharpe ratio over all ``batch * H`` returns (stable with short horizons);
        ``False``: the mean over samples of each sample's Sharpe ratio.
    eps : float
        Added to the variance before the square root.
    periods_per_year : float
        ``A``, rows per year (252 daily, 52 weekly, 12 monthly).
    """
    PERIODS.check("periods_per_year", periods_per_year)
    mean, var = _reduce_moments(returns, pooled)
    sharpe = mean / torch.sqrt(var + eps) * math.sqrt(periods_per_year)
    return -sharpe.mean()


def negative_sortino(
    returns: Tensor, *, pooled: bool = True, eps: float = 1e-8, periods_per_year: float = PERIODS_PER_YEAR
) -> Tensor:
    """Minus the annualised Sortino ratio ``mean(r) * A / (sqrt(mean(min(r, 0)^2)) * sqrt(A))``.

    Parameters
    ----------
    returns : Tensor of shape (batch, H)
        Per-row portfolio returns.
    pooled, eps, periods_per_year
        As in :func:`negative_sharpe`.
    """
    PERIODS.check("periods_per_year", periods_per_year)
    downside = torch.clamp(returns, max=0.0).square()
    if pooled:
        mean, down = returns.mean(), downside.mean()
    else:
        mean, down = returns.mean(-1), downside.mean(-1)
    sortino = mean / torch.sqrt(down + eps) * math.sqrt(periods_per_year)
    return -sortino.mean()


def negative_utility(
    returns: Tensor,
    *,
    risk_aversion: float = 5.0,
    pooled: bool = True,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> Tensor:
    """Minus the annualised mean-variance utility ``mean(r) * A - risk_aversion / 2 * var(r) * A``.

    Parameters
    ----------
    returns : Tensor of shape (batch, H)
        Per-row portfolio returns.
    risk_aversion : float
        Weight of the variance (annualised units).
    pooled, periods_per_year
        As in :func:`negative_sharpe`.
    """
    PERIODS.check("periods_per_year", periods_per_year)
    mean, var = _reduce_moments(returns, pooled)
    utility = mean * periods_per_year - 0.5 * risk_aversion * var * periods_per_year
    return -utility.mean()


def mse_loss(
    predicted_mean: Tensor, future_returns: Tensor, *, periods_per_year: float = PERIODS_PER_YEAR
) -> Tensor:
    """Mean squared error of an annualised expected-return forecast against the realised mean of the horizon.

    Parameters
    ----------
    predicted_mean : Tensor of shape (batch, n)
        Forecast of the annualised mean simple return of each asset over the next ``H`` rows.
    future_returns : Tensor of shape (batch, H, n)
        Realised per-row simple returns.
    periods_per_year : float
        Rows per year, which annualise the realised mean.
    """
    PERIODS.check("periods_per_year", periods_per_year)
    if predicted_mean.shape != future_returns[:, 0].shape:
        raise ShapeError(
            f"predicted_mean {tuple(predicted_mean.shape)} does not match future_returns "
            f"{tuple(future_returns.shape)}: expected (batch, n) and (batch, H, n)"
        )
    realised = future_returns.mean(1) * periods_per_year
    return (predicted_mean - realised).square().mean()


LOSSES = ("sharpe", "sortino", "utility")


def portfolio_loss(
    name: str,
    weights: Tensor,
    future_returns: Tensor,
    previous: Tensor | None = None,
    *,
    cost_bps: float = 0.0,
    risk_aversion: float = 5.0,
    pooled: bool = True,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> Tensor:
    """A backtest loss by name, on net-of-cost returns of the next ``H`` rows.

    Parameters
    ----------
    name : {"sharpe", "sortino", "utility"}
        Negative Sharpe ratio, negative Sortino ratio or negative mean-variance utility.
    weights : Tensor of shape (batch, n)
    future_returns : Tensor of shape (batch, H, n)
    previous : Tensor of shape (batch, n) or None
        Drifted weights before the trade; the turnover cost is ``cost_bps / 1e4 * sum |w - previous|``.
    cost_bps : float
        Proportional trading cost in basis points (the engine's ``cost_bps``).
    risk_aversion : float
        Only for ``"utility"``.
    pooled, periods_per_year
        See :func:`negative_sharpe`.

    Returns
    -------
    Tensor of shape ()
    """
    returns = portfolio_returns(weights, future_returns, previous, cost_bps)
    return returns_loss(
        name, returns, risk_aversion=risk_aversion, pooled=pooled, periods_per_year=periods_per_year
    )


def returns_loss(
    name: str,
    returns: Tensor,
    *,
    risk_aversion: float = 5.0,
    pooled: bool = True,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> Tensor:
    """A backtest loss by name on per-row net returns (e.g. of a chain of decisions).

    Parameters
    ----------
    name : {"sharpe", "sortino", "utility"}
    returns : Tensor of shape (batch, H)
        Per-row portfolio returns, net of costs.
    risk_aversion, pooled, periods_per_year
        As in :func:`portfolio_loss`.

    Returns
    -------
    Tensor of shape ()
    """
    if name == "sharpe":
        return negative_sharpe(returns, pooled=pooled, periods_per_year=periods_per_year)
    if name == "sortino":
        return negative_sortino(returns, pooled=pooled, periods_per_year=periods_per_year)
    if name == "utility":
        return negative_utility(
            returns, risk_aversion=risk_aversion, pooled=pooled, periods_per_year=periods_per_year
        )
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
