"""Bad input and failing elements: shapes, non-finite values, indefinite P, infeasible, max_iter."""

from __future__ import annotations

import math

import pytest
import torch

from portfolio_layers.errors import (
    ConfigError,
    ConvergenceError,
    InfeasibleError,
    InputError,
    NonFiniteError,
    NotPSDError,
    ShapeError,
    SolverError,
)
from portfolio_layers.qp import Status, solve_qp
from tests.qp.conftest import random_qp

F64 = torch.float64


def _portfolio(n: int, batch: int, cap: float | torch.Tensor):
    prob = random_qp(0, n, batch=(batch,), mix="portfolio")
    return prob["P"], prob["q"], prob["A"], prob["b"], 0.0, cap


def test_shape_errors_show_expected_shapes() -> None:
    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ShapeError, match=r"expected \(\*batch, 3\)"):
        solve_qp(P, torch.ones(4, dtype=F64))
    with pytest.raises(ShapeError, match="square"):
        solve_qp(torch.ones(3, 2, dtype=F64), q)
    with pytest.raises(ShapeError, match=r"A has shape"):
        solve_qp(P, q, torch.ones(2, 4, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(ShapeError, match="do not broadcast"):
        solve_qp(P.expand(2, 3, 3), q.expand(3, 3))
    with pytest.raises(InputError, match="A and b"):
        solve_qp(P, q, A=torch.ones(1, 3, dtype=F64))


def test_non_finite_inputs_rejected() -> None:
    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(NonFiniteError, match="q holds NaN"):
        solve_qp(P, torch.tensor([1.0, math.nan, 0.0], dtype=F64))
    with pytest.raises(NonFiniteError, match="P holds"):
        solve_qp(P * math.inf, q)
    with pytest.raises(NonFiniteError, match="lb holds"):
        solve_qp(P, q, lb=math.inf)
    with pytest.raises(ConfigError, match="tol"):
        solve_qp(P, q, tol=-1.0)


@pytest.mark.parametrize("backend", ["ipm", "active_set"])
@pytest.mark.parametrize("throw", [True, False])
def test_indefinite_P_is_a_clear_error(backend: str, throw: bool) -> None:
    P = torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=F64))
    with pytest.raises(NotPSDError, match="not positive semidefinite.*smallest eigenvalue"):
        solve_qp(P, torch.ones(3, dtype=F64), lb=0.0, ub=1.0, backend=backend, throw=throw)


@pytest.mark.parametrize("backend", ["ipm", "active_set"])
def test_psd_singular_P_is_accepted(backend: str) -> None:
    P = torch.zeros(3, 3, dtype=F64)  # a linear program over the box
    sol = solve_qp(P, torch.tensor([1.0, -1.0, 0.5], dtype=F64), lb=0.0, ub=1.0, backend=backend)
    torch.testing.assert_close(sol.x, torch.tensor([1.0, 0.0, 1.0], dtype=F64), atol=1e-7, rtol=0)


def test_infeasible_cap_detected_per_element() -> None:
    n = 8
    P, q, A, b, lb, _ = _portfolio(n, 3, 0.1)
    cap = torch.tensor([0.3, 0.1, 0.5], dtype=F64).unsqueeze(-1).expand(3, n)  # 8 * 0.1 < 1
    sol = solve_qp(P, q, A, b, lb=lb, ub=cap, throw=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.PRIMAL_INFEASIBLE, Status.SOLVED]
    assert bool(torch.isfinite(sol.x[[0, 2]]).all())
    torch.testing.assert_close(sol.x[[0, 2]].sum(-1), torch.ones(2, dtype=F64))
    with pytest.raises(InfeasibleError, match=r"batch indices \[1\]") as err:
        solve_qp(P, q, A, b, lb=lb, ub=cap)
    assert err.value.indices == ((1,),)


def test_infeasible_general_rows_found_by_certificate() -> None:
    # x1 + x2 >= 3 and x1 + x2 <= 1 (no bounds, so the presolve cannot see it)
    P = torch.eye(2, dtype=F64)
    G = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=F64)
    h = torch.tensor([-3.0, 1.0], dtype=F64)
    sol = solve_qp(P, torch.zeros(2, dtype=F64), G=G, h=h, throw=False)
    assert sol.status.item() == Status.PRIMAL_INFEASIBLE


def test_max_iter_status_and_error() -> None:
    P, q, A, b, lb, ub = _portfolio(30, 2, 0.2)
    sol = solve_qp(P, q, A, b, lb=lb, ub=ub, max_iter=2, throw=False)
    assert bool((sol.status == Status.MAX_ITER).all())
    assert "max_iter" in sol.messages()[0]
    with pytest.raises(ConvergenceError, match="MAX_ITER at batch indices"):
        solve_qp(P, q, A, b, lb=lb, ub=ub, max_iter=2)


def test_unbounded_problem_reports_dual_infeasible() -> None:
    P = torch.zeros(2, 2, dtype=F64)
    sol = solve_qp(P, torch.tensor([1.0, 0.0], dtype=F64), lb=0.0, throw=False)
    assert sol.status.item() == Status.DUAL_INFEASIBLE
    with pytest.raises(SolverError, match="unbounded"):
        solve_qp(P, torch.tensor([1.0, 0.0], dtype=F64), lb=0.0)


def test_failing_element_gives_zero_gradient_and_does_not_poison_batch() -> None:
    n = 6
    P, q, A, b, lb, _ = _portfolio(n, 2, 0.1)
    q = q.clone().requires_grad_(True)
    cap = torch.tensor([[0.5], [0.1]], dtype=F64).expand(2, n)
    sol = solve_qp(P, q, A, b, lb=lb, ub=cap, throw=False)
    sol.x.sum(-1).pow(2).sum().backward()
    assert bool(torch.isfinite(q.grad).all()) and float(q.grad[1].abs().max()) == 0.0


def test_equal_bounds_rejected_with_advice() -> None:
    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    lb = torch.tensor([0.0, 0.2, 0.0], dtype=F64)
    ub = torch.tensor([1.0, 0.2, 1.0], dtype=F64)
    with pytest.raises(InputError, match=r"lb == ub at index \(1,\) \(lb = 0.2, ub = 0.2\).*equality row"):
        solve_qp(P, q, lb=lb, ub=ub)


def test_non_finite_and_bad_inputs_name_the_argument_and_the_entries() -> None:
    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(
        NonFiniteError, match=r"q holds NaN or infinite values at indices \(0, 1\), \(1, 2\);"
    ):
        solve_qp(P, torch.tensor([[1.0, math.nan, 0.0], [0.0, 1.0, math.inf]], dtype=F64))
    with pytest.raises(NonFiniteError, match=r"ub holds NaN or -inf at index \(1,\); use inf \(or None\)"):
        solve_qp(P, q, ub=torch.tensor([1.0, -math.inf, 1.0], dtype=F64))
    with pytest.raises(InputError, match=r"P must be a torch.Tensor .*got list; convert it"):
        solve_qp(P.tolist(), q)


def test_crossed_bounds_name_the_entries_and_values() -> None:
    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    lb = torch.tensor([0.0, 0.5, 0.0], dtype=F64)
    ub = torch.tensor([1.0, 0.2, 1.0], dtype=F64)
    with pytest.raises(
        InfeasibleError, match=r"lb > ub at index \(1,\) \(lb = 0.5, ub = 0.2\).*lower lb or raise ub"
    ):
        solve_qp(P, q, lb=lb, ub=ub)
    ub_b = torch.stack([torch.ones(3, dtype=F64), ub])  # only element 1 crosses
    with pytest.raises(
        InfeasibleError, match=r"index \(1, 1\) \(lb = 0.5, ub = 0.2\).*batch indices \[1\]"
    ) as err:
        solve_qp(P, q, lb=lb, ub=ub_b)
    assert err.value.indices == ((1,),)
    sol = solve_qp(P, q, lb=lb, ub=ub_b, throw=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.PRIMAL_INFEASIBLE]
    assert "lb > ub" in sol.messages()[0]


def test_warm_start_is_validated_up_front() -> None:
    prob = random_qp(0, 4, mix="all")
    with pytest.raises(NonFiniteError, match=r"warm_start holds NaN or infinite values at index \(1,\)"):
        solve_qp(**prob, warm_start=torch.tensor([0.2, math.nan, 0.2, 0.2], dtype=F64))
    bad = solve_qp(**prob, max_iter=1, throw=False)
    bad = type(bad)(**{**bad.__dict__, "x": torch.full_like(bad.x, math.nan)})
    with pytest.raises(NonFiniteError, match=r"warm_start\.x holds NaN.*sol\.ok"):
        solve_qp(**prob, warm_start=bad)
    no_duals = type(bad)(
        **{**bad.__dict__, "x": bad.x.nan_to_num(0.3), "lam": torch.full_like(bad.lam, math.nan)}
    )
    with pytest.raises(NonFiniteError, match=r"warm_start\.lam holds NaN.*warm_start=solution\.x"):
        solve_qp(**prob, warm_start=no_duals)
    with pytest.raises(
        ShapeError, match=r"warm_start must have shape \(n,\) or \(\*batch, n\) = \(4,\), got \(2, 4\)"
    ):
        solve_qp(**prob, warm_start=torch.zeros(2, 4, dtype=F64))
    cold = solve_qp(**prob)
    torch.testing.assert_close(solve_qp(**prob, warm_start=cold.x.tolist()).x, cold.x, rtol=0, atol=1e-8)
