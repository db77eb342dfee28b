"""Seeded random QPs and a cvxpy + Clarabel reference solver for the QP tests."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

F64 = torch.float64


def random_qp(seed: int, n: int, *, batch: tuple[int, ...] = (), mix: str = "all", dtype=F64) -> dict:
    """A feasible random QP with a given constraint mix: 'box', 'eq', 'ineq', 'all', 'portfolio'."""
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(*batch, n, n, generator=g, dtype=F64)
    P = F @ F.mT / n + 0.05 * torch.eye(n, dtype=F64)
    q = torch.randn(*batch, n, generator=g, dtype=F64)
    return with_constraints({"P": P, "q": q}, n, mix, g, dtype)


def with_constraints(out: dict, n: int, mix: str, g: torch.Generator, dtype=F64) -> dict:
    """Add feasible random constraints of the mix ('box', 'eq', 'ineq', 'all', 'portfolio') to a QP's data
    and cast its tensors to ``dtype``."""
    x_feas = torch.rand(n, generator=g, dtype=F64) * 0.5 + 0.1  # strictly inside [0, 1]
    if mix in ("box", "all"):
        out["lb"], out["ub"] = torch.zeros(n, dtype=F64), torch.ones(n, dtype=F64)
    if mix in ("eq", "all"):
        A = torch.randn(2, n, generator=g, dtype=F64)
        out["A"], out["b"] = A, A @ x_feas
    if mix in ("ineq", "all"):
        G = torch.randn(3, n, generator=g, dtype=F64)
        out["G"], out["h"] = G, G @ x_feas + 0.05
    if mix == "portfolio":
        out["A"], out["b"] = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
        out["lb"], out["ub"] = 0.0, max(0.3, 2.0 / n)
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def clarabel_solve(P, q, A=None, b=None, G=None, h=None, lb=None, ub=None) -> np.ndarray:
    """Reference solution of one (unbatched) problem with cvxpy + Clarabel at tight tolerances."""

    def npy(v):
        return None if v is None else np.asarray(v.detach().double() if isinstance(v, torch.Tensor) else v)

    P, q, A, b, G, h, lb, ub = map(npy, (P, q, A, b, G, h, lb, ub))
    n = q.shape[0]
    x = cp.Variable(n)
    cons = []
    if A is not None:
        cons.append(A @ x == b)
    if G is not None:
        cons.append(G @ x <= h)
    if lb is not None:
        cons.append(x >= np.broadcast_to(lb, (n,)))
    if ub is not None:
        cons.append(x <= np.broadcast_to(ub, (n,)))
    obj = cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(0.5 * (P + P.T))) - q @ x)
    prob = cp.Problem(obj, cons)
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=200)
    assert prob.status == "optimal", prob.status
    return x.value


@pytest.fixture
def qp_factory():
    return random_qp
