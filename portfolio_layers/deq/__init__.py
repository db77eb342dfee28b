"""Deep equilibrium models: fixed-point solvers, implicit differentiation and a market-history encoder.

``fixed_point(f, z0, ...)`` solves ``z = f(z)`` with Picard, Anderson or Broyden iterations (one generic
loop, per-element stopping) and differentiates through the equilibrium implicitly, by Jacobian-free
backprop or by unrolling. ``DEQEncoder`` embeds a window of per-asset features ``(batch, T, n, F)``
into per-asset vectors ``(batch, n, d_model)`` at the equilibrium of a cross-asset mixing cell.
This subpackage imports nothing from ``models``, ``backtest`` or ``data``.
"""

from __future__ import annotations

from portfolio_layers.deq.encoder import DEQEncoder, MixingCell, TemporalInjection
from portfolio_layers.deq.implicit import AdjointStats, fixed_point
from portfolio_layers.deq.solution import DEQSolution, Status
from portfolio_layers.deq.solvers import Anderson, Broyden, Picard, make_solver
from portfolio_layers.deq.stability import (
    SpectralCap,
    jacobian_penalty,
    normalize_linear,
    spectral_normalize,
    weight_normalize,
)

__all__ = [
    "AdjointStats",
    "Anderson",
    "Broyden",
    "DEQEncoder",
    "DEQSolution",
    "MixingCell",
    "Picard",
    "SpectralCap",
    "Status",
    "TemporalInjection",
    "fixed_point",
    "jacobian_penalty",
    "make_solver",
    "normalize_linear",
    "spectral_normalize",
    "weight_normalize",
]
