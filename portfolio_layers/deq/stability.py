"""Stability tools for equilibrium models: norm-constrained linear maps and Jacobian regularization.

A DEQ trains well when its cell ``f`` stays a contraction. :func:`spectral_normalize` caps the spectral
norm of a linear map (so a cell built from 1-Lipschitz activations and capped maps with coefficients
summing below one is contractive by construction); :func:`weight_normalize` is the lighter, non-capping
alternative; :func:`jacobian_penalty` estimates ``||J_f||_F^2`` for use as a loss term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from portfolio_layers.errors import ConfigError


class SpectralCap(nn.Module):
    """Parametrization ``W -> W / max(1, ||W||_2 / bound)``: the exact spectral norm, capped at ``bound``.

    Computed from the singular values (no power-iteration state, so two calls with the same weights give
    the same map, which implicit differentiation needs). Weights already inside the ball are unchanged.
    """

    def __init__(self, bound: float = 1.0) -> None:
        super().__init__()
        if bound <= 0:
            raise ConfigError(f"spectral bound must be > 0, got {bound}.")
        self.bound = float(bound)

    def forward(self, W: Tensor) -> Tensor:
        sigma = torch.linalg.matrix_norm(W, ord=2)
        return W / torch.clamp(sigma / self.bound, min=1.0)


def spectral_normalize(linear: nn.Linear, bound: float = 1.0) -> nn.Linear:
    """Cap the spectral norm of ``linear.weight`` at ``bound`` (in place; returns the module).

    Parameters
    ----------
    linear : nn.Linear
        Module whose weight of shape (out, in) is re-parametrized.
    bound : float
        Largest allowed spectral norm (Lipschitz constant of the map without bias).

    Notes
    -----
    Read ``linear.weight`` once per forward, with autograd on, outside the fixed-point map, and let ``f``
    close over that tensor (``DEQEncoder`` does): it avoids one SVD per iteration, and a weight first
    computed inside the ``no_grad`` forward iterations would carry no gradient.
    """
    parametrize.register_parametrization(linear, "weight", SpectralCap(bound))
    return linear


def weight_normalize(linear: nn.Linear) -> nn.Linear:
    """Weight normalization ``W = g * V / ||V||`` (row-wise) of ``linear.weight`` (in place).

    It decouples the scale of each row from its direction, which steadies training, but it does not cap
    the Lipschitz constant: prefer :func:`spectral_normalize` where contraction must be guaranteed.
    """
    return nn.utils.parametrizations.weight_norm(linear, name="weight", dim=0)


def normalize_linear(linear: nn.Linear, kind: str | None, bound: float = 1.0) -> nn.Linear:
    """Apply ``kind`` in ``{"spectral", "weight", None}`` to ``linear`` (see the two functions above)."""
    if kind == "spectral":
        return spectral_normalize(linear, bound)
    if kind == "weight":
        return weight_normalize(linear)
    if kind is None or kind == "none":
        return linear
    raise ConfigError(f"Unknown weight normalization {kind!r}: use 'spectral', 'weight' or None.")


def jacobian_penalty(
    f: Callable[[Tensor], Tensor], z: Tensor, *, samples: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """Hutchinson estimate of ``||J_f(z)||_F^2 / dim``, averaged over the batch, differentiable.

    ``E_eps ||eps' J||^2 = ||J||_F^2`` for ``eps ~ N(0, I)``; each probe costs one vector-Jacobian
    product with ``create_graph=True`` so the estimate can be minimized with respect to the parameters
    of ``f``. Dividing by ``dim`` (the flattened size of one element) makes the value comparable across
    sizes: it is about ``rho^2`` for a map that scales every direction by ``rho``.

    Parameters
    ----------
    f : callable, Tensor of shape (batch, ...) -> Tensor of the same shape
    z : Tensor of shape (batch, ...)
        Point where the Jacobian is taken (usually the detached equilibrium).
    samples : int
        Number of probe vectors.
    generator : torch.Generator, optional
        Source of the probes (for reproducibility).

    Returns
    -------
    Tensor of shape ()
    """
    if samples < 1:
        raise ConfigError(f"jacobian_penalty needs samples >= 1, got {samples}.")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z)
        total = z.new_zeros(())
        for _ in range(samples):
            eps = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
            (vjp,) = torch.autograd.grad(fz, z, eps, create_graph=True, retain_graph=True, allow_unused=True)
            if vjp is not None:  # None: f does not depend on z, its Jacobian is zero
                total = total + vjp.pow(2).sum()
    dim = z[0].numel()
    return total / (samples * z.shape[0] * dim)
