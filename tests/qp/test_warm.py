"""Warm starts of the ``ipm`` backend change the work, never the answer (with and without L1 costs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from portfolio_layers.qp import FactorCov, L1Cost, solve_qp
from tests.qp.conftest import F64, random_qp


def _nudged(prob: dict, scale: float, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prob, q=prob["q"] + scale * torch.randn(prob["q"].shape, generator=g, dtype=F64))


@pytest.mark.parametrize("mix", ["box", "eq", "ineq", "all", "portfolio"])
def test_warm_start_never_changes_the_answer(mix: str) -> None:
    prob = random_qp(21, 12, batch=(6,), mix=mix)
    first = solve_qp(**prob)
    nxt = _nudged(prob, 0.01)
    cold = solve_qp(**nxt)
    for ws in (first, first.x):  # full solution, bare weights
        warm = solve_qp(**nxt, warm_start=ws)
        np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), atol=1e-10)
    assert int(solve_qp(**prob, warm_start=first).iterations.max()) == 0  # its own solution: polished at once


def test_warm_start_saves_iterations_on_a_slowly_moving_sequence() -> None:
    prob = random_qp(22, 30, batch=(16,), mix="portfolio")
    prev, cold_it, warm_it = solve_qp(**prob), 0, 0
    for step in range(5):
        nxt = _nudged(prob, 0.002 * (step + 1), seed=step)
        cold = solve_qp(**nxt)
        warm = solve_qp(**nxt, warm_start=prev)
        np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), atol=1e-10)
        cold_it += int(cold.iterations.sum())
        warm_it += int(warm.iterations.sum())
        prev = warm
    assert warm_it < 0.5 * cold_it


def test_bad_warm_starts_give_the_same_answer() -> None:
    prob = random_qp(23, 10, batch=(4,), mix="all")
    cold = solve_qp(**prob)
    g = torch.Generator().manual_seed(1)
    far = 5.0 * torch.randn(4, 10, generator=g, dtype=F64)  # far outside the box
    wrong = dataclasses.replace(
        cold,
        x=torch.rand(4, 10, generator=g, dtype=F64),
        lam=10.0 * torch.rand(cold.lam.shape, generator=g, dtype=F64),
        z_lower=torch.rand(4, 10, generator=g, dtype=F64),
        z_upper=torch.rand(4, 10, generator=g, dtype=F64),
        y=-cold.y,
    )
    other = solve_qp(**_nudged(prob, 1.0))  # the solution of a quite different problem
    for ws in (far, wrong, other, torch.zeros(10, dtype=F64)):
        warm = solve_qp(**prob, warm_start=ws)
        np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), atol=1e-10)


@pytest.mark.parametrize("tau", [None, 0.15])
@pytest.mark.parametrize("form", ["dense", "factor"])
def test_warm_start_with_l1_cost(tau: float | None, form: str) -> None:
    n, B = 25, 8
    g = torch.Generator().manual_seed(24)
    F = torch.randn(B, n, 3, generator=g, dtype=F64) * 0.4
    d = torch.rand(B, n, generator=g, dtype=F64) + 0.1
    q = torch.randn(B, n, generator=g, dtype=F64) * 0.3
    P = FactorCov(F, d) if form == "factor" else F @ F.mT + torch.diag_embed(d)
    base = dict(A=torch.ones(1, n, dtype=F64), b=torch.ones(1, dtype=F64), lb=0.0, ub=0.2)
    x0 = torch.full((B, n), 1.0 / n, dtype=F64)
    first = solve_qp(P, q, **base, l1=L1Cost(x0, 0.01, tau))
    q2 = q + 0.003 * torch.randn(q.shape, generator=g, dtype=F64)
    # the next rebalance trades around (a blend of) the last weights; around the last weights
    # themselves, an element can be primal degenerate (every asset held or at a bound, the budget's
    # multiplier left undetermined): not polished, solved by the interior point to about 1e-7 only
    l1 = L1Cost(0.5 * first.x + 0.5 / n, 0.01, tau)
    cold = solve_qp(P, q2, **base, l1=l1)
    for ws in (first, first.x, torch.rand(B, n, generator=g, dtype=F64)):
        warm = solve_qp(P, q2, **base, l1=l1, warm_start=ws)
        np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), atol=1e-10)
    assert int(solve_qp(P, q2, **base, l1=l1, warm_start=cold).iterations.max()) == 0


def test_warm_started_gradients_equal_cold_ones() -> None:
    prob = random_qp(25, 10, batch=(3,), mix="portfolio")
    grads = []
    for ws in (None, solve_qp(**_nudged(prob, 0.01))):
        q = prob["q"].clone().requires_grad_(True)
        x = solve_qp(**dict(prob, q=q), warm_start=ws).x
        (x * torch.arange(10, dtype=F64)).sum().backward()
        grads.append(q.grad)
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), atol=1e-9)
