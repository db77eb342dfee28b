"""Native L1 trading costs: ``kappa ||x - x0||_1`` in the objective and the limit ``||x - x0||_1 <= tau``.

The problem with an :class:`L1Cost` is

    minimize 1/2 x'Px - q'x + kappa'|x - x0|   s.t.  Ax = b, Gx <= h, lb <= x <= ub, 1'|x - x0| <= tau.

The interior point splits the trades, ``x - x0 = u - v`` with ``u, v >= 0``, and iterates on ``z = [x,
u, v]`` (``3n`` entries; vector work only): the cost ``blkdiag(P, 0, 0)`` (:class:`SplitCost`), the
linear term ``[q, -kappa, -kappa]``, the rows ``[A 0 0; I -I I] z = [b; x0]`` and ``[G 0 0; 0 1' 1'] z
<= [h; tau]`` (:class:`SplitRows`, never formed), bounds ``[lb, 0, 0] <= z <= [ub, inf, inf]``. The
blocks of ``u`` and ``v`` in a Newton system are diagonal (their barrier terms) plus, with a limit,
one rank-one term (the limit row), so :mod:`portfolio_layers.qp.split_kkt` eliminates them by a
Schur complement: each step factors an ``n x n`` system (``P`` plus a diagonal and one rank-one
term), or the capacitance system of a :class:`~portfolio_layers.qp.factor.FactorCov` with one
extra column (``O(n k^2)``), never the tripled problem. The active-set polish and the backward
work on ``x`` alone (:mod:`portfolio_layers.qp.split_polish`): assets that do not trade are held at
``x_i = x0_i``, the others carry the cost ``kappa_i sign(x_i - x0_i)`` and a limit row ``sign'(x -
x0) <= tau`` when the limit binds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.kkt import mtv, mv
from portfolio_layers.qp.problem import BatchRecord, QPData, as_tensor, check_finite, expand_batch


@dataclass(frozen=True)
class L1Cost:
    """An L1 trading cost and / or a turnover limit around previous weights ``x0``.

    Adds ``kappa'|x - x0|`` to the objective of :func:`~portfolio_layers.qp.solve_qp` and, with
    ``limit``, the constraint ``sum |x - x0| <= limit`` (see the module docstring).

    Parameters
    ----------
    x0 : Tensor of shape (n,) or (*batch, n)
        Previous weights (finite).
    kappa : float or Tensor of shape (), (n,) or (*batch, n)
        Cost per unit traded, ``>= 0`` (0: the limit alone).
    limit : float or Tensor of shape () or (*batch,), optional
        Turnover limit ``tau >= 0``; None for no limit.
    """

    x0: Tensor
    kappa: Tensor | float = 0.0
    limit: Tensor | float | None = None


@dataclass(frozen=True)
class L1Data(BatchRecord):
    """An :class:`L1Cost` validated and flattened to the batch ``B`` of its :class:`QPData`.

    ``x0``, ``kappa (B, n)``; ``tau (B,)`` or None without a limit.
    """

    x0: Tensor
    kappa: Tensor
    tau: Tensor | None


def attach(d: QPData, l1: L1Cost) -> QPData:
    """``d`` with ``l1`` validated, broadcast with it (the batch may grow) and attached as ``d.l1``.

    Raises
    ------
    ShapeError, NonFiniteError, InputError
        Shapes that do not fit ``n`` or do not broadcast, non-finite values (naming the field).
    ConfigError
        ``kappa < 0`` or ``limit < 0``.
    """
    if not isinstance(l1, L1Cost):
        raise ConfigError(f"l1 must be an L1Cost(x0, kappa, limit), got {type(l1).__name__}")
    n, like = d.n, d.q
    x0 = check_finite("l1.x0", as_tensor("l1.x0", l1.x0, like), "previous weights must be finite")
    kappa = check_finite("l1.kappa", as_tensor("l1.kappa", l1.kappa, like))
    tau = None if l1.limit is None else check_finite("l1.limit", as_tensor("l1.limit", l1.limit, like))
    if x0.dim() == 0 or x0.shape[-1] != n:
        raise ShapeError(f"l1.x0 must have shape (n,) or (*batch, n) with n = {n}, got {tuple(x0.shape)}")
    if kappa.dim() == 0:
        kappa = kappa.expand(n)
    if kappa.shape[-1] != n:
        raise ShapeError(
            f"l1.kappa must be a number or have shape (*batch, n), n = {n}; got {tuple(kappa.shape)}"
        )
    for name, v in (("kappa", kappa), ("limit", tau)):
        if v is not None and bool((v < 0).any()):
            raise ConfigError(f"l1.{name} must be >= 0, got a minimum of {float(v.min()):.3g}")
    shapes = [d.batch_shape, x0.shape[:-1], kappa.shape[:-1]] + ([] if tau is None else [tau.shape])
    try:
        batch = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError as exc:
        raise ShapeError(
            f"the batch dimensions of the QP {d.batch_shape}, l1.x0 {tuple(x0.shape)}, l1.kappa "
            f"{tuple(kappa.shape)} and l1.limit {None if tau is None else tuple(tau.shape)} do not broadcast"
        ) from exc
    d = expand_batch(d, batch)
    B, dt = math.prod(batch), d.q.dtype

    def flat(v: Tensor, *core: int) -> Tensor:
        return v.to(dt).expand((*batch, *core)).reshape(B, *core)

    return QPData(
        *d.tensors(),
        batch_shape=batch,
        l1=L1Data(flat(x0, n), flat(kappa, n), None if tau is None else flat(tau)),
    )


@dataclass(frozen=True)
class SplitCost(BatchRecord):
    """The cost ``blkdiag(P, 0, 0)`` over ``z = [x, u, v] (B, 3n)``; ``P (B, n, n)`` or a FactorCov."""

    P: Tensor | FactorCov

    @property
    def n(self) -> int:
        return self.P.shape[-1]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.P.shape[0], 3 * self.n, 3 * self.n))

    @property
    def dtype(self) -> torch.dtype:
        return self.P.dtype

    @property
    def device(self) -> torch.device:
        return self.P.device

    def take(self, idx: Tensor) -> SplitCost:
        return SplitCost(self.P.take(idx) if isinstance(self.P, FactorCov) else self.P.index_select(0, idx))

    def mv(self, z: Tensor) -> Tensor:
        """``[P x, 0, 0]`` for ``z (B, 3n)``."""
        n = self.n
        return torch.cat([mv(self.P, z[:, :n]), z.new_zeros(z.shape[0], 2 * n)], -1)


@dataclass(frozen=True)
class SplitRows(BatchRecord):
    """Rows over ``z = [x, u, v]``: ``[M 0 0]``, then ``[I -I I]`` or ``[0 1' 1']`` by ``kind``.

    Attributes
    ----------
    core : Tensor of shape (B, r, n) or None
        The rows ``M`` of the problem on ``x`` (``A`` or ``G``).
    n : int
    kind : {"trades", "limit", "none"}
        "trades": then the ``n`` rows ``x - u + v`` (equalities, right side ``x0``); "limit": then the
        row ``1'u + 1'v`` (right side ``tau``); "none": ``[M 0 0]`` alone.
    """

    core: Tensor | None
    n: int
    kind: str

    @property
    def r(self) -> int:
        """Rows of ``core`` (0 without)."""
        return 0 if self.core is None else self.core.shape[-2]

    @property
    def shape(self) -> torch.Size:
        extra = {"trades": self.n, "limit": 1, "none": 0}[self.kind]
        return torch.Size((-1, self.r + extra, 3 * self.n))

    def take(self, idx: Tensor) -> SplitRows:
        return SplitRows(None if self.core is None else self.core.index_select(0, idx), self.n, self.kind)

    def mv(self, z: Tensor) -> Tensor:
        n = self.n
        x, u, v = z[:, :n], z[:, n : 2 * n], z[:, 2 * n :]
        parts = [] if self.core is None else [mv(self.core, x)]
        if self.kind == "trades":
            parts.append(x - u + v)
        elif self.kind == "limit":
            parts.append((u + v).sum(-1, keepdim=True))
        return torch.cat(parts, -1)

    def mtv(self, y: Tensor) -> Tensor:
        n, r = self.n, self.r
        y0, y1 = y[:, :r], y[:, r:]
        zero = y.new_zeros(y.shape[0], n)
        if self.kind == "trades":
            gx, gu, gv = y1, -y1, y1
        elif self.kind == "limit":
            gx, gu, gv = zero, y1.expand(-1, n), y1.expand(-1, n)
        else:
            gx, gu, gv = zero, zero, zero
        if self.core is not None:
            gx = gx + mtv(self.core, y0)
        return torch.cat([gx, gu, gv], -1)


def split(d: QPData) -> QPData:
    """The problem over ``z = [x, u, v]`` (module docstring) of a ``d`` with ``d.l1``; ``.l1`` is kept."""
    L, n = d.l1, d.n
    B = d.q.shape[0]
    G, h = None, d.h
    if L.tau is not None:
        G = SplitRows(d.G, n, "limit")
        h = L.tau.unsqueeze(-1) if d.h is None else torch.cat([d.h, L.tau.unsqueeze(-1)], -1)
    elif d.G is not None:
        G = SplitRows(d.G, n, "none")
    return QPData(
        SplitCost(d.P),
        torch.cat([d.q, -L.kappa, -L.kappa], -1),
        SplitRows(d.A, n, "trades"),
        L.x0 if d.b is None else torch.cat([d.b, L.x0], -1),
        G,
        h,
        torch.cat([d.lb, d.q.new_zeros(B, 2 * n)], -1),
        torch.cat([d.ub, torch.full((B, 2 * n), torch.inf, dtype=d.q.dtype, device=d.q.device)], -1),
        d.batch_shape,
        L,
    )


def core(d: QPData) -> QPData:
    """The problem on ``x`` of a ``split`` problem ``d`` (with ``.l1``)."""
    n, p, m = d.P.n, d.A.r, 0 if d.G is None else d.G.r
    return QPData(
        d.P.P,
        d.q[:, :n],
        d.A.core,
        None if d.A.core is None else d.b[:, :p],
        None if d.G is None else d.G.core,
        None if d.G is None or d.G.core is None else d.h[:, :m],
        d.lb[:, :n],
        d.ub[:, :n],
        d.batch_shape,
        d.l1,
    )


def dense_split(d: QPData, ridge: float) -> QPData:
    """The split problem of ``d`` (with ``d.l1``) as dense QP data over ``z = [x, u, v] (B, 3n)``.

    For the backends without native L1 support. ``u`` and ``v`` get the cost ``ridge * max|P|``
    on the diagonal so that they are unique where the cost is zero and the limit does not bind.
    """
    L, n = d.l1, d.n
    P = d.P.dense() if isinstance(d.P, FactorCov) else d.P
    B, dt, dev = P.shape[0], P.dtype, P.device
    r = ridge * P.detach().abs().amax((-2, -1)).clamp_min(1e-300)
    eye = torch.eye(n, dtype=dt, device=dev).expand(B, n, n)
    Pz = torch.zeros(B, 3 * n, 3 * n, dtype=dt, device=dev)
    Pz[:, :n, :n] = P
    Pz[:, n:, n:].diagonal(dim1=-2, dim2=-1).copy_(r.unsqueeze(-1).expand(B, 2 * n))
    zero = torch.zeros(B, 0, 2 * n, dtype=dt, device=dev)

    def pad(M: Tensor | None) -> Tensor:
        return zero if M is None else torch.cat([M, M.new_zeros(B, M.shape[-2], 2 * n)], -1)

    A = torch.cat([pad(d.A), torch.cat([eye, -eye, eye], -1)], -2)
    b = L.x0 if d.b is None else torch.cat([d.b, L.x0], -1)
    G, h = (None if d.G is None else pad(d.G)), d.h
    if L.tau is not None:
        row = torch.cat(
            [torch.zeros(B, 1, n, dtype=dt, device=dev), torch.ones(B, 1, 2 * n, dtype=dt, device=dev)], -1
        )
        G = row if G is None else torch.cat([G, row], -2)
        h = L.tau.unsqueeze(-1) if h is None else torch.cat([h, L.tau.unsqueeze(-1)], -1)
    return QPData(
        Pz,
        torch.cat([d.q, -L.kappa, -L.kappa], -1),
        A,
        b,
        G,
        h,
        torch.cat([d.lb, d.q.new_zeros(B, 2 * n)], -1),
        torch.cat([d.ub, torch.full((B, 2 * n), torch.inf, dtype=dt, device=dev)], -1),
        d.batch_shape,
    )
