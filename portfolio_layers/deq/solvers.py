"""Fixed-point solvers: one generic iteration loop (:func:`iterate`) and one update step per solver.

A solver is a frozen dataclass of hyperparameters: the stopping rule ``tol, atol, max_iter`` of the base
:class:`FixedPointSolver`, plus its own. It has two methods, ``init(z, fz) -> state`` and
``step(state, z, fz) -> (z_next, state)``, acting on flattened iterates ``z, fz`` of shape (batch, D).
Its state is passed in and returned, never stored on the solver. Everything else (residuals,
per-element stopping, best-iterate tracking, non-finite guards, traces) lives in :func:`iterate`,
so a new solver subclasses :class:`FixedPointSolver` and writes only its update.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from portfolio_layers.deq.solution import Status
from portfolio_layers.errors import ConfigError, InputError, NonFiniteError, ShapeError


@dataclass(frozen=True, kw_only=True)
class FixedPointSolver(abc.ABC):
    """Base of the fixed-point solvers: the stopping rule, and the two methods a solver writes.

    Attributes
    ----------
    tol, atol : float
        Element ``b`` has converged when ``||f(z_b) - z_b|| <= atol + tol * ||f(z_b)||`` (norms over the
        flattened element). The relative part accepts any ``z`` that is a fixed point to relative accuracy
        ``tol``, including a far-off iterate when ``f(z) - z`` stays bounded; set ``tol=0`` for an
        absolute criterion only.
    max_iter : int
        Maximum number of solver updates.
    """

    tol: float = 1e-4
    atol: float = 1e-6
    max_iter: int = 50
    name: ClassVar[str]

    def __post_init__(self) -> None:
        what = type(self).__name__
        if not (self.tol >= 0 and self.atol >= 0 and self.tol + self.atol > 0):
            raise ConfigError(
                f"{what}: tol and atol must be >= 0 and not both zero, got tol={self.tol}, atol={self.atol}."
            )
        if int(self.max_iter) != self.max_iter or self.max_iter < 0:
            raise ConfigError(f"{what}: max_iter must be a non-negative integer, got {self.max_iter}.")

    @abc.abstractmethod
    def init(self, z: Tensor, fz: Tensor) -> Any:
        """The solver state before the first step; ``z, fz`` of shape (batch, D)."""

    @abc.abstractmethod
    def step(self, state: Any, z: Tensor, fz: Tensor) -> tuple[Tensor, Any]:
        """The next iterate, of shape (batch, D), and the next state."""


@dataclass(frozen=True)
class Picard(FixedPointSolver):
    """Plain (optionally relaxed) fixed-point iteration ``z <- (1 - relax) z + relax f(z)``.

    Converges linearly at the contraction rate of ``f``. ``relax`` in (0, 1].
    """

    relax: float = 1.0
    name: ClassVar[str] = "picard"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.relax <= 1.0:
            raise ConfigError(f"Picard relax must be in (0, 1], got {self.relax}.")

    def init(self, z: Tensor, fz: Tensor) -> None:
        return None

    def step(self, state: None, z: Tensor, fz: Tensor) -> tuple[Tensor, None]:
        return z + self.relax * (fz - z), None


@dataclass(frozen=True)
class Anderson(FixedPointSolver):
    """Anderson acceleration (type II) with a memory of ``m`` past iterates.

    Picks weights ``alpha`` (summing to one) minimizing ``||sum_i alpha_i (f(z_i) - z_i)||^2 + reg``,
    with a Tikhonov term ``lam`` scaled by the mean squared residual, solved by a Cholesky factorization
    (batched, no LU), then sets ``z <- beta sum_i alpha_i f(z_i) + (1 - beta) sum_i alpha_i z_i``.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    name: ClassVar[str] = "anderson"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m < 1:
            raise ConfigError(f"Anderson memory m must be >= 1, got {self.m}.")
        if not 0.0 < self.beta <= 1.0:
            raise ConfigError(f"Anderson beta must be in (0, 1], got {self.beta}.")
        if self.lam <= 0:
            raise ConfigError(f"Anderson lam must be > 0, got {self.lam}.")

    def init(self, z: Tensor, fz: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return [], []

    def step(self, state: tuple[list[Tensor], list[Tensor]], z: Tensor, fz: Tensor) -> tuple[Tensor, Any]:
        xs, fs = state
        xs = (xs + [z])[-self.m :]
        fs = (fs + [fz])[-self.m :]
        if len(xs) == 1:
            return z + self.beta * (fz - z), (xs, fs)
        X = torch.stack(xs, dim=1)  # (B, k, D)
        F = torch.stack(fs, dim=1)
        G = F - X
        H = G @ G.transpose(1, 2)  # (B, k, k)
        k = H.shape[-1]
        scale = H.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).unsqueeze(-1)
        tiny = torch.finfo(H.dtype).tiny ** 0.5
        eye = torch.eye(k, dtype=H.dtype, device=H.device)
        H = H + (self.lam * scale + tiny) * eye
        L, info = torch.linalg.cholesky_ex(H)
        ones = torch.ones(H.shape[0], k, 1, dtype=H.dtype, device=H.device)
        a = torch.cholesky_solve(ones, L).squeeze(-1)  # (B, k), proportional to alpha
        alpha = a / a.sum(-1, keepdim=True)
        ok = (info == 0) & torch.isfinite(alpha).all(-1)
        fallback = torch.zeros_like(alpha)
        fallback[:, -1] = 1.0  # a failed factorization falls back to a relaxed Picard step
        alpha = torch.where(ok.unsqueeze(-1), alpha, fallback)
        mix_f = (alpha.unsqueeze(-1) * F).sum(1)
        mix_x = (alpha.unsqueeze(-1) * X).sum(1)
        return mix_x + self.beta * (mix_f - mix_x), (xs, fs)


@dataclass(frozen=True)
class Broyden(FixedPointSolver):
    """Limited-memory "good" Broyden method on ``g(z) = f(z) - z``.

    Keeps an inverse-Jacobian estimate ``H = -I + sum_i u_i v_i'`` (the ``memory`` most recent rank-one
    Sherman-Morrison updates) and steps ``z <- z - H g(z)``; the first step is a Picard step.
    Updates with a near-zero denominator ``s'Hy`` are skipped for that element. Safeguard (there is no
    line search): when an element's residual exceeds ``restart`` times the smallest it had, its estimate
    is reset to ``-I`` (a Picard step).
    """

    memory: int = 20
    restart: float = 10.0
    name: ClassVar[str] = "broyden"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory < 1:
            raise ConfigError(f"Broyden memory must be >= 1, got {self.memory}.")
        if self.restart <= 1.0:
            raise ConfigError(f"Broyden restart factor must be > 1, got {self.restart}.")

    def init(self, z: Tensor, fz: Tensor) -> dict[str, Any]:
        B, D = z.shape
        return {"U": z.new_zeros(B, D, 0), "V": z.new_zeros(B, 0, D), "prev": None, "best": None}

    @staticmethod
    def _apply(U: Tensor, V: Tensor, x: Tensor) -> Tensor:
        """``H x = -x + sum_i u_i (v_i' x)``; ``U`` of shape (B, D, k), ``V`` (B, k, D), ``x`` (B, D)."""
        return -x + torch.bmm(U, torch.bmm(V, x.unsqueeze(-1))).squeeze(-1)

    @staticmethod
    def _apply_t(U: Tensor, V: Tensor, x: Tensor) -> Tensor:
        """``x' H`` (as a vector of shape (B, D))."""
        return -x + torch.bmm(torch.bmm(x.unsqueeze(1), U), V).squeeze(1)

    def step(self, state: dict[str, Any], z: Tensor, fz: Tensor) -> tuple[Tensor, dict[str, Any]]:
        U, V = state["U"], state["V"]
        g = fz - z
        gn = g.detach().norm(dim=-1, keepdim=True)
        best = gn if state["best"] is None else torch.minimum(state["best"], gn)
        keep = (gn <= self.restart * best).to(z.dtype)  # 0: reset this element's estimate
        U = U * keep.unsqueeze(-1)
        if state["prev"] is not None:
            z_prev, g_prev = state["prev"]
            s, y = z - z_prev, g - g_prev
            Hy = self._apply(U, V, y)
            sH = self._apply_t(U, V, s)
            denom = (s * Hy).sum(-1, keepdim=True)
            eps = torch.finfo(z.dtype).eps
            ok = denom.abs() > eps * (s.norm(dim=-1, keepdim=True) * Hy.norm(dim=-1, keepdim=True)) + 1e-30
            safe = torch.where(ok, denom, torch.ones_like(denom))
            u = torch.where(ok, (s - Hy) / safe, torch.zeros_like(s)) * keep
            U = torch.cat([U, u.unsqueeze(-1)], dim=-1)[:, :, -self.memory :]
            V = torch.cat([V, sH.unsqueeze(1)], dim=1)[:, -self.memory :]
        z_next = z - self._apply(U, V, g)
        return z_next, {"U": U, "V": V, "prev": (z, g), "best": best}


SOLVERS: dict[str, type[FixedPointSolver]] = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}

SolverLike = str | FixedPointSolver


def make_solver(spec: SolverLike) -> FixedPointSolver:
    """Return a solver from a name (``"picard"``, ``"anderson"``, ``"broyden"``: default settings) or an
    instance (returned as is)."""
    if isinstance(spec, FixedPointSolver):
        return spec
    if isinstance(spec, str) and spec in SOLVERS:
        return SOLVERS[spec]()
    raise ConfigError(
        f"Unknown fixed-point solver {spec!r}: use one of {sorted(SOLVERS)} "
        "or an instance such as Anderson(m=5)."
    )


@dataclass(frozen=True)
class IterateResult:
    """Output of :func:`iterate` (flattened internals, reshaped by the caller)."""

    z: Tensor  # (B, *shape[1:]) best iterate
    status: Tensor
    iterations: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    trace: Tensor | None


def _residuals(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-element ``||f(z) - z||``, its ratio to ``||f(z)||`` and finiteness (read off the norms: a NaN or
    infinite entry makes them non-finite; so does a norm overflowing, which counts as divergence)."""
    with torch.no_grad():
        diff = (fz - z).norm(dim=-1)
        nf = fz.norm(dim=-1)
        finite = torch.isfinite(diff) & torch.isfinite(nf)
        rel = diff / nf.clamp_min(torch.finfo(fz.dtype).tiny)
    return diff, rel, finite, nf


def check_start(z0: object) -> None:
    """Raise a clear error unless ``z0`` is a usable starting point: a finite floating-point Tensor of shape
    (batch, ...) with at least one batch element.

    Raises
    ------
    InputError
        ``z0`` is not a Tensor, or not floating-point (an integer iterate would truncate every update).
    ShapeError
        ``z0`` has no batch dimension, or an empty batch.
    NonFiniteError
        ``z0`` holds NaN or infinite values.
    """
    if not isinstance(z0, Tensor):
        raise InputError(
            f"z0 must be a torch.Tensor of shape (batch, ...), got {type(z0).__name__}; "
            "pass torch.as_tensor(z0, dtype=torch.float64) or torch.zeros(batch, ...)."
        )
    if not z0.is_floating_point():
        raise InputError(
            f"z0 must be a floating-point tensor (float32 or float64), got {z0.dtype}; an integer iterate "
            "would truncate every update: pass z0.double() or torch.zeros(..., dtype=torch.float64)."
        )
    if z0.dim() < 1:
        raise ShapeError("z0 must have a leading batch dimension, shape (batch, ...); got a 0-d tensor.")
    if z0.shape[0] == 0:
        raise ShapeError(
            f"z0 has an empty batch (shape {tuple(z0.shape)}): fixed_point needs at least one batch element; "
            "skip the call when there is nothing to solve."
        )
    if not torch.isfinite(z0).all():
        raise NonFiniteError("z0 holds NaN or infinite values; start from zeros or a finite guess.")


def iterate(
    f: Callable[[Tensor], Tensor], z0: Tensor, solver: FixedPointSolver, *, trace: bool = False
) -> IterateResult:
    """Run ``solver`` on ``z = f(z)`` from ``z0`` with per-batch-element stopping.

    Element ``b`` stops (is frozen) once ``||f(z_b) - z_b|| <= atol + tol * ||f(z_b)||`` (norms over the
    flattened non-batch dimensions), status ``CONVERGED``, or once ``f`` returns non-finite values for it,
    status ``NONFINITE`` (whether at ``z0`` or after some iterations); else it runs ``max_iter`` updates,
    status ``MAX_ITER``. ``f`` is still
    evaluated on the whole batch (it closes over batched inputs), but frozen elements keep their iterate.
    The iterate with the lowest residual seen is returned for every element. Differentiable when run
    with autograd enabled (the ``unrolled`` backward).

    Parameters
    ----------
    f : callable, Tensor of shape (B, ...) -> Tensor of the same shape
    z0 : Tensor of shape (B, ...)
        Starting point, floating-point and finite, ``B >= 1`` (:func:`~portfolio_layers.deq.fixed_point`
        checks it with :func:`check_start`).
    solver : FixedPointSolver
        The update, and the stopping rule ``tol, atol, max_iter``.
    trace : bool
        Record the absolute residual of every element after every iteration.

    Returns
    -------
    IterateResult
    """
    shape, B = z0.shape, z0.shape[0]
    tol, atol = solver.tol, solver.atol

    def g(flat: Tensor) -> Tensor:
        out = f(flat.reshape(shape))
        if not isinstance(out, Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(f"f must map a tensor of shape {tuple(shape)} to the same shape, got {got}.")
        return out.reshape(B, -1)

    z = z0.reshape(B, -1)
    fz = g(z)
    res, rel, finite, nf = _residuals(z, fz)
    conv = finite & (res <= atol + tol * nf)
    active = finite & ~conv
    blown = ~finite  # f turned non-finite for this element (at z0 or at a later iterate): it stops there
    best_z, best_res = z, torch.where(finite, res, torch.full_like(res, math.inf))
    best_rel = torch.where(finite, rel, torch.full_like(rel, math.inf))
    iters = torch.zeros(B, dtype=torch.long, device=z.device)
    traces = [res] if trace else []
    state = solver.init(z, fz)
    for _ in range(int(solver.max_iter)):
        if not bool(active.any()):
            break
        z_next, state = solver.step(state, z, torch.where(finite.unsqueeze(-1), fz, z))
        a = active.unsqueeze(-1)
        z = torch.where(a, z_next, z)
        fz = torch.where(a, g(z), fz)
        iters = iters + active.long()
        res, rel, finite, nf = _residuals(z, fz)
        conv_now = active & finite & (res <= atol + tol * nf)
        better = (active & finite & (res < best_res)) | conv_now
        best_z = torch.where(better.unsqueeze(-1), z, best_z)
        best_res = torch.where(better, res, best_res)
        best_rel = torch.where(better, rel, best_rel)
        conv = conv | conv_now
        blown = blown | (active & ~finite)
        active = active & finite & ~conv_now
        if trace:
            traces.append(res)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.long, device=z.device)
    status = torch.where(blown, torch.full_like(status, int(Status.NONFINITE)), status)
    status = torch.where(conv, torch.full_like(status, int(Status.CONVERGED)), status)
    return IterateResult(
        z=best_z.reshape(shape),
        status=status,
        iterations=iters,
        abs_residual=best_res,
        rel_residual=best_rel,
        trace=torch.stack(traces) if trace else None,
    )
