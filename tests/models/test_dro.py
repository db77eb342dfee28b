"""The E2E-DRO decision layers: forward against cvxpy + Clarabel, gradients against finite differences.

Tolerances: the nominal layer (this package's interior point, tol 1e-10) agrees with Clarabel to 1e-7 and
its gradients with central differences to rtol 1e-5. The DRO layers: the native backend (batched interior
point, tol 1e-10, implicit backward) is checked against the primal worst case (values to 1e-6 relative),
against the cvxpylayers reference (weights to 1e-6, gradients to 1e-4 relative per input) and by
gradcheck (float64, n = 4, N = 8, eps 1e-6, atol 1e-5, rtol 1e-4). The reference (Clarabel through
diffcp, gap tolerance 1e-11 on unit-scaled errors) has its directional derivatives (solver tolerance
1e-13) checked to rtol 2e-3 + atol 2e-5 against central differences with step 1e-3.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, NonFiniteError, ShapeError
from portfolio_layers.models.dro import (
    DROLayer,
    NominalLayer,
    dro_layer,
    error_windows,
    nominal_layer,
    prediction_errors,
)
from portfolio_layers.models.dro_native import IPMSettings, interior_point
from portfolio_layers.models.dro_problems import HellingerProblem

AMBIGUITY = ["hellinger", "tv"]
DELTA = {"hellinger": 0.05, "tv": 0.2}
TIGHT = {"tol_gap_abs": 1e-13, "tol_gap_rel": 1e-13, "tol_feas": 1e-13, "max_iter": 400}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small batched solves: one thread avoids oversubscribing the shared cores (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(seed: int, B: int = 2, N: int = 24, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Weekly-scale prediction errors (about 3 %, correlated) and predictions (about 0.2 %)."""
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5 + torch.eye(n, dtype=torch.float64)
    E = 0.03 * torch.randn(B, N, n, generator=g, dtype=torch.float64) @ L.T / 1.5
    y = 0.002 * torch.randn(B, n, generator=g, dtype=torch.float64)
    return E, y


def nominal_reference(E: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    N, n = E.shape
    z, c = cp.Variable(n, nonneg=True), cp.Variable()
    objective = cp.sum_squares(E @ z - c) / N - gamma * (y @ z)
    cp.Problem(cp.Minimize(objective), [cp.sum(z) == 1]).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return z.value


def worst_case_objective(E: np.ndarray, y: np.ndarray, gamma: float, delta: float, amb: str, z: np.ndarray):
    """``min_c max_p sum_j p_j (eps_j'z - c)^2 - gamma y'z`` at a fixed ``z``, from the primal side.

    By Sion's theorem min over c and max over p swap, and ``min_c sum_j p_j (a_j - c)^2`` is the variance
    of ``a = E z`` under ``p``, concave in ``p``: one concave maximisation over the ambiguity set.
    """
    N = E.shape[0]
    scale = 1 / np.sqrt(np.mean((E @ z) ** 2))  # solve in units where the losses are about 1
    a = scale * (E @ z)
    p = cp.Variable(N, nonneg=True)
    ball = (
        [cp.sum(cp.sqrt(p)) >= np.sqrt(N) * (1 - delta / 2)]  # sum (sqrt p - sqrt(1/N))^2 <= delta
        if amb == "hellinger"
        else [cp.norm1(p - 1 / N) <= delta]
    )
    prob = cp.Problem(cp.Maximize(p @ a**2 - cp.square(p @ a)), [cp.sum(p) == 1, *ball])
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    assert prob.status == cp.OPTIMAL
    return prob.value / scale**2 - gamma * y @ z


def directional_fd(f, x: torch.Tensor, v: torch.Tensor, h: float) -> float:
    return float((f(x + h * v) - f(x - h * v)) / (2 * h))


# ----------------------------------------------------------------------------------------- nominal


def test_nominal_matches_cvxpy() -> None:
    E, y = problem(0, B=3, N=25, n=7)
    gamma = torch.tensor([0.05, 0.1, 0.3], dtype=torch.float64)
    z = nominal_layer(E, y, gamma)
    assert z.shape == (3, 7)
    for b in range(3):
        ref = nominal_reference(E[b].numpy(), y[b].numpy(), float(gamma[b]))
        np.testing.assert_allclose(z[b].numpy(), ref, atol=1e-7)
    # the risk term is the sample variance of the portfolio error (c = its mean)
    zb = z[0].numpy()
    val = np.var(E[0].numpy() @ zb) - 0.05 * y[0].numpy() @ zb
    a = E[0].numpy() @ zb
    assert np.mean((a - a.mean()) ** 2) == pytest.approx(np.var(a))
    assert val <= np.var(E[0].numpy() @ np.full(7, 1 / 7)) - 0.05 * y[0].numpy().mean() + 1e-12


def test_nominal_batched_equals_loop_and_broadcasts() -> None:
    E, y = problem(1, B=3)
    z = nominal_layer(E, y, 0.2)
    for b in range(3):
        torch.testing.assert_close(nominal_layer(E[b], y[b], 0.2), z[b], atol=1e-9, rtol=0)
    # one error window shared by a batch of predictions
    zs = nominal_layer(E[0], y, torch.tensor(0.2, dtype=torch.float64))
    torch.testing.assert_close(zs[0], z[0], atol=1e-9, rtol=0)
    assert NominalLayer()(E, y, 0.2).shape == (3, 6)


def test_nominal_gradients_match_finite_differences() -> None:
    E, y = problem(2, B=2)
    w = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gamma = torch.tensor(0.2, dtype=torch.float64)
    E_, y_, g_ = E.clone().requires_grad_(), y.clone().requires_grad_(), gamma.clone().requires_grad_()
    (w * nominal_layer(E_, y_, g_)).sum().backward()
    v = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.002
    VE = torch.randn(E.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.03

    def loss_y(t: torch.Tensor) -> torch.Tensor:
        return (w * nominal_layer(E, t, gamma)).sum()

    def loss_g(t: torch.Tensor) -> torch.Tensor:
        return (w * nominal_layer(E, y, t)).sum()

    fd_y = directional_fd(loss_y, y, v, 1e-4)
    fd_g = directional_fd(loss_g, gamma, torch.tensor(1.0, dtype=torch.float64), 1e-5)
    assert float((y_.grad * v).sum()) == pytest.approx(fd_y, rel=1e-5, abs=1e-9)
    assert float(g_.grad) == pytest.approx(fd_g, rel=1e-5, abs=1e-9)
    fd_e = directional_fd(lambda t: (w * nominal_layer(t, y, gamma)).sum(), E, VE, 1e-4)
    assert float((E_.grad * VE).sum()) == pytest.approx(fd_e, rel=1e-5, abs=1e-9)


def test_nominal_short_window_gets_a_ridge() -> None:
    E, y = problem(3, B=2, N=4, n=6)  # N <= n: the sample covariance is singular
    y_ = y.clone().requires_grad_()
    z = nominal_layer(E, y_, 0.1)
    torch.testing.assert_close(z.sum(-1), torch.ones(2, dtype=torch.float64))
    assert bool((z > -1e-9).all())
    z.square().sum().backward()
    assert bool(torch.isfinite(y_.grad).all())


# ----------------------------------------------------------------------------------------- DRO


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_dro_is_optimal_for_the_worst_case_objective(amb: str) -> None:
    E, y = problem(4, B=2, N=20, n=5)
    gamma, delta = 0.3, DELTA[amb]
    z = dro_layer(E, y, gamma, delta, amb)
    assert z.shape == (2, 5)
    torch.testing.assert_close(z.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-8, rtol=0)
    assert bool((z > -1e-8).all())
    rng = np.random.default_rng(0)
    for b in range(2):
        Eb, yb, zb = E[b].numpy(), y[b].numpy(), z[b].numpy()
        best = worst_case_objective(Eb, yb, gamma, delta, amb, zb)
        # the robust layer differs from the nominal one: the ambiguity set matters
        nominal = nominal_layer(E[b], y[b], gamma).numpy()
        assert np.abs(nominal - zb).max() > 1e-3
        assert worst_case_objective(Eb, yb, gamma, delta, amb, nominal) > best
        # F is convex in z: no step toward a vertex, nor a random point, improves on the layer's z
        candidates = [zb + t * (np.eye(5)[i] - zb) for i in range(5) for t in (1e-3, 1e-1)]
        candidates += list(rng.dirichlet(np.ones(5), size=3))
        for cand in candidates:
            assert worst_case_objective(Eb, yb, gamma, delta, amb, cand) >= best - 1e-6 * abs(best)


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_dro_value_equals_the_worst_case_value(amb: str) -> None:
    """The dual reformulation's optimal value equals the primal worst case at the layer's weights."""
    from portfolio_layers.models.dro import dro_problem

    E, y = problem(5, B=1, N=20, n=5)
    gamma, delta = 0.3, DELTA[amb]
    prob, (Ep, yp, gp, dp), zv = dro_problem(20, 5, amb)
    scale = 1 / float(E[0].square().mean().sqrt())  # units where the errors are about 1
    Ep.value, yp.value, gp.value, dp.value = scale * E[0].numpy(), scale**2 * y[0].numpy(), gamma, delta
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == cp.OPTIMAL
    z = dro_layer(E[0], y[0], gamma, delta, amb).numpy()
    np.testing.assert_allclose(zv.value, z, atol=1e-6)
    primal = worst_case_objective(E[0].numpy(), y[0].numpy(), gamma, delta, amb, z)
    assert prob.value / scale**2 == pytest.approx(primal, rel=1e-6)


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_dro_with_delta_zero_is_nominal(amb: str) -> None:
    E, y = problem(6, B=3)
    gamma = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    z = dro_layer(E, y, gamma, 0.0, amb)
    torch.testing.assert_close(z, nominal_layer(E, y, gamma), atol=1e-6, rtol=0)
    # a batch mixing delta = 0 and delta > 0 (Hellinger routes the zeros to the QP)
    delta = torch.tensor([0.0, DELTA[amb], 0.0], dtype=torch.float64)
    mixed = dro_layer(E, y, gamma, delta, amb)
    torch.testing.assert_close(mixed[[0, 2]], z[[0, 2]], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[1], dro_layer(E[1], y[1], gamma[1], DELTA[amb], amb), atol=1e-8, rtol=0)
    y_ = y.clone().requires_grad_()
    dro_layer(E, y_, gamma, delta, amb).square().sum().backward()  # gradients flow through both routes
    assert bool((y_.grad.abs().sum(-1) > 0).all())


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_cone_gradients_match_finite_differences(amb: str) -> None:
    """The reference backend's gradients (the native ones are compared with them below)."""
    E, y = problem(7, B=2)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 6, generator=gen, dtype=torch.float64) * 0.002
    gamma = torch.tensor(0.3, dtype=torch.float64)
    delta = torch.tensor(DELTA[amb], dtype=torch.float64)
    E_, y_, g_, d_ = (t.clone().requires_grad_() for t in (E, y, gamma, delta))
    (w * dro_layer(E_, y_, g_, d_, amb, backend="cvxpylayers", solver_args=TIGHT)).sum().backward()

    def loss(e: torch.Tensor, yy: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return (w * dro_layer(e, yy, g, d, amb, backend="cvxpylayers", solver_args=TIGHT)).sum()

    one = torch.tensor(1.0, dtype=torch.float64)
    VE = torch.randn(E.shape, generator=gen, dtype=torch.float64) * 0.03
    checks = {
        "y_hat": (float((y_.grad * v).sum()), directional_fd(lambda t: loss(E, t, gamma, delta), y, v, 1e-3)),
        "gamma": (float(g_.grad), directional_fd(lambda t: loss(E, y, t, delta), gamma, one, 1e-3)),
        "delta": (float(d_.grad), directional_fd(lambda t: loss(E, y, gamma, t), delta, one, 1e-3)),
        "errors": (
            float((E_.grad * VE).sum()),
            directional_fd(lambda t: loss(t, y, gamma, delta), E, VE, 1e-3),
        ),
    }
    for name, (analytic, fd) in checks.items():
        assert analytic == pytest.approx(fd, rel=2e-3, abs=2e-5), name


def _weights_and_grads(amb: str, backend: str, E, y, gamma, delta, w, **kw):
    leaves = [t.clone().requires_grad_() for t in (E, y, gamma, delta)]
    z = dro_layer(*leaves, amb, backend=backend, **kw)
    return z.detach(), torch.autograd.grad((w * z).sum(), leaves)


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_matches_cvxpylayers(amb: str) -> None:
    """Weights to 1e-6 and gradients to 1e-4 (relative, per input) on random problems, mixed gamma/delta.

    TV deltas avoid ``N delta / 2`` integer, where the TV risk has a kink in ``delta`` (the mass moved
    off the smallest losses ends exactly on an atom) and the two backends pick different one-sided slopes.
    """
    gen = torch.Generator().manual_seed(11)
    for seed, (N, n) in zip((12, 13), ((24, 6), (40, 8)), strict=True):
        E, y = problem(seed, B=3, N=N, n=n)
        gamma = torch.tensor([0.05, 0.3, 2.0], dtype=torch.float64)
        delta = torch.tensor([0.013, 0.11, 0.43], dtype=torch.float64)
        w = torch.randn(3, n, generator=gen, dtype=torch.float64)
        z, grads = _weights_and_grads(amb, "native", E, y, gamma, delta, w)
        z_ref, ref = _weights_and_grads(amb, "cvxpylayers", E, y, gamma, delta, w, solver_args=TIGHT)
        torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=0)
        for name, got, want in zip(("errors", "y_hat", "gamma", "delta"), grads, ref, strict=True):
            assert float((got - want).norm() / want.norm()) < 1e-4, name


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_gradcheck(amb: str) -> None:
    E, y = problem(14, B=1, N=8, n=4)
    gamma = torch.tensor([0.5], dtype=torch.float64)
    delta = torch.tensor([0.05 if amb == "hellinger" else 0.3], dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (E, y, gamma, delta)]
    assert torch.autograd.gradcheck(
        lambda *a: dro_layer(*a, amb, solver_args={"tol": 1e-12}), inputs, eps=1e-6, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_batch_equals_loop_and_broadcasts(amb: str) -> None:
    E, y = problem(15, B=3)
    delta = torch.tensor([0.02, 0.37, 0.0], dtype=torch.float64)
    z = dro_layer(E, y, 0.3, delta, amb)
    for b in range(3):
        torch.testing.assert_close(dro_layer(E[b], y[b], 0.3, delta[b], amb), z[b], atol=1e-9, rtol=0)
    zs = dro_layer(E[0], y, torch.tensor(0.3, dtype=torch.float64), delta[0], amb)  # one error window
    torch.testing.assert_close(zs[0], z[0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_small_delta_approaches_nominal(amb: str) -> None:
    E, y = problem(16, B=2)
    nominal = nominal_layer(E, y, 0.3)
    gaps = [float((dro_layer(E, y, 0.3, d, amb) - nominal).abs().max()) for d in (1e-2, 1e-4, 1e-6, 1e-8)]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    # Hellinger: risk ~ mean + 2 sqrt(delta var), so the weights move like sqrt(delta); TV like delta
    assert gaps[-1] < (1e-3 if amb == "hellinger" else 1e-6), gaps


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_finite_over_delta_and_gamma_grid(amb: str) -> None:
    """The iterates never leave the domain: finite weights and gradients from delta 1e-4 to 1.9."""
    E, y = problem(17, B=1, N=30, n=6)
    deltas = torch.tensor([1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 1.9], dtype=torch.float64)
    for gamma in (0.0, 0.1, 1.0, 10.0):
        d = deltas.clone().requires_grad_()
        y_ = y.expand(7, 6).clone().requires_grad_()
        z = dro_layer(E[0], y_, gamma, d, amb)
        z.square().sum().backward()
        assert bool(torch.isfinite(z).all() & torch.isfinite(d.grad).all() & torch.isfinite(y_.grad).all())
        assert bool((z > -1e-9).all()) and float((z.sum(-1) - 1).abs().max()) < 1e-9


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_large_delta_is_the_minimax_portfolio(amb: str) -> None:
    """Once every point mass is in the ball the risk is the largest loss; delta has no gradient."""
    E, y = problem(18, B=1, N=16, n=5)
    N, gamma = 16, 0.3
    z, c = cp.Variable(5, nonneg=True), cp.Variable()
    scale = 1 / float(E[0].square().mean().sqrt())  # units where the errors are about 1
    worst = cp.max(cp.square(scale * E[0].numpy() @ z - c)) - gamma * scale**2 * (y[0].numpy() @ z)
    cp.Problem(cp.Minimize(worst), [cp.sum(z) == 1]).solve(
        solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10
    )
    full = 2 - 2 / N**0.5 if amb == "hellinger" else 2 - 2 / N
    for delta in (full + 1e-3, 2.5):
        d = torch.tensor(delta, dtype=torch.float64, requires_grad=True)
        y_ = y[0].clone().requires_grad_()
        layer = dro_layer(E[0], y_, gamma, d, amb)
        np.testing.assert_allclose(layer.detach().numpy(), z.value, atol=1e-6)
        (layer * torch.arange(5.0, dtype=torch.float64)).sum().backward()
        assert d.grad is None or abs(float(d.grad)) < 1e-6
        assert bool(torch.isfinite(y_.grad).all())


@pytest.mark.parametrize("amb", AMBIGUITY)
def test_native_damped_steps_reach_the_same_solution(amb: str) -> None:
    """The damped Newton steps (``rescue_after``, taken by the elements Mehrotra's steps did not settle
    within 25 steps) alone, from the first step, converge to the same weights."""
    E, y = problem(20, B=3, N=30, n=6)
    delta = torch.tensor([0.02, 0.3, 1.2], dtype=torch.float64)
    z = dro_layer(E, y, 0.3, delta, amb)
    damped = dro_layer(E, y, 0.3, delta, amb, solver_args={"rescue_after": 0, "max_iter": 200})
    torch.testing.assert_close(damped, z, atol=1e-7, rtol=0)


def test_interior_point_elements_leave_the_batch_when_converged() -> None:
    """Each element of a batch follows the path it follows alone (converged ones leave the batch), and
    reports its own number of steps."""
    E, y = problem(21, B=4, N=30, n=6)
    s = E.square().mean((-2, -1)).rsqrt()
    E, y = E * s[:, None, None], y * s[:, None].square()
    gamma = torch.tensor([0.1, 0.3, 3.0, 30.0], dtype=torch.float64)
    delta = torch.tensor([0.01, 0.2, 0.6, 1.0], dtype=torch.float64)
    x, lam, slack, ok, steps = interior_point(HellingerProblem(E, y, gamma, delta), IPMSettings())
    assert bool(ok.all()) and len(set(steps.tolist())) > 1, steps
    for b in range(4):
        one = interior_point(
            HellingerProblem(E[b : b + 1], y[b : b + 1], gamma[b : b + 1], delta[b : b + 1]), IPMSettings()
        )
        torch.testing.assert_close(one[0][0], x[b], atol=1e-12, rtol=0)
        assert int(one[4][0]) == int(steps[b])


def test_native_settings_and_backend_errors() -> None:
    E, y = problem(19, B=2)
    with pytest.raises(ConfigError, match="IPMSettings"):
        dro_layer(E, y, 0.3, 0.1, solver_args={"tol_gap_abs": 1e-9})
    with pytest.raises(ConfigError, match="backend"):
        dro_layer(E, y, 0.3, 0.1, backend="scs")
    with pytest.raises(ConfigError, match="backend"):
        DROLayer("tv", backend="scs")
    # too few iterations: the elements fall back to the cone program, with the same answer
    z = dro_layer(E, y, 0.3, 0.1, "tv", solver_args={"max_iter": 3})
    torch.testing.assert_close(z, dro_layer(E, y, 0.3, 0.1, "tv"), atol=1e-6, rtol=0)


def test_dro_module_and_dtype() -> None:
    E, y = problem(8, B=2)
    for amb in AMBIGUITY:
        layer = DROLayer(amb)
        z64 = layer(E, y, 0.3, 0.1)
        y32 = y.float().requires_grad_()
        z32 = layer(E.float(), y32, 0.3, 0.1)
        assert z32.dtype == torch.float32
        z32.sum().backward()
        assert y32.grad.dtype == torch.float32
        torch.testing.assert_close(z32.double(), z64, atol=1e-5, rtol=0)
        assert amb in repr(layer) and "native" in repr(layer)


# ----------------------------------------------------------------------------------------- inputs


def test_bad_inputs_raise() -> None:
    E, y = problem(9, B=2)
    with pytest.raises(ShapeError, match="assets"):
        nominal_layer(E, y[:, :5], 0.1)
    with pytest.raises(ShapeError, match="broadcast"):
        dro_layer(E, y[:1].expand(3, 6), 0.1, 0.1)
    with pytest.raises(ShapeError, match="broadcast"):
        nominal_layer(E, y, torch.ones(5, dtype=torch.float64))
    with pytest.raises(ShapeError):
        nominal_layer(E[0, 0], y, 0.1)
    with pytest.raises(ConfigError, match="delta"):
        dro_layer(E, y, 0.1, -0.1)
    with pytest.raises(ConfigError, match="ambiguity"):
        dro_layer(E, y, 0.1, 0.1, "wasserstein")
    with pytest.raises(ConfigError, match="ambiguity"):
        DROLayer("kl")
    bad = E.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="errors"):
        dro_layer(bad, y, 0.1, 0.1)
    with pytest.raises(NonFiniteError, match="gamma"):
        nominal_layer(E, y, float("inf"))


def test_prediction_errors_and_windows() -> None:
    returns = torch.arange(30.0).reshape(10, 3)
    errors = prediction_errors(returns, torch.ones(10, 3))
    torch.testing.assert_close(errors, returns - 1)
    with pytest.raises(ShapeError):
        prediction_errors(returns, torch.ones(9, 3))
    windows = error_windows(errors, 4)
    assert windows.shape == (7, 4, 3)
    for k in range(7):  # window k is rows k .. k + 3: nothing after the decision row k + 3
        torch.testing.assert_close(windows[k], errors[k : k + 4])
    assert error_windows(errors[None].expand(2, 10, 3), 10).shape == (2, 1, 10, 3)
    with pytest.raises(ConfigError):
        error_windows(errors, 11)
