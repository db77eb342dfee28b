"""QPLayer and the portfolio constraint constructors, checked against cvxpy + Clarabel."""

from __future__ import annotations

import math
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, InfeasibleError, InputError, NonFiniteError, ShapeError
from portfolio_layers.qp import (
    QPLayer,
    Status,
    combine,
    fully_invested,
    group_caps,
    leverage_limit,
    long_only,
    turnover_limit,
    weight_bounds,
    weight_cap,
)

F64 = torch.float64


def _data(n: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(batch, n, n, generator=g, dtype=F64)
    P = F @ F.mT / n + 0.01 * torch.eye(n, dtype=F64)
    q = 0.5 * torch.randn(batch, n, generator=g, dtype=F64)
    return P, q


def _reference(P, q, cons_fn) -> np.ndarray:
    n = q.shape[0]
    x = cp.Variable(n)
    obj = cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P.numpy())) - q.numpy() @ x)
    prob = cp.Problem(obj, cons_fn(x))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return x.value


def test_long_only_capped_groups_turnover() -> None:
    n = 10
    P, q = _data(n, 3)
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    x0 = torch.full((n,), 0.1, dtype=F64)
    cons = fully_invested(n) & long_only(n) & weight_cap(n, 0.3) & group_caps(groups, [0.5, 0.5, 0.6])
    cons = cons & turnover_limit(n, 0.4)
    layer = QPLayer(cons)
    w = layer(P, q, x0)
    assert w.shape == (3, n)
    gm = np.array(groups)
    for i in range(3):
        ref = _reference(
            P[i],
            q[i],
            lambda x: [
                cp.sum(x) == 1,
                x >= 0,
                x <= 0.3,
                cp.sum(x[gm == 0]) <= 0.5,
                cp.sum(x[gm == 1]) <= 0.5,
                cp.sum(x[gm == 2]) <= 0.6,
                cp.norm1(x - x0.numpy()) <= 0.4,
            ],
        )
        np.testing.assert_allclose(w[i].numpy(), ref, atol=1e-6)
    assert float((w - x0).abs().sum(-1).max()) <= 0.4 + 1e-8


def test_leverage_limit_long_short() -> None:
    n = 8
    P, q = _data(n, 2, seed=1)
    layer = QPLayer(combine(fully_invested(n), weight_bounds(n, -0.5, 0.5), leverage_limit(n, 1.6)))
    w = layer(P, q)
    for i in range(2):
        ref = _reference(P[i], q[i], lambda x: [cp.sum(x) == 1, x >= -0.5, x <= 0.5, cp.norm1(x) <= 1.6])
        np.testing.assert_allclose(w[i].numpy(), ref, atol=1e-6)


def test_layer_gradients_flow_and_buffers_move() -> None:
    n = 6
    P, q = _data(n, 4, seed=2)
    layer = QPLayer(fully_invested(n) & long_only(n) & weight_cap(n, 0.4))
    q = q.clone().requires_grad_(True)
    L = torch.linalg.cholesky(P).clone().requires_grad_(True)
    w = layer(L @ L.mT, q)
    (w * torch.arange(n, dtype=F64)).sum().backward()
    assert bool(torch.isfinite(q.grad).all()) and float(q.grad.abs().sum()) > 0
    assert bool(torch.isfinite(L.grad).all())
    assert {name for name, _ in layer.named_buffers()} >= {"A", "b", "lb", "ub"}
    w32 = layer.float()(P.float(), q.detach().float())
    assert w32.dtype == torch.float32


def test_layer_errors() -> None:
    n = 4
    layer = QPLayer(fully_invested(n) & long_only(n) & turnover_limit(n, 0.2))
    P, q = _data(n, 1)
    with pytest.raises(ConfigError, match="pass x0"):
        layer(P, q)
    with pytest.raises(ShapeError, match="built for n = 4"):
        layer(P[..., :3, :3], q[..., :3])
    with pytest.raises(ConfigError, match="turnover"):
        QPLayer(fully_invested(n))(P, q, torch.zeros(n, dtype=F64))
    with pytest.raises(ConfigError, match="no cap given"):
        group_caps([0, 1, 1, 2], [0.5, 0.5])
    with pytest.raises(ShapeError, match="different n"):
        combine(fully_invested(3), long_only(4))
    with pytest.raises(ConfigError, match="max_gross"):
        leverage_limit(3, 0.0)


def test_lifted_constraints_gradcheck() -> None:
    n = 6
    P, q = _data(n, 2, seed=3)
    x0 = torch.full((n,), 1.0 / n, dtype=F64)
    cases = [
        (fully_invested(n) & long_only(n) & weight_cap(n, 0.5) & turnover_limit(n, 0.3), x0),
        (fully_invested(n) & weight_bounds(n, -0.3, 0.5) & leverage_limit(n, 1.4), None),
    ]
    for cons, prev in cases:
        layer = QPLayer(cons, tol=1e-12)
        assert layer.solve(P, q, prev).iterations.max() < 20
        qq = q.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda v, lay=layer, p0=prev: lay(P, v, p0), (qq,), atol=1e-5, rtol=1e-3
        )


def test_throw_false_forward_warns_with_statuses_and_solve_returns_them() -> None:
    n = 4
    P, q = _data(n, 2, seed=4)
    layer = QPLayer(fully_invested(n) & long_only(n) & turnover_limit(n, 0.5), throw=False)
    x0 = torch.stack([torch.full((n,), 0.25, dtype=F64), torch.zeros(n, dtype=F64)])  # 1 needs turnover 1
    with pytest.warns(RuntimeWarning, match=r"PRIMAL_INFEASIBLE at batch indices \[1\].*QPLayer\.solve"):
        w = layer(P, q, x0)
    assert abs(float(w[0].sum()) - 1.0) < 1e-8
    sol = layer.solve(P, q, x0)
    assert not sol.ok and sol.status.tolist() == [Status.SOLVED, Status.PRIMAL_INFEASIBLE]
    torch.testing.assert_close(sol.x[..., :n], w, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a solved batch does not warn
        layer(P, q, x0[:1])


def test_x0_accepts_sequences_and_arrays_and_is_checked_by_name() -> None:
    n = 4
    P, q = _data(n, 1)
    layer = QPLayer(fully_invested(n) & long_only(n) & turnover_limit(n, 0.3))
    ref = layer(P, q, torch.full((n,), 0.25, dtype=F64))
    for x0 in ([0.25] * n, np.full(n, 0.25), torch.full((n,), 0.25)):
        torch.testing.assert_close(layer(P, q, x0), ref, rtol=0, atol=0)
    torch.testing.assert_close(layer(P, q.tolist(), [0.25] * n), ref, rtol=0, atol=0)
    with pytest.raises(
        ShapeError, match=r"x0 must have shape \(n,\) or \(\*batch, n\) with n = 4, got \(3,\)"
    ):
        layer(P, q, [0.25] * 3)
    with pytest.raises(ShapeError, match=r"x0 must have shape .* got \(\)"):
        layer(P, q, 0.25)
    with pytest.raises(ShapeError, match=r"batch dimensions of x0 \(3, 4\)"):
        layer(P.expand(2, n, n), q, torch.full((3, n), 0.25, dtype=F64))
    with pytest.raises(InputError, match="x0 must be a tensor, array or number, got str"):
        layer(P, q, "0.25")
    with pytest.raises(InputError, match="P must be a torch.Tensor.*got list"):
        layer(P[0].tolist(), q, [0.25] * n)


def test_nan_x0_is_named_before_it_enters_h() -> None:
    n = 4
    P, q = _data(n, 1)
    layer = QPLayer(fully_invested(n) & long_only(n) & turnover_limit(n, 0.3))
    with pytest.raises(
        NonFiniteError, match=r"x0 holds NaN or infinite values at index \(2,\); the previous"
    ):
        layer(P, q, [0.25, 0.25, math.nan, 0.25])


def test_crossed_weight_bounds_fail_on_construction_naming_the_assets() -> None:
    with pytest.raises(
        InfeasibleError, match=r"cross at 1 asset\(s\) \(asset 2: lower 0 > upper -0.1\).*cap"
    ):
        long_only(4) & weight_bounds(4, upper=[0.5, 0.5, -0.1, 0.5])
