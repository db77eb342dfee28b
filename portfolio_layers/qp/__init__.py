"""Differentiable batched QP layer: ``solve_qp``, ``QPLayer`` and portfolio constraint constructors.

Solves ``minimize 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub``. Imports nothing from the
finance parts of the package (only :mod:`portfolio_layers.errors`).
"""

from __future__ import annotations

from portfolio_layers.qp.constraints import (
    LinearConstraints,
    combine,
    fully_invested,
    group_caps,
    leverage_limit,
    long_only,
    turnover_limit,
    weight_bounds,
    weight_cap,
)
from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.l1 import L1Cost
from portfolio_layers.qp.layer import BACKENDS, QPLayer, solve_qp
from portfolio_layers.qp.solution import QPSolution, Status

__all__ = [
    "BACKENDS",
    "FactorCov",
    "L1Cost",
    "LinearConstraints",
    "QPLayer",
    "QPSolution",
    "Status",
    "combine",
    "fully_invested",
    "group_caps",
    "leverage_limit",
    "long_only",
    "solve_qp",
    "turnover_limit",
    "weight_bounds",
    "weight_cap",
]
