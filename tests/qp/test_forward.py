"""Forward accuracy of the ipm backend: against Clarabel, batched vs loop, float32 vs float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portfolio_layers.qp import Status, solve_qp
from tests.qp.conftest import clarabel_solve, random_qp


@pytest.mark.parametrize("mix", ["box", "eq", "ineq", "all", "portfolio"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_clarabel(mix: str, seed: int) -> None:
    prob = random_qp(seed, 12, batch=(3,), mix=mix)
    sol = solve_qp(**prob)
    assert sol.status.shape == (3,) and bool((sol.status == Status.SOLVED).all())
    for i in range(3):
        one = {k: (v[i] if isinstance(v, torch.Tensor) and k in ("P", "q") else v) for k, v in prob.items()}
        ref = clarabel_solve(**one)
        np.testing.assert_allclose(sol.x[i].numpy(), ref, atol=1e-6)


def test_batched_equals_loop() -> None:
    prob = random_qp(3, 8, batch=(2, 3), mix="all")
    sol = solve_qp(**prob)
    assert sol.x.shape == (2, 3, 8) and sol.status.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = dict(prob, P=prob["P"][i, j], q=prob["q"][i, j])
            np.testing.assert_allclose(solve_qp(**one).x.numpy(), sol.x[i, j].numpy(), atol=1e-9)


def test_float32_close_to_float64() -> None:
    prob = random_qp(4, 10, batch=(4,), mix="portfolio")
    x64 = solve_qp(**prob).x
    p32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in prob.items()}
    sol32 = solve_qp(**p32)
    assert sol32.x.dtype == torch.float32 and sol32.ok
    # weakly active coordinates converge like sqrt(mu) in single precision: compare loosely in x,
    # tightly in the objective
    assert float((sol32.x.double() - x64).abs().max()) < 2e-2

    def obj(x):
        return 0.5 * (x.unsqueeze(-2) @ prob["P"] @ x.unsqueeze(-1)).squeeze((-1, -2)) - (prob["q"] * x).sum(
            -1
        )

    torch.testing.assert_close(obj(sol32.x.double()), obj(x64), rtol=1e-4, atol=1e-5)


def test_kkt_quantities_consistent() -> None:
    prob = random_qp(5, 9, batch=(2,), mix="all")
    sol = solve_qp(**prob)
    P, q, A, G = prob["P"], prob["q"], prob["A"], prob["G"]
    grad = (P @ sol.x.unsqueeze(-1)).squeeze(-1) - q + sol.y @ A + sol.lam @ G - sol.z_lower + sol.z_upper
    assert float(grad.abs().max()) < 1e-8
    assert float(sol.lam.min()) >= 0 and float(sol.z_lower.min()) >= 0 and float(sol.z_upper.min()) >= 0
    assert float(sol.primal_residual.max()) < 1e-8 and float(sol.duality_gap.max()) < 1e-8


def test_unconstrained_and_equality_only() -> None:
    prob = random_qp(6, 7, mix="none")
    x = solve_qp(**prob).x
    np.testing.assert_allclose(x.numpy(), torch.linalg.solve(prob["P"], prob["q"]).numpy(), atol=1e-9)
    prob = random_qp(6, 7, mix="eq")
    np.testing.assert_allclose(solve_qp(**prob).x.numpy(), clarabel_solve(**prob), atol=1e-7)


def test_mixed_infinite_bounds() -> None:
    prob = random_qp(7, 6, mix="none")
    lb = torch.tensor([0.0, -np.inf, 0.0, -np.inf, -1.0, -np.inf], dtype=torch.float64)
    ub = torch.tensor([np.inf, 0.1, 0.2, np.inf, 1.0, np.inf], dtype=torch.float64)
    x = solve_qp(prob["P"], prob["q"], lb=lb, ub=ub).x
    np.testing.assert_allclose(x.numpy(), clarabel_solve(prob["P"], prob["q"], lb=lb, ub=ub), atol=1e-7)


def test_warm_start_gives_same_solution() -> None:
    prob = random_qp(8, 15, batch=(4,), mix="portfolio")
    cold = solve_qp(**prob)
    warm = solve_qp(**prob, warm_start=cold)
    warm_x = solve_qp(**prob, warm_start=cold.x)
    assert warm.ok and warm_x.ok
    np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), atol=1e-6)
    assert int(warm.iterations.max()) < int(cold.iterations.max())
    np.testing.assert_allclose(warm_x.x.numpy(), cold.x.numpy(), atol=1e-6)
