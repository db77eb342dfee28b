"""The turnover-aware decision layer: a QP with a trading-cost term and a prior at equal weight.

At each decision the layer solves

    minimize   tau * [ 1/2 w'Pw - mu'w + kappa * sum_i |w_i - h_i| ]  +  lam / 2 * ||w - 1/n||^2
    s.t.       sum_i w_i = 1,  0 <= w_i <= max_weight,  sum_i |w_i - h_i| <= turnover_limit (optional)

with ``P = gamma Sigma`` and ``mu`` from the network (annualised), ``h`` the drifted weights before the trade
(``h_prev``) and:

- **the cost** ``kappa = cost_bps / 1e4 * periods_per_year / rebalance * m``. A trade costs
  ``cost_bps / 1e4`` per unit of turnover once, and buys the (annualised) utility
  ``mu'w - 1/2 gamma w'Sigma w`` for one holding period of ``rebalance / periods_per_year`` years;
  dividing the period's utility net of the cost by the period's length in years puts the cost in the
  objective's annualised units: ``cost_bps / 1e4 * periods_per_year / rebalance`` (0.012 for 10 bps and
  monthly decisions on daily data). The multiplier ``m = exp(log_m) > 0`` is learned, initialised at
  ``cost_multiplier`` (1: the one-period cost). A trade whose benefit outlives a period argues for
  ``m < 1``, a noisy forecast for ``m > 1``: training decides.
- **the prior** ``lam / 2 ||w - 1/n||^2`` with ``lam = mean_i P_ii`` (the average variance times
  ``gamma``), and a learned gate ``tau >= 0`` on everything else: ``tau = 0`` gives exactly equal weight
  whatever the forecasts and the previous weights, ``tau -> inf`` the plain mean-variance decision with
  costs (``tau = 1``: the prior has the curvature of the average variance). ``tau`` is initialised at
  ``prior_init`` (0 for end-to-end models: an untrained model holds equal weight) and kept >= 0 by
  projection after each optimizer step (:meth:`DecisionLayer.project_`), so that at ``tau = 0`` its
  gradient is the one-sided derivative of the solution and training can leave equal weight where that
  lowers the loss. The parameter is ``tau / GATE_SCALE``: Adam moves a parameter by about its learning
  rate per step, and ``tau`` needs to cover ``[0, ~10]`` within the few hundred steps of a fit.

Why gate the cost too: at ``tau = 0`` the solution is exactly ``1/n`` whatever ``h``, and for ``tau > 0``
the cost term competes with the forecasts on their own scale. The L1 cost has a no-trade region: where
``w_i = h_i`` the solution does not move with the forecasts of asset ``i``, so its gradient vanishes there
(with a large ``kappa``, e.g. 10 bps at 5-row rebalancing, most decisions become "hold" and training
stalls). Starting from equal weight (not from ``h``) keeps every asset trading, and thus every gradient
alive, at initialisation.

The absolute value is lifted with auxiliary variables ``t >= |w - h|`` (``2n`` rows ``w - t <= h`` and
``-w - t <= -h``), priced ``tau * kappa`` each; a turnover limit is the row ``sum t <= turnover_limit`` on the
same ``t``. The QP is solved by :func:`portfolio_layers.qp.solve_qp`, which differentiates the solution with
respect to ``P``, ``mu``, ``h`` (through the right-hand side of the lifted rows), ``kappa`` and ``tau``.

**Factor form.** ``P`` may be a :class:`~portfolio_layers.qp.FactorCov` ``F F' + diag(d)`` (what the risk
head gives for many assets). The layer then solves the same problem without any ``n x n`` matrix: the prior
keeps the factor form (``tau P + lam I = (sqrt(tau) F)(sqrt(tau) F)' + diag(tau d + lam)``, ``lam`` the mean
of ``diag P``) and the cost and the turnover limit go to the QP layer's native L1 term
(:class:`~portfolio_layers.qp.L1Cost`) instead of the lifted rows (``2n`` inequality rows would make the
factor-form systems as large as dense ones). The two forms solve the same problem; the lifted one has the
ridge ``AUX_RIDGE`` on ``t``, which moves the weights by about ``1e-10`` (the tests compare them to
``1e-8``). ``sqrt(tau)`` is taken as ``sqrt(tau + tiny)`` (``tiny`` the smallest normal number of the
dtype), so that its derivative stays finite at the initial ``tau = 0``; the gradient to ``tau`` is then
that of the dense form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.qp import FactorCov, L1Cost, solve_qp

__all__ = ["DecisionLayer", "cost_per_year"]

#: ``tau = GATE_SCALE * parameter`` (see the module docstring).
GATE_SCALE = 10.0
#: Ridge on the auxiliary variables, relative to ``max|P|`` (as :class:`portfolio_layers.qp.QPLayer` does).
AUX_RIDGE = 1e-9


def cost_per_year(cost_bps: float, periods_per_year: float, rebalance: int) -> float:
    """The one-period trading cost in the annualised units of the objective: ``cost_bps/1e4 * A / rebalance``.

    Parameters
    ----------
    cost_bps : float
        Proportional cost of a trade in basis points of the traded value.
    periods_per_year : float
        ``A``, rows per year of the data.
    rebalance : int
        Rows between decisions (the holding period of one trade).
    """
    if cost_bps < 0 or periods_per_year <= 0 or rebalance < 1:
        raise ConfigError(
            f"need cost_bps >= 0, periods_per_year > 0 and rebalance >= 1, got {cost_bps}, "
            f"{periods_per_year} and {rebalance}"
        )
    return cost_bps / 1e4 * periods_per_year / rebalance


def check_cap(max_weight: float | None, n_assets: int) -> None:
    """Raise :class:`ConfigError` unless ``max_weight`` is None or in ``[1/n, 1]`` (a cap that allows full
    investment)."""
    if max_weight is not None and not (0 < max_weight <= 1 and n_assets * max_weight >= 1.0 - 1e-12):
        raise ConfigError(
            f"max_weight={max_weight} with {n_assets} assets cannot be fully invested (need "
            f"1/n <= max_weight <= 1); use max_weight >= {1.0 / n_assets:.4f}"
        )


class DecisionLayer(nn.Module):
    """Long-only, fully invested QP with a trading cost against ``h_prev`` and a gated prior at ``1/n``.

    ``solve(P, mu, previous) -> QPSolution`` whose first ``n`` entries of ``x`` are the weights (see the
    module docstring for the problem).

    Parameters
    ----------
    n_assets : int
        ``n``.
    max_weight : float, optional
        Per-asset cap ``u`` (needs ``n * u >= 1``).
    turnover_limit : float, optional
        Bound on ``sum |w - h|``; without previous weights it binds against ``1/n``.
    cost : float
        ``kappa_0``, the cost per unit of turnover in the objective's units (see :func:`cost_per_year`);
        0 drops the cost term.
    cost_multiplier : float
        Initial learned multiplier ``m`` of the cost (``kappa = kappa_0 m``); 0 drops the cost term.
    prior : bool
        Use the gated prior at equal weight (else ``tau = 1`` and ``lam = 0``: the plain problem).
    prior_init : float
        Initial gate ``tau >= 0`` (0: exactly equal weight until trained).
    tol, max_iter
        Options of :func:`portfolio_layers.qp.solve_qp` (``ipm`` backend, ``throw=False``).
    """

    def __init__(
        self,
        n_assets: int,
        *,
        max_weight: float | None = None,
        turnover_limit: float | None = None,
        cost: float = 0.0,
        cost_multiplier: float = 1.0,
        prior: bool = True,
        prior_init: float = 0.0,
        tol: float | None = None,
        max_iter: int = 50,
    ) -> None:
        super().__init__()
        if n_assets < 1:
            raise ConfigError(f"n_assets must be >= 1, got {n_assets}")
        check_cap(max_weight, n_assets)
        if turnover_limit is not None and not turnover_limit >= 0:
            raise ConfigError(f"turnover_limit must be >= 0, got {turnover_limit}")
        if not (cost >= 0 and cost_multiplier >= 0 and prior_init >= 0):
            raise ConfigError(
                "cost, cost_multiplier and prior_init must be >= 0, got "
                f"{cost}, {cost_multiplier}, {prior_init}"
            )
        self.n, self.max_weight, self.turnover_limit = n_assets, max_weight, turnover_limit
        self.cost = float(cost) if cost_multiplier > 0 else 0.0
        self.log_cost_multiplier = (
            nn.Parameter(torch.tensor(math.log(cost_multiplier))) if self.cost > 0 else None
        )
        self.prior_gate = nn.Parameter(torch.tensor(float(prior_init) / GATE_SCALE)) if prior else None
        self.tol, self.max_iter = tol, max_iter

    @property
    def needs_x0(self) -> bool:
        """Whether the layer uses the previous weights (a cost term or a turnover limit)."""
        return self.cost > 0 or self.turnover_limit is not None

    @property
    def kappa(self) -> Tensor | None:
        """``kappa = kappa_0 * m``, shape (), or ``None`` without a cost term."""
        if self.log_cost_multiplier is None:
            return None
        return self.cost * self.log_cost_multiplier.exp()

    @property
    def tau(self) -> Tensor | None:
        """The gate ``tau = GATE_SCALE * prior_gate >= 0`` of the prior, shape (), or ``None`` without one."""
        if self.prior_gate is None:
            return None
        return GATE_SCALE * self.prior_gate.clamp_min(0.0)

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the gate ``tau >= 0`` (call after each optimizer step)."""
        if self.prior_gate is not None:
            self.prior_gate.clamp_(min=0.0)

    def solve(self, P: Tensor | FactorCov, mu: Tensor, previous: Tensor | None = None):
        """Solve the decision QP.

        Parameters
        ----------
        P : Tensor of shape (batch, n, n) or FactorCov
            ``gamma * Sigma`` (positive definite), dense or in factor form (``F (batch, n, k)``,
            ``d (batch, n) > 0``; see the module docstring).
        mu : Tensor of shape (batch, n)
            Expected returns.
        previous : Tensor of shape (batch, n), optional
            Drifted weights ``h`` before the trade; ``None`` means no position (the cost of the first trade is
            the same for every fully invested ``w``, so the cost term is dropped; a turnover limit binds
            against ``1/n``).

        Returns
        -------
        portfolio_layers.qp.QPSolution
            ``x (batch, n)`` (the weights; the auxiliary variables are dropped from ``x``) and the statuses.
        """
        n = self.n
        if len(P.shape) != 3 or mu.dim() != 2 or P.shape[-1] != n or mu.shape != P.shape[:2]:
            raise ShapeError(
                f"DecisionLayer(n={n}) expects P (batch, n, n) and mu (batch, n), got {tuple(P.shape)} and "
                f"{tuple(mu.shape)}"
            )
        if previous is not None and previous.shape != mu.shape:
            raise ShapeError(f"previous must have shape {tuple(mu.shape)}, got {tuple(previous.shape)}")
        if isinstance(P, FactorCov):
            return self._solve_factor(P, mu, previous)
        batch, dt, dev = mu.shape[0], mu.dtype, mu.device
        eye = torch.eye(n, dtype=dt, device=dev)
        if self.prior_gate is None:
            Pw, q = P, mu
            tau = torch.ones((), dtype=dt, device=dev)
        else:
            tau = self.tau.to(dt)
            lam = P.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]  # (batch, 1, 1)
            Pw = tau * P + lam * eye
            q = tau * mu + lam[:, 0] / n
        if previous is None and self.turnover_limit is not None:
            previous = torch.full_like(mu, 1.0 / n)
        lifted = previous is not None and self.needs_x0
        ones = torch.ones(batch, 1, n, dtype=dt, device=dev)
        cap = math.inf if self.max_weight is None else self.max_weight
        if not lifted:
            sol = solve_qp(
                Pw, q, ones, torch.ones(batch, 1, dtype=dt, device=dev), lb=0.0, ub=cap,
                tol=self.tol, max_iter=self.max_iter, throw=False,
            )  # fmt: skip
            return sol
        ridge = AUX_RIDGE * Pw.detach().abs().amax((-2, -1)).clamp_min(1e-300)  # (batch,)
        zeros = torch.zeros(batch, n, n, dtype=dt, device=dev)
        P_lift = torch.cat(
            [
                torch.cat([Pw, zeros], -1),
                torch.cat([zeros, ridge[:, None, None] * eye.expand(batch, n, n)], -1),
            ],
            -2,
        )
        price = (
            torch.zeros(batch, n, dtype=dt, device=dev)
            if self.kappa is None
            else (tau * self.kappa).expand(batch, n)
        )
        q_lift = torch.cat([q, -price], -1)
        A = torch.cat([ones, torch.zeros_like(ones)], -1)
        G = torch.cat([torch.cat([eye, -eye], -1), torch.cat([-eye, -eye], -1)], -2).expand(
            batch, 2 * n, 2 * n
        )
        h = torch.cat([previous, -previous], -1)
        if self.turnover_limit is not None:
            row = torch.cat([torch.zeros(n), torch.ones(n)]).to(dt).to(dev).expand(batch, 1, 2 * n)
            G = torch.cat([G, row], -2)
            h = torch.cat([h, torch.full((batch, 1), float(self.turnover_limit), dtype=dt, device=dev)], -1)
        lb = torch.cat([torch.zeros(n), torch.full((n,), -math.inf)]).to(dt).to(dev)
        ub = torch.cat([torch.full((n,), cap, dtype=dt), torch.full((n,), math.inf, dtype=dt)]).to(dev)
        sol = solve_qp(
            P_lift, q_lift, A, torch.ones(batch, 1, dtype=dt, device=dev), G, h, lb, ub,
            tol=self.tol, max_iter=self.max_iter, throw=False,
        )  # fmt: skip
        return _weights_only(sol, n)

    def _solve_factor(self, P: FactorCov, mu: Tensor, previous: Tensor | None):
        """The same problem with ``P`` in factor form and the cost as a native L1 term (module docstring)."""
        n, batch, dt, dev = self.n, mu.shape[0], mu.dtype, mu.device
        if self.prior_gate is None:
            Pw, q = P, mu
            tau = torch.ones((), dtype=dt, device=dev)
        else:
            tau = self.tau.to(dt)
            lam = P.diagonal().mean(-1)[:, None]  # (batch, 1)
            root = (tau + torch.finfo(dt).tiny).sqrt()
            Pw = FactorCov(root * P.F, tau * P.d + lam)
            q = tau * mu + lam / n
        if previous is None and self.turnover_limit is not None:
            previous = torch.full_like(mu, 1.0 / n)
        l1 = None
        if previous is not None and self.needs_x0:
            kappa = 0.0 if self.kappa is None else tau * self.kappa
            l1 = L1Cost(previous, kappa, self.turnover_limit)
        cap = math.inf if self.max_weight is None else self.max_weight
        return solve_qp(
            Pw, q, torch.ones(batch, 1, n, dtype=dt, device=dev), torch.ones(batch, 1, dtype=dt, device=dev),
            lb=0.0, ub=cap, tol=self.tol, max_iter=self.max_iter, throw=False, l1=l1,
        )  # fmt: skip


def _weights_only(sol, n: int):
    """The solution with ``x`` cut to the weights (the statuses and residuals are those of the lifted QP)."""
    import dataclasses

    return dataclasses.replace(sol, x=sol.x[..., :n])
