"""FactorCov(F, d): agreement with the dense P = F F' + diag(d), gradients and errors."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.errors import InputError, NonFiniteError, NotPSDError, ShapeError
from portfolio_layers.qp import (
    FactorCov,
    QPLayer,
    combine,
    fully_invested,
    leverage_limit,
    long_only,
    solve_qp,
    weight_cap,
)
from portfolio_layers.qp.autograd import Carrier, IPMFunction
from portfolio_layers.qp.ipm import InteriorPoint
from portfolio_layers.qp.kkt import (
    factor_active,
    factor_newton,
    factor_point,
    reduced_matrix,
)
from tests.qp.conftest import clarabel_solve, with_constraints

F64 = torch.float64
MIXES = ("none", "box", "eq", "ineq", "all", "portfolio")


def factor_qp(seed: int, n: int, k: int, mix: str, batch: tuple[int, ...] = (3,), dtype=F64) -> dict:
    """A feasible random QP with ``P = F F' + diag(d)`` and the given constraint mix."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "F": 0.5 * torch.randn(*batch, n, k, generator=g, dtype=F64),
        "d": 0.05 + 0.2 * torch.rand(*batch, n, generator=g, dtype=F64),
        "q": torch.randn(*batch, n, generator=g, dtype=F64),
    }
    return with_constraints(out, n, mix, g, dtype)


def split(qp: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    rest = {key: v for key, v in qp.items() if key not in ("F", "d")}
    return qp["F"], qp["d"], rest


def solve_both(qp: dict, grad: bool = True, backend: str = "ipm"):
    """Solutions and gradients (to q, F, d) of the loss ``sum(w * x)`` with the factor and the dense P."""
    out = []
    for form in ("factor", "dense"):
        F, d, rest = split(qp)
        F, d = F.clone().requires_grad_(grad), d.clone().requires_grad_(grad)
        rest["q"] = rest["q"].clone().requires_grad_(grad)
        P = FactorCov(F, d) if form == "factor" else F @ F.mT + torch.diag_embed(d)
        sol = solve_qp(P, **rest, backend=backend)
        grads = None
        if grad:
            w = torch.linspace(-1.0, 2.0, sol.x.shape[-1], dtype=sol.x.dtype)
            grads = torch.autograd.grad((w * sol.x).sum() + (sol.x**2).sum(), [rest["q"], F, d])
        out.append((sol, grads))
    return out


@pytest.mark.parametrize("backend", ["ipm", "active_set"])
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("seed", [0, 1])
def test_factor_matches_dense(mix: str, seed: int, backend: str) -> None:
    qp = factor_qp(seed, 14, 3, mix)
    (sf, gf), (sd, gd) = solve_both(qp, backend=backend)
    assert sf.ok and sd.ok
    for name in ("x", "y", "lam", "z_lower", "z_upper"):
        a, b = getattr(sf, name), getattr(sd, name)
        assert torch.allclose(a, b, atol=1e-8, rtol=0), (name, float((a - b).abs().max()))
    for name, a, b in zip(("q", "F", "d"), gf, gd, strict=True):
        assert torch.allclose(a, b, atol=1e-8 * max(1.0, float(b.abs().max())), rtol=0), name


def test_factor_matches_clarabel() -> None:
    qp = factor_qp(3, 10, 2, "all", batch=())
    F, d, rest = split(qp)
    x = solve_qp(FactorCov(F, d), **rest).x
    ref = clarabel_solve(F @ F.T + torch.diag(d), **rest)
    assert torch.allclose(x, torch.as_tensor(ref), atol=1e-7)


@pytest.mark.parametrize("backend", ["ipm", "active_set"])
@pytest.mark.parametrize("mix", ["box", "all", "portfolio"])
def test_gradcheck_F_d(mix: str, backend: str) -> None:
    qp = factor_qp(4, 5, 2, mix, batch=(2,))
    F, d, rest = split(qp)
    q = rest.pop("q")

    def f(F: torch.Tensor, d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return solve_qp(FactorCov(F, d), q, **rest, backend=backend).x

    args = [v.clone().requires_grad_(True) for v in (F, d, q)]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mix", ["box", "ineq", "all"])
def test_interior_point_backward_matches_dense(mix: str) -> None:
    """Without the polish, the backward uses the capacitance factorization at the interior point."""
    qp = factor_qp(5, 9, 2, mix, batch=(2,))
    F, d, rest = split(qp)
    scale = float((F * F).sum(-1).add(d).max())
    F, d, q = F / scale**0.5, d / scale, rest.pop("q") / scale
    n = q.shape[-1]
    tensors = [rest.get(key) for key in ("A", "b", "G", "h")]
    lb = torch.as_tensor(rest.get("lb", -torch.inf), dtype=F64).expand(2, n)
    ub = torch.as_tensor(rest.get("ub", torch.inf), dtype=F64).expand(2, n)
    tensors = [None if v is None else v.expand(2, *v.shape) for v in tensors]
    solver = InteriorPoint(tol=1e-11, polish_mu=0.0)
    out = []
    for form in ("factor", "dense"):
        Fr, dr, qr = (v.clone().requires_grad_(True) for v in (F, d, q))
        cost = (None, Fr, dr) if form == "factor" else (Fr @ Fr.mT + torch.diag_embed(dr), None, None)
        x = IPMFunction.apply(solver, Carrier(), None, *cost, qr, *tensors, lb, ub)
        out.append((x, torch.autograd.grad((x * torch.arange(n, dtype=F64)).sum(), [Fr, dr, qr])))
    (xf, gf), (xd, gd) = out
    assert torch.allclose(xf, xd, atol=1e-8)
    for a, b in zip(gf, gd, strict=True):
        assert torch.allclose(a, b, atol=1e-6 * max(1.0, float(b.abs().max())))


def _barrier(g: torch.Generator, B: int, n: int) -> torch.Tensor:
    return torch.rand(B, n, generator=g, dtype=F64) * torch.logspace(-3, 3, n, dtype=F64)


def test_kkt_factorizations_match_dense() -> None:
    """The low-rank factorizations solve the same systems as the dense ones, through the same interface."""
    g = torch.Generator().manual_seed(6)
    B, n, k, p, m = 3, 8, 2, 2, 3
    P = FactorCov(
        torch.randn(B, n, k, generator=g, dtype=F64), 0.1 + torch.rand(B, n, generator=g, dtype=F64)
    )
    A, G = torch.randn(B, p, n, generator=g, dtype=F64), torch.randn(B, m, n, generator=g, dtype=F64)
    d_G, d_x = torch.rand(B, m, generator=g, dtype=F64) + 0.1, _barrier(g, B, n)
    r1, r2 = torch.randn(B, n, generator=g, dtype=F64), torch.randn(B, p, generator=g, dtype=F64)
    for K in (
        factor_newton(P, A, G, d_G, d_x, 1e-13, {}),
        factor_newton(P.dense(), A, G, d_G, d_x, 1e-13, {}),
    ):
        dx, dy = K.solve(r1, r2)
        H = reduced_matrix(P.dense(), G, d_G, d_x)
        assert torch.allclose((H @ dx[..., None]).squeeze(-1) + (A.mT @ dy[..., None]).squeeze(-1), r1)
        assert torch.allclose((A @ dx[..., None]).squeeze(-1), r2)
    r2 = torch.randn(B, p + m, generator=g, dtype=F64)
    sols = [factor_point(Q, d_x, A, G, 1.0 / d_G, 1e-13).solve(r1, r2) for Q in (P, P.dense())]
    for a, b in zip(*sols, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    free = torch.rand(B, n, generator=g) < 0.7
    pinned = torch.tensor([[False, True, False]] * B)
    C = torch.cat([A, G * (~pinned).unsqueeze(-1)], -2)
    sols = [factor_active(Q, C, free, 1e-13, pinned).solve(r1, r2) for Q in (P, P.dense())]
    for a, b in zip(*sols, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_broadcasting_and_batch_equals_loop() -> None:
    """F shared by the batch, d and q per element: batched equals a loop; the gradient of F is summed."""
    qp = factor_qp(7, 10, 2, "portfolio", batch=(2, 3))
    F = qp["F"][0, 0].clone().requires_grad_(True)
    d, q = qp["d"], qp["q"]
    kw = {key: qp[key] for key in ("A", "b", "lb", "ub")}
    x = solve_qp(FactorCov(F, d), q, **kw).x
    assert x.shape == (2, 3, 10)
    (gF,) = torch.autograd.grad(x[..., 0].sum(), [F])
    assert gF.shape == F.shape
    total = torch.zeros_like(gF)
    for i in range(2):
        for j in range(3):
            Fi = F.detach().clone().requires_grad_(True)
            xi = solve_qp(FactorCov(Fi, d[i, j]), q[i, j], **kw).x
            assert torch.allclose(xi, x[i, j], atol=1e-10)
            total += torch.autograd.grad(xi[0], [Fi])[0]
    assert torch.allclose(gF, total, atol=1e-9)
    assert FactorCov(F, d).shape == (2, 3, 10, 10)


def test_float32_close_to_float64() -> None:
    qp64 = factor_qp(8, 20, 3, "portfolio")
    qp32 = factor_qp(8, 20, 3, "portfolio", dtype=torch.float32)
    (x64, x32) = (
        solve_qp(FactorCov(v["F"], v["d"]), v["q"], v["A"], v["b"], lb=0.0, ub=v["ub"]).x
        for v in (qp64, qp32)
    )
    assert x32.dtype == torch.float32
    assert torch.allclose(x32.double(), x64, atol=1e-4)


@pytest.mark.parametrize("leverage", [False, True])
def test_qplayer_accepts_factor_cov(leverage: bool) -> None:
    n = 12
    qp = factor_qp(9, n, 3, "none", batch=(2,))
    parts = [fully_invested(n), weight_cap(n, 0.3)]
    parts += [leverage_limit(n, 1.6)] if leverage else [long_only(n)]
    layer = QPLayer(combine(*parts))
    F, d, q = (qp[key].clone().requires_grad_(True) for key in ("F", "d", "q"))
    xf = layer(FactorCov(F, d), q)
    gf = torch.autograd.grad((xf * torch.arange(n, dtype=F64)).sum(), [F, d, q])
    P = F @ F.mT + torch.diag_embed(d)
    xd = layer(P, q)
    gd = torch.autograd.grad((xd * torch.arange(n, dtype=F64)).sum(), [F, d, q])
    assert xf.shape == (2, n)
    assert torch.allclose(xf, xd, atol=1e-8)
    for a, b in zip(gf, gd, strict=True):
        assert torch.allclose(a, b, atol=1e-7 * max(1.0, float(b.abs().max())))


def test_bad_input() -> None:
    F, d, q = torch.randn(2, 5, 2, dtype=F64), torch.rand(2, 5, dtype=F64) + 0.1, torch.randn(2, 5, dtype=F64)
    with pytest.raises(NotPSDError, match="negative"):
        solve_qp(FactorCov(F, torch.cat([d[:, :4], -d[:, 4:]], -1)), q)
    with pytest.raises(InputError, match="zero"):
        solve_qp(FactorCov(F, d * torch.tensor([1.0, 1, 0, 1, 1], dtype=F64)), q)
    with pytest.raises(ShapeError, match="F \\(\\*batch, n, k\\)"):
        FactorCov(F, d[:, :4])
    with pytest.raises(ShapeError, match="broadcast"):
        FactorCov(F, torch.rand(3, 5, dtype=F64))
    with pytest.raises(ShapeError, match="q has shape"):
        solve_qp(FactorCov(F, d), q[:, :4])
    with pytest.raises(InputError, match="float32 or float64"):
        FactorCov(F.to(torch.int64), d)
    with pytest.raises(InputError, match="torch.Tensor"):
        FactorCov(F.numpy(), d)
    with pytest.raises(NonFiniteError, match="FactorCov.F"):
        solve_qp(FactorCov(F.index_fill(-1, torch.tensor([0]), torch.nan), d), q)
