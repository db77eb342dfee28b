"""QP data: validation, dtype/device promotion and broadcasting to one flat batch.

The problem is ``minimize 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub``. Every input may omit
the batch dimensions; :func:`canonicalize` broadcasts them with ``expand`` (a differentiable view), so
autograd sums the gradients of a broadcast input over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from portfolio_layers.errors import (
    InfeasibleError,
    InputError,
    NonFiniteError,
    NotPSDError,
    ShapeError,
    format_indices,
)
from portfolio_layers.qp.factor import FactorCov


class BatchTaking(Protocol):
    """A per-element record that can select batch elements (``L1Data`` of :mod:`portfolio_layers.qp.l1`, typed
    by this protocol because that module imports this one)."""

    def take(self, idx: Tensor) -> Any: ...


_EXPECTED = (
    "expected P (*batch, n, n), q (*batch, n), A (*batch, p, n), b (*batch, p), G (*batch, m, n), "
    "h (*batch, m), lb/ub scalar, (n,) or (*batch, n); batch dimensions may be omitted"
)


class BatchRecord:
    """Mixin for a frozen dataclass of per-element fields (leading dimension ``B``) with :meth:`take`."""

    def take(self, idx: Tensor) -> Any:
        """The same record for the sub-batch ``idx`` (a 1-D index tensor).

        Tensor fields are indexed along their first dimension, nested records are taken, other
        fields (``None``, sizes) are kept.
        """

        def t(v: object) -> object:
            return v[idx] if isinstance(v, Tensor) else v.take(idx) if isinstance(v, BatchRecord) else v

        return replace(self, **{f.name: t(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class QPData:
    """A validated QP, flattened to one batch dimension ``B``.

    Attributes
    ----------
    P : Tensor of shape (B, n, n) or FactorCov
        Dense, or in factor form with ``F (B, n, k)`` and ``d (B, n)``.
    q : Tensor of shape (B, n)
    A : Tensor of shape (B, p, n) or None
    b : Tensor of shape (B, p) or None
    G : Tensor of shape (B, m, n) or None
    h : Tensor of shape (B, m) or None
    lb, ub : Tensor of shape (B, n); ``-inf`` / ``+inf`` where unbounded
    batch_shape : tuple of int
        The broadcast batch shape ``*batch`` (``()`` for a single problem).
    l1 : L1Data or None
        An L1 trading cost / turnover limit (see :mod:`portfolio_layers.qp.l1`). In the split problem
        that the interior point solves, ``P``, ``A`` and ``G`` are structured operators of that module.
    """

    P: Tensor
    q: Tensor
    A: Tensor | None
    b: Tensor | None
    G: Tensor | None
    h: Tensor | None
    lb: Tensor
    ub: Tensor
    batch_shape: tuple[int, ...]
    l1: BatchTaking | None = None

    @property
    def n(self) -> int:
        return self.P.shape[-1]

    @property
    def p(self) -> int:
        return 0 if self.A is None else self.A.shape[-2]

    @property
    def m(self) -> int:
        return 0 if self.G is None else self.G.shape[-2]

    def take(self, idx: Tensor) -> QPData:
        """The sub-batch ``idx`` (a 1-D index tensor); ``batch_shape`` becomes ``(len(idx),)``."""

        def t(v: Tensor | None) -> Tensor | None:
            if v is None:
                return None
            return v.index_select(0, idx) if isinstance(v, Tensor) else v.take(idx)

        return QPData(
            *(t(v) for v in self.tensors()),
            (idx.numel(),),
            None if self.l1 is None else self.l1.take(idx),
        )

    def tensors(self) -> tuple[Tensor | None, ...]:
        return (self.P, self.q, self.A, self.b, self.G, self.h, self.lb, self.ub)


@dataclass(frozen=True)
class Bounds(BatchRecord):
    """The bounds of a batch as masks and zero-filled values, with two per-element scales of the solver.

    Attributes
    ----------
    has_lb, has_ub : Tensor of shape (B, n), dtype bool
        Where the bound is finite.
    lb, ub : Tensor of shape (B, n)
        The bounds, 0 where infinite.
    pairs : Tensor of shape (B,)
        Number of complementarity pairs (``m`` + finite bounds, at least 1): ``mu = gap / pairs``.
    pscale : Tensor of shape (B,)
        ``1 + max(|b|, |h|)``, the scale of the primal tolerance.
    """

    has_lb: Tensor
    has_ub: Tensor
    lb: Tensor
    ub: Tensor
    pairs: Tensor
    pscale: Tensor

    @classmethod
    def of(cls, d: QPData) -> Bounds:
        """The bounds of ``d``."""
        ml, mu = torch.isfinite(d.lb), torch.isfinite(d.ub)
        pairs = (d.m + ml.sum(-1) + mu.sum(-1)).to(d.P.dtype).clamp_min(1.0)
        return cls(ml, mu, torch.where(ml, d.lb, 0.0), torch.where(mu, d.ub, 0.0), pairs, 1.0 + _bscale(d))

    def slacks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x - lb`` and ``ub - x`` for ``x (B, n)``, 1 where the bound is infinite."""
        return torch.where(self.has_lb, x - self.lb, 1.0), torch.where(self.has_ub, self.ub - x, 1.0)


def expand_batch(d: QPData, batch: tuple[int, ...]) -> QPData:
    """``d`` broadcast to the larger batch shape ``batch`` (``d.batch_shape`` must broadcast to it)."""
    if tuple(batch) == tuple(d.batch_shape):
        return d
    B = math.prod(batch)

    def e(v: Tensor | None) -> Tensor | None:
        if v is None:
            return None
        core = v.shape[1:]
        return v.reshape(*d.batch_shape, *core).expand(*batch, *core).reshape(B, *core)

    P = FactorCov(e(d.P.F), e(d.P.d)) if isinstance(d.P, FactorCov) else e(d.P)
    return QPData(P, *(e(v) for v in d.tensors()[1:]), tuple(batch))


def _bscale(d: QPData) -> Tensor:
    """``max(|b|, |h|)`` per element (0 without constraint rows)."""
    s = torch.zeros(d.P.shape[0], dtype=d.P.dtype, device=d.P.device)
    for v in (d.b, d.h):
        if v is not None and v.shape[-1] > 0:
            s = torch.maximum(s, v.abs().amax(-1))
    return s


def locate(mask: Tensor, limit: int = 3) -> tuple[list[tuple[int, ...]], str]:
    """The indices of the first ``limit`` True entries of ``mask`` and a message part naming them.

    The text reads ``"index (0, 2)"`` or ``"indices (0, 2), (1, 4) and 5 more"``.
    """
    idx = [tuple(i) for i in mask.nonzero()[:limit].tolist()]
    more = int(mask.sum()) - len(idx)
    text = ", ".join(map(str, idx)) + (f" and {more} more" if more else "")
    return idx, ("index " if len(idx) == 1 and not more else "indices ") + text


def as_tensor(name: str, v: object, like: Tensor) -> Tensor:
    """``v`` as a tensor on the device of ``like``.

    A tensor is returned as it is (an error if it is on another device); numbers, sequences and
    arrays are converted with the dtype and device of ``like``.

    Raises
    ------
    InputError
        ``v`` cannot be converted, or is a tensor on another device; the message names ``name``.
    """
    if isinstance(v, Tensor):
        if v.device != like.device:
            raise InputError(
                f"{name} is on {v.device} but P is on {like.device}; move all inputs to one device"
            )
        return v
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=like.dtype, device=like.device)
    try:
        return torch.as_tensor(v, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name} must be a tensor, array or number, got {type(v).__name__}") from exc


def check_finite(
    name: str, v: Tensor, hint: str = "replace them (torch.nan_to_num) or drop those elements first"
) -> Tensor:
    """``v``, after checking that it holds no NaN or infinite value.

    Raises
    ------
    NonFiniteError
        Naming ``name``, the first non-finite entries and ``hint`` (what to do).
    """
    if v.numel() and math.isfinite(float(v.detach().sum())):  # one reduction; an overflowing sum looks closer
        return v
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        raise NonFiniteError(f"{name} holds NaN or infinite values at {locate(bad)[1]}; {hint}")
    return v


def check_P(P: object) -> Tensor | FactorCov:
    """``P`` if it is a float32/float64 tensor ``(*batch, n, n)`` with ``n >= 1``, or a :class:`FactorCov`.

    ``P`` sets the dtype and device that the other inputs are converted to, so it must be a tensor
    (a :class:`FactorCov` checked its own shapes and dtypes on construction).

    Raises
    ------
    InputError, ShapeError
        Naming what ``P`` is and what is expected.
    """
    if isinstance(P, FactorCov):
        return P
    if not isinstance(P, Tensor):
        raise InputError(
            f"P must be a torch.Tensor of shape (*batch, n, n) or a FactorCov (it sets the dtype and "
            f"device of the problem), got {type(P).__name__}; convert it with "
            "torch.as_tensor(P, dtype=torch.float64)"
        )
    if P.dim() < 2 or P.shape[-1] != P.shape[-2]:
        raise ShapeError(f"P must be a square matrix (*batch, n, n), got {tuple(P.shape)}; {_EXPECTED}")
    if P.dtype not in (torch.float32, torch.float64):
        raise InputError(f"P must be float32 or float64, got {P.dtype}")
    if P.shape[-1] == 0:
        raise ShapeError("P has n = 0 variables; " + _EXPECTED)
    return P


def bound_error(d: QPData, bad: Tensor, relation: str) -> tuple[list[tuple[int, ...]], str]:
    """The batch indices where ``bad (B, n)`` holds and a message part naming the first entries.

    The entries are indexed like the broadcast bounds ``(*batch, n)`` and shown with their values,
    as in ``"lb > ub at index (1, 3) (lb = 0.5, ub = 0.2)"`` for ``relation = ">"``.
    """
    bad = bad.reshape(*d.batch_shape, d.n)
    lb, ub = d.lb.reshape(bad.shape), d.ub.reshape(bad.shape)
    idx, _ = locate(bad)
    more = int(bad.sum()) - len(idx)
    text = "; ".join(f"index {i} (lb = {float(lb[i]):.6g}, ub = {float(ub[i]):.6g})" for i in idx)
    batch = [tuple(i) for i in bad.any(-1).nonzero().tolist()]
    return batch, f"lb {relation} ub at {text}" + (f" and {more} more" if more else "")


def raise_crossed_bounds(d: QPData) -> None:
    """Raise :class:`InfeasibleError` if some ``lb > ub``, naming the entries and their values."""
    bad = d.lb > d.ub
    if not bool(bad.any()):
        return
    batch, text = bound_error(d, bad, ">")
    raise InfeasibleError(
        f"{text}, so no x satisfies lb <= x <= ub at batch indices {format_indices(batch)}: lower lb or "
        "raise ub there (are the two swapped?). Or pass throw=False to get the statuses instead.",
        batch,
    )


def check_factor(P: FactorCov) -> None:
    """Check the values of a :class:`FactorCov`: finite ``F`` and ``d``, and ``d > 0``.

    Raises
    ------
    NonFiniteError
        ``F`` or ``d`` holds NaN or infinite values.
    NotPSDError
        Some ``d < 0`` (then ``P`` need not be positive semidefinite).
    InputError
        Some ``d == 0`` (the factor form needs ``d > 0``; see :mod:`portfolio_layers.qp.factor`).
    """
    check_finite("FactorCov.F", P.F)
    if bool((P.d > 0).all()):  # one reduction in the usual case (NaN fails it too)
        return
    check_finite("FactorCov.d", P.d)
    for bad, err, what in ((P.d < 0, NotPSDError, "negative"), (P.d == 0, InputError, "zero")):
        if bool(bad.any()):
            raise err(
                f"FactorCov.d is {what} at {locate(bad)[1]} (worst {float(P.d.min()):.3g}); "
                "P = F F' + diag(d) needs idiosyncratic variances d > 0: floor them "
                "(d.clamp_min(1e-8 * d.max())) or pass P densely"
            )


def broadcast_shapes(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` (numpy rules), or None if they do not broadcast."""
    out: list[int] = []
    for shape in shapes:
        if len(shape) > len(out):
            out = [1] * (len(shape) - len(out)) + out
        for i, s in enumerate(shape, len(out) - len(shape)):
            if s != out[i]:
                if out[i] != 1 and s != 1:
                    return None
                out[i] = max(out[i], s) if s and out[i] else 0
    return tuple(out)


def canonicalize(
    P: Tensor | FactorCov,
    q: Tensor,
    A: Tensor | None = None,
    b: Tensor | None = None,
    G: Tensor | None = None,
    h: Tensor | None = None,
    lb: Tensor | float | None = None,
    ub: Tensor | float | None = None,
) -> QPData:
    """Validate, promote and broadcast the QP data (see :class:`QPData`); ``P`` may be a :class:`FactorCov`.

    Raises
    ------
    ShapeError
        Inconsistent shapes (the message repeats the expected shapes).
    NonFiniteError
        NaN or infinite entries (``lb = -inf`` and ``ub = +inf`` are allowed).
    NotPSDError, InputError
        A :class:`FactorCov` with ``d <= 0`` (see :func:`check_factor`).
    InputError
        Non-floating dtypes, mixed devices, ``A`` without ``b`` (or ``G`` without ``h``).
    """
    n = check_P(P).shape[-1]
    fac = P if isinstance(P, FactorCov) else None
    if (A is None) != (b is None):
        raise InputError("A and b must be given together (or both left as None)")
    if (G is None) != (h is None):
        raise InputError("G and h must be given together (or both left as None)")
    raw = {"P": P} if fac is None else {"F": fac.F, "d": fac.d}
    raw["q"] = as_tensor("q", q, P)
    for k, v in (("A", A), ("b", b), ("G", G), ("h", h)):
        raw[k] = None if v is None else as_tensor(k, v, P)
    bounds, fill = {}, {"lb": -math.inf, "ub": math.inf}  # fill: a number bound, as a number
    for name, v, bad_inf in (("lb", lb, math.inf), ("ub", ub, -math.inf)):
        if v is None:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isnan(v) or v == bad_inf):
            fill[name] = float(v)
            continue
        t = as_tensor(name, v, P)
        if t.dim() == 0:
            t = t.expand(n)
        bad = torch.isnan(t) | (t == bad_inf)
        if bool(bad.any()):
            raise NonFiniteError(
                f"{name} holds NaN or {bad_inf} at {locate(bad)[1]}; use {-bad_inf} (or None) where "
                "there is no bound"
            )
        bounds[name] = t
    dtype = P.dtype
    for k, v in list(raw.items()) + list(bounds.items()):
        if v is None:
            continue
        if not v.dtype.is_floating_point:
            raise InputError(f"{k} must be a floating tensor, got {v.dtype}")
        dtype = torch.promote_types(dtype, v.dtype)  # float32 or float64, as P is
    if fac is not None:
        check_factor(fac)
    for k, v in raw.items():
        if v is not None and k not in ("F", "d"):
            check_finite(k, v)

    # (name, tensor, number of trailing core dims, expected trailing shape with None = free)
    p = None if raw["A"] is None else (raw["A"].shape[-2] if raw["A"].dim() >= 2 else -1)
    m = None if raw["G"] is None else (raw["G"].shape[-2] if raw["G"].dim() >= 2 else -1)
    specs = [("P", raw["P"], (n, n))] if fac is None else [("F", fac.F, (n, fac.k)), ("d", fac.d, (n,))]
    specs.append(("q", raw["q"], (n,)))
    if p is not None:
        specs += [("A", raw["A"], (p, n)), ("b", raw["b"], (p,))]
    if m is not None:
        specs += [("G", raw["G"], (m, n)), ("h", raw["h"], (m,))]
    specs += [(k, v, (n,)) for k, v in bounds.items()]
    batch_shapes = []
    for k, v, core in specs:
        if -1 in core or v.dim() < len(core) or tuple(v.shape[v.dim() - len(core) :]) != core:
            want = ", ".join(map(str, core))
            raise ShapeError(
                f"{k} has shape {tuple(v.shape)}, expected (*batch, {want}) for n = {n}; {_EXPECTED}"
            )
        batch_shapes.append(tuple(v.shape[: v.dim() - len(core)]))
    batch = broadcast_shapes(batch_shapes)
    if batch is None:
        detail = ", ".join(f"{k}: {tuple(v.shape)}" for k, v, _ in specs)
        raise ShapeError(f"batch dimensions do not broadcast ({detail}); {_EXPECTED}")
    B = math.prod(batch)

    def flat(v: Tensor | None, core: tuple[int, ...]) -> Tensor | None:
        if v is None:
            return None
        v = v if v.dtype == dtype else v.to(dtype)
        if v.shape[: v.dim() - len(core)] != batch:
            v = v.expand(*batch, *core)
        return v if v.dim() == len(core) + 1 and len(batch) == 1 else v.reshape(B, *core)

    lbt = flat(bounds.get("lb"), (n,))
    ubt = flat(bounds.get("ub"), (n,))
    if lbt is None:
        lbt = torch.full((B, n), fill["lb"], dtype=dtype, device=P.device)
    if ubt is None:
        ubt = torch.full((B, n), fill["ub"], dtype=dtype, device=P.device)
    if p == 0:
        p = None
    if m == 0:
        m = None
    return QPData(
        P=flat(raw["P"], (n, n)) if fac is None else FactorCov(flat(fac.F, (n, fac.k)), flat(fac.d, (n,))),
        q=flat(raw["q"], (n,)),
        A=flat(raw["A"], (p, n)) if p is not None else None,
        b=flat(raw["b"], (p,)) if p is not None else None,
        G=flat(raw["G"], (m, n)) if m is not None else None,
        h=flat(raw["h"], (m,)) if m is not None else None,
        lb=lbt,
        ub=ubt,
        batch_shape=batch,
    )
