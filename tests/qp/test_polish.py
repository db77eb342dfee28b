"""Active-set polishing: an approximate interior-point point becomes exact, a wrong active set is rejected."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.qp.ipm import InteriorPoint
from portfolio_layers.qp.kkt import mtv, mv
from portfolio_layers.qp.polish import ActiveSet, guess_active, polish, polish_corrected
from portfolio_layers.qp.problem import QPData, canonicalize
from tests.qp.conftest import clarabel_solve, random_qp

F64 = torch.float64
SHIFT, EPS = 1e-13, 1e-9


@pytest.fixture(scope="module")
def problem() -> tuple[dict, QPData, ActiveSet]:
    """A random QP (n = 8) with two lower bounds and one inequality row active, normalized to max|P|, |q| = 1,
    and the active set guessed from a loose (tol 1e-6, unpolished) interior-point solution."""
    raw = random_qp(0, 8, mix="all")
    raw["ub"] = torch.full((8,), 0.3, dtype=F64)
    d = canonicalize(**raw)
    c = torch.maximum(d.P.abs().max(), d.q.abs().max())
    d = QPData(d.P / c, d.q / c, *d.tensors()[2:], batch_shape=d.batch_shape)
    st = InteriorPoint(tol=1e-6, polish_mu=0.0).solve(d).state
    act = guess_active(d, st.x, st.s, st.lam, st.zl, st.zu)
    return raw, d, act


def _kkt_residuals(d: QPData, x, y, lam, zl, zu) -> dict[str, float]:
    stationarity = mv(d.P, x) - d.q + mtv(d.A, y) + mtv(d.G, lam) - zl + zu
    return {
        "stationarity": float(stationarity.abs().max()),
        "equalities": float((mv(d.A, x) - d.b).abs().max()),
        "inequalities": float((mv(d.G, x) - d.h).clamp_min(0.0).max()),
        "complementarity": float(
            torch.cat([lam * (d.h - mv(d.G, x)), zl * (x - d.lb), zu * (d.ub - x)], -1).abs().max()
        ),
    }


def test_polish_makes_an_approximate_solution_exact(problem) -> None:
    raw, d, act = problem
    assert int(act.lower.sum()) == 2 and int(act.rows.sum()) == 1
    pol = polish(d, act, SHIFT, EPS)
    assert pol.ok.tolist() == [True]
    assert bool((pol.zl >= 0).all() and (pol.zu >= 0).all() and (pol.lam >= 0).all())
    for name, value in _kkt_residuals(d, pol.x, pol.y, pol.lam, pol.zl, pol.zu).items():
        assert value < 1e-12, name
    ref = torch.as_tensor(clarabel_solve(**raw), dtype=F64)
    torch.testing.assert_close(pol.x[0], ref, rtol=0, atol=1e-9)


def test_polish_factorization_serves_the_backward(problem) -> None:
    """The polish's factorization solves the active KKT system of the polished point (no refactoring)."""
    _, d, act = problem
    pol = polish(d, act, SHIFT, EPS)
    gx = torch.randn(1, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    wx, nu = pol.kkt.solve(gx)
    free = ~(act.lower | act.upper)
    C = torch.cat([d.A, d.G * act.rows.unsqueeze(-1).to(F64)], -2)
    resid = (mv(d.P, wx) + mtv(C, nu) - gx) * free.to(F64)
    assert float(resid.abs().max()) < 1e-12
    assert float(mv(C, wx).abs().max()) < 1e-12
    assert bool((wx[~free] == 0).all())


@pytest.mark.parametrize("wrong", ["free_held_at_bound", "active_bound_released"])
def test_wrong_active_set_is_rejected_then_corrected(problem, wrong: str) -> None:
    raw, d, act = problem
    lower = act.lower.clone()
    if wrong == "free_held_at_bound":  # its multiplier comes out negative
        lower[0, int((~act.lower & (d.lb == 0)).nonzero()[0, 1])] = True
    else:  # the polished point violates the released bound
        lower[0, int(act.lower.nonzero()[0, 1])] = False
    bad = ActiveSet(lower, act.upper, act.rows)
    assert polish(d, bad, SHIFT, EPS).ok.tolist() == [False]
    assert polish_corrected(d, bad, SHIFT, EPS, rounds=0) == []  # without corrections: the IPM goes on
    (idx, pol), *rest = polish_corrected(d, bad, SHIFT, EPS)
    assert rest == [] and idx.tolist() == [0]
    assert torch.equal(pol.active.lower, act.lower)
    ref = torch.as_tensor(clarabel_solve(**raw), dtype=F64)
    torch.testing.assert_close(pol.x[0], ref, rtol=0, atol=1e-9)
