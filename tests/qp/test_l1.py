"""The native L1 trading cost and turnover limit (solve_qp(..., l1=L1Cost(x0, kappa, limit)))."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.qp import (
    FactorCov,
    L1Cost,
    QPLayer,
    fully_invested,
    long_only,
    solve_qp,
    turnover_limit,
)
from portfolio_layers.qp.autograd import Carrier, IPMFunction
from portfolio_layers.qp.constraints import lift
from portfolio_layers.qp.ipm import InteriorPoint
from portfolio_layers.qp.l1 import attach
from portfolio_layers.qp.problem import canonicalize
from tests.qp.conftest import F64, random_qp


def _reference(prob: dict, x0, kappa, tau) -> np.ndarray:
    """cvxpy + Clarabel (tight) for one problem with the cost ``kappa'|x - x0|`` and ``|x - x0|_1 <= tau``."""

    def npy(v):
        return None if v is None else np.asarray(v.detach() if isinstance(v, torch.Tensor) else v, float)

    P, q = npy(prob["P"]), npy(prob["q"])
    n = q.shape[0]
    x = cp.Variable(n)
    cons = []
    if prob.get("A") is not None:
        cons.append(npy(prob["A"]) @ x == npy(prob["b"]))
    if prob.get("G") is not None:
        cons.append(npy(prob["G"]) @ x <= npy(prob["h"]))
    if prob.get("lb") is not None:
        cons.append(x >= np.broadcast_to(npy(prob["lb"]), (n,)))
    if prob.get("ub") is not None:
        cons.append(x <= np.broadcast_to(npy(prob["ub"]), (n,)))
    x0, kappa = npy(x0), np.broadcast_to(npy(kappa), (n,))
    if tau is not None:
        cons.append(cp.norm1(x - x0) <= float(tau))
    obj = 0.5 * cp.quad_form(x, cp.psd_wrap(0.5 * (P + P.T))) - q @ x + kappa @ cp.abs(x - x0)
    problem = cp.Problem(cp.Minimize(obj), cons)
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, max_iter=300)
    assert problem.status in ("optimal", "optimal_inaccurate"), problem.status
    return x.value


def _case(seed: int, n: int, mix: str, batch: tuple[int, ...] = ()) -> tuple[dict, torch.Tensor]:
    """A random QP and previous weights ``x0``: the solution of the same QP with another ``q``."""
    prob = random_qp(seed, n, batch=batch, mix=mix)
    other = dict(prob, q=torch.randn(prob["q"].shape, generator=torch.Generator().manual_seed(99), dtype=F64))
    return prob, solve_qp(**other).x


def _interior(x0: torch.Tensor) -> torch.Tensor:
    """``x0`` mixed with equal weights: off every bound of the 'portfolio' mix (away from kinks)."""
    return 0.5 * x0 + 0.5 / x0.shape[-1]


def _turnover(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (x - x0).abs().sum(-1)


@pytest.mark.parametrize("mix", ["portfolio", "all", "box"])
@pytest.mark.parametrize("tau", [None, 0.05, 0.3, 10.0])
def test_against_clarabel(mix: str, tau: float | None) -> None:
    prob, x0 = _case(1, 10, mix)
    sol = solve_qp(**prob, l1=L1Cost(x0, 0.05, tau))
    ref = _reference(prob, x0, 0.05, tau)
    np.testing.assert_allclose(sol.x.numpy(), ref, atol=1e-8)
    if tau is not None:
        assert float(_turnover(sol.x, x0)) <= tau + 1e-9


def test_limit_binding_and_not() -> None:
    prob, x0 = _case(2, 15, "portfolio")
    free = float(_turnover(solve_qp(**prob).x, x0))
    tight = solve_qp(**prob, l1=L1Cost(x0, limit=0.5 * free))
    loose = solve_qp(**prob, l1=L1Cost(x0, limit=2.0 * free))
    assert float(_turnover(tight.x, x0)) == pytest.approx(0.5 * free, abs=1e-9)  # binding
    np.testing.assert_allclose(loose.x.numpy(), solve_qp(**prob).x.numpy(), atol=1e-9)  # not binding
    np.testing.assert_allclose(tight.x.numpy(), _reference(prob, x0, 0.0, 0.5 * free), atol=1e-8)


def test_kappa_zero_is_no_cost_and_per_asset_kappa() -> None:
    prob, x0 = _case(3, 12, "all")
    np.testing.assert_allclose(
        solve_qp(**prob, l1=L1Cost(x0, 0.0)).x.numpy(), solve_qp(**prob).x.numpy(), atol=1e-10
    )
    kappa = torch.linspace(0.0, 0.2, 12, dtype=F64)
    sol = solve_qp(**prob, l1=L1Cost(x0, kappa, 0.4))
    np.testing.assert_allclose(sol.x.numpy(), _reference(prob, x0, kappa, 0.4), atol=1e-8)
    big = solve_qp(**prob, l1=L1Cost(x0, 100.0))  # trading costs more than it can gain: stay at x0
    np.testing.assert_allclose(big.x.numpy(), x0.numpy(), atol=1e-10)


def test_batch_equals_loop_and_broadcasting() -> None:
    prob, x0 = _case(4, 8, "portfolio", batch=(3,))
    kappa = torch.tensor([[0.0], [0.02], [0.1]], dtype=F64).expand(3, 8)
    tau = torch.tensor([0.2, 0.5, 1.0], dtype=F64)
    batch = solve_qp(**prob, l1=L1Cost(x0, kappa, tau)).x
    for i in range(3):
        one = {**prob, "P": prob["P"][i], "q": prob["q"][i]}
        xi = solve_qp(**one, l1=L1Cost(x0[i], kappa[i], tau[i])).x
        np.testing.assert_allclose(batch[i].numpy(), xi.numpy(), atol=1e-12)
    # one x0 for a batch of problems, and a batch of x0 for one problem
    shared = solve_qp(**prob, l1=L1Cost(x0[0], 0.05, 0.3)).x
    assert shared.shape == (3, 8)
    single = {**prob, "P": prob["P"][0], "q": prob["q"][0]}
    assert solve_qp(**single, l1=L1Cost(x0, 0.05, 0.3)).x.shape == (3, 8)


def _factor_case(
    seed: int, n: int, k: int, B: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(B, n, k, generator=g, dtype=F64) * 0.4
    d = torch.rand(B, n, generator=g, dtype=F64) + 0.1
    q = torch.randn(B, n, generator=g, dtype=F64) * 0.3
    x0 = 0.5 * torch.softmax(torch.randn(B, n, generator=g, dtype=F64), -1) + 0.5 / n
    return F, d, q, x0


@pytest.mark.parametrize("tau", [None, 0.2])
def test_dense_and_factor_agree_with_gradients(tau: float | None) -> None:
    n = 30
    F, d, q, x0 = _factor_case(5, n, 3, 4)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    kappa = torch.full((4, n), 0.01, dtype=F64)
    out = {}
    for form in ("dense", "factor"):
        leaves = [v.clone().requires_grad_(True) for v in (F, d, q, x0, kappa)]
        Fl, dl, ql, x0l, kl = leaves
        P = FactorCov(Fl, dl) if form == "factor" else Fl @ Fl.mT + torch.diag_embed(dl)
        x = solve_qp(P, ql, A, b, lb=0.0, ub=0.3, l1=L1Cost(x0l, kl, tau)).x
        (x * torch.arange(n, dtype=F64)).sum().backward()
        out[form] = [x.detach()] + [v.grad for v in leaves]
    for a, c in zip(out["dense"], out["factor"], strict=True):
        np.testing.assert_allclose(a.numpy(), c.numpy(), atol=1e-8)


@pytest.mark.parametrize("form", ["dense", "factor"])
@pytest.mark.parametrize("tau", [None, 0.25])
def test_gradcheck_x0_kappa_tau(form: str, tau: float | None) -> None:
    n = 8
    F, d, q, x0 = _factor_case(6, n, 2, 2)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    kappa = torch.rand(2, n, generator=torch.Generator().manual_seed(7), dtype=F64) * 0.03

    def f(q_, x0_, k_, F_, t_):
        P = FactorCov(F_, d) if form == "factor" else F_ @ F_.mT + torch.diag_embed(d)
        return solve_qp(P, q_, A, b, lb=0.0, ub=0.5, l1=L1Cost(x0_, k_, None if tau is None else t_)).x

    tau_t = torch.tensor(0.25 if tau is None else tau, dtype=F64)
    args = [v.clone().requires_grad_(True) for v in (q, x0, kappa, F, tau_t)]
    args[-1].requires_grad_(tau is not None)
    assert torch.autograd.gradcheck(f, tuple(args), atol=1e-6, rtol=1e-4)


def test_gradients_match_finite_differences_and_ipm_only_backward() -> None:
    """Polished (active-set) gradients against central differences, and against the interior
    point's own backward (polishing off: the Newton system of the split problem at the solution).

    Without a budget row: with ``1'x = 1`` and a binding limit, the budget and the limit row coincide
    on the free variables when all of them trade one way (a degenerate point, a kink in ``x0``)."""
    prob, x0 = _case(8, 10, "box")
    x0 = x0.clamp(0.05, 0.95)
    kappa = torch.full((10,), 0.02, dtype=F64)
    w = torch.arange(10, dtype=F64)

    def loss(x0_, k_):
        return (solve_qp(**prob, l1=L1Cost(x0_, k_, 0.3)).x * w).sum()

    x0r, kr = x0.clone().requires_grad_(True), kappa.clone().requires_grad_(True)
    loss(x0r, kr).backward()
    eps = 1e-6
    for i in (0, 3, 7):
        e = torch.zeros(10, dtype=F64)
        e[i] = eps
        fd_x0 = (loss(x0 + e, kappa) - loss(x0 - e, kappa)) / (2 * eps)
        fd_k = (loss(x0, kappa + e) - loss(x0, kappa - e)) / (2 * eps)
        assert float(x0r.grad[i]) == pytest.approx(float(fd_x0), abs=1e-5)
        assert float(kr.grad[i]) == pytest.approx(float(fd_k), abs=1e-5)
    x0s, ks = x0.clone().requires_grad_(True), kappa.clone().requires_grad_(True)
    data = attach(canonicalize(**prob), L1Cost(x0s, ks, 0.3))
    solver = InteriorPoint(tol=1e-10, polish_mu=0.0, max_iter=100)
    carrier = Carrier()
    args = (data.P, None, None, *data.tensors()[1:], data.l1.x0, data.l1.kappa, data.l1.tau)
    x = IPMFunction.apply(solver, carrier, None, *args)
    assert not carrier.result.polished and int(carrier.result.status[0]) == 0
    (x[0] * w).sum().backward()
    # the interior point's derivative is that of its final barrier problem (mu ~ 1e-11): close, not equal
    np.testing.assert_allclose(x0s.grad.numpy(), x0r.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ks.grad.numpy(), kr.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_qplayer_turnover_is_native_and_matches_the_lifted_formulation() -> None:
    n = 12
    prob = random_qp(9, n, batch=(3,), mix="box")
    x0 = torch.full((n,), 1.0 / n, dtype=F64)
    cons = fully_invested(n) & long_only(n) & turnover_limit(n, 0.3)
    layer = QPLayer(cons)
    assert layer.N == n  # no auxiliary variables
    sol = layer.solve(prob["P"], prob["q"], x0)
    # the old formulation: t >= |w - x0| with 2n + 1 rows and a ridge 1e-9 max|P| on t
    lifted = lift(cons)
    N = int(lifted["N"])
    ridge = 1e-9 * prob["P"].abs().amax((-2, -1), keepdim=True)
    P = torch.nn.functional.pad(prob["P"], (0, N - n, 0, N - n)) + ridge * torch.diag(
        torch.cat([torch.zeros(n, dtype=F64), torch.ones(N - n, dtype=F64)])
    )
    h = lifted["h"].clone()
    h[lifted["turnover_rows"]] += torch.cat([x0, -x0])
    old = solve_qp(
        P,
        torch.nn.functional.pad(prob["q"], (0, N - n)),
        lifted["A"],
        lifted["b"],
        lifted["G"],
        h,
        lifted["lb"],
        lifted["ub"],
    )
    np.testing.assert_allclose(sol.x.numpy(), old.x[..., :n].numpy(), atol=1e-7)  # the old ridge's effect
    assert int(sol.iterations.max()) <= int(old.iterations.max())


def test_other_backends_solve_the_split_problem_densely() -> None:
    prob, x0 = _case(10, 8, "portfolio")
    x0 = _interior(x0)
    ipm_x = solve_qp(**prob, l1=L1Cost(x0, 0.02, 0.3)).x
    as_x = solve_qp(**prob, l1=L1Cost(x0, 0.02, 0.3), backend="active_set").x
    np.testing.assert_allclose(as_x.numpy(), ipm_x.numpy(), atol=1e-7)
    assert solve_qp(**prob, l1=L1Cost(x0, 0.02), backend="auto").iterations.item() > 0  # auto: ipm


def test_bad_l1_input_raises() -> None:
    prob, x0 = _case(11, 6, "portfolio")
    with pytest.raises(ConfigError, match="kappa must be >= 0"):
        solve_qp(**prob, l1=L1Cost(x0, -0.1))
    with pytest.raises(ConfigError, match="limit must be >= 0"):
        solve_qp(**prob, l1=L1Cost(x0, 0.0, -1.0))
    with pytest.raises(ShapeError, match="l1.x0 must have shape"):
        solve_qp(**prob, l1=L1Cost(x0[:3]))
    with pytest.raises(ConfigError, match="L1Cost"):
        solve_qp(**prob, l1=(x0, 0.1))
