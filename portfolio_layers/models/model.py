"""The end-to-end network: encoder -> risk and return heads -> differentiable QP -> portfolio weights.

At each decision the network solves the long-only mean-variance problem

    minimize  1/2 gamma w' Sigma w - mu' w
    s.t.      sum_i w_i = 1,  0 <= w_i <= max_weight,  sum_i |w_i - w_prev_i| <= turnover_limit (optional)

with ``Sigma`` from :class:`~portfolio_layers.models.heads.RiskHead`, ``mu`` from
:class:`~portfolio_layers.models.heads.ReturnHead` and a learnable risk aversion ``gamma > 0``; the QP layer
(:mod:`portfolio_layers.qp`) differentiates the solution, so a loss on the weights trains everything. With a
:class:`~portfolio_layers.models.decision.DecisionLayer` (what :class:`E2EPortfolio` builds) the problem also
pays a trading cost ``kappa sum_i |w_i - w_prev_i|`` and has a gated prior at equal weight.

For many assets ``Sigma`` can be kept in factor form (``risk_form``, :mod:`~portfolio_layers.models.heads`):
the risk head returns a :class:`~portfolio_layers.models.heads.FactorCovBatch` and the QP is solved in that
form, with the same weights and gradients as the dense form and no ``n x n`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.decision import DecisionLayer, check_cap
from portfolio_layers.models.heads import RISK_FORMS, FactorCovBatch, ReturnHead, RiskHead
from portfolio_layers.qp import FactorCov

__all__ = ["E2ENet", "NetOutput", "portfolio_qp_layer"]


@dataclass(frozen=True)
class NetOutput:
    """Output of :class:`E2ENet`.

    Attributes
    ----------
    weights : Tensor of shape (batch, n) or None
        Portfolio weights (``None`` from :meth:`E2ENet.predict`, which skips the QP).
    mu : Tensor of shape (batch, n)
        Expected annualised returns.
    cov : Tensor of shape (batch, n, n) or FactorCovBatch
        Annualised covariance (positive definite), dense or in factor form (``F (batch, n, r)``,
        ``d (batch, n)``).
    risk_aversion : Tensor of shape ()
    deq : DEQInfo or None
        The DEQ encoder's report: its equilibrium's ``solution`` and ``jacobian_loss`` (``None`` for explicit
        encoders).
    qp : QPSolution or None
        Diagnostics of the QP solve.
    """

    weights: Tensor | None
    mu: Tensor
    cov: Tensor
    risk_aversion: Tensor
    deq: object | None = None
    qp: object | None = None


def portfolio_qp_layer(
    n_assets: int,
    *,
    max_weight: float | None = None,
    turnover_limit: float | None = None,
    tol: float | None = None,
    max_iter: int = 50,
) -> nn.Module:
    """The QP layer of the long-only, fully invested portfolio problem (optional cap and turnover limit).

    ``minimize 1/2 w'Pw - q'w  s.t.  1'w = 1,  0 <= w <= max_weight,  sum_i |w_i - x0_i| <= turnover_limit``

    Parameters
    ----------
    n_assets : int
        ``n``.
    max_weight : float, optional
        Per-asset cap ``u`` (needs ``n * u >= 1``).
    turnover_limit : float, optional
        Bound on the turnover against the previous weights ``x0`` given at solve time.
    tol, max_iter
        Solver options of :class:`portfolio_layers.qp.QPLayer`.

    Returns
    -------
    portfolio_layers.qp.QPLayer
        Built with ``throw=False``: failed solves are reported in ``QPSolution.status``, not raised.
    """
    from portfolio_layers import qp

    check_cap(max_weight, n_assets)
    constraints = qp.fully_invested(n_assets) & qp.long_only(n_assets)
    if max_weight is not None:
        constraints = constraints & qp.weight_cap(n_assets, max_weight)
    if turnover_limit is not None:
        constraints = constraints & qp.turnover_limit(n_assets, turnover_limit)
    return qp.QPLayer(constraints, tol=tol, max_iter=max_iter, throw=False)


class E2ENet(nn.Module):
    """Encoder, heads, QP: ``forward(x, sample_cov, previous) -> NetOutput`` with portfolio weights.

    Parameters
    ----------
    encoder : nn.Module
        ``encoder(x (batch, T, n, F)) -> (emb (batch, n, d), info)``, see models.encoders.
    d_model : int
        Embedding size ``d`` of the encoder.
    qp_layer : DecisionLayer or portfolio_layers.qp.QPLayer
        The portfolio QP (see :class:`~portfolio_layers.models.decision.DecisionLayer` and
        :func:`portfolio_qp_layer`); its ``solve(P, q, x0)`` gives a ``QPSolution`` whose first ``n`` entries
        of ``x`` are the weights.
    n_factors : int
        Factors of the risk head.
    blend_sample_cov : bool
        Let the risk head blend toward the window's sample covariance.
    blend_init : float
        Initial weight of the sample covariance in the blend.
    risk_aversion : float
        Initial ``gamma`` (annualised units).
    return_scale : float
        Initial output scale of the return head (annualised); small values start the model near the
        minimum-variance portfolio of its risk model.
    learn_risk_aversion : bool
        Train ``gamma`` (else it stays fixed).
    risk_form : {"auto", "dense", "factor"}
        Form of ``Sigma`` and of the QP (:meth:`RiskHead.forward`): ``"auto"`` follows the sample covariance
        it is given (factor form from :func:`~portfolio_layers.models.heads.sample_factor`, which
        :class:`~portfolio_layers.models.samples.WindowData` gives for more than
        :data:`~portfolio_layers.models.heads.FACTOR_MIN_ASSETS` assets); ``"dense"`` always forms
        ``n x n`` (a factor-form sample covariance is made dense); ``"factor"`` needs a factor-form sample
        covariance when blending.
    """

    def __init__(
        self,
        encoder: nn.Module,
        d_model: int,
        qp_layer: nn.Module,
        *,
        n_factors: int = 3,
        blend_sample_cov: bool = True,
        blend_init: float = 0.5,
        risk_aversion: float = 5.0,
        return_scale: float = 0.1,
        learn_risk_aversion: bool = True,
        risk_form: str = "auto",
    ) -> None:
        super().__init__()
        if risk_aversion <= 0:
            raise ConfigError(f"risk_aversion must be positive, got {risk_aversion}")
        if risk_form not in RISK_FORMS:
            raise ConfigError(f"unknown risk_form {risk_form!r}; choose one of {', '.join(RISK_FORMS)}")
        self.risk_form = risk_form
        self.encoder = encoder
        self.risk = RiskHead(d_model, n_factors, blend=blend_sample_cov, blend_init=blend_init)
        self.returns = ReturnHead(d_model, scale_init=return_scale)
        self.qp = qp_layer
        raw = torch.tensor(math.log(math.expm1(risk_aversion)))  # softplus^{-1}
        self.raw_risk_aversion = nn.Parameter(raw, requires_grad=learn_risk_aversion)

    @property
    def needs_previous(self) -> bool:
        """Whether the QP uses the previous weights (a cost term or a turnover limit): training feeds them."""
        return bool(getattr(self.qp, "needs_x0", False))

    @property
    def risk_aversion(self) -> Tensor:
        """``gamma = softplus(raw) > 0``, shape ()."""
        return F.softplus(self.raw_risk_aversion)

    def predict(self, x: Tensor, sample_cov: Tensor | None = None) -> NetOutput:
        """Forecasts only (no QP): expected returns and covariance.

        Parameters
        ----------
        x : Tensor of shape (batch, T, n, F)
        sample_cov : Tensor of shape (batch, n, n) or FactorCov, optional
            Annualised sample covariance of the window (required with ``blend_sample_cov``), dense or in
            factor form.
        """
        emb, info = self.encoder(x)
        cov = self.risk(emb, sample_cov, form=self.risk_form)
        return NetOutput(None, self.returns(emb), cov, self.risk_aversion, info)

    def forward(
        self, x: Tensor, sample_cov: Tensor | None = None, previous: Tensor | None = None
    ) -> NetOutput:
        """Portfolio weights.

        Parameters
        ----------
        x : Tensor of shape (batch, T, n, F)
            Feature windows.
        sample_cov : Tensor of shape (batch, n, n) or FactorCov, optional
            Annualised sample covariance of the window, dense or in factor form.
        previous : Tensor of shape (batch, n), optional
            Drifted weights before the trade, used by a cost term or a turnover limit (missing: no
            position for a :class:`DecisionLayer`, equal weights for a plain ``QPLayer``'s turnover limit).
        """
        return self.decide(self.predict(x, sample_cov), previous)

    def decide(self, pred: NetOutput, previous: Tensor | None = None) -> NetOutput:
        """The QP step alone, on the forecasts of :meth:`predict` (training encodes a whole chain at once).

        Parameters
        ----------
        pred : NetOutput
            From :meth:`predict`: ``mu (batch, n)``, ``cov (batch, n, n)`` (or in factor form),
            ``risk_aversion``.
        previous : Tensor of shape (batch, n), optional
            Drifted weights before the trade.
        """
        n = pred.mu.shape[-1]
        if previous is not None and previous.shape != pred.mu.shape:
            raise ShapeError(
                f"previous weights must have shape {tuple(pred.mu.shape)}, got {tuple(previous.shape)}"
            )
        if not self.needs_previous:
            previous = None
        elif previous is None and not isinstance(self.qp, DecisionLayer):
            previous = torch.full_like(pred.mu, 1.0 / n)
        solution = self.qp.solve(_times(pred.cov, pred.risk_aversion), pred.mu, previous)
        return NetOutput(solution.x[..., :n], pred.mu, pred.cov, pred.risk_aversion, pred.deq, solution)

    def project_(self) -> None:
        """Project constrained parameters back after an optimizer step (the decision layer's ``tau >= 0``)."""
        project = getattr(self.qp, "project_", None)
        if project is not None:
            project()


def _times(cov: Tensor | FactorCov, gamma: Tensor) -> Tensor | FactorCov:
    """``gamma * cov`` for a dense covariance or one in factor form (``gamma > 0``)."""
    if isinstance(cov, FactorCov):
        return FactorCovBatch(cov.F * gamma.sqrt(), cov.d * gamma)
    return gamma * cov
