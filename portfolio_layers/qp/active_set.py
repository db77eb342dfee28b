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

_SOLVED, _FAILED = int(Status.SOLVED), int(Status.NUMERICAL_ERROR)
_STATUS = {1: _SOLVED, 2: _SOLVED, -1: int(Status.PRIMAL_INFEASIBLE), -3: int(Status.DUAL_INFEASIBLE)}
_STATUS[-4] = int(Status.MAX_ITER)
"""DAQP's exit flags as status codes (plain ints: an enum member's lookup costs a microsecond)."""

COMPACT_FROM = 48
"""Size ``n + p + m`` from which the backward gathers its system down to the active set's size."""

_TINY = np.finfo(np.float64).tiny ** 0.5
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

    The constraints are ``lo <= [x; Ax; Gx] <= up`` (DAQP's form: bounds first, then rows).

    Attributes
    ----------
    P : ndarray of shape (B, n, n)
    q : ndarray of shape (B, n)
    R : ndarray of shape (B, p + m, n)
        ``[A; G]``.
    lo, up : ndarray of shape (B, n + p + m)
        ``[lb; b; -inf]`` and ``[ub; b; h]``.
    lo0, up0 : ndarray of shape (B, n + p + m)
        ``lo`` and ``up`` with 0 where infinite.
    c : ndarray of shape (B,)
    p : int
    F : ndarray of shape (B, n, k) or None
        The unnormalized factor loadings of a ``P`` given in factor form (for the backward's gradients).
    """

    P: np.ndarray
    q: np.ndarray
    R: np.ndarray
    lo: np.ndarray
    up: np.ndarray
    lo0: np.ndarray
    up0: np.ndarray
    c: np.ndarray
    p: int
    F: np.ndarray | None = None

    @classmethod
    def of(cls, d: QPData) -> Normalized:
        """The arrays of ``d`` (a ``P`` in factor form is formed densely, once, in numpy)."""
        B, n = d.q.shape
        q, F = _arr(d.q), None
        if isinstance(d.P, Tensor):
            P = _arr(d.P)
            Pmax = np.abs(P).max((-2, -1))
        else:  # F F' + diag(d): positive semidefinite, so max|P| is on the diagonal
            F = _arr(d.P.F)
            P = F @ F.transpose(0, 2, 1)
            P.reshape(B, n * n)[:, :: n + 1] += _arr(d.P.d)
            Pmax = P.reshape(B, n * n)[:, :: n + 1].max(-1)
        c = np.maximum(np.maximum(Pmax, np.abs(q).max(-1)), _TINY)
        s = 1.0 / c
        rows = [_arr(v) for v in (d.A, d.G) if v is not None]
        R = rows[0] if len(rows) == 1 else np.concatenate(rows, 1) if rows else np.zeros((B, 0, n))
        b = [] if d.b is None else [_arr(d.b)]
        up = np.concatenate([_arr(d.ub), *b] + ([] if d.h is None else [_arr(d.h)]), 1)
        lo = np.concatenate([_arr(d.lb), *b] + ([np.full((B, d.m), -np.inf)] if d.m else []), 1)
        arrays = ((P + P.transpose(0, 2, 1)) * (0.5 * s)[:, None, None], q * s[:, None], R, lo, up)
        P, q, R, lo, up = (np.ascontiguousarray(v) for v in arrays)  # DAQP reads C order, not strides
        lo0, up0 = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(up), up, 0.0)
        return cls(P, q, R, lo, up, lo0, up0, c, d.p, F)

    def not_psd(self) -> bool:
        """Whether some ``P`` fails a Cholesky factorization after a shift of ``100 n eps``.

        False without a check for a ``P`` given in factor form (``d > 0`` was checked on input).
        """
        if self.F is not None:
            return False
        n = self.P.shape[-1]
        try:
            np.linalg.cholesky(self.P + 100.0 * n * np.finfo(np.float64).eps * np.eye(n))
        except np.linalg.LinAlgError:
            return True
        return False


@dataclass(frozen=True)
class Solved:
    """The forward's result, numpy arrays with leading dimension ``B`` (unnormalized units).

    ``x (B, n)``; the active set (None when solved for the forward alone): ``lower``/``upper (B, n)``,
    ``rows (B, m)`` (bool) and ``keep (B, n + p + m)``, the free variables then the held rows (every
    equality); ``status (B,)`` (int8), ``iterations (B,)``;
    ``packed (B, p + m + 2n + 3)``: the multipliers ``y``, ``lam``, ``zl``, ``zu`` and ``dual_residual``,
    ``duality_gap``, ``primal_residual`` side by side (read them by name); ``p`` the number of equalities.
    """

    x: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    rows: np.ndarray | None
    keep: np.ndarray | None
    status: np.ndarray
    iterations: np.ndarray
    packed: np.ndarray
    p: int

    def _part(self, i: int, j: int) -> np.ndarray:
        return self.packed[:, i:j]

    @property
    def y(self) -> np.ndarray:
        return self._part(0, self.p)

    @property
    def lam(self) -> np.ndarray:
        return self._part(self.p, -3 - 2 * self.x.shape[1])

    @property
    def zl(self) -> np.ndarray:
        n = self.x.shape[1]
        return self._part(-3 - 2 * n, -3 - n)

    @property
    def zu(self) -> np.ndarray:
        return self._part(-3 - self.x.shape[1], -3)

    @property
    def dual_residual(self) -> np.ndarray:
        return self.packed[:, -3]

    @property
    def gap(self) -> np.ndarray:
        return self.packed[:, -2]

    @property
    def primal_residual(self) -> np.ndarray:
        return self.packed[:, -1]


@functools.cache
def _layout(n: int, p: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAQP's ``sense`` of ``[x; Ax; Gx]`` (``k = p + m`` rows), the mask of the bound columns, and the
    signs of the backward's regularization (``+`` on the variables, ``-`` on the rows)."""
    sense = np.zeros(n + k, dtype=np.intc)
    sense[n : n + p] = _EQUALITY
    bounds = np.zeros(n + k, dtype=bool)
    bounds[:n] = True
    return sense, bounds, np.where(bounds, _REG, -_REG)


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

    def solve(
        self, d: Normalized, warm: tuple[np.ndarray, np.ndarray | None] | None = None, active: bool = True
    ) -> Solved:
        """Solve every element of ``d`` (``active=False``: without the active set, read by the backward only).

        ``warm`` is a previous point ``x (B, n)`` and, optionally, DAQP's multipliers ``(B, n + p + m)``
        in the units of ``d`` (bounds, negative at a lower bound, then ``A``, then ``G``): DAQP starts
        from the active set they indicate (from the multipliers when given, else from the constraints
        nearly active at ``x``). A warm start changes the work, not the solution.
        """
        daqp = _daqp()
        B, n = d.q.shape
        sense = _layout(n, d.p, d.R.shape[1])[0]
        start = None
        if warm is not None:
            start = ("primal_start", warm[0]) if warm[1] is None else ("dual_start", warm[1])
        x, duals, lin = np.empty((B, n)), np.empty((B, n + d.R.shape[1])), -d.q
        flags, iters = [0] * B, np.empty(B, dtype=np.int32)
        for i in range(B):
            kw = {} if start is None else {start[0]: start[1][i]}
            x[i], _, flags[i], info = daqp.solve(
                d.P[i], lin[i], d.R[i], d.up[i], d.lo[i], sense, primal_tol=self.tol,
                iter_limit=self.max_iter, **kw,
            )  # fmt: skip
            duals[i], iters[i] = info["lam"], info["iterations"]
        status = np.array([_STATUS.get(flag, _FAILED) for flag in flags], dtype=np.int8)
        if not np.isfinite(x).all():
            status[(status == _SOLVED) & ~np.isfinite(x).all(1)] = _FAILED
        failed = status != _SOLVED
        if failed.any():
            duals[failed] = 0.0
        return self._finish(d, x, duals, status, iters, active)

    def _finish(
        self,
        d: Normalized,
        x: np.ndarray,
        duals: np.ndarray,
        status: np.ndarray,
        iters: np.ndarray,
        active: bool = True,
    ) -> Solved:
        """Active set, multipliers and residuals of DAQP's point ``x`` and multipliers ``duals``."""
        n, p, tol = x.shape[1], d.p, self.tol
        _, bounds, _ = _layout(n, p, d.R.shape[1])
        xc = np.minimum(np.maximum(x, d.lo[:, :n]), d.up[:, :n])
        v = np.concatenate([xc, _mv(d.R, xc)], 1)  # [x; Ax; Gx]
        # held: a nonzero multiplier, or a zero one and a slack <= tol (1 + |limit|) (none if infinite)
        lower = upper = keep = None
        if active:
            zero = duals == 0
            lower = (duals < 0) | (zero & (v <= d.lo * (1.0 + tol * np.sign(d.lo)) + tol))
            upper = ~lower & ((duals > 0) | (zero & (v >= d.up * (1.0 - tol * np.sign(d.up)) - tol)))
            keep = (lower | upper) ^ bounds  # free variables, held rows
            keep[:, n : n + p] = True
        pos, neg = np.maximum(duals, 0.0), np.maximum(-duals, 0.0)
        comp = neg * (v - d.lo0) + pos * (d.up0 - v)
        comp[:, n : n + p] = 0.0  # no complementarity on the equalities
        g = _mv(d.P, x) - d.q + duals[:, :n] + _mtv(d.R, duals[:, n:])  # the Lagrangian gradient
        c = d.c[:, None]
        viol = np.maximum(np.maximum(v - d.up, d.lo - v).max(-1, keepdims=True), 0.0) / c
        tail = [np.abs(g).max(-1, keepdims=True), comp.sum(-1, keepdims=True), viol]
        packed = np.concatenate([duals[:, n : n + p], pos[:, n + p :], neg[:, :n], pos[:, :n], *tail], 1) * c
        if not active:
            return Solved(xc, None, None, None, None, status, iters, packed, p)
        return Solved(xc, lower[:, :n], upper[:, :n], upper[:, n + p :], keep, status, iters, packed, p)


def adjoint(d: Normalized, sol: Solved, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w (B, n)`` and ``nu (B, p + m)`` of the active-set adjoint system (module docstring).

    Both in unnormalized units; ``nu`` is zero on the inactive rows. Past ``COMPACT_FROM`` unknowns the
    system is gathered down to the kept entries (free variables, held rows; padded with identity rows
    to the batch's largest count): its cost is cubic in that count, not in ``n + p + m``.
    """
    B, n = gx.shape
    N = n + d.R.shape[1]
    keep = sol.keep
    M = np.zeros((B, N, N))
    M[:, :n, :n], M[:, n:, :n], M[:, :n, n:] = d.P, d.R, d.R.transpose(0, 2, 1)
    g = np.concatenate([gx / d.c[:, None], np.zeros((B, N - n))], 1)
    reg = _layout(n, d.p, N - n)[2]
    idx = None
    if N >= COMPACT_FROM:
        count = keep.sum(1)
        K = int(count.max())
        idx = np.argsort(~keep, axis=1, kind="stable")[:, :K]  # the kept entries first, in order
        keep = np.arange(K) < count[:, None]
        M = M[np.arange(B)[:, None, None], idx[:, :, None], idx[:, None, :]]
        g, reg, N = np.take_along_axis(g, idx, 1), reg[idx], K
    M *= keep[:, :, None] & keep[:, None, :]
    M.reshape(B, N * N)[:, :: N + 1] += ~keep  # identity rows: fixed variables, inactive rows, padding
    Mr = M.copy()
    Mr.reshape(B, N * N)[:, :: N + 1] += np.where(keep, reg, 0.0)
    rhs = np.where(keep, g, 0.0)[..., None]
    z = np.linalg.solve(Mr, rhs)
    z = (z + np.linalg.solve(Mr, rhs - M @ z))[..., 0]
    if idx is not None:
        full = np.zeros((B, n + d.R.shape[1]))
        np.put_along_axis(full, idx, z, 1)
        z = full
    return z[:, :n], z[:, n:] * d.c[:, None]


class ActiveSetFunction(torch.autograd.Function):
    """``x = argmin 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub`` by DAQP, for flat batches.

    ``apply(solver, out, warm, P, q, A, b, G, h, lb, ub, d)`` with the tensors of a
    :class:`~portfolio_layers.qp.problem.QPData` (``A``/``b``, ``G``/``h`` may be None); for a ``P`` in
    factor form, ``P`` is ``F (B, n, k)`` and ``d (B, n)`` follows (else None): the gradients go to ``F``
    and ``d`` in ``O(n k)``, no ``n x n`` matrix enters the graph. Returns ``x (B, n)``; ``out`` (a list
    holding the :class:`Normalized` data) receives the :class:`Solved` result.
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
        d_diag: Tensor | None = None,
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
        g = _arr(gx)
        ok = sol.status == _SOLVED
        if not ok.all():  # failed elements get zero gradients
            g = np.where(ok[:, None], g, 0.0)
        w, nu = adjoint(d, sol, g)
        x, p = sol.x, d.p
        need = ctx.needs_input_grad[3:]

        def outer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return u[:, :, None] * v[:, None, :]

        grads = {0: lambda: -0.5 * (outer(w, x) + outer(x, w)), 1: lambda: w}
        if d.F is not None:  # P = F F' + diag(d): dF = -(w x'F + x w'F), dd = -w x (FactorCov.gradients)
            grads[0] = lambda: -(outer(w, _mtv(d.F, x)) + outer(x, _mtv(d.F, w)))
            grads[8] = lambda: -w * x
        for k, (has, mult, adj) in enumerate(
            ((ctx.has_rows[0], sol.y, nu[:, :p]), (ctx.has_rows[1], sol.lam, nu[:, p:]))
        ):
            if has:
                grads[2 + 2 * k] = lambda mult=mult, adj=adj: -(outer(mult, w) + outer(adj, x))
                grads[3 + 2 * k] = lambda adj=adj: adj
        if need[6] or need[7]:
            t = g - _mv(d.P, w) * d.c[:, None] - _mtv(d.R, nu)
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
