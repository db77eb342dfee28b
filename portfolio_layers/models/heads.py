"""Risk and return heads: per-asset embeddings -> a PSD covariance and an expected-return vector.

Both heads act on each asset's embedding with shared weights, so they accept any number of assets and
are permutation-equivariant across assets (permuting the assets of the input permutes the outputs).
Units are whatever the caller uses for the sample covariance; the end-to-end strategy uses annualised
simple returns (a daily covariance times 252), where typical variances are 0.02-0.2.

**Factor form.** For many assets the risk head can return its covariance as a
:class:`~portfolio_layers.qp.FactorCov` (``F F' + diag(d)``) instead of a dense ``n x n`` matrix, and the
decision layer then solves in that form (no ``n x n`` matrix anywhere). The sample covariance of a window of
``L`` returns is itself of low rank, ``S = R_c' R_c / (L - 1)`` with ``R_c`` the centred returns, so
:func:`sample_factor` gives it as ``FactorCov(R_c' / sqrt(L - 1), 0)``, and the blend

    (1 - a) (s (B B' + diag(idio)) + eps I) + a S
        = [sqrt((1 - a) s) B, sqrt(a) R_c' / sqrt(L - 1)] [...]' + diag((1 - a) (s idio + eps))

is a ``FactorCov`` with ``k + L`` columns. :func:`window_covariance` picks the form of the sample
covariance (``"auto"``: factors for more than :data:`FACTOR_MIN_ASSETS` assets) and the head follows it
(``RiskHead.forward(..., form=)``). Batches of either form reshape and index alike over their leading
dimensions (:class:`FactorCovBatch`), which is all the sample and training code does with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.qp import FactorCov

__all__ = [
    "FACTOR_MIN_ASSETS",
    "RISK_FORMS",
    "FactorCovBatch",
    "ReturnHead",
    "RiskHead",
    "sample_covariance",
    "sample_factor",
    "window_covariance",
]

#: ``"auto"`` uses the factor form for more than this many assets: below it the dense decision layer is
#: faster (``benchmarks/large_universe.py`` measures the crossover with a 252-row covariance window).
FACTOR_MIN_ASSETS = 80
#: Forms of the covariance: ``"dense"`` (``n x n``), ``"factor"`` (:class:`FactorCovBatch`) or ``"auto"``.
RISK_FORMS = ("auto", "dense", "factor")


@dataclass(frozen=True)
class FactorCovBatch(FactorCov):
    """A batch of covariance matrices ``F F' + diag(d)`` that reshapes and indexes like a dense batch.

    A :class:`~portfolio_layers.qp.FactorCov` (accepted by the QP layer wherever a dense ``P`` is) with the
    batch operations that the sample and training code apply to a tensor of covariance matrices
    ``(*batch, n, n)``: :meth:`reshape` and indexing of the leading (batch) dimensions, :meth:`detach`.

    Parameters
    ----------
    F : Tensor of shape (*batch, n, k)
    d : Tensor of shape (*batch, n)
        ``d >= 0`` here (a sample covariance alone has ``d = 0``); the QP layer needs ``d > 0``.
    """

    def reshape(self, *shape: int) -> FactorCovBatch:
        """The batch reshaped: ``shape = (*new_batch, n, n)`` as for the dense tensor it stands for."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        if len(shape) < 2 or tuple(shape[-2:]) != tuple(self.shape[-2:]):
            raise ShapeError(f"FactorCovBatch of shape {tuple(self.shape)} cannot take the shape {shape}")
        batch = tuple(shape[:-2])
        F_ = self.F.reshape(*batch, *self.F.shape[-2:])
        return FactorCovBatch(F_, self.d.reshape(*batch, self.d.shape[-1]))

    def __getitem__(self, index: object) -> FactorCovBatch:
        """Index the batch dimensions only (``cov[:, j]``, ``cov[b : b + 1, 0]``)."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index) or len(index) > self.d.dim() - 1:
            raise ShapeError(
                f"FactorCovBatch indexes its {self.d.dim() - 1} batch dimension(s) only, got {index!r}"
            )
        return FactorCovBatch(self.F[index], self.d[index])

    def detach(self) -> FactorCovBatch:
        return FactorCovBatch(self.F.detach(), self.d.detach())


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


def sample_factor(returns: Tensor, scale: float = 1.0) -> FactorCovBatch:
    """The sample covariance (``ddof=1``) of a window, times ``scale``, in factor form, batched.

    ``scale * S = F F'`` with ``F = sqrt(scale) R_c' / sqrt(T - 1)`` (``R_c`` the centred returns) and
    ``d = 0``: ``O(T n)``, nothing of size ``n x n``.

    Parameters
    ----------
    returns : Tensor of shape (*batch, T, n)
        Returns of ``T`` rows (``T >= 2``).
    scale : float
        Positive factor (``periods_per_year`` annualises a daily covariance).

    Returns
    -------
    FactorCovBatch
        ``F (*batch, n, T)``, ``d (*batch, n)`` of zeros.
    """
    if returns.dim() < 2 or returns.shape[-2] < 2:
        raise ShapeError(
            f"sample_factor needs returns of shape (*batch, T>=2, n), got {tuple(returns.shape)}"
        )
    if not scale > 0:
        raise ConfigError(f"sample_factor needs scale > 0, got {scale}")
    centred = returns - returns.mean(-2, keepdim=True)
    F_ = centred.transpose(-1, -2) * math.sqrt(scale / (returns.shape[-2] - 1))
    return FactorCovBatch(F_, returns.new_zeros(*returns.shape[:-2], returns.shape[-1]))


def factor_form(form: str, n_assets: int) -> bool:
    """Whether ``form`` (one of :data:`RISK_FORMS`) means the factor form for ``n_assets`` assets."""
    if form not in RISK_FORMS:
        raise ConfigError(f"unknown covariance form {form!r}; choose one of {', '.join(RISK_FORMS)}")
    return form == "factor" or (form == "auto" and n_assets > FACTOR_MIN_ASSETS)


def window_covariance(returns: Tensor, scale: float = 1.0, form: str = "auto") -> Tensor | FactorCovBatch:
    """The sample covariance of a window times ``scale``, dense or in factor form.

    Parameters
    ----------
    returns : Tensor of shape (*batch, T, n)
    scale : float
    form : {"auto", "dense", "factor"}
        ``"auto"``: the factor form for ``n >`` :data:`FACTOR_MIN_ASSETS`.

    Returns
    -------
    Tensor of shape (*batch, n, n) or FactorCovBatch
        :func:`sample_covariance` or :func:`sample_factor`.
    """
    if factor_form(form, returns.shape[-1]):
        return sample_factor(returns, scale)
    return sample_covariance(returns) * scale


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

    def forward(
        self, emb: Tensor, sample_cov: Tensor | FactorCov | None = None, form: str = "dense"
    ) -> Tensor | FactorCovBatch:
        """Covariance matrices, dense or in factor form.

        Parameters
        ----------
        emb : Tensor of shape (batch, n, d)
            Per-asset embeddings.
        sample_cov : Tensor of shape (batch, n, n) or FactorCov, optional
            Sample covariance of the window, required when the head blends; in factor form
            (:func:`sample_factor`, ``F (batch, n, L)``) for a factor-form output.
        form : {"dense", "factor", "auto"}
            Form of the output. ``"auto"``: the factor form when ``sample_cov`` is in factor form, or,
            without a blend, for ``n >`` :data:`FACTOR_MIN_ASSETS`.

        Returns
        -------
        Tensor of shape (batch, n, n) or FactorCovBatch
            Symmetric positive definite; a :class:`FactorCovBatch` with ``F (batch, n, k [+ L])`` and
            ``d (batch, n) > 0`` in factor form (the same matrix, see the module docstring).
        """
        if emb.dim() != 3:
            raise ShapeError(f"RiskHead expects emb of shape (batch, n, d), got {tuple(emb.shape)}")
        batch, n = emb.shape[:2]
        blend = self.blend_logit is not None
        if blend:
            expected = (batch, n, n)
            if sample_cov is None or tuple(sample_cov.shape) != expected:
                got = None if sample_cov is None else tuple(sample_cov.shape)
                raise ShapeError(
                    f"RiskHead(blend=True) needs sample_cov of shape {expected}, got {got}; "
                    "pass the window's sample covariance or build the head with blend=False"
                )
        if form == "auto":
            factor = isinstance(sample_cov, FactorCov) if blend else factor_form("auto", n)
        else:
            factor = factor_form(form, n)
        loadings = self.loadings(emb) / math.sqrt(self.loadings.out_features)  # (batch, n, k)
        idio = F.softplus(self.idiosyncratic(emb)).squeeze(-1)  # (batch, n)
        scale = self.log_scale.exp()
        if factor:
            return self._factor(loadings, idio, scale, sample_cov)
        eye = torch.eye(n, dtype=emb.dtype, device=emb.device)
        factor_cov = scale * (loadings @ loadings.transpose(-1, -2) + torch.diag_embed(idio))
        factor_cov = factor_cov + self.eps * eye
        if not blend:
            return factor_cov
        if isinstance(sample_cov, FactorCov):
            sample_cov = sample_cov.dense()
        a = torch.sigmoid(self.blend_logit)
        cov = (1.0 - a) * factor_cov + a * sample_cov
        return 0.5 * (cov + cov.transpose(-1, -2))

    def _factor(
        self, loadings: Tensor, idio: Tensor, scale: Tensor, sample_cov: Tensor | FactorCov | None
    ) -> FactorCovBatch:
        """``FactorCovBatch`` of the same matrix as the dense path (module docstring)."""
        d = scale * idio + self.eps
        if self.blend_logit is None:
            return FactorCovBatch(scale.sqrt() * loadings, d)
        if not isinstance(sample_cov, FactorCov):
            raise ShapeError(
                "RiskHead in factor form needs the sample covariance in factor form "
                "(models.heads.sample_factor(returns)), got a dense tensor; use form='dense'"
            )
        a = torch.sigmoid(self.blend_logit)
        F_ = torch.cat([((1.0 - a) * scale).sqrt() * loadings, a.sqrt() * sample_cov.F], -1)
        return FactorCovBatch(F_, (1.0 - a) * d + a * sample_cov.d)


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
