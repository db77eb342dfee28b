"""Hypothesis: KKT residuals below tolerance, feasibility, and infeasibility detection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_layers.qp import Status, solve_qp

F64 = torch.float64


def _problem(seed: int, n: int, batch: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(batch, n, max(1, n // 2), generator=g, dtype=F64)
    P = scale * (F @ F.mT / n + 1e-3 * torch.eye(n, dtype=F64))
    q = scale * torch.randn(batch, n, generator=g, dtype=F64)
    return P, q


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 15),
    batch=st.integers(1, 4),
    slack=st.floats(0.05, 3.0),
    scale=st.sampled_from([1e-4, 1.0, 1e3]),
)
def test_capped_portfolio_invariants(seed: int, n: int, batch: int, slack: float, scale: float) -> None:
    cap = min(1.0, (1.0 + slack) / n)
    P, q = _problem(seed, n, batch, scale)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    sol = solve_qp(P, q, A, b, lb=0.0, ub=cap)
    x = sol.x
    assert bool((sol.status == Status.SOLVED).all())
    assert float((x.sum(-1) - 1).abs().max()) <= 1e-9
    assert float(x.min()) >= 0.0 and float(x.max()) <= cap
    grad = (P @ x.unsqueeze(-1)).squeeze(-1) - q + sol.y @ A - sol.z_lower + sol.z_upper
    assert float(grad.abs().max()) <= 1e-8 * (1 + scale)
    assert float(sol.z_lower.min()) >= 0 and float(sol.z_upper.min()) >= 0
    comp = (sol.z_lower * x).abs().max() + (sol.z_upper * (cap - x)).abs().max()
    assert float(comp) <= 1e-8 * (1 + scale)
    assert float(sol.dual_residual.max()) <= 1e-8 * (1 + scale)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 20), short=st.floats(0.02, 0.9))
def test_infeasible_cap_always_detected(seed: int, n: int, short: float) -> None:
    cap = (1.0 - short) / n  # n * cap < 1
    P, q = _problem(seed, n, 2, 1.0)
    sol = solve_qp(P, q, torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64), lb=0.0, ub=cap, throw=False)
    assert bool((sol.status == Status.PRIMAL_INFEASIBLE).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    P, q = _problem(0, 12, 3, 1.0)
    A, b = torch.ones(1, 12, dtype=F64), torch.ones(1, dtype=F64)
    cpu = solve_qp(P, q, A, b, lb=0.0, ub=0.3)
    dev = torch.device("cuda")
    qg = q.to(dev).requires_grad_(True)
    gpu = solve_qp(P.to(dev), qg, A.to(dev), b.to(dev), lb=0.0, ub=0.3)
    assert gpu.x.device.type == "cuda"
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, atol=1e-8, rtol=0)
    gpu.x.sum().backward()
    assert qg.grad is not None and bool(torch.isfinite(qg.grad).all())
