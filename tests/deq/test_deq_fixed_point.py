"""fixed_point: forward against closed forms, statuses, per-element stopping, bad input."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_layers.deq import (
    JFB,
    AdjointStats,
    Anderson,
    Broyden,
    Implicit,
    Picard,
    Status,
    Unrolled,
    fixed_point,
    make_solver,
)
from portfolio_layers.errors import ConfigError, ConvergenceError, InputError, NonFiniteError, ShapeError

SOLVERS = ["picard", "anderson", "broyden"]
TIGHT = {"tol": 1e-12, "atol": 1e-12, "max_iter": 600}


def solver_with(name, **stopping):
    """The named solver with another stopping rule (tol, atol, max_iter)."""
    return dataclasses.replace(make_solver(name), **stopping)


def linear_problem(n=6, batch=4, rho=0.8, seed=0, dtype=torch.float64):
    """f(z) = z W' + x U' with ||W||_2 = rho; closed form z* = (I - W)^-1 U x."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=dtype)
    W = rho * W / torch.linalg.matrix_norm(W, ord=2)
    U = torch.randn(n, n, generator=g, dtype=dtype)
    x = torch.randn(batch, n, generator=g, dtype=dtype)
    return W, U, x


def closed_form(W, U, x):
    n = W.shape[0]
    return torch.linalg.solve(torch.eye(n, dtype=W.dtype) - W, (x @ U.T).T).T


@pytest.mark.parametrize("solver", SOLVERS)
def test_linear_fixed_point_matches_closed_form(solver):
    W, U, x = linear_problem()
    z, sol = fixed_point(
        lambda z: z @ W.T + x @ U.T, torch.zeros_like(x), solver=solver_with(solver, **TIGHT)
    )
    torch.testing.assert_close(z, closed_form(W, U, x), rtol=1e-10, atol=1e-10)
    assert sol.all_converged
    assert sol.status.shape == (4,) and sol.iterations.shape == (4,)
    assert bool((sol.abs_residual <= 1e-12 + 1e-12 * z.norm(dim=-1)).all())
    assert sol.solver == solver


def test_anderson_needs_fewer_iterations_than_picard():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    W = Q @ torch.diag(torch.linspace(-0.95, 0.95, 20, dtype=torch.float64)) @ Q.T  # slow for Picard
    x = 0.3 * torch.randn(4, 20, generator=g, dtype=torch.float64)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    kw = {"tol": 1e-8, "atol": 0.0, "max_iter": 1000}
    _, pic = fixed_point(f, torch.zeros_like(x), solver=solver_with("picard", **kw), throw=True)
    _, anb = fixed_point(f, torch.zeros_like(x), solver=solver_with("anderson", **kw), throw=True)
    _, bro = fixed_point(f, torch.zeros_like(x), solver=solver_with("broyden", **kw), throw=True)
    assert int(anb.iterations.max()) < int(pic.iterations.min()) // 2
    assert int(bro.iterations.max()) < int(pic.iterations.min()) // 2


def test_per_element_stopping_and_batched_equals_loop():
    # element 0 contracts fast (rho 0.1), element 1 slowly (rho 0.9): they must stop at different counts.
    n = 5
    rho = torch.tensor([0.1, 0.9], dtype=torch.float64).view(2, 1)
    x = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    f = lambda z: rho * torch.tanh(z) + x  # noqa: E731
    picard = Picard(tol=1e-10, atol=0.0, max_iter=500)
    z, sol = fixed_point(f, torch.zeros_like(x), solver=picard)
    assert int(sol.iterations[0]) < int(sol.iterations[1])
    for b in range(2):
        zb, solb = fixed_point(
            lambda z, b=b: rho[b] * torch.tanh(z) + x[b], torch.zeros(1, n, dtype=torch.float64),
            solver=picard,
        )  # fmt: skip
        assert int(solb.iterations[0]) == int(sol.iterations[b])
        torch.testing.assert_close(zb[0], z[b], rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_contractive_map_reports_max_iter_and_throws(solver):
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    f = lambda z: z + theta * (2.0 + torch.sin(z))  # noqa: E731  (no fixed point: f(z) - z >= theta)
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    # absolute criterion only: the iterates run off to |z| ~ 1e4, where a residual in [1, 3] is
    # relatively small, so a relative tolerance could (correctly, in its own terms) accept them.
    stats = AdjointStats()
    kw = {"solver": solver_with(solver, max_iter=25, tol=0.0, atol=1e-6), "adjoint": Implicit(record=stats)}
    with pytest.raises(ConvergenceError) as info:
        fixed_point(f, z0, **kw)
    assert info.value.indices == ((0,), (1,), (2,))
    assert "max_iter" in str(info.value)
    z, sol = fixed_point(f, z0, throw=False, **kw)
    assert bool((sol.status == Status.MAX_ITER).all())
    assert torch.isfinite(z).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z.sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    adjoint_failed = bool(Status.failed(stats.status).any())
    assert adjoint_failed == any("adjoint" in str(w.message) for w in caught)
    if solver == "picard":  # the adjoint iteration g <- g J + v diverges too (J has eigenvalues > 1)
        assert adjoint_failed


def test_nonfinite_element_gets_nonfinite_status_others_converge():
    x = torch.tensor([[0.5], [float("nan")], [1.0]], dtype=torch.float64)
    z, sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(3, 1, dtype=torch.float64), throw=False)
    assert sol.status.tolist() == [Status.CONVERGED, Status.NONFINITE, Status.CONVERGED]
    torch.testing.assert_close(z[[0, 2]], 2 * x[[0, 2]], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConvergenceError, match="NONFINITE"):
        fixed_point(lambda z: 0.5 * z + x, torch.zeros(3, 1, dtype=torch.float64))


def test_damping_keeps_the_fixed_point():
    W, U, x = linear_problem(rho=0.9)
    f = lambda z: z @ W.T + x @ U.T  # noqa: E731
    z, sol = fixed_point(f, torch.zeros_like(x), solver=Picard(**TIGHT), damping=0.5)
    torch.testing.assert_close(z, closed_form(W, U, x), rtol=1e-9, atol=1e-9)


def test_trace_records_every_iteration():
    W, U, x = linear_problem()
    _, sol = fixed_point(lambda z: z @ W.T + x @ U.T, torch.zeros_like(x), solver="picard", trace=True)
    assert sol.trace.shape == (int(sol.iterations.max()) + 1, 4)
    assert float(sol.trace[-1].max()) < float(sol.trace[0].max())


def test_multidimensional_state_and_float32_close_to_float64():
    W, U, x = linear_problem(n=4, batch=3)
    x3 = x.unsqueeze(1).expand(3, 2, 4)  # state of shape (batch, 2, n)
    z64, _ = fixed_point(
        lambda z: torch.tanh(z @ W.T) + x3, torch.zeros_like(x3), solver=Anderson(tol=1e-10, atol=0)
    )
    W32, x32 = W.float(), x3.float()
    z32, _ = fixed_point(
        lambda z: torch.tanh(z @ W32.T) + x32, torch.zeros_like(x32), solver=Anderson(tol=1e-6, atol=0)
    )
    assert z32.dtype == torch.float32 and z64.shape == (3, 2, 4)
    torch.testing.assert_close(z32.double(), z64, rtol=1e-4, atol=1e-4)


def test_solver_instances_and_names():
    assert isinstance(make_solver("anderson"), Anderson)
    assert make_solver(Broyden(memory=3)).memory == 3
    W, U, x = linear_problem()
    z, _ = fixed_point(lambda z: z @ W.T + x @ U.T, torch.zeros_like(x), solver=Anderson(m=2, **TIGHT))
    torch.testing.assert_close(z, closed_form(W, U, x), rtol=1e-9, atol=1e-9)
    z, _ = fixed_point(lambda z: z @ W.T + x @ U.T, torch.zeros_like(x), solver=Picard(relax=0.7, **TIGHT))
    torch.testing.assert_close(z, closed_form(W, U, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"solver": "newton"}, ConfigError, "Unknown fixed-point solver"),
        ({"adjoint": "adjoint"}, ConfigError, "Unknown backward"),
        ({"damping": 1.0}, ConfigError, "damping"),
        ({"tol": 0.0, "atol": 0.0}, ConfigError, "tol"),
        ({"max_iter": -1}, ConfigError, "max_iter"),
    ],
)
def test_bad_options_raise_config_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        if {"tol", "max_iter"} & set(kwargs):  # the stopping rule is the solver's
            fixed_point(lambda z: 0.5 * z, torch.ones(2, 3), solver=Anderson(**kwargs))
        else:
            fixed_point(lambda z: 0.5 * z, torch.ones(2, 3), **kwargs)


def test_bad_solver_hyperparameters():
    with pytest.raises(ConfigError, match="memory"):
        Anderson(m=0)
    with pytest.raises(ConfigError, match="relax"):
        Picard(relax=0.0)
    with pytest.raises(ConfigError, match="memory"):
        Broyden(memory=0)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="same shape"):
        fixed_point(lambda z: z.sum(-1), torch.ones(2, 3))
    with pytest.raises(ShapeError, match="batch"):
        fixed_point(lambda z: z, torch.tensor(1.0))
    with pytest.raises(NonFiniteError):
        fixed_point(lambda z: 0.5 * z, torch.tensor([[float("inf")]]))


@pytest.mark.parametrize(
    ("z0", "error", "match"),
    [
        (torch.zeros(0, 3), ShapeError, r"z0 has an empty batch \(shape \(0, 3\)\).*skip the call"),
        (torch.zeros(2, 3, dtype=torch.long), InputError, r"floating-point.*torch.int64.*double"),
        ([[0.0, 0.0]], InputError, r"z0 must be a torch.Tensor.*got list.*as_tensor"),
    ],
)
@pytest.mark.parametrize("adjoint", [Implicit(), JFB(), Unrolled()])
def test_unusable_start_raises_a_clear_input_error(z0, error, match, adjoint):
    with pytest.raises(error, match=match):
        fixed_point(lambda z: 0.5 * z + 1.0, z0, adjoint=adjoint)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_map_turning_nan_after_some_iterations_is_nonfinite_not_max_iter(solver):
    calls = [0]

    def f(z):  # no fixed point (every solver keeps stepping), NaN for element 1 from the fourth call on
        calls[0] += 1
        out = z + 1.0
        if calls[0] > 3:
            out = torch.cat([out[:1], out[1:2] * float("nan"), out[2:]])
        return out

    _, sol = fixed_point(f, torch.zeros(3, 2, dtype=torch.float64), solver=solver, throw=False)
    assert sol.status[1] == Status.NONFINITE
    assert bool(torch.isfinite(sol.abs_residual[1]))  # the last finite iterate is kept
    assert sol.status[0] == sol.status[2] == Status.MAX_ITER
    calls[0] = 0
    with pytest.raises(ConvergenceError, match="NONFINITE at batch indices \\[1\\]"):
        fixed_point(f, torch.zeros(3, 2, dtype=torch.float64), solver=solver)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 8),
    rho=st.floats(0.0, 0.95),
    solver=st.sampled_from(SOLVERS),
    tol=st.sampled_from([1e-3, 1e-6, 1e-9]),
)
def test_converged_elements_meet_the_documented_criterion(seed, n, rho, solver, tol):
    W, U, x = linear_problem(n=n, batch=3, rho=rho, seed=seed)
    z0 = torch.zeros_like(x)
    f = lambda z: torch.tanh(z @ W.T) + x  # noqa: E731
    z, sol = fixed_point(f, z0, solver=solver_with(solver, tol=tol, atol=0.0, max_iter=500))
    assert sol.all_converged
    # the returned z is f(z_best); its distance to the exact fixed point is bounded by the contraction:
    # ||f(zb) - z*|| <= rho ||zb - z*|| <= rho / (1 - rho) ||f(zb) - zb||
    z_exact, _ = fixed_point(f, z0, solver=Anderson(**TIGHT))
    bound = rho / (1 - rho) * sol.abs_residual + 1e-10
    assert bool(((z - z_exact).norm(dim=-1) <= bound * (1 + 1e-6)).all())
    assert bool((sol.abs_residual <= tol * z.norm(dim=-1) * (1 + 1e-9)).all())  # z = f(z_best)
