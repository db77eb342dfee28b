"""The ``"active_set"`` backend (DAQP forward, active-set backward) and ``backend="auto"``.

Against Clarabel and the interior point on every constraint kind, degenerate problems included;
gradients against the interior point's and by gradcheck; batch equals loop; statuses; warm starts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portfolio_layers.errors import InfeasibleError
from portfolio_layers.qp import FactorCov, Status, solve_qp
from portfolio_layers.qp.active_set import DualActiveSet, Normalized
from portfolio_layers.qp.layer import AUTO_FEW, AUTO_N, auto_backend
from portfolio_layers.qp.problem import canonicalize
from tests.qp.conftest import clarabel_solve, random_qp

F64 = torch.float64
KINDS = ["box", "eq", "ineq", "all", "portfolio"]


def _one(prob: dict, i: int) -> dict:
    return {k: (v[i] if isinstance(v, torch.Tensor) and k in ("P", "q") else v) for k, v in prob.items()}


@pytest.mark.parametrize("mix", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_clarabel_and_ipm(mix: str, seed: int) -> None:
    prob = random_qp(seed, 15, batch=(3,), mix=mix)
    sol = solve_qp(**prob, backend="active_set")
    ipm = solve_qp(**prob, backend="ipm")
    assert bool((sol.status == Status.SOLVED).all())
    np.testing.assert_allclose(sol.x.numpy(), ipm.x.numpy(), atol=1e-8)
    for name in ("y", "lam", "z_lower", "z_upper"):
        np.testing.assert_allclose(getattr(sol, name).numpy(), getattr(ipm, name).numpy(), atol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(sol.x[i].numpy(), clarabel_solve(**_one(prob, i)), atol=1e-8)
    assert float(sol.primal_residual.max()) < 1e-9 and float(sol.dual_residual.max()) < 1e-9


@pytest.mark.parametrize("mix", KINDS)
def test_gradients_match_ipm(mix: str) -> None:
    prob = random_qp(5, 10, batch=(2,), mix=mix)
    w = torch.randn(2, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    grads = {}
    for backend in ("ipm", "active_set"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in prob.items() if isinstance(v, torch.Tensor)}
        x = solve_qp(**{**prob, **leaves}, backend=backend).x
        (x * w).sum().backward()
        grads[backend] = {k: v.grad for k, v in leaves.items()}
    for k, g in grads["ipm"].items():
        np.testing.assert_allclose(grads["active_set"][k].numpy(), g.numpy(), atol=1e-7, err_msg=k)


@pytest.mark.parametrize("mix", ["all", "portfolio"])
def test_compact_backward(mix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past COMPACT_FROM unknowns the backward solves the gathered active-set system: the same gradients as
    the full-size one and as the interior point's, with active sets of different sizes in one batch."""
    from portfolio_layers.qp import active_set

    n = active_set.COMPACT_FROM + 2
    prob = random_qp(13, n, batch=(3,), mix=mix)
    if mix == "portfolio":  # a cap binding in some elements only
        prob["ub"] = torch.tensor([0.05, 0.2, 1.0], dtype=F64)[:, None].expand(3, n)
    w = torch.randn(3, n, generator=torch.Generator().manual_seed(2), dtype=F64)

    def grads(backend: str) -> dict:
        leaves = {k: v.clone().requires_grad_(True) for k, v in prob.items() if isinstance(v, torch.Tensor)}
        (solve_qp(**{**prob, **leaves}, backend=backend).x * w).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    compact, ipm = grads("active_set"), grads("ipm")
    monkeypatch.setattr(active_set, "COMPACT_FROM", 10**9)
    full = grads("active_set")
    for k, g in ipm.items():
        scale = float(g.abs().max()) + 1e-30
        np.testing.assert_allclose(compact[k].numpy(), full[k].numpy(), atol=1e-12 * scale, err_msg=k)
        np.testing.assert_allclose(compact[k].numpy(), g.numpy(), atol=1e-7 * scale, err_msg=k)


def test_gradcheck() -> None:
    prob = random_qp(7, 5, mix="all")
    prob["lb"], prob["ub"] = torch.full((5,), -0.2, dtype=F64), torch.full((5,), 0.45, dtype=F64)
    names = ["P", "q", "A", "b", "G", "h", "lb", "ub"]

    def f(*args: torch.Tensor) -> torch.Tensor:
        return solve_qp(**dict(zip(names, args, strict=True)), backend="active_set").x

    args = tuple(prob[k].clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


def test_batch_equals_loop() -> None:
    prob = random_qp(3, 8, batch=(2, 3), mix="all")
    sol = solve_qp(**prob, backend="active_set")
    assert sol.x.shape == (2, 3, 8) and sol.status.shape == (2, 3) and sol.y.shape == (2, 3, 2)
    for i in range(2):
        for j in range(3):
            one = dict(prob, P=prob["P"][i, j], q=prob["q"][i, j])
            np.testing.assert_allclose(solve_qp(**one, backend="active_set").x.numpy(), sol.x[i, j].numpy())


def test_float32() -> None:
    prob = random_qp(4, 10, batch=(4,), mix="portfolio")
    x64 = solve_qp(**prob, backend="active_set").x
    p32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in prob.items()}
    sol = solve_qp(**p32, backend="active_set")
    assert sol.x.dtype == torch.float32 and sol.ok
    np.testing.assert_allclose(sol.x.double().numpy(), x64.numpy(), atol=1e-5)


# --- degenerate problems -------------------------------------------------------------------------


def test_weakly_active_bound() -> None:
    """Unconstrained minimizer exactly at a bound (zero multiplier): x and finite gradients."""
    P = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    q = torch.tensor([0.0, 1.0, -1.0], dtype=F64, requires_grad=True)
    sol = solve_qp(P, q, lb=torch.zeros(3, dtype=F64), backend="active_set")
    np.testing.assert_allclose(sol.x.detach().numpy(), [0.0, 0.5, 0.0], atol=1e-12)
    sol.x.sum().backward()
    assert bool(torch.isfinite(q.grad).all())
    # held as active (as after the interior point's polish): x_0 does not move with q_0
    np.testing.assert_allclose(q.grad.numpy(), [0.0, 0.5, 0.0], atol=1e-10)


def test_duplicate_rows() -> None:
    prob = random_qp(8, 10, batch=(2,), mix="all")
    A = torch.cat([prob["A"], prob["A"][:1]])
    b = torch.cat([prob["b"], prob["b"][:1]])
    G = torch.cat([prob["G"], prob["G"]])
    h = torch.cat([prob["h"], prob["h"]])
    dup = dict(prob, A=A, b=b, G=G, h=h)
    q = prob["q"].clone().requires_grad_(True)
    sol = solve_qp(**dict(dup, q=q), backend="active_set")
    assert sol.ok
    for i in range(2):
        np.testing.assert_allclose(sol.x[i].detach().numpy(), clarabel_solve(**_one(prob, i)), atol=1e-8)
    sol.x.sum().backward()
    q2 = prob["q"].clone().requires_grad_(True)
    solve_qp(**dict(prob, q=q2), backend="ipm").x.sum().backward()
    np.testing.assert_allclose(q.grad.numpy(), q2.grad.numpy(), atol=1e-7)


def test_equal_bounds_fix_variables() -> None:
    prob = random_qp(9, 8, mix="portfolio")
    lb, ub = torch.zeros(8, dtype=F64), torch.full((8,), 0.4, dtype=F64)
    lb[2] = ub[2] = 0.1
    ub[5] = lb[5] = 0.0
    q = prob["q"].clone().requires_grad_(True)
    sol = solve_qp(**dict(prob, q=q, lb=lb, ub=ub), backend="active_set")
    ref = clarabel_solve(**dict(prob, lb=lb, ub=ub))
    np.testing.assert_allclose(sol.x.detach().numpy(), ref, atol=1e-8)
    assert float(sol.x[2]) == 0.1 and float(sol.x[5]) == 0.0
    sol.x.sum().backward()
    assert float(q.grad[2]) == 0.0 and float(q.grad[5]) == 0.0


def test_infeasible_status_and_error() -> None:
    n = 20
    P, q = torch.eye(n, dtype=F64).expand(3, n, n), torch.randn(3, n, dtype=F64)
    ub = torch.full((3, n), 0.2, dtype=F64)
    ub[1] = 0.01  # n * ub < 1 under full investment
    args = dict(A=torch.ones(1, n, dtype=F64), b=torch.ones(1, dtype=F64), lb=0.0, ub=ub)
    sol = solve_qp(P, q, **args, backend="active_set", throw=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.PRIMAL_INFEASIBLE, Status.SOLVED]
    with pytest.raises(InfeasibleError, match=r"batch indices \[1\]"):
        solve_qp(P, q, **args, backend="active_set")
    G, h = torch.ones(1, n, dtype=F64), torch.tensor([0.5], dtype=F64)  # 1'x <= 0.5 against 1'x = 1
    sol = solve_qp(P, q, **args, G=G, h=h, backend="active_set", throw=False)
    assert bool((sol.status == Status.PRIMAL_INFEASIBLE).all())


def test_unbounded_and_iteration_limit() -> None:
    P = torch.zeros(2, 2, dtype=F64)
    sol = solve_qp(P, torch.ones(2, dtype=F64), backend="active_set", throw=False)
    assert int(sol.status) == Status.DUAL_INFEASIBLE
    prob = random_qp(1, 15, mix="all")
    d = Normalized.of(canonicalize(**prob))
    assert DualActiveSet(max_iter=1).solve(d).status.tolist() == [Status.MAX_ITER]


def test_warm_start_changes_work_not_answer() -> None:
    prob = random_qp(2, 30, batch=(4,), mix="portfolio")
    cold = solve_qp(**prob, backend="active_set")
    nudged = dict(prob, q=prob["q"] + 1e-4)
    ref = solve_qp(**nudged, backend="active_set")
    for ws in (cold, cold.x):
        warm = solve_qp(**nudged, backend="active_set", warm_start=ws)
        np.testing.assert_allclose(warm.x.numpy(), ref.x.numpy(), atol=1e-12)
    warm = solve_qp(**nudged, backend="active_set", warm_start=cold)
    assert int(warm.iterations.sum()) < int(ref.iterations.sum())


# --- backend="auto" ------------------------------------------------------------------------------


def test_auto_choice() -> None:
    def pick(n: int, batch: int, factor: bool = False) -> str:
        if factor:
            P = FactorCov(torch.ones(batch, n, 2, dtype=F64), torch.ones(batch, n, dtype=F64))
        else:
            P = torch.eye(n, dtype=F64).expand(batch, n, n)
        return auto_backend(canonicalize(P, torch.zeros(n, dtype=F64)))

    for factor in (False, True):
        many, few = AUTO_N[factor, False], AUTO_N[factor, True]
        assert few > many
        assert pick(many, 256, factor) == "active_set"
        assert pick(many + 1, AUTO_FEW + 1, factor) == "ipm"
        assert pick(few, AUTO_FEW, factor) == "active_set"
        assert pick(few + 1, 1, factor) == "ipm"


def test_auto_agrees_with_ipm() -> None:
    prob = random_qp(11, 20, batch=(8,), mix="portfolio")
    np.testing.assert_allclose(
        solve_qp(**prob, backend="auto").x.numpy(), solve_qp(**prob, backend="ipm").x.numpy(), atol=1e-8
    )


def test_qplayer_with_auxiliary_variables() -> None:
    """Leverage and turnover limits (auxiliary variables with a tiny ridge) agree with the interior point."""
    from portfolio_layers.qp import (
        QPLayer,
        combine,
        fully_invested,
        leverage_limit,
        turnover_limit,
        weight_cap,
    )

    n = 12
    prob = random_qp(12, n, batch=(3,), mix="box")
    x0 = torch.full((n,), 1.0 / n, dtype=F64)
    for cons, prev in (
        (combine(fully_invested(n), leverage_limit(n, 1.5)), None),
        (combine(fully_invested(n), weight_cap(n, 0.3), turnover_limit(n, 0.4)), x0),
    ):
        got = {}
        for backend in ("ipm", "active_set"):
            q = (0.3 * prob["q"]).requires_grad_(True)
            w = QPLayer(cons, backend=backend)(prob["P"], q, prev)
            w.pow(2).sum().backward()
            got[backend] = (w.detach(), q.grad)
        np.testing.assert_allclose(got["active_set"][0].numpy(), got["ipm"][0].numpy(), atol=1e-8)
        np.testing.assert_allclose(got["active_set"][1].numpy(), got["ipm"][1].numpy(), atol=1e-6)
