"""Factor-structured cost matrices: ``P = F F' + diag(d)`` without ever forming ``n x n``.

A :class:`FactorCov` is accepted wherever a dense ``P`` is (:func:`~portfolio_layers.qp.solve_qp`,
:class:`~portfolio_layers.qp.QPLayer`). Its algebra here is ``O(n k)``: products with ``P``, the
diagonal, the normalization of the solver and the gradients to ``F`` and ``d``. The factorizations
of the KKT systems with such a ``P`` (diagonal plus low rank, by the capacitance matrix) are in
:mod:`portfolio_layers.qp.kkt`, behind the same interface as the dense ones.

``d > 0`` is required (not ``d >= 0``): the factorizations invert the diagonal, so a zero
idiosyncratic variance would have to be replaced by a shift anyway. A singular ``P`` (``d = 0``)
can be passed densely, or with ``d`` floored at a small multiple of ``max diag P``; accuracy
degrades as ``min d / max diag P`` falls (below about ``1e-10`` in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.errors import InputError, ShapeError


@dataclass(frozen=True)
class FactorCov:
    """A positive definite cost matrix in factor form, ``P = F F' + diag(d)``.

    Parameters
    ----------
    F : Tensor of shape (*batch, n, k)
        Factor loadings (scaled so that ``F F'`` is the factor part of ``P``); ``k >= 0`` factors.
    d : Tensor of shape (*batch, n)
        Idiosyncratic variances, ``d > 0`` (checked when solving, see the module docstring).

    The batch dimensions of ``F`` and ``d`` broadcast against each other and against the other QP
    inputs, as those of a dense ``P`` do. ``shape``, ``dtype`` and ``device`` are those of the
    dense ``P`` it stands for, so it passes where code only asks for them.

    Raises
    ------
    InputError, ShapeError
        ``F`` or ``d`` is not a float32/float64 tensor, they are on different devices, or their
        shapes do not fit (``F.shape[-2] != d.shape[-1]``, batch dimensions that do not broadcast).
    """

    F: Tensor
    d: Tensor

    def __post_init__(self) -> None:
        F, d = self.F, self.d
        for name, v in (("F", F), ("d", d)):
            if not isinstance(v, Tensor):
                raise InputError(f"FactorCov.{name} must be a torch.Tensor, got {type(v).__name__}")
            if v.dtype not in (torch.float32, torch.float64):
                raise InputError(f"FactorCov.{name} must be float32 or float64, got {v.dtype}")
        if F.device != d.device:
            raise InputError(f"FactorCov: F is on {F.device} but d on {d.device}; put both on one device")
        if F.dim() < 2 or d.dim() < 1 or F.shape[-2] != d.shape[-1] or d.shape[-1] == 0:
            raise ShapeError(
                f"FactorCov expects F (*batch, n, k) and d (*batch, n) with n >= 1, got F {tuple(F.shape)} "
                f"and d {tuple(d.shape)}"
            )
        try:
            if F.shape[:-2] != d.shape[:-1]:  # (torch's broadcast_shapes costs ~20 us a call)
                torch.broadcast_shapes(F.shape[:-2], d.shape[:-1])
        except RuntimeError as exc:
            raise ShapeError(
                f"FactorCov: the batch dimensions of F {tuple(F.shape)} and d {tuple(d.shape)} do not "
                "broadcast"
            ) from exc

    @property
    def shape(self) -> torch.Size:
        """``(*batch, n, n)``: the shape of the dense ``P``."""
        n, fb, db = self.d.shape[-1], self.F.shape[:-2], self.d.shape[:-1]
        return torch.Size((*(fb if fb == db else torch.broadcast_shapes(fb, db)), n, n))

    @property
    def dtype(self) -> torch.dtype:
        return torch.promote_types(self.F.dtype, self.d.dtype)

    @property
    def device(self) -> torch.device:
        return self.F.device

    @property
    def k(self) -> int:
        """Number of factors."""
        return self.F.shape[-1]

    def dense(self) -> Tensor:
        """``F F' + diag(d)`` of shape ``(*batch, n, n)`` (``O(n^2 k)``: for tests and other backends)."""
        return self.F @ self.F.mT + torch.diag_embed(self.d)

    def diagonal(self) -> Tensor:
        """``diag(P)`` of shape ``(*batch, n)``."""
        return (self.F * self.F).sum(-1) + self.d

    def take(self, idx: Tensor) -> FactorCov:
        """The sub-batch ``idx`` (a 1-D index tensor) of a flat batch ``F (B, n, k)``, ``d (B, n)``."""
        return FactorCov(self.F.index_select(0, idx), self.d.index_select(0, idx))

    def mv(self, x: Tensor) -> Tensor:
        """``P x`` for a flat batch, ``x (B, n)`` -> ``(B, n)``."""
        Ftx = (x.unsqueeze(-2) @ self.F).squeeze(-2)
        return (Ftx.unsqueeze(-2) @ self.F.mT).squeeze(-2) + self.d * x

    def gradients(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients to ``F (B, n, k)`` and ``d (B, n)`` of a loss whose gradient to ``P`` is ``u x'``.

        With ``G = u x'`` (``u``, ``x`` of shape ``(B, n)``): ``dF = (G + G') F`` and ``dd = diag(G)``,
        in ``O(n k)`` without forming ``G``.
        """
        xF = (x.unsqueeze(-2) @ self.F).squeeze(-2)
        uF = (u.unsqueeze(-2) @ self.F).squeeze(-2)
        return u.unsqueeze(-1) * xF.unsqueeze(-2) + x.unsqueeze(-1) * uF.unsqueeze(-2), u * x


def normalize(P: FactorCov, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scale ``F (B, n, k)``, ``d (B, n)``, ``q (B, n)`` to ``max(|P|, |q|) = 1``, as the solver expects.

    Returns the scaled ``F``, ``d``, ``q`` (differentiable) and the scale ``c (B,)``: ``P / c`` is
    ``(F / sqrt(c)) (F / sqrt(c))' + diag(d / c)``. ``max|P| = max diag P`` since ``P`` is positive
    semidefinite, an ``O(n k)`` computation.
    """
    with torch.no_grad():
        c = torch.maximum(P.diagonal().amax(-1), q.abs().amax(-1))
        c = c.clamp_min(torch.finfo(q.dtype).tiny ** 0.5)
    return P.F * c.rsqrt()[:, None, None], P.d / c[:, None], q / c[:, None], c
