"""portfolio_layers: differentiable convex-optimization layers and walk-forward backtests on PyTorch."""

from __future__ import annotations

from portfolio_layers import errors

__version__ = "0.1.0"

__all__ = ["__version__", "errors"]
