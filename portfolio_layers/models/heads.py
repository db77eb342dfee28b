"""Risk and return heads: per-asset embeddings -> a PSD covariance and an expected-return vector.

Both heads act on each asset's embedding with shared weights, so they accept any number of assets and
are permutation-equivariant across assets (permuting the assets of the input permutes the outputs).
Units are whatever the caller uses for the sample covariance; the end-to-end strategy uses annualised
simple returns (a daily covariance times 252), where typical variances are 0.02-0.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from portfolio_layers.errors import ConfigError, ShapeError

__all__ = ["ReturnHead", "RiskHead", "sample_covariance"]


def sample_covariance(returns: Tensor) -> Tensor:
    """Sample covariance (``ddof=1``) of a window of returns, batched.

    Parameters
    ----------
    returns : Tensor of shape (*batch, T, n)
        Returns of ``T`` rows (``T >= 2``).

    Returns
    -------
    Tensor of shape (*batch, n, n)
    """
    if returns.dim() < 2 or returns.shape[-2] < 2:
        raise ShapeError(
            f"sample_covariance needs returns of shape (*batch, T>=2, n), got {tuple(returns.shape)}"
        )
    centred = returns - returns.mean(-2, keepdim=True)
    return centred.transpose(-1, -2) @ centred / (returns.shape[-2] - 1)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class RiskHead(nn.Module):
    """PSD covariance with a factor structure, optionally blended with the window's sample covariance.

    ``Sigma_f = s * (B B' + diag(softplus(u))) + eps * I`` where the loadings ``B (n, k)`` and the
    idiosyncratic terms ``u (n,)`` are linear maps of each asset's embedding and ``s`` is a learned
    scale. With a blend, ``Sigma = (1 - a) * Sigma_f + a * S`` with ``a = sigmoid(alpha)`` learned and
    ``S`` the sample covariance of the window. Both terms are PSD and ``eps > 0``, so ``Sigma`` is
    positive definite by construction.

    Parameters
    ----------
    d_model : int
        Embedding size ``d``.
    n_factors : int
        Number of factors ``k``.
    blend : bool
        Learn a blend toward the sample covariance (then ``forward`` needs ``sample_cov``).
    blend_init : float
        Initial blend weight ``a`` in (0, 1).
    scale_init : float
        Initial ``s``: the typical variance scale of the caller's units (0.05 for annualised returns).
    eps : float
        Ridge added to the diagonal of ``Sigma_f``.
    """

    def __init__(
        self,
        d_model: int,
        n_factors: int = 3,
        *,
        blend: bool = True,
        blend_init: float = 0.5,
        scale_init: float = 0.05,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        if n_factors < 1 or d_model < 1:
            raise ConfigError(
                f"RiskHead needs d_model >= 1 and n_factors >= 1, got {d_model} and {n_factors}"
            )
        if blend and not 0.0 < blend_init < 1.0:
            raise ConfigError(f"blend_init must lie in (0, 1), got {blend_init}")
        if scale_init <= 0 or eps <= 0:
            raise ConfigError(f"scale_init and eps must be positive, got {scale_init} and {eps}")
        self.loadings = nn.Linear(d_model, n_factors)
        self.idiosyncratic = nn.Linear(d_model, 1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))
        self.blend_logit = nn.Parameter(torch.tensor(_logit(blend_init))) if blend else None
        self.eps = eps

    @property
    def blend_weight(self) -> Tensor | None:
        """The weight ``a`` of the sample covariance, or ``None`` without a blend."""
        return None if self.blend_logit is None else torch.sigmoid(self.blend_logit)

    def forward(self, emb: Tensor, sample_cov: Tensor | None = None) -> Tensor:
        """Covariance matrices.

        Parameters
        ----------
        emb : Tensor of shape (batch, n, d)
            Per-asset embeddings.
        sample_cov : Tensor of shape (batch, n, n), optional
            Sample covariance of the window, required when the head blends.

        Returns
        -------
        Tensor of shape (batch, n, n)
            Symmetric positive definite.
        """
        if emb.dim() != 3:
            raise ShapeError(f"RiskHead expects emb of shape (batch, n, d), got {tuple(emb.shape)}")
        n = emb.shape[1]
        loadings = self.loadings(emb) / math.sqrt(self.loadings.out_features)  # (batch, n, k)
        idio = F.softplus(self.idiosyncratic(emb)).squeeze(-1)  # (batch, n)
        eye = torch.eye(n, dtype=emb.dtype, device=emb.device)
        factor_cov = self.log_scale.exp() * (loadings @ loadings.transpose(-1, -2) + torch.diag_embed(idio))
        factor_cov = factor_cov + self.eps * eye
        if self.blend_logit is None:
            return factor_cov
        if sample_cov is None or sample_cov.shape != factor_cov.shape:
            got = None if sample_cov is None else tuple(sample_cov.shape)
            raise ShapeError(
                f"RiskHead(blend=True) needs sample_cov of shape {tuple(factor_cov.shape)}, got {got}; "
                "pass the window's sample covariance or build the head with blend=False"
            )
        a = torch.sigmoid(self.blend_logit)
        cov = (1.0 - a) * factor_cov + a * sample_cov
        return 0.5 * (cov + cov.transpose(-1, -2))


class ReturnHead(nn.Module):
    """Expected returns from per-asset embeddings: a small MLP per asset times a learned scale.

    Parameters
    ----------
    d_model : int
        Embedding size ``d``.
    hidden : int
        Hidden width of the per-asset MLP.
    scale_init : float
        Initial output scale (0.1 for annualised returns).
    """

    def __init__(self, d_model: int, hidden: int = 16, *, scale_init: float = 0.1) -> None:
        super().__init__()
        if scale_init <= 0:
            raise ConfigError(f"scale_init must be positive, got {scale_init}")
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))

    def forward(self, emb: Tensor) -> Tensor:
        """Expected returns.

        Parameters
        ----------
        emb : Tensor of shape (batch, n, d)

        Returns
        -------
        Tensor of shape (batch, n)
        """
        if emb.dim() != 3:
            raise ShapeError(f"ReturnHead expects emb of shape (batch, n, d), got {tuple(emb.shape)}")
        return self.log_scale.exp() * self.net(emb).squeeze(-1)
