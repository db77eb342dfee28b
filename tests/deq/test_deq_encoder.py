"""DEQEncoder: shapes for any n, permutation equivariance, contraction, implicit vs unrolled gradients."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.deq import JFB, Anderson, Broyden, DEQEncoder, Implicit, MixingCell, Status, Unrolled
from portfolio_layers.errors import ConfigError, ConvergenceError, InputError, NonFiniteError, ShapeError

TIGHT = {"tol": 1e-12, "atol": 1e-12, "max_iter": 400}
ADJOINTS = {"implicit": Implicit(), "jfb": JFB(), "unrolled": Unrolled()}


def make(F=4, d=8, seed=0, **kw):
    torch.manual_seed(seed)
    return DEQEncoder(F, d, **kw).double()


def window(B=2, T=15, n=5, F=4, seed=1):
    return torch.randn(B, T, n, F, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("T", "n"), [(1, 1), (15, 3), (30, 17)])
def test_output_shape_for_any_number_of_assets(T, n):
    enc = make()
    emb, info = enc(window(T=T, n=n))
    sol = info.solution
    assert emb.shape == (2, n, 8)
    assert sol.status.shape == (2,) and bool((sol.status == Status.CONVERGED).all())
    assert torch.isfinite(emb).all()


def test_permutation_equivariant_across_assets():
    enc = make()
    x = window(n=7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    emb, _ = enc(x, solver=Anderson(**TIGHT))
    emb_p, _ = enc(x[:, :, perm], solver=Anderson(**TIGHT))
    torch.testing.assert_close(emb_p, emb[:, perm], rtol=1e-9, atol=1e-9)


def test_cell_is_contractive_by_construction():
    cell = MixingCell(6, contraction=0.8).double()
    with torch.no_grad():  # blow the raw weights up: the spectral cap must still hold the contraction
        for lin in (cell.self_map, cell.graph_map, cell.mean_map):
            lin.parametrizations.weight.original.mul_(50.0)
    g = torch.Generator().manual_seed(3)
    u = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)
    z1, z2 = (torch.randn(4, 9, 6, generator=g, dtype=torch.float64) for _ in range(2))
    p = cell.prepare(u)
    num = (cell.step(z1, p) - cell.step(z2, p)).flatten(1).norm(dim=-1)
    den = (z1 - z2).flatten(1).norm(dim=-1)
    assert bool((num <= 0.8 * den + 1e-12).all())
    assert torch.linalg.matrix_norm(p["A"].detach(), ord=2).max().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_implicit_gradients_match_unrolled_to_convergence(solver):
    enc = make(seed=4)
    x = window(seed=5).requires_grad_()
    c = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    params = [x, *enc.parameters()]
    out = {}
    for backward in ["implicit", "unrolled"]:
        tight = {"anderson": Anderson, "broyden": Broyden}[solver](**TIGHT)
        emb, info = enc(x, solver=tight, adjoint=ADJOINTS[backward])
        assert info.solution.all_converged
        out[backward] = torch.autograd.grad((emb * c).sum(), params)
    for gi, gu in zip(out["implicit"], out["unrolled"], strict=True):
        torch.testing.assert_close(gi, gu, rtol=1e-7, atol=1e-9)
    assert any(float(g.abs().max()) > 0 for g in out["implicit"][1:])  # every part gets a gradient


def test_gradcheck_encoder_input():
    enc = make(F=1, d=3, seed=7)
    x = window(B=1, T=3, n=2, F=1, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: enc(x, solver=Anderson(**TIGHT))[0], (x,), eps=1e-6, atol=1e-6, rtol=1e-5
    )


def test_all_cell_parameters_receive_gradients_in_every_mode():
    enc = make(seed=9).train()
    for backward in ["implicit", "jfb", "unrolled"]:
        enc.zero_grad()
        emb, _ = enc(window(seed=10), adjoint=ADJOINTS[backward])
        emb.pow(3).sum().backward()
        missing = [name for name, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == [], (backward, missing)


def test_jacobian_penalty_in_training_mode_only():
    enc = make(jacobian_samples=2).train()
    _, info = enc(window())
    assert info.jacobian_loss is not None and info.jacobian_loss.requires_grad
    info.jacobian_loss.backward()
    assert enc.cell.mix_logits.grad is not None
    _, info_eval = enc.eval()(window())
    assert info_eval.jacobian_loss is None


def test_float32_close_to_float64():
    enc = make()
    x = window()
    emb64, _ = enc(x, solver=Anderson(tol=1e-10, atol=0.0, max_iter=30))
    emb32, _ = enc.float()(x.float(), solver=Anderson(tol=1e-6, atol=0.0, max_iter=30))
    torch.testing.assert_close(emb32.double(), emb64, rtol=1e-3, atol=1e-3)


def test_input_of_another_dtype_than_the_weights_says_to_cast_one_of_them():
    torch.manual_seed(0)
    enc32 = DEQEncoder(4, 8)  # float32 as built
    with pytest.raises(
        InputError, match=r"torch.float64 but the encoder's weights are torch.float32.*\.double\(\)"
    ):
        enc32(window())
    with pytest.raises(InputError, match="torch.Tensor.*ndarray"):
        enc32(window().numpy())
    emb, _ = enc32.double()(window())  # the documented fix
    assert emb.dtype == torch.float64


def test_bad_input_and_options():
    enc = make()
    with pytest.raises(ShapeError, match="F=4"):
        enc(torch.zeros(2, 10, 3, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="unsqueeze"):
        enc(torch.zeros(10, 3, 4, dtype=torch.float64))
    x = window()
    x[0, 3, 1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="warm-up"):
        enc(x)
    with pytest.raises(ConfigError, match="Unknown fixed-point solver"):
        enc(window(), solver="newton")
    with pytest.raises(ConfigError, match="contraction"):
        DEQEncoder(4, 8, contraction=1.0)
    with pytest.raises(ConfigError, match="halflives"):
        DEQEncoder(4, 8, halflives=())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_cuda():
    enc = make()
    x = window()
    emb_cpu, _ = enc(x, solver=Anderson(**TIGHT))
    emb_gpu, _ = enc.cuda()(x.cuda(), solver=Anderson(**TIGHT))
    torch.testing.assert_close(emb_gpu.cpu(), emb_cpu, rtol=1e-8, atol=1e-8)


def test_throw_and_damping_options():
    enc = make(throw=True, solver=Anderson(max_iter=2, tol=1e-12, atol=0.0))
    with pytest.raises(ConvergenceError, match="fixed_point"):
        enc(window())
    emb, _ = make(damping=0.3)(window(), solver=Anderson(**TIGHT))
    emb_ref, _ = make()(window(), solver=Anderson(**TIGHT))
    torch.testing.assert_close(emb, emb_ref, rtol=1e-8, atol=1e-8)  # same equilibrium


def test_asset_graph_is_the_normalized_similarity_and_stable_for_far_apart_assets():
    torch.manual_seed(0)
    cell = MixingCell(6, d_key=4).double()
    u = torch.randn(2, 5, 6, dtype=torch.float64)
    S = torch.exp(cell.query(u) @ cell.query(u).transpose(-1, -2) / 2.0)  # sqrt(d_key) = 2
    d = S.sum(-1).rsqrt()
    torch.testing.assert_close(cell.graph(u), d.unsqueeze(-1) * S * d.unsqueeze(-2))
    # One asset's key 80x longer than the others: the other rows' similarities are ~e^-1000 below its own,
    # which underflowed a max-shifted exponential to zero row sums (NaN gradients in walk-forward training).
    with torch.no_grad():
        cell.query.weight.copy_(torch.eye(4, 6, dtype=torch.float64))
        cell.query.bias.zero_()
    u = torch.zeros(1, 3, 6, dtype=torch.float64)
    u[0, 0, 0], u[0, 1, 1], u[0, 2, 2] = 80.0, 1.0, 1.0
    u.requires_grad_()
    A = cell.graph(u)
    (grad,) = torch.autograd.grad(A.sum(), u)
    assert torch.isfinite(A).all() and torch.isfinite(grad).all()
    assert torch.allclose(A, A.transpose(-1, -2)) and float(A.detach().max()) <= 1.0 + 1e-12


def test_rolling_equals_the_encoder_on_each_window():
    enc = make()
    rows = window(B=1, T=40, n=5)[0]  # one series of 40 rows
    T = 12
    emb, info = enc.rolling(rows, T)
    windows = torch.stack([rows[s : s + T] for s in range(40 - T + 1)])
    expected, _ = enc(windows)
    assert emb.shape == (40 - T + 1, 5, 8) and bool(info.solution.converged.all())
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-12)
    assert (emb[0] - emb[-1]).abs().max() > 1e-3  # the windows differ
    (g_roll,) = torch.autograd.grad(emb.square().sum(), enc.inject.inp.weight)
    (g_win,) = torch.autograd.grad(enc(windows)[0].square().sum(), enc.inject.inp.weight)
    torch.testing.assert_close(g_roll, g_win, rtol=1e-9, atol=1e-10)


def test_rolling_bad_input():
    enc = make()
    with pytest.raises(ShapeError, match=r"\(P, n, F=4\)"):
        enc.rolling(window(), 5)
    with pytest.raises(ShapeError, match="1 <= T <= 15"):
        enc.rolling(window()[0], 16)
