"""The strategy protocol and the classical strategies.

A strategy is any object with

- ``name: str``;
- ``fit(prices, features=None) -> None``: called by the engine on the training window (price rows ending at
  the rebalance row) when a re-training is due; classical strategies do nothing;
- ``weights(prices, current, features=None) -> ndarray (n,)``: target weights from the price rows
  ``t-L .. t``; ``current`` are the drifted weights just before the trade (zeros before the first one);
- optionally ``diagnostics() -> dict[str, DataFrame]`` (for example training curves), read after the run.

``features`` are exogenous, market-level features (:mod:`portfolio_layers.data.exogenous`), aligned with the
prices from the past only and sliced exactly like them (same rows, same dates); rows dated before the first
feature date are NaN. A run with features passes them to every strategy (keyword ``features``); a run
without calls ``fit(prices)`` and ``weights(prices, current)``, so a strategy written for prices only keeps
working there. The classical strategies accept and ignore them.

:func:`portfolio_layers.registry.make_strategy` builds one from its name. The classical strategies solve
their QP with cvxpy + Clarabel (``solver="clarabel"``) or the package's QP layer (``solver="qp"``,
:func:`portfolio_layers.qp.solve_qp`), behind :func:`solve_long_only_qp`.
"""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from portfolio_layers.errors import ConfigError, DataError, InfeasibleError, SolverError

SOLVERS = ("clarabel", "qp")


@runtime_checkable
class Strategy(Protocol):
    """What the engine needs from a strategy (see the module docstring)."""

    name: str

    def fit(self, prices: pd.DataFrame, features: pd.DataFrame | None = None) -> None: ...

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray, features: pd.DataFrame | None = None
    ) -> np.ndarray: ...


def _check_cap(max_weight: float | None, n: int | None = None) -> None:
    if max_weight is None:
        return
    if isinstance(max_weight, bool) or not isinstance(max_weight, int | float) or not 0 < max_weight <= 1:
        raise ConfigError(f"max_weight must be a number in (0, 1], got {max_weight!r}.")
    if n is not None and n * max_weight < 1 - 1e-12:
        raise InfeasibleError(
            f"max_weight={max_weight} with {n} assets cannot be fully invested (n * max_weight < 1); "
            f"raise max_weight to at least {1 / n:.4g} or add assets."
        )


def cap_weights(w: np.ndarray, max_weight: float | None) -> np.ndarray:
    """Cap proportional weights at ``max_weight`` and hand the excess to the uncapped ones, pro rata.

    Parameters
    ----------
    w : ndarray of shape (n,)
        Non-negative weights summing to 1.
    max_weight : float or None
        Cap; None returns ``w`` unchanged.

    Returns
    -------
    ndarray of shape (n,)
        The weights ``min(c * w, max_weight)`` with the scale ``c`` such that they sum to 1.
    """
    if max_weight is None:
        return w
    _check_cap(max_weight, w.size)
    out = w.astype(np.float64).copy()
    capped = np.zeros(w.size, dtype=bool)
    for _ in range(w.size):
        over = (out > max_weight) & ~capped
        if not over.any():
            break
        capped |= over
        free = ~capped
        rest = 1.0 - max_weight * capped.sum()
        out[capped] = max_weight
        if free.any() and out[free].sum() > 0:
            out[free] *= rest / out[free].sum()
    return out


def solve_long_only_qp(
    P: np.ndarray, q: np.ndarray, max_weight: float | None = None, solver: str = "clarabel"
) -> np.ndarray:
    """Solve ``minimize 1/2 w'Pw - q'w  s.t.  sum(w) = 1, 0 <= w <= max_weight``.

    Parameters
    ----------
    P : ndarray of shape (n, n)
        Symmetric positive semidefinite matrix.
    q : ndarray of shape (n,)
        Linear term.
    max_weight : float, optional
        Per-asset upper bound (none when None).
    solver : {"clarabel", "qp"}
        cvxpy + Clarabel, or :func:`portfolio_layers.qp.solve_qp` (float64).

    Returns
    -------
    ndarray of shape (n,)
        Optimal weights, clipped to the bounds and renormalised to remove solver round-off (< 1e-6).
    """
    n = q.shape[0]
    _check_cap(max_weight, n)
    # Rescale the objective (same minimiser): daily covariances are ~1e-4, poorly scaled for solvers.
    scale = float(np.mean(np.diag(P))) or 1.0
    P, q = (P + P.T) / (2 * scale), q / scale
    if solver == "clarabel":
        w = _solve_cvxpy(P, q, max_weight)
    elif solver == "qp":
        w = _solve_layer(P, q, max_weight)
    else:
        raise ConfigError(f"solver={solver!r} is not available; use one of {SOLVERS}.")
    upper = 1.0 if max_weight is None else max_weight
    if np.abs(w.sum() - 1) > 1e-5 or w.min() < -1e-5 or w.max() > upper + 1e-5:
        raise SolverError(
            f"the {solver} solution violates the constraints (sum {w.sum():.6g}, min {w.min():.3g})."
        )
    w = np.clip(w, 0.0, upper)
    return w / w.sum()


def _solve_cvxpy(P: np.ndarray, q: np.ndarray, max_weight: float | None) -> np.ndarray:
    import cvxpy as cp

    n = q.shape[0]
    w = cp.Variable(n)
    cons = [cp.sum(w) == 1, w >= 0]
    if max_weight is not None:
        cons.append(w <= max_weight)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(P)) - q @ w), cons)
    try:
        prob.solve(solver=cp.CLARABEL)
    except cp.error.SolverError as exc:
        raise SolverError(f"Clarabel failed on the portfolio QP ({exc}).") from exc
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or w.value is None:
        raise SolverError(f"Clarabel returned status {prob.status!r} on the portfolio QP.")
    return np.asarray(w.value, dtype=np.float64)


def _solve_layer(P: np.ndarray, q: np.ndarray, max_weight: float | None) -> np.ndarray:
    try:
        import torch

        from portfolio_layers.qp import solve_qp
    except ImportError as exc:
        raise ConfigError(
            f"solver='qp' needs portfolio_layers.qp.solve_qp, which is not available ({exc})."
        ) from exc
    n = q.shape[0]
    t = functools.partial(torch.as_tensor, dtype=torch.float64)
    ub = None if max_weight is None else t(np.full(n, max_weight))
    sol = solve_qp(t(P), t(q), A=t(np.ones((1, n))), b=t(np.ones(1)), lb=t(np.zeros(n)), ub=ub)
    return sol.x.detach().cpu().numpy().astype(np.float64)


def _returns(prices: pd.DataFrame) -> np.ndarray:
    """Simple returns ``p[s]/p[s-1] - 1`` of the rows given, shape (rows - 1, n)."""
    p = prices.to_numpy(dtype=np.float64)
    if p.shape[0] < 3:
        raise DataError(f"a strategy needs at least 3 price rows to estimate risk, got {p.shape[0]}.")
    return p[1:] / p[:-1] - 1.0


class _Classical:
    """Shared parts of the classical strategies: nothing to learn."""

    name = "classical"

    def fit(self, prices: pd.DataFrame, features: pd.DataFrame | None = None) -> None:
        """Classical strategies do not learn (and ignore ``features``); kept for the engine's uniform loop."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class EqualWeight(_Classical):
    """``w_i = 1/n``."""

    name = "equal_weight"

    def __init__(self, *, max_weight: float | None = None) -> None:
        _check_cap(max_weight)
        self.max_weight = max_weight

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        n = prices.shape[1]
        _check_cap(self.max_weight, n)
        return np.full(n, 1.0 / n)


class InverseVolatility(_Classical):
    """``w_i`` proportional to ``1 / std(R_i)`` over the lookback, capped at ``max_weight`` (pro rata)."""

    name = "inverse_volatility"

    def __init__(self, *, max_weight: float | None = None) -> None:
        _check_cap(max_weight)
        self.max_weight = max_weight

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        vol = _returns(prices).std(axis=0, ddof=1)
        if (vol <= 0).any():
            col = prices.columns[int(np.argmax(vol <= 0))]
            raise DataError(f"inverse_volatility: {col!r} has constant prices up to {prices.index[-1]}.")
        w = 1.0 / vol
        return cap_weights(w / w.sum(), self.max_weight)


class MinVariance(_Classical):
    """``minimize w' S w  s.t.  sum(w) = 1, 0 <= w <= max_weight`` with S the sample covariance (ddof=1)."""

    name = "min_variance"

    def __init__(self, *, max_weight: float | None = None, solver: str = "clarabel") -> None:
        _check_cap(max_weight)
        if solver not in SOLVERS:
            raise ConfigError(f"solver={solver!r} is not available; use one of {SOLVERS}.")
        self.max_weight, self.solver = max_weight, solver

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        R = _returns(prices)
        cov = np.atleast_2d(np.cov(R, rowvar=False, ddof=1))
        return solve_long_only_qp(cov, np.zeros(R.shape[1]), self.max_weight, self.solver)


class MeanVariance(_Classical):
    """``maximize m'w - risk_aversion/2 w'Sw  s.t.  sum(w) = 1, 0 <= w <= max_weight`` (sample m, S).

    The maximiser does not change if m and S are both annualised, so ``risk_aversion`` has the usual meaning.
    """

    name = "mean_variance"

    def __init__(
        self, *, risk_aversion: float = 5.0, max_weight: float | None = None, solver: str = "clarabel"
    ) -> None:
        _check_cap(max_weight)
        if (
            isinstance(risk_aversion, bool)
            or not isinstance(risk_aversion, int | float)
            or not risk_aversion > 0
        ):
            raise ConfigError(f"mean_variance: risk_aversion must be a number > 0, got {risk_aversion!r}.")
        if solver not in SOLVERS:
            raise ConfigError(f"solver={solver!r} is not available; use one of {SOLVERS}.")
        self.risk_aversion, self.max_weight, self.solver = float(risk_aversion), max_weight, solver

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        R = _returns(prices)
        cov = np.atleast_2d(np.cov(R, rowvar=False, ddof=1))
        return solve_long_only_qp(self.risk_aversion * cov, R.mean(axis=0), self.max_weight, self.solver)


__all__ = [
    "SOLVERS",
    "EqualWeight",
    "InverseVolatility",
    "MeanVariance",
    "MinVariance",
    "Strategy",
    "cap_weights",
    "solve_long_only_qp",
]
