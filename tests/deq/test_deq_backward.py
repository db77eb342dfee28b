"""Backward modes of fixed_point (closed forms, gradcheck, JFB, graph size, adjoint failures); stability."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from portfolio_layers.deq import (
    JFB,
    AdjointStats,
    Implicit,
    Picard,
    Status,
    Unrolled,
    fixed_point,
    jacobian_penalty,
    make_solver,
    normalize_linear,
    spectral_normalize,
    weight_normalize,
)
from portfolio_layers.errors import ConfigError, ConvergenceError

SOLVERS = ["picard", "anderson", "broyden"]
TIGHT = {"tol": 1e-12, "atol": 1e-12, "max_iter": 600}
ADJOINTS = {"implicit": Implicit(), "jfb": JFB(), "unrolled": Unrolled()}


def tight(name):
    """The named solver, run to 1e-12."""
    return dataclasses.replace(make_solver(name), **TIGHT)


def problem(n=5, batch=3, rho=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (rho * W / torch.linalg.matrix_norm(W, ord=2)).requires_grad_()
    U = torch.randn(n, n, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(batch, n, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return W, U, x, c


def grads(z, c, params):
    return torch.autograd.grad((z * c).sum(), params)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_linear_gradients_match_closed_form(solver, backward):
    W, U, x, c = problem()
    f = lambda z: z @ W.T + x @ U.T  # noqa: E731
    z, _ = fixed_point(f, torch.zeros_like(x), solver=tight(solver), adjoint=ADJOINTS[backward])
    n = W.shape[0]
    z_cf = torch.linalg.solve(torch.eye(n, dtype=W.dtype) - W, (x @ U.T).T).T
    for got, want in zip(grads(z, c, [W, U, x]), grads(z_cf, c, [W, U, x]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("backward_solver", SOLVERS)
def test_adjoint_solver_choice_gives_same_gradient(backward_solver):
    W, U, x, c = problem(seed=1)
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    stats = AdjointStats()
    adjoint = Implicit(solver=tight(backward_solver), record=stats)
    z, sol = fixed_point(f, torch.zeros_like(x), solver=tight("anderson"), adjoint=adjoint)
    z_u, _ = fixed_point(f, torch.zeros_like(x), solver=tight("anderson"), adjoint=Unrolled())
    for got, want in zip(grads(z, c, [W, U, x]), grads(z_u, c, [W, U, x]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)
    assert stats.calls == 1 and bool((stats.status == Status.CONVERGED).all())


def test_adjoint_objects_check_their_solver_and_compare_without_their_record():
    with pytest.raises(ConfigError, match="Unknown fixed-point solver"):
        Implicit(solver="newton")
    recorded = Implicit(solver=Picard(max_iter=5), record=AdjointStats())
    assert recorded == Implicit(solver=Picard(max_iter=5)) and repr(recorded) == repr(
        Implicit(Picard(max_iter=5))
    )
    assert hash(recorded) == hash(Implicit(solver=Picard(max_iter=5)))
    assert [a.name for a in ADJOINTS.values()] == list(ADJOINTS)


def test_jfb_is_the_gradient_through_the_last_application():
    W, U, x, c = problem(seed=2)
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    z, _ = fixed_point(f, torch.zeros_like(x), solver=tight("anderson"), adjoint=JFB())
    z_star = z.detach()  # converged: f(z*) = z*
    want = grads(f(z_star), c, [W, U, x])
    for got, w in zip(grads(z, c, [W, U, x]), want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-12)
    z_impl, _ = fixed_point(f, torch.zeros_like(x), solver=tight("anderson"))
    assert not torch.allclose(grads(z_impl, c, [W])[0], want[0], rtol=1e-3)  # JFB is not the exact gradient


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_gradcheck_small_deq(solver):
    W, U, x, _ = problem(n=3, batch=2, seed=3)

    def fn(W, U, x):
        f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
        return fixed_point(f, torch.zeros_like(x), solver=tight(solver))[0]

    assert torch.autograd.gradcheck(fn, (W, U, x), eps=1e-6, atol=1e-6, rtol=1e-5)


def _graph_size(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def test_implicit_graph_does_not_grow_with_iterations_unrolled_does():
    W, U, x, _ = problem(rho=0.95)
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    sizes = {}
    for backward in ["implicit", "unrolled"]:
        for iters in [5, 40]:
            z, sol = fixed_point(f, torch.zeros_like(x), solver=Picard(tol=0.0, atol=1e-300, max_iter=iters),
                                 adjoint=ADJOINTS[backward], throw=False)  # fmt: skip
            assert int(sol.iterations.max()) == iters
            sizes[backward, iters] = _graph_size(z)
    assert sizes["implicit", 5] == sizes["implicit", 40]
    assert sizes["unrolled", 40] > 5 * sizes["unrolled", 5] / 2


def test_failed_adjoint_raises_under_throw_and_warns_otherwise():
    W, U, x, c = problem(rho=0.95, seed=4)
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    stats = AdjointStats()
    bkw = {"solver": tight("anderson"), "adjoint": Implicit(Picard(max_iter=2, tol=1e-14, atol=0.0), stats)}
    z, _ = fixed_point(f, torch.zeros_like(x), **bkw)
    with pytest.raises(ConvergenceError, match="adjoint"):
        (z * c).sum().backward()
    z, sol = fixed_point(f, torch.zeros_like(x), throw=False, **bkw)
    with pytest.warns(RuntimeWarning, match="adjoint"):
        (z * c).sum().backward()
    assert bool((stats.status == Status.MAX_ITER).all()) and torch.isfinite(W.grad).all()


def test_jacobian_penalty_estimates_frobenius_norm():
    n = 4
    W = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    z = torch.zeros(3, n, dtype=torch.float64)
    est = jacobian_penalty(lambda z: z @ W.T, z, samples=3000, generator=torch.Generator().manual_seed(6))
    exact = (W.detach() ** 2).sum() / n
    assert abs(est.item() - exact.item()) < 0.08 * exact.item()
    (gW,) = torch.autograd.grad(est, W)
    torch.testing.assert_close(gW, 2 * W.detach() / n, rtol=0.15, atol=0.05)
    f = lambda z: 0.5 * z @ W.T / torch.linalg.matrix_norm(W, 2) + 1  # noqa: E731
    z_star, _ = fixed_point(f, z)
    jacobian_loss = jacobian_penalty(f, z_star.detach(), samples=2)
    assert jacobian_loss.requires_grad and jacobian_loss.shape == ()
    with pytest.raises(ConfigError):
        jacobian_penalty(lambda z: z, z, samples=0)


def test_spectral_normalize_caps_the_norm_and_keeps_small_weights():
    big = spectral_normalize(nn.Linear(6, 6, bias=False), bound=0.5)
    with torch.no_grad():
        big.parametrizations.weight.original.mul_(100.0)
    assert abs(torch.linalg.matrix_norm(big.weight.detach(), ord=2).item() - 0.5) < 1e-5
    small = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        small.weight.mul_(0.01)
    before = small.weight.detach().clone()
    spectral_normalize(small)
    torch.testing.assert_close(small.weight, before)
    wn = weight_normalize(nn.Linear(3, 2))
    assert hasattr(wn.parametrizations.weight, "original0")
    with pytest.raises(ConfigError, match="normalization"):
        normalize_linear(nn.Linear(2, 2), "batch")


def test_map_independent_of_z_gets_its_plain_gradient():
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    z, sol = fixed_point(lambda z: 2.0 * x, torch.zeros(2, 3, dtype=torch.float64))
    z.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 2.0, dtype=torch.float64))
    assert sol.all_converged
