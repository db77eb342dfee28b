"""Batched primal-dual interior point (Mehrotra predictor-corrector) for convex QPs, in torch.

Solves ``minimize 1/2 x'Px - q'x  s.t.  Ax = b, Gx + s = h, s >= 0, lb <= x <= ub`` for a whole
batch at once (no Python loop over the batch). Bounds are native: the bound slacks ``x - lb`` and
``ub - x`` are kept strictly positive and enter the reduced matrix as a diagonal (see
:mod:`portfolio_layers.qp.kkt`). Elements that finish (solved, infeasible, failed) leave the active
set, so the remaining iterations only work on the unfinished ones.

The solver expects ``P`` and ``q`` normalized so that ``max(|P|, |q|) <= 1`` (done by
:func:`portfolio_layers.qp.layer.solve_qp`); tolerances are then absolute on the dual side and
relative to ``1 + max|b|, |h|`` on the primal side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from portfolio_layers.errors import InputError
from portfolio_layers.qp.kkt import AugmentedKKT, LowRankKKT, ReducedKKT, factor_newton, factor_point, mtv, mv
from portfolio_layers.qp.l1 import SplitCost, core, split
from portfolio_layers.qp.polish import Polished, guess_active, polish_corrected
from portfolio_layers.qp.problem import BatchRecord, Bounds, QPData, bound_error
from portfolio_layers.qp.solution import Status
from portfolio_layers.qp.split_kkt import SplitKKT, factor_split
from portfolio_layers.qp.split_polish import SplitPolished, guess_split, polish_split_corrected

_UNDECIDED = -1
"""Status code of an element still iterating (never returned)."""


@dataclass(frozen=True)
class IPMState(BatchRecord):
    """Iterate of the interior point for a batch ``B`` (also the result and a warm start).

    ``x (B, n)``, ``s``/``lam`` ``(B, m)`` (or None), ``zl``/``zu`` ``(B, n)``, ``y (B, p)`` (or None).
    """

    x: Tensor
    s: Tensor | None
    lam: Tensor | None
    zl: Tensor
    zu: Tensor
    y: Tensor | None

    def put(self, idx: Tensor, other: IPMState) -> None:
        for dst, src in zip(self._fields(), other._fields(), strict=True):
            if dst is not None:
                dst.index_copy_(0, idx, src)

    def _fields(self) -> tuple[Tensor | None, ...]:
        return (self.x, self.s, self.lam, self.zl, self.zu, self.y)


@dataclass(frozen=True)
class IPMResult:
    """Output of :meth:`InteriorPoint.solve` (all tensors with leading dimension ``B``)."""

    state: IPMState
    status: Tensor
    iterations: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    gap: Tensor
    polished: list[tuple[Tensor, Polished | SplitPolished]] = field(default_factory=list)
    """Chunks ``(batch indices, Polished)`` of the elements finished by polishing (for the backward)."""


@dataclass(frozen=True)
class InteriorPoint:
    """Hyperparameters of the Mehrotra predictor-corrector interior point.

    Parameters
    ----------
    tol : float
        Tolerance on the primal residual (relative to ``1 + max|b|, |h|``), the dual residual and
        the mean complementarity ``mu``.
    max_iter : int
        Iteration limit; unfinished elements get :attr:`Status.MAX_ITER`.
    step_fraction : float
        Fraction of the step to the boundary of the positive orthant that is taken.
    shift : float
        Diagonal shift added to the reduced matrix before its Cholesky factorization.
    polish_mu : float
        Once residuals and ``mu`` are below this, active-set polishing is tried (again each time
        ``mu`` has dropped 10x); a successful polish finishes the element. 0 disables polishing.
    polish_eps : float
        Feasibility / dual-sign tolerance for accepting a polished point.
    polish_rounds : int
        Active-set corrections allowed per polish (:func:`~portfolio_layers.qp.polish.polish_corrected`).
    """

    tol: float = 1e-9
    max_iter: int = 50
    step_fraction: float = 0.99
    shift: float = 1e-13
    polish_mu: float = 1e-6
    polish_eps: float = 1e-9
    polish_rounds: int = 10

    def solve(self, data: QPData, warm_start: IPMState | None = None) -> IPMResult:
        """Solve the batch ``data`` (normalized as described in the module docstring).

        ``lb < ub`` is assumed wherever both are finite (see :func:`check_distinct_bounds`). With
        ``data.l1``, the split problem over ``z = [x, u, v]`` is solved (see
        :mod:`portfolio_layers.qp.l1`): the state is that of ``z`` (``x[:, :n]`` the solution), and
        ``warm_start`` must be one too (:func:`~portfolio_layers.qp.warm.warm_state` makes it).
        A warm start is polished at once (its active set tried first); the interior point
        continues from it where that fails.
        """
        if data.l1 is not None and not isinstance(data.P, SplitCost):
            data = split(data)
        B, dt, dev = data.P.shape[0], data.P.dtype, data.P.device
        bnd = Bounds.of(data)
        status = torch.full((B,), _UNDECIDED, dtype=torch.int8, device=dev)
        pre = data if data.l1 is None else core(data)
        status[_presolve_infeasible(pre, Bounds.of(pre), self.tol)] = Status.PRIMAL_INFEASIBLE
        init = initial_point(data, bnd) if warm_start is None else warm_start
        out = IPMState(*(None if v is None else v.clone() for v in init._fields()))
        iters = torch.zeros(B, dtype=torch.int32, device=dev)
        ws: dict[str, Tensor] = {}  # workspaces reused across iterations (the active batch only shrinks)
        pres, dres, gap = (torch.full((B,), torch.nan, dtype=dt, device=dev) for _ in range(3))
        chunks: list[tuple[Tensor, Polished]] = []

        idx = (status == _UNDECIDED).nonzero().squeeze(-1)
        whole = idx.numel() == B  # the usual case: no copy of the batch
        sub, st = (data, init) if whole else (data.take(idx), init.take(idx))
        sb = bnd.take(idx)
        failed = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
        last_try = torch.full((idx.numel(),), torch.inf, dtype=dt, device=dev)
        for it in range(self.max_iter + 1):
            if idx.numel() == 0:
                break
            r = _residuals(sub, st, sb)
            code = torch.full_like(idx, _UNDECIDED, dtype=torch.int8)
            code[r.below(self.tol, sb.pscale)] = Status.SOLVED
            if self.polish_mu > 0:
                near = r.below(self.polish_mu, sb.pscale) & (r.mu <= 0.1 * last_try)
                try_ = (code == Status.SOLVED) | (
                    (code == _UNDECIDED) & (near | (warm_start is not None and it == 0))
                )
                if bool(try_.any()):
                    t = try_.nonzero().squeeze(-1)
                    last_try[t] = r.mu[t]
                    st, r, parts = self._polish(sub, sb, st, r, t)
                    for rows, pol in parts:
                        code[rows] = Status.SOLVED
                        chunks.append((idx[rows], pol))
            code[(code == _UNDECIDED) & _farkas(sub, st, sb)] = Status.PRIMAL_INFEASIBLE
            code[(code == _UNDECIDED) & _unbounded(sub, st)] = Status.DUAL_INFEASIBLE
            code[(code == _UNDECIDED) & (failed | ~r.finite)] = Status.NUMERICAL_ERROR
            if it == self.max_iter:
                code[code == _UNDECIDED] = Status.MAX_ITER
            done = code != _UNDECIDED
            if bool(done.any()):
                d = done.nonzero().squeeze(-1)
                gi = idx[d]
                out.put(gi, st.take(d))
                status[gi], iters[gi] = code[d], it
                pres[gi], dres[gi], gap[gi] = r.pres[d], r.dres[d], r.mu[d] * sb.pairs[d]
                keep = (~done).nonzero().squeeze(-1)
                idx = idx[keep]
                if idx.numel() == 0:
                    break
                sub, sb, st, r = (v.take(keep) for v in (sub, sb, st, r))
                last_try = last_try[keep]
            st, failed = self._step(sub, sb, st, r, ws)
        return IPMResult(out, status, iters, pres, dres, gap, chunks)

    def _polish(
        self, d: QPData, bnd: Bounds, st: IPMState, r: _Residuals, t: Tensor
    ) -> tuple[IPMState, _Residuals, list[tuple[Tensor, Polished]]]:
        """Try active-set polishing on the elements ``t`` of the batch.

        Returns the state and residuals with the accepted polished points put in, and the accepted
        chunks ``(indices into the batch, Polished)``.
        """
        dt, s_t = d.take(t), st.take(t)
        if d.l1 is None:
            act = guess_active(dt, s_t.x, s_t.s, s_t.lam, s_t.zl, s_t.zu)
            done = polish_corrected(dt, act, self.shift, self.polish_eps, self.polish_rounds)
        else:
            act = guess_split(dt, s_t.x, s_t.s, s_t.lam, s_t.zl, s_t.zu)
            done = polish_split_corrected(dt, act, self.shift, self.polish_eps)
        parts = [(t[k], pol) for k, pol in done]
        if not parts:
            return st, r, parts
        good = torch.zeros(st.x.shape[0], dtype=torch.bool, device=st.x.device)
        full = IPMState(*(None if v is None else v.clone() for v in st._fields()))
        for rows, pol in parts:
            good[rows] = True
            Gr = None if d.G is None else d.G[rows] if isinstance(d.G, Tensor) else d.G.take(rows)
            s_new = None if Gr is None else (d.h[rows] - mv(Gr, pol.x)).clamp_min(0.0)
            full.put(rows, IPMState(pol.x, s_new, pol.lam, pol.zl, pol.zu, pol.y))
        g = good.nonzero().squeeze(-1)  # residuals of all polished points at once
        r_new = _residuals(d.take(g), full.take(g), bnd.take(g))
        merged = (
            None if a is None else a.index_copy(0, g, b)
            for a, b in zip(vars(r).values(), vars(r_new).values(), strict=True)
        )
        return full, _Residuals(*merged), parts

    def _step(self, d: QPData, bnd: Bounds, st: IPMState, r: _Residuals, ws: dict) -> tuple[IPMState, Tensor]:
        """One predictor-corrector step; returns the new state and a factorization-failure mask."""
        fl, fu = bnd.has_lb.to(d.P.dtype), bnd.has_ub.to(d.P.dtype)
        dG = None if d.G is None else st.lam / st.s
        d_x = fl * st.zl / r.tl + fu * st.zu / r.tu
        if d.l1 is None:
            K = factor_newton(d.P, d.A, d.G, dG, d_x, self.shift, ws)
        else:
            K = factor_split(d, dG, d_x, self.shift, ws)
        aff = _direction(
            K, d, st, r, st.s * st.lam if d.G is not None else None, fl * r.tl * st.zl, fu * r.tu * st.zu
        )
        a_aff = _max_step(st, r, aff, bnd, 1.0)
        comp = _complementarity(st, r, aff, a_aff, fl, fu)
        ratio = comp / (r.mu * bnd.pairs).clamp_min(torch.finfo(comp.dtype).tiny)
        sigma = torch.where(r.mu > 0, ratio.clamp(0.0, 1.0).pow(3), 0.0)
        sm = (sigma * r.mu).unsqueeze(-1)
        rs = None if d.G is None else st.s * st.lam + aff.s * aff.lam - sm
        rl = fl * (r.tl * st.zl + aff.x * aff.zl - sm)
        ru = fu * (r.tu * st.zu - aff.x * aff.zu - sm)
        cor = _direction(K, d, st, r, rs, rl, ru)
        a = _max_step(st, r, cor, bnd, self.step_fraction).unsqueeze(-1)
        new = IPMState(
            st.x + a * cor.x,
            None if d.G is None else st.s + a * cor.s,
            None if d.G is None else st.lam + a * cor.lam,
            st.zl + a * cor.zl,
            st.zu + a * cor.zu,
            None if d.A is None else st.y + a * cor.y,
        )
        finite = torch.stack([torch.isfinite(v).all(-1) for v in new._fields() if v is not None]).all(0)
        bad = ~K.ok | ~finite
        if bool(bad.any()):  # keep the last finite iterate of a failing element
            keep = bad.unsqueeze(-1)
            new = IPMState(
                *(
                    None if v is None else torch.where(keep, o, v)
                    for v, o in zip(new._fields(), st._fields(), strict=True)
                )
            )
        return new, bad

    def factor_at(self, data: QPData, state: IPMState) -> ReducedKKT | AugmentedKKT | LowRankKKT | SplitKKT:
        """The KKT factorization at ``state`` used by the implicit backward.

        Without general inequalities: the reduced Cholesky (with refinement). With
        them: an LDL' of the augmented system (see :class:`~portfolio_layers.qp.kkt.AugmentedKKT`).
        With ``P`` in factor form: the capacitance factorization of the augmented system
        (see :func:`~portfolio_layers.qp.kkt.factor_point`). A split problem (``data.l1``, split
        here if it is not yet): its Newton system at ``state`` (the general rows eliminated with ``lam / s``).
        """
        if data.l1 is not None and not isinstance(data.P, SplitCost):
            data = split(data)
        bnd, dt = Bounds.of(data), data.P.dtype
        tl, tu = bnd.slacks(state.x)
        d_x = bnd.has_lb.to(dt) * state.zl / tl + bnd.has_ub.to(dt) * state.zu / tu
        if data.l1 is not None:
            return factor_split(data, None if data.G is None else state.lam / state.s, d_x, self.shift, {})
        W = None if data.G is None else state.s / state.lam
        return factor_point(data.P, d_x, data.A, data.G, W, self.shift)


@dataclass(frozen=True)
class _Residuals(BatchRecord):
    rd: Tensor
    rp: Tensor | None
    rg: Tensor | None
    tl: Tensor
    tu: Tensor
    mu: Tensor
    pres: Tensor
    dres: Tensor
    finite: Tensor

    def below(self, tol: float, pscale: Tensor) -> Tensor:
        """Elements with ``pres <= tol * pscale``, ``dres <= tol`` and ``mu <= tol``, shape (B,)."""
        return (self.pres <= tol * pscale) & (self.dres <= tol) & (self.mu <= tol)


def _residuals(d: QPData, st: IPMState, bnd: Bounds) -> _Residuals:
    rd = mv(d.P, st.x) - d.q - st.zl + st.zu
    pres = torch.zeros_like(bnd.pairs)
    rp = rg = None
    comp = (torch.where(bnd.has_lb, st.x - bnd.lb, 0.0) * st.zl).sum(-1) + (
        torch.where(bnd.has_ub, bnd.ub - st.x, 0.0) * st.zu
    ).sum(-1)
    if d.A is not None:
        rd = rd + mtv(d.A, st.y)
        rp = mv(d.A, st.x) - d.b
        pres = torch.maximum(pres, rp.abs().amax(-1))
    if d.G is not None:
        rd = rd + mtv(d.G, st.lam)
        rg = mv(d.G, st.x) + st.s - d.h
        pres = torch.maximum(pres, rg.abs().amax(-1))
        comp = comp + (st.s * st.lam).sum(-1)
    tl, tu = bnd.slacks(st.x)
    dres = rd.abs().amax(-1)
    finite = torch.isfinite(dres) & torch.isfinite(pres) & torch.isfinite(comp)
    return _Residuals(rd, rp, rg, tl, tu, comp / bnd.pairs, pres, dres, finite)


def _direction(K: ReducedKKT, d: QPData, st: IPMState, r: _Residuals, rs, rl, ru) -> IPMState:
    """Newton direction for complementarity targets ``rs`` (ineq), ``rl``/``ru`` (bounds)."""
    rhs = -r.rd - rl / r.tl + ru / r.tu
    if d.G is not None:
        rhs = rhs - mtv(d.G, (st.lam * r.rg - rs) / st.s)
    dx, dy = K.solve(rhs, None if d.A is None else -r.rp)
    ds = dlam = None
    if d.G is not None:
        ds = -r.rg - mv(d.G, dx)
        dlam = (-rs - st.lam * ds) / st.s
    dzl = _present(st.zl) * (-rl - st.zl * dx) / r.tl
    dzu = _present(st.zu) * (-ru + st.zu * dx) / r.tu
    return IPMState(dx, ds, dlam, dzl, dzu, dy)


def _present(z: Tensor) -> Tensor:
    """1 where a bound exists (its multiplier is kept > 0), 0 where it is infinite (multiplier 0)."""
    return (z > 0).to(z.dtype)


def _max_step(st: IPMState, r: _Residuals, dd: IPMState, bnd: Bounds, frac: float) -> Tensor:
    """Largest step (times ``frac``, at most 1) keeping every slack and multiplier positive."""
    vs = [r.tl, r.tu, st.zl, st.zu]  # one concatenated ratio test: few ops on small tensors
    ds = [torch.where(bnd.has_lb, dd.x, 0.0), torch.where(bnd.has_ub, -dd.x, 0.0), dd.zl, dd.zu]
    if st.s is not None:
        vs += [st.s, st.lam]
        ds += [dd.s, dd.lam]
    v, dv = torch.cat(vs, -1), torch.cat(ds, -1)
    neg = dv < 0
    a = torch.where(neg, v / torch.where(neg, -dv, 1.0), torch.inf).amin(-1)
    return (frac * a).clamp(max=1.0)


def _complementarity(st: IPMState, r: _Residuals, dd: IPMState, a: Tensor, fl, fu) -> Tensor:
    a1 = a.unsqueeze(-1)
    c = (fl * (r.tl + a1 * dd.x) * (st.zl + a1 * dd.zl)).sum(-1)
    c = c + (fu * (r.tu - a1 * dd.x) * (st.zu + a1 * dd.zu)).sum(-1)
    if st.s is not None:
        c = c + ((st.s + a1 * dd.s) * (st.lam + a1 * dd.lam)).sum(-1)
    return c


def initial_point(d: QPData, bnd: Bounds) -> IPMState:
    """Centre of the box (or 1 inside a one-sided bound), unit multipliers, slacks >= 1."""
    ml, mu, lb0, ub0 = bnd.has_lb, bnd.has_ub, bnd.lb, bnd.ub
    both = ml & mu
    x = torch.where(both, 0.5 * (lb0 + ub0), torch.where(ml, lb0 + 1.0, torch.where(mu, ub0 - 1.0, 0.0)))
    one = torch.ones_like(x)
    zl, zu = torch.where(ml, one, 0.0), torch.where(mu, one, 0.0)
    s = lam = y = None
    if d.G is not None:
        s = (d.h - mv(d.G, x)).clamp_min(1.0)
        lam = torch.ones_like(s)
    if d.A is not None:
        y = torch.zeros_like(d.b)
    return IPMState(x, s, lam, zl, zu, y)


def _presolve_infeasible(d: QPData, bnd: Bounds, tol: float) -> Tensor:
    """Elements whose bounds alone contradict a constraint row (a quick, exact test)."""
    ml, mu, lb0, ub0 = bnd.has_lb, bnd.has_ub, bnd.lb, bnd.ub
    bad = (d.lb > d.ub).any(-1)
    for M, rhs, eq in ((d.A, d.b, True), (d.G, d.h, False)):
        if M is None:
            continue
        pos, neg = M > 0, M < 0
        lo_fin = ~((pos & ~ml.unsqueeze(-2)) | (neg & ~mu.unsqueeze(-2))).any(-1)
        hi_fin = ~((pos & ~mu.unsqueeze(-2)) | (neg & ~ml.unsqueeze(-2))).any(-1)
        lo = torch.where(pos, M * lb0.unsqueeze(-2), torch.where(neg, M * ub0.unsqueeze(-2), 0.0)).sum(-1)
        hi = torch.where(pos, M * ub0.unsqueeze(-2), torch.where(neg, M * lb0.unsqueeze(-2), 0.0)).sum(-1)
        margin = 1e3 * tol * (1.0 + rhs.abs())
        bad = bad | (lo_fin & (lo > rhs + margin)).any(-1)
        if eq:
            bad = bad | (hi_fin & (hi < rhs - margin)).any(-1)
    return bad


def _farkas(d: QPData, st: IPMState, bnd: Bounds) -> Tensor:
    """Elements whose normalized multipliers are a certificate of primal infeasibility."""
    nrm = torch.maximum(st.zl.abs().amax(-1), st.zu.abs().amax(-1))
    cert_b = (bnd.ub * st.zu).sum(-1) - (bnd.lb * st.zl).sum(-1)
    cert_r = st.zu - st.zl
    if d.A is not None:
        nrm = torch.maximum(nrm, st.y.abs().amax(-1))
        cert_b = cert_b + (d.b * st.y).sum(-1)
        cert_r = cert_r + mtv(d.A, st.y)
    if d.G is not None:
        nrm = torch.maximum(nrm, st.lam.abs().amax(-1))
        cert_b = cert_b + (d.h * st.lam).sum(-1)
        cert_r = cert_r + mtv(d.G, st.lam)
    nrm = nrm.clamp_min(1.0)
    big = nrm > 1e6
    return big & (cert_r.abs().amax(-1) <= 1e-6 * nrm) & (cert_b < -1e-6 * nrm)


def _unbounded(d: QPData, st: IPMState) -> Tensor:
    """Elements whose primal iterate diverges along a direction of descent with ``P d ~ 0``."""
    nx = st.x.abs().amax(-1)
    big = nx > 1e8
    if not bool(big.any()):  # skips the matrix-vector product in the usual case
        return big
    xn = st.x / nx.clamp_min(1.0).unsqueeze(-1)
    return big & (mv(d.P, xn).abs().amax(-1) <= 1e-6) & ((d.q * xn).sum(-1) > 0)


def check_distinct_bounds(d: QPData) -> None:
    """Raise :class:`InputError` naming the entries with ``lb == ub`` (the interior point needs ``lb < ub``).

    Called by :func:`~portfolio_layers.qp.layer.solve_qp` on the data as given (so the message
    indexes the broadcast bounds ``(*batch, n)``); :meth:`InteriorPoint.solve` assumes it passed.
    """
    equal = d.lb == d.ub
    if bool(equal.any()):
        raise InputError(
            f"{bound_error(d, equal, '==')[1]}: the interior point needs lb < ub; fix such a variable with "
            "an equality row of A instead (or widen the bounds slightly)"
        )
