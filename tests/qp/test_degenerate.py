"""Degenerate problems give correct solutions and finite gradients (never NaN)."""

from __future__ import annotations

import numpy as np
import torch

from portfolio_layers.qp import Status, solve_qp
from tests.qp.conftest import clarabel_solve, random_qp

F64 = torch.float64


def test_active_bound_with_zero_multiplier() -> None:
    # x0 = 0 sits on its bound with a zero multiplier (q0 = 0): weakly active
    P = torch.eye(3, dtype=F64)
    q = torch.tensor([0.0, 1.0, -1.0], dtype=F64, requires_grad=True)
    sol = solve_qp(P, q, lb=0.0)
    torch.testing.assert_close(sol.x.detach(), torch.tensor([0.0, 1.0, 0.0], dtype=F64), atol=1e-8, rtol=0)
    jac = torch.stack([torch.autograd.grad(sol.x[i], q, retain_graph=True)[0] for i in range(3)])
    assert bool(torch.isfinite(jac).all())
    # the one-sided derivatives of x0 w.r.t. q0 are 0 (held at the bound) and 1 (free): a value in between
    assert -1e-6 <= float(jac[0, 0]) <= 1 + 1e-6
    torch.testing.assert_close(
        jac[1:, 1:], torch.diag(torch.tensor([1.0, 0.0], dtype=F64)), atol=1e-6, rtol=0
    )


def test_redundant_equalities() -> None:
    prob = random_qp(3, 5, mix="box")
    A = torch.tensor([[1.0] * 5, [2.0] * 5, [1.0, 0, 0, 0, 0]], dtype=F64)  # rows 0 and 1 are parallel
    b = torch.tensor([1.0, 2.0, 0.3], dtype=F64, requires_grad=True)
    q = prob["q"].clone().requires_grad_(True)
    sol = solve_qp(prob["P"], q, A, b, lb=0.0, ub=1.0)
    assert sol.status.item() == Status.SOLVED
    ref = clarabel_solve(prob["P"], prob["q"], A[[0, 2]], b.detach()[[0, 2]], lb=0.0, ub=1.0)
    np.testing.assert_allclose(sol.x.detach().numpy(), ref, atol=1e-7)
    sol.x.square().sum().backward()
    assert bool(torch.isfinite(b.grad).all()) and bool(torch.isfinite(q.grad).all())


def test_linear_program_vertex_gradients_finite() -> None:
    # P = 0: the solution is a vertex; the derivative w.r.t. q is 0 almost everywhere
    P = torch.zeros(4, 4, dtype=F64)
    q = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64, requires_grad=True)
    A, b = torch.ones(1, 4, dtype=F64), torch.ones(1, dtype=F64)
    sol = solve_qp(P, q, A, b, lb=0.0, ub=0.6)
    torch.testing.assert_close(
        sol.x.detach(), torch.tensor([0.4, 0.0, 0.6, 0.0], dtype=F64), atol=1e-8, rtol=0
    )
    sol.x.sum().backward()
    assert bool(torch.isfinite(q.grad).all())
