"""The ``"active_set"`` backend: DAQP per element in the forward, the exact active-set backward.

For a small problem the interior point's time is per-operation overhead, not arithmetic (a few hundred
batched torch operations per call whatever ``n``: about 4 ms at ``n = 20``). This backend calls DAQP
(a dual active-set solver written in C, ``pip install daqp``) once per batch element on

    minimize 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub,

normalized as for the interior point (``P``, ``q`` divided by ``c = max(|P|, |q|)``), written as
``blower <= [I; A; G] x <= bupper`` with the rows of ``A`` marked as equalities. Its working set at the
optimum is the active set: a bound or inequality row is held when its multiplier is nonzero or its slack
is at most ``tol (1 + |bound|)`` (a weakly active constraint is held, as after the interior point's
polish). Everything around the C solver is a handful of batched numpy operations, not torch ones.

The backward is the exact derivative of the solution with that active set held: one batched solve of

    [ P_FF   C_F' ] [w_F]   [dL/dx_F]
    [ C_F     0   ] [nu ] = [   0   ],     C = [A; G_active],  F the variables not at a bound,

written at full size (a fixed variable or an inactive row gets an identity row, so ``w`` and ``nu`` are
zero there), regularized by ``1e-12`` on the diagonal (``-1e-12`` on the multiplier block: a
quasi-definite matrix, regular even with duplicate rows or ``P`` singular on the free variables) and
refined once against the unregularized system. Its gradients follow the interior point's formulas
(:mod:`portfolio_layers.qp.autograd`); elements that were not solved get zero gradients.

DAQP's exit flags map to statuses: optimal -> SOLVED, infeasible -> PRIMAL_INFEASIBLE, unbounded ->
DUAL_INFEASIBLE, iteration limit -> MAX_ITER, anything else (cycling, non-convex) -> NUMERICAL_ERROR.
The solve runs in float64 on the CPU whatever the input; the results are cast back.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from portfolio_layers.errors import ConfigError
from portfolio_layers.qp.problem import QPData
from portfolio_layers.qp.solution import Status

_EQUALITY = 5
"""DAQP's ``sense`` code of an equality row."""

_STATUS = {1: Status.SOLVED, 2: Status.SOLVED, -1: Status.PRIMAL_INFEASIBLE, -3: Status.DUAL_INFEASIBLE}
_STATUS[-4] = Status.MAX_ITER

_REG = 1e-12
"""Regularization of the backward's KKT matrix (relative to the normalized ``max|P| <= 1``)."""


@functools.cache
def daqp_available() -> bool:
    """Whether ``daqp`` can be imported (checked once)."""
    return importlib.util.find_spec("daqp") is not None


def _daqp():  # noqa: ANN202
    try:
        import daqp
    except ImportError as exc:
        raise ConfigError("backend 'active_set' needs daqp: pip install 'daqp>=0.11'") from exc
    return daqp


@dataclass(frozen=True)
class Normalized:
    """A batch as float64 numpy arrays, ``P`` symmetrized and ``P``, ``q`` divided by ``c``.

    Attributes
    ----------
    P : ndarray of shape (B, n, n)
    q : ndarray of shape (B, n)
    R : ndarray of shape (B, p + m, n)
        ``[A; G]``.
    rhs : ndarray of shape (B, p + m)
        ``[b; h]``.
    lb, ub : ndarray of shape (B, n)
    c : ndarray of shape (B,)
    p : int
    """

    P: np.ndarray
    q: np.ndarray
    R: np.ndarray
    rhs: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    c: np.ndarray
    p: int

    @classmethod
    def of(cls, d: QPData) -> Normalized:
        """The arrays of ``d`` (a ``P`` in factor form is formed densely)."""
        B, n = d.q.shape
        P, q = _arr(d.P if isinstance(d.P, Tensor) else d.P.dense()), _arr(d.q)
        c = np.maximum(np.abs(P).max((-2, -1)), np.abs(q).max(-1))
        c = np.maximum(c, np.finfo(np.float64).tiny ** 0.5)
        P = (P + P.transpose(0, 2, 1)) * (0.5 / c)[:, None, None]
        rows = [_arr(v) for v in (d.A, d.G) if v is not None]
        R = np.concatenate(rows, 1) if rows else np.zeros((B, 0, n))
        rhs = np.concatenate([_arr(v) for v in (d.b, d.h) if v is not None] or [np.zeros((B, 0))], 1)
        arrays = (P, q / c[:, None], R, rhs, _arr(d.lb), _arr(d.ub))  # DAQP reads rows as C-ordered
        return cls(*(np.ascontiguousarray(v) for v in arrays), c, d.p)

    def not_psd(self) -> bool:
        """Whether some ``P`` fails a Cholesky factorization after a shift of ``100 n eps``."""
        n = self.P.shape[-1]
        try:
            np.linalg.cholesky(self.P + 100.0 * n * np.finfo(np.float64).eps * np.eye(n))
        except np.linalg.LinAlgError:
            return True
        return False


@dataclass(frozen=True)
class Solved:
    """The forward's result, float64 numpy arrays with leading dimension ``B`` (unnormalized units).

    ``x (B, n)``, multipliers ``y (B, p)``, ``lam (B, m)``, ``zl``/``zu (B, n)``; the active set
    ``lower``/``upper (B, n)`` and ``rows (B, m)`` (bool); ``status (B,)`` (int8), ``iterations (B,)``,
    ``primal_residual``, ``dual_residual``, ``gap (B,)``.
    """

    x: np.ndarray
    y: np.ndarray
    lam: np.ndarray
    zl: np.ndarray
    zu: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    rows: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    primal_residual: np.ndarray
    dual_residual: np.ndarray
    gap: np.ndarray


@dataclass(frozen=True)
class DualActiveSet:
    """Hyperparameters of the DAQP forward (one solve per batch element).

    Parameters
    ----------
    tol : float
        DAQP's primal feasibility tolerance (absolute, on the normalized problem), also the slack
        below which a constraint with a zero multiplier counts as active.
    max_iter : int
        DAQP's iteration limit (an iteration adds or drops one constraint of the working set; a cold
        solve needs about as many as there are active constraints).
    """

    tol: float = 1e-10
    max_iter: int = 10_000

    def solve(self, d: Normalized, warm: tuple[np.ndarray, np.ndarray | None] | None = None) -> Solved:
        """Solve every element of ``d``.

        ``warm`` is a previous point ``x (B, n)`` and, optionally, DAQP's multipliers ``(B, n + p + m)``
        in the units of ``d`` (bounds, negative at a lower bound, then ``A``, then ``G``): DAQP starts
        from the active set they indicate (from the multipliers when given, else from the constraints
        nearly active at ``x``). A warm start changes the work, not the solution.
        """
        daqp = _daqp()
        B, n = d.q.shape
        k = d.R.shape[1]
        upper = np.ascontiguousarray(np.concatenate([d.ub, d.rhs], 1))
        lower = np.ascontiguousarray(
            np.concatenate([d.lb, d.rhs[:, : d.p], np.full((B, k - d.p), -np.inf)], 1)
        )
        sense = np.zeros(n + k, dtype=np.intc)
        sense[n : n + d.p] = _EQUALITY
        start = (
            {} if warm is None else {"primal_start": warm[0]} if warm[1] is None else {"dual_start": warm[1]}
        )
        x, duals = np.zeros((B, n)), np.zeros((B, n + k))
        flags, iters = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int32)
        for i in range(B):
            x[i], _, flags[i], info = daqp.solve(
                d.P[i], -d.q[i], d.R[i], upper[i], lower[i], sense, primal_tol=self.tol,
                iter_limit=self.max_iter, **{key: v[i] for key, v in start.items()},
            )  # fmt: skip
            duals[i], iters[i] = info["lam"], info["iterations"]
        status = np.array([_STATUS.get(int(f), Status.NUMERICAL_ERROR) for f in flags], dtype=np.int8)
        status[(status == Status.SOLVED) & ~np.isfinite(x).all(1)] = Status.NUMERICAL_ERROR
        duals[status != Status.SOLVED] = 0.0
        return self._finish(d, x, duals, status, iters)

    def _finish(
        self, d: Normalized, x: np.ndarray, duals: np.ndarray, status: np.ndarray, iters: np.ndarray
    ) -> Solved:
        """Active set, multipliers and residuals of DAQP's point ``x`` and multipliers ``duals``."""
        n, p = d.q.shape[1], d.p
        xc = np.minimum(np.maximum(x, d.lb), d.ub)
        zb, y, lr = duals[:, :n], duals[:, n : n + p], duals[:, n + p :]
        ml, mu = np.isfinite(d.lb), np.isfinite(d.ub)
        tl, tu = np.where(ml, xc - d.lb, 0.0), np.where(mu, d.ub - xc, 0.0)
        lower = ml & ((zb < 0) | ((zb == 0) & (tl <= self.tol * (1.0 + np.abs(d.lb)))))
        upper = mu & ~lower & ((zb > 0) | ((zb == 0) & (tu <= self.tol * (1.0 + np.abs(d.ub)))))
        zl, zu = np.maximum(-zb, 0.0), np.maximum(zb, 0.0)
        g = _mv(d.P, x) - d.q + zb + _mtv(d.R, duals[:, n:])  # the Lagrangian gradient
        Rx = _mv(d.R, xc) - d.rhs
        s = -Rx[:, p:]
        rows = (lr > 0) | (s <= self.tol * (1.0 + np.abs(d.rhs[:, p:])))
        lam, s = np.maximum(lr, 0.0), np.maximum(s, 0.0)
        pres = np.concatenate([np.abs(Rx[:, :p]), np.maximum(Rx[:, p:], 0.0), np.zeros((x.shape[0], 1))], 1)
        c = d.c[:, None]
        gap = (zl * tl + zu * tu).sum(-1) + (lam * s).sum(-1)
        return Solved(
            xc, y * c, lam * c, zl * c, zu * c, lower, upper, rows, status, iters,
            pres.max(-1), np.abs(g).max(-1) * d.c, gap * d.c,
        )  # fmt: skip


def adjoint(d: Normalized, sol: Solved, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w (B, n)`` and ``nu (B, p + m)`` of the active-set adjoint system (module docstring).

    Both in unnormalized units; ``nu`` is zero on the inactive rows.
    """
    B, n = gx.shape
    k = d.R.shape[1]
    free = ~(sol.lower | sol.upper)
    act = np.concatenate([np.ones((B, d.p), dtype=bool), sol.rows], 1)
    C = d.R * free[:, None, :] * act[:, :, None]
    M = np.zeros((B, n + k, n + k))
    M[:, :n, :n] = d.P * free[:, :, None] * free[:, None, :]
    M[:, n:, :n], M[:, :n, n:] = C, C.transpose(0, 2, 1)
    diag = np.concatenate([~free, ~act], 1).astype(np.float64)
    reg = np.concatenate([np.where(free, _REG, 0.0), np.where(act, -_REG, 0.0)], 1)
    idx = np.arange(n + k)
    M[:, idx, idx] += diag
    Mr = M.copy()
    Mr[:, idx, idx] += reg
    rhs = np.concatenate([np.where(free, gx / d.c[:, None], 0.0), np.zeros((B, k))], 1)[..., None]
    z = np.linalg.solve(Mr, rhs)
    z += np.linalg.solve(Mr, rhs - M @ z)
    return z[:, :n, 0], z[:, n:, 0] * d.c[:, None]


class ActiveSetFunction(torch.autograd.Function):
    """``x = argmin 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub`` by DAQP, for flat batches.

    ``apply(solver, out, warm, P, q, A, b, G, h, lb, ub)`` with the tensors of a
    :class:`~portfolio_layers.qp.problem.QPData` (``A``/``b``, ``G``/``h`` may be None). Returns
    ``x (B, n)``; ``out`` (an empty list) receives the :class:`Normalized` data and the
    :class:`Solved` result.
    """

    @staticmethod
    def forward(  # (no setup_context: with one, apply binds the arguments by inspect, 10% of a call)
        ctx: Any,
        solver: DualActiveSet,
        out: list,
        warm: tuple[np.ndarray, np.ndarray | None] | None,
        P: Tensor,
        q: Tensor,
        A: Tensor | None,
        b: Tensor | None,
        G: Tensor | None,
        h: Tensor | None,
        lb: Tensor,
        ub: Tensor,
    ) -> Tensor:
        d = out[0]
        sol = solver.solve(d, warm)
        out.append(sol)
        ctx.d, ctx.sol, ctx.has_rows = d, sol, (A is not None, G is not None)
        return as_tensor_like(sol.x, q)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        d: Normalized = ctx.d
        sol: Solved = ctx.sol
        ok = (sol.status == Status.SOLVED)[:, None]
        w, nu = adjoint(d, sol, np.where(ok, _arr(gx), 0.0))
        w, nu = w * ok, nu * ok
        x, p = sol.x, d.p
        need = ctx.needs_input_grad[3:]

        def outer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return u[:, :, None] * v[:, None, :]

        grads = {0: lambda: -0.5 * (outer(w, x) + outer(x, w)), 1: lambda: w}
        for k, (has, mult, adj) in enumerate(
            ((ctx.has_rows[0], sol.y, nu[:, :p]), (ctx.has_rows[1], sol.lam, nu[:, p:]))
        ):
            if has:
                grads[2 + 2 * k] = lambda mult=mult, adj=adj: -(outer(mult, w) + outer(adj, x))
                grads[3 + 2 * k] = lambda adj=adj: adj
        if need[6] or need[7]:
            t = _arr(gx) - _mv(d.P, w) * d.c[:, None] - _mtv(d.R, nu)
            grads[6], grads[7] = lambda: np.where(sol.lower, t, 0.0), lambda: np.where(sol.upper, t, 0.0)
        return None, None, None, *(as_tensor_like(grads[i](), gx) if r else None for i, r in enumerate(need))


def _arr(v: Tensor) -> np.ndarray:
    """``v`` as a float64 numpy array (no copy for a float64 CPU tensor)."""
    v = v.detach()
    return (v if v.dtype == torch.float64 and v.device.type == "cpu" else v.to("cpu", torch.float64)).numpy()


def as_tensor_like(v: np.ndarray, like: Tensor) -> Tensor:
    """``v`` as a tensor with the dtype and device of ``like`` (no copy when those are float64, CPU)."""
    t = torch.from_numpy(np.ascontiguousarray(v))
    return t if like.dtype == torch.float64 and like.device.type == "cpu" else t.to(like.device, like.dtype)


def _mv(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``M v`` for a batch: ``M (B, r, n)``, ``v (B, n)`` -> ``(B, r)``."""
    return (M @ v[..., None])[..., 0]


def _mtv(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``M' v`` for a batch: ``M (B, r, n)``, ``v (B, r)`` -> ``(B, n)``."""
    return (v[:, None, :] @ M)[:, 0]
