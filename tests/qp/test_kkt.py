"""The KKT factorizations of kkt.py against dense ``torch.linalg.solve`` on random systems (float64)."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.qp.kkt import AUGMENT, factor, factor_active, factor_augmented, mtv, mv

F64 = torch.float64
B, N, P_ROWS = 4, 6, 2


@pytest.fixture(autouse=True)
def _one_thread():
    """Batched LU (``torch.linalg.solve``) on CPU is only reliable with one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spd(g: torch.Generator, b: int, n: int, cond: float = 10.0) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=g, dtype=F64))
    eig = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=F64)
    return Q @ torch.diag_embed(eig.expand(b, n)) @ Q.mT


def _saddle(H: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The dense matrix ``[H A'; A 0]``."""
    top = torch.cat([H, A.mT], -1)
    bottom = torch.cat([A, torch.zeros(A.shape[0], A.shape[1], A.shape[1], dtype=F64)], -1)
    return torch.cat([top, bottom], -2)


def _dense_solve(K: torch.Tensor, *rhs: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(K, torch.cat(rhs, -1).unsqueeze(-1)).squeeze(-1)


def _system(seed: int):
    g = torch.Generator().manual_seed(seed)
    H = _spd(g, B, N)
    A = torch.randn(B, P_ROWS, N, generator=g, dtype=F64)
    r1, r2 = torch.randn(B, N, generator=g, dtype=F64), torch.randn(B, P_ROWS, generator=g, dtype=F64)
    return H, A, r1, r2


def test_mat_vec_helpers() -> None:
    g = torch.Generator().manual_seed(0)
    M, v, w = (torch.randn(*s, generator=g, dtype=F64) for s in ((B, 3, N), (B, N), (B, 3)))
    torch.testing.assert_close(mv(M, v), torch.einsum("brn,bn->br", M, v))
    torch.testing.assert_close(mtv(M, w), torch.einsum("brn,br->bn", M, w))


@pytest.mark.parametrize("refine", [False, True])
def test_reduced_solve_matches_dense(refine: bool) -> None:
    H, A, r1, r2 = _system(1)
    K = factor(H.clone(), A, 1e-14, refine=refine)
    assert bool(K.ok.all())
    dx, dy = K.solve(r1, r2)
    ref = _dense_solve(_saddle(H, A), r1, r2)
    torch.testing.assert_close(torch.cat([dx, dy], -1), ref, rtol=1e-10, atol=1e-10)
    # without equalities, and with a zero right side on the rows given as None
    dx0, dy0 = factor(H.clone(), None, 1e-14).solve(r1)
    assert dy0 is None
    torch.testing.assert_close(dx0, torch.linalg.solve(H, r1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat(K.solve(r1), -1), torch.cat(K.solve(r1, torch.zeros_like(r2)), -1))


def test_refinement_recovers_accuracy_on_a_badly_scaled_system() -> None:
    # H = D M D with D from 1e-4 to 1e4: the Schur complement loses digits that one refinement restores
    g = torch.Generator().manual_seed(2)
    D = torch.logspace(-4, 4, N, dtype=F64)
    H = D[:, None] * _spd(g, B, N, cond=1e3) * D[None, :]
    A = torch.randn(B, P_ROWS, N, generator=g, dtype=F64)
    r1, r2 = torch.randn(B, N, generator=g, dtype=F64), torch.randn(B, P_ROWS, generator=g, dtype=F64)

    def residual(refine: bool) -> torch.Tensor:
        dx, dy = factor(H.clone(), A, 0.0, refine=refine).solve(r1, r2)
        return torch.maximum((mv(H, dx) + mtv(A, dy) - r1).abs().amax(-1), (mv(A, dx) - r2).abs().amax(-1))

    assert bool((residual(True) < 1e-2 * residual(False)).all())


def test_take_equals_factoring_the_subset() -> None:
    H, A, r1, r2 = _system(3)
    idx = torch.tensor([2, 0])
    sub = factor(H.clone(), A, 1e-14, refine=True).take(idx)
    direct = factor(H[idx].clone(), A[idx], 1e-14, refine=True)
    for a, b in zip(sub.solve(r1[idx], r2[idx]), direct.solve(r1[idx], r2[idx]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(sub.ok, direct.ok)


def test_singular_systems_are_regularized_and_hopeless_ones_flagged() -> None:
    H, A, r1, _ = _system(4)
    v = torch.randn(B, N, generator=torch.Generator().manual_seed(0), dtype=F64)
    A[1, 1] = A[1, 0]  # rank-deficient equalities (with a consistent right side): regularized
    H[2] = -H[2] * 1e6  # negative definite: no shift it tries makes it factor
    H[3, 0, 0] = torch.nan
    K = factor(H.clone(), A, 1e-13)
    assert K.ok.tolist() == [True, True, False, False]
    r2 = mv(A, v)
    dx, _ = K.solve(r1, r2)
    torch.testing.assert_close(mv(A[:2], dx[:2]), r2[:2], rtol=0, atol=1e-10)
    # a singular H (rank one) is regularized too, and reproduces a right side in its range
    Hs = H[:2, :, :1] @ H[:2, :1, :]
    Ks = factor(Hs.clone(), None, 1e-13)
    assert bool(Ks.ok.all())
    torch.testing.assert_close(mv(Hs, Ks.solve(mv(Hs, v[:2]))[0]), mv(Hs, v[:2]), rtol=0, atol=1e-10)


def _active_system(seed: int):
    """A random active set: free variables, rows ``C = [A; G_active]`` with inactive ``G`` rows zero."""
    g = torch.Generator().manual_seed(seed)
    P = _spd(g, B, N)
    free = torch.rand(B, N, generator=g) < 0.7
    free[:, :3] = True  # at least three free variables for two equalities and one active row
    C = torch.randn(B, P_ROWS + 2, N, generator=g, dtype=F64)
    pinned = torch.tensor([[False, True]]).expand(B, 2)
    C[:, P_ROWS:] *= (~pinned).unsqueeze(-1).to(F64)
    r1, r2 = torch.randn(B, N, generator=g, dtype=F64), torch.randn(B, P_ROWS + 2, generator=g, dtype=F64)
    r2[:, P_ROWS:] *= (~pinned).to(F64)
    return P, C, free, pinned, r1, r2


def test_active_solve_matches_dense_on_the_free_variables() -> None:
    P, C, free, pinned, r1, r2 = _active_system(5)
    K = factor_active(P, C, free, 1e-14, pinned)
    assert bool(K.ok.all())
    x, nu = K.solve(r1 + AUGMENT * mtv(C, r2), r2)
    for i in range(B):
        f = free[i]
        rows = torch.cat([torch.ones(P_ROWS, dtype=torch.bool), ~pinned[i]])
        ref = _dense_solve(
            _saddle(P[i][f][:, f][None], C[i][rows][:, f][None]), r1[i, f][None], r2[i, rows][None]
        )
        k = int(f.sum())
        torch.testing.assert_close(x[i, f], ref[0, :k], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(nu[i, rows], ref[0, k:], rtol=1e-10, atol=1e-10)
        assert bool((x[i, ~f] == 0).all()) and bool((nu[i, ~rows] == 0).all())


def test_active_take_equals_factoring_the_subset() -> None:
    P, C, free, pinned, r1, r2 = _active_system(6)
    idx = torch.tensor([3, 1])
    sub = factor_active(P, C, free, 1e-14, pinned).take(idx)
    direct = factor_active(P[idx], C[idx], free[idx], 1e-14, pinned[idx])
    for a, b in zip(sub.solve(r1[idx], r2[idx]), direct.solve(r1[idx], r2[idx]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_augmented_solve_matches_dense() -> None:
    g = torch.Generator().manual_seed(7)
    P = _spd(g, B, N)
    d_x = torch.rand(B, N, generator=g, dtype=F64)
    A = torch.randn(B, P_ROWS, N, generator=g, dtype=F64)
    G = torch.randn(B, 3, N, generator=g, dtype=F64)
    W = torch.rand(B, 3, generator=g, dtype=F64)
    r1, r2 = torch.randn(B, N, generator=g, dtype=F64), torch.randn(B, P_ROWS + 3, generator=g, dtype=F64)
    K = factor_augmented(P, d_x, A, G, W, 0.0)
    assert bool(K.ok.all())
    dense = _saddle(P + torch.diag_embed(d_x), torch.cat([A, G], -2))
    dense[:, N + P_ROWS :, N + P_ROWS :] -= torch.diag_embed(W)
    dx, nu = K.solve(r1, r2)
    torch.testing.assert_close(torch.cat([dx, nu], -1), _dense_solve(dense, r1, r2), rtol=1e-10, atol=1e-10)
    idx = torch.tensor([1, 2])
    sub = K.take(idx).solve(r1[idx])
    direct = factor_augmented(P[idx], d_x[idx], A[idx], G[idx], W[idx], 0.0).solve(r1[idx])
    for a, b in zip(sub, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
