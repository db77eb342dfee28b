"""Deep equilibrium models: fixed-point solvers, implicit differentiation and a market-history encoder.

``fixed_point(f, z0, ...)`` solves ``z = f(z)`` with Picard, Anderson or Broyden iterations (one generic
loop, per-element stopping; a solver object carries its stopping rule) and differentiates through the
equilibrium with an adjoint object: ``Implicit()``, ``JFB()`` (Jacobian-free backprop) or ``Unrolled()``.
``DEQEncoder`` embeds a window of per-asset features ``(batch, T, n, F)``
into per-asset vectors ``(batch, n, d_model)`` at the equilibrium of a cross-asset mixing cell.
This subpackage imports nothing from ``models``, ``backtest`` or ``data``.
"""

from __future__ import annotations

from portfolio_layers.deq.adjoint import JFB, Adjoint, AdjointStats, Implicit, Unrolled
from portfolio_layers.deq.encoder import DEQEncoder, DEQInfo, MixingCell, TemporalInjection
from portfolio_layers.deq.implicit import fixed_point
from portfolio_layers.deq.solution import DEQSolution, Status
from portfolio_layers.deq.solvers import Anderson, Broyden, FixedPointSolver, Picard, make_solver
from portfolio_layers.deq.stability import (
    SpectralCap,
    jacobian_penalty,
    normalize_linear,
    spectral_normalize,
    weight_normalize,
)

__all__ = [
    "JFB",
    "Adjoint",
    "AdjointStats",
    "Anderson",
    "Broyden",
    "DEQEncoder",
    "DEQInfo",
    "DEQSolution",
    "FixedPointSolver",
    "Implicit",
    "MixingCell",
    "Picard",
    "SpectralCap",
    "Status",
    "TemporalInjection",
    "Unrolled",
    "fixed_point",
    "jacobian_penalty",
    "make_solver",
    "normalize_linear",
    "spectral_normalize",
    "weight_normalize",
]
