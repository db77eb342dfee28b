"""Constructors for the portfolio constraints users write most, as QP data for :class:`QPLayer`.

Each constructor returns a :class:`LinearConstraints` on the weights ``w (n,)``; combine them with
:func:`combine` (or ``&``). Gross-exposure (leverage) and turnover limits are not linear in ``w``;
they are kept as numbers. :class:`~portfolio_layers.qp.layer.QPLayer` lifts a leverage limit with
auxiliary variables ``u >= |w|`` (``1'u <= max_gross``); it passes a turnover limit to the solver
natively (an :class:`~portfolio_layers.qp.l1.L1Cost` with that limit), except together with a
leverage limit, when it is lifted too (``t >= |w - w0|``, ``1't <= max_turnover``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.errors import ConfigError, InfeasibleError, ShapeError

_F64 = torch.float64


@dataclass(frozen=True)
class LinearConstraints:
    """``A w = b``, ``G w <= h``, ``lb <= w <= ub`` plus optional gross and turnover limits.

    Bounds with ``lb > ub`` somewhere raise :class:`~portfolio_layers.errors.InfeasibleError` on
    construction (so ``combine`` of contradicting bounds fails where it is written).

    Attributes
    ----------
    n : int
    A : Tensor of shape (p, n);  b : Tensor of shape (p,)
    G : Tensor of shape (m, n);  h : Tensor of shape (m,)
    lb, ub : Tensor of shape (n,)
        ``-inf`` / ``+inf`` where unbounded.
    max_gross : float or None
        Limit on ``sum |w|`` (leverage).
    max_turnover : float or None
        Limit on ``sum |w - w0|`` where ``w0`` are the previous weights given at solve time.
    """

    n: int
    A: Tensor
    b: Tensor
    G: Tensor
    h: Tensor
    lb: Tensor
    ub: Tensor
    max_gross: float | None = None
    max_turnover: float | None = None

    def __post_init__(self) -> None:
        crossed = self.lb > self.ub
        if bool(crossed.any()):
            j = crossed.nonzero().squeeze(-1).tolist()
            shown = "; ".join(
                f"asset {i}: lower {float(self.lb[i]):.6g} > upper {float(self.ub[i]):.6g}" for i in j[:3]
            )
            raise InfeasibleError(
                f"the weight bounds cross at {len(j)} asset(s) ({shown}{', ...' if len(j) > 3 else ''}), "
                "so no portfolio satisfies them: lower the floor or raise the cap of those assets"
            )

    def __and__(self, other: LinearConstraints) -> LinearConstraints:
        return combine(self, other)


def _empty(n: int, **kw: object) -> LinearConstraints:
    base = dict(
        n=n,
        A=torch.zeros(0, n, dtype=_F64),
        b=torch.zeros(0, dtype=_F64),
        G=torch.zeros(0, n, dtype=_F64),
        h=torch.zeros(0, dtype=_F64),
        lb=torch.full((n,), -math.inf, dtype=_F64),
        ub=torch.full((n,), math.inf, dtype=_F64),
    )
    base.update(kw)
    return LinearConstraints(**base)


def _check_n(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (number of assets) must be a positive int, got {n!r}")
    return n


def _vector(name: str, v: float | Sequence[float] | Tensor, n: int) -> Tensor:
    t = torch.as_tensor(v, dtype=_F64)
    if t.dim() == 0:
        t = t.expand(n).clone()
    if t.shape != (n,):
        raise ShapeError(f"{name} must be a number or have shape ({n},), got {tuple(t.shape)}")
    if bool(torch.isnan(t).any()):
        raise ConfigError(f"{name} holds NaN")
    return t


def fully_invested(n: int, total: float = 1.0) -> LinearConstraints:
    """``sum(w) = total`` (budget constraint)."""
    _check_n(n)
    return _empty(n, A=torch.ones(1, n, dtype=_F64), b=torch.tensor([float(total)], dtype=_F64))


def long_only(n: int) -> LinearConstraints:
    """``w >= 0``."""
    return _empty(_check_n(n), lb=torch.zeros(n, dtype=_F64))


def weight_bounds(
    n: int,
    lower: float | Sequence[float] | Tensor = -math.inf,
    upper: float | Sequence[float] | Tensor = math.inf,
) -> LinearConstraints:
    """``lower <= w <= upper`` (numbers or per-asset vectors ``(n,)``)."""
    _check_n(n)
    return _empty(n, lb=_vector("lower", lower, n), ub=_vector("upper", upper, n))


def weight_cap(n: int, cap: float | Sequence[float] | Tensor) -> LinearConstraints:
    """Per-asset cap ``w <= cap`` (a number or a vector ``(n,)``)."""
    _check_n(n)
    return _empty(n, ub=_vector("cap", cap, n))


def group_caps(groups: Sequence[int] | Tensor, caps: Sequence[float] | dict[int, float]) -> LinearConstraints:
    """``sum(w[groups == g]) <= caps[g]`` for each group ``g``.

    Parameters
    ----------
    groups : sequence of int of length n
        Group label of each asset (for example a sector id).
    caps : sequence of float (indexed by label) or dict label -> cap
    """
    g = torch.as_tensor(groups)
    if g.dim() != 1 or g.dtype.is_floating_point:
        raise ShapeError(f"groups must be a 1-D sequence of int labels, got shape {tuple(g.shape)}")
    labels = sorted(set(g.tolist()))
    cap_of = dict(caps) if isinstance(caps, dict) else dict(enumerate(caps))
    missing = [lab for lab in labels if lab not in cap_of]
    if missing:
        raise ConfigError(f"no cap given for groups {missing}; give one cap per group label")
    G = torch.stack([(g == lab).to(_F64) for lab in labels])
    h = torch.tensor([float(cap_of[lab]) for lab in labels], dtype=_F64)
    return _empty(len(g), G=G, h=h)


def leverage_limit(n: int, max_gross: float) -> LinearConstraints:
    """Gross exposure ``sum |w| <= max_gross`` (lifted with ``n`` auxiliary variables)."""
    if not max_gross > 0:
        raise ConfigError(f"max_gross must be positive, got {max_gross}")
    return _empty(_check_n(n), max_gross=float(max_gross))


def turnover_limit(n: int, max_turnover: float) -> LinearConstraints:
    """``sum |w - w0| <= max_turnover`` where ``w0`` (previous weights) is passed at solve time."""
    if not max_turnover >= 0:
        raise ConfigError(f"max_turnover must be >= 0, got {max_turnover}")
    return _empty(_check_n(n), max_turnover=float(max_turnover))


def combine(*parts: LinearConstraints) -> LinearConstraints:
    """Intersection of constraint sets on the same ``n`` (bounds intersect, limits take the minimum)."""
    if not parts:
        raise ConfigError("combine needs at least one constraint set")
    n = parts[0].n
    if any(c.n != n for c in parts):
        raise ShapeError(f"constraint sets are for different n: {[c.n for c in parts]}")

    def lim(vals: list[float | None]) -> float | None:
        v = [x for x in vals if x is not None]
        return min(v) if v else None

    return LinearConstraints(
        n=n,
        A=torch.cat([c.A for c in parts]),
        b=torch.cat([c.b for c in parts]),
        G=torch.cat([c.G for c in parts]),
        h=torch.cat([c.h for c in parts]),
        lb=torch.stack([c.lb for c in parts]).amax(0),
        ub=torch.stack([c.ub for c in parts]).amin(0),
        max_gross=lim([c.max_gross for c in parts]),
        max_turnover=lim([c.max_turnover for c in parts]),
    )


def lift(c: LinearConstraints, turnover: bool = True) -> dict[str, Tensor | int]:
    """QP data over ``z = [w, t (turnover), u (gross)]``; the turnover ``h`` rows need ``w0``.

    ``turnover=False`` leaves a turnover limit out (``z = [w, u]``): it is then passed to the
    solver natively, as an :class:`~portfolio_layers.qp.l1.L1Cost`. Returns a dict with ``N`` (size
    of z), ``A``, ``b``, ``G``, ``h``, ``lb``, ``ub`` (float64) and
    ``turnover_rows`` (slice of the rows of ``G``/``h`` whose right side is ``+w0`` then ``-w0``).
    """
    n = c.n
    max_turnover = c.max_turnover if turnover else None
    k = int(max_turnover is not None) + int(c.max_gross is not None)
    N = n * (1 + k)
    pad = torch.zeros
    A = torch.cat([c.A, pad(c.A.shape[0], N - n, dtype=_F64)], 1)
    G_rows, h_rows = [torch.cat([c.G, pad(c.G.shape[0], N - n, dtype=_F64)], 1)], [c.h]
    eye = torch.eye(n, dtype=_F64)
    col = n
    start = c.G.shape[0]
    turnover_rows = slice(0, 0)
    for limit, is_turnover in ((max_turnover, True), (c.max_gross, False)):
        if limit is None:
            continue
        blk = pad(2 * n + 1, N, dtype=_F64)
        blk[:n, :n], blk[n : 2 * n, :n] = eye, -eye
        blk[:n, col : col + n] = -eye
        blk[n : 2 * n, col : col + n] = -eye
        blk[2 * n, col : col + n] = 1.0
        rhs = torch.zeros(2 * n + 1, dtype=_F64)
        rhs[2 * n] = limit
        if is_turnover:
            turnover_rows = slice(start, start + 2 * n)
        G_rows.append(blk)
        h_rows.append(rhs)
        start += 2 * n + 1
        col += n
    lb = torch.cat([c.lb, torch.zeros(N - n, dtype=_F64)])
    ub = torch.cat([c.ub, torch.full((N - n,), math.inf, dtype=_F64)])
    return dict(
        N=N, A=A, b=c.b, G=torch.cat(G_rows), h=torch.cat(h_rows), lb=lb, ub=ub, turnover_rows=turnover_rows
    )
