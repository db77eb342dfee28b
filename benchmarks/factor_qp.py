"""Benchmark of factor risk: ``solve_qp`` with ``FactorCov`` vs dense ``P`` vs Moreau's factor form.

Long-only, fully invested mean-variance problems with a weight cap,

    minimize 1/2 x'Px - mu'x  s.t.  1'x = 1, 0 <= x <= cap,      P = gamma (F F' + diag(d)),

with ``k`` factors, float64 on CPU, one thread. Timed: forward, and forward + backward of the loss
``sum(w * x)`` with gradients to ``F``, ``d`` and ``mu`` (best of ``--reps``). Methods:

- ``factor``: ``solve_qp(FactorCov(F, d), mu, ...)`` (no ``n x n`` matrix).
- ``dense``: ``solve_qp(F F' + diag(d), mu, ...)`` (the same package, dense ``P``).
- ``moreau-factor``: Moreau 0.4.1 (``moreau.torch.Solver``) on the lifted formulation it is built
  for: variables ``(x, y)``, ``P = diag(gamma d, gamma 1_k)``, rows ``F'x - y = 0`` (its anchor).

Accuracy: ``max |x_factor - x_dense|`` and ``max |x_factor - x_moreau|``, and the largest difference
of the gradients (factor vs dense), relative to the largest gradient entry.

Usage: ``python benchmarks/factor_qp.py [--n 500 1000] [--batch 16] [--k 10] [--reps 3]``; prints a
markdown table (copied to ``benchmarks/results/factor_qp.md``).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from portfolio_layers.qp import FactorCov, solve_qp

F64 = torch.float64
GAMMA = 5.0


def make_problem(batch: int, n: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``F (batch, n, k)`` (times ``sqrt(gamma)``), ``d (batch, n)`` (times ``gamma``), ``mu (batch, n)``."""
    g = torch.Generator().manual_seed(seed)
    fvol = torch.linspace(0.2, 0.05, k, dtype=F64)
    F = (0.1 + torch.randn(batch, n, k, generator=g, dtype=F64)) * fvol
    d = (0.05 + 0.25 * torch.rand(batch, n, generator=g, dtype=F64)) ** 2
    mu = 0.03 + 0.1 * torch.randn(batch, n, generator=g, dtype=F64)
    return {"F": F * GAMMA**0.5, "d": d * GAMMA, "mu": mu}


def run_ours(data: dict[str, torch.Tensor], cap: float, factor: bool, backward: bool):
    """One solve (and backward) with this package; returns ``x`` and the gradients to ``F``, ``d``, ``mu``."""
    F, d, mu = (data[k].clone().requires_grad_(backward) for k in ("F", "d", "mu"))
    n = mu.shape[-1]
    P = FactorCov(F, d) if factor else F @ F.mT + torch.diag_embed(d)
    ones = torch.ones(1, n, dtype=F64)
    x = solve_qp(P, mu, ones, torch.ones(1, dtype=F64), lb=0.0, ub=cap).x
    if not backward:
        return x.detach(), None
    (x * weights(x)).sum().backward()
    return x.detach(), (F.grad, d.grad, mu.grad)


def weights(x: torch.Tensor) -> torch.Tensor:
    """Fixed loss weights ``w`` of shape ``x.shape``."""
    return torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype).expand_as(x)


class MoreauFactor:
    """Moreau's batched solver on the lifted factor formulation (structure built once per shape)."""

    def __init__(self, batch: int, n: int, k: int, cap: float) -> None:
        import moreau
        import moreau.torch as mt

        self.n, self.k, self.cap = n, k, cap
        N, m = n + k, 1 + k + 2 * n  # rows: 1'x = 1, F'x - y = 0 (zero cone), -x <= 0, x <= cap
        rows, cols = [list(range(n))], []
        rows += [list(range(n)) + [n + j] for j in range(k)]
        rows += [[i] for i in range(n)] * 2
        offsets = [0]
        for r in rows:
            cols += r
            offsets.append(len(cols))
        self.solver = mt.Solver(
            n=N,
            m=m,
            P_row_offsets=torch.arange(N + 1),
            P_col_indices=torch.arange(N),
            A_row_offsets=torch.tensor(offsets),
            A_col_indices=torch.tensor(cols),
            cones=moreau.Cones(num_zero_cones=1 + k, num_nonneg_cones=2 * n),
            settings=moreau.Settings(device="cpu", batch_size=batch, enable_grad=True),
        )
        self.b = torch.cat([torch.ones(1), torch.zeros(k + n), torch.full((n,), cap)]).to(F64)

    def run(self, data: dict[str, torch.Tensor], backward: bool):
        F, d, mu = (data[k].clone().requires_grad_(backward) for k in ("F", "d", "mu"))
        B, n, k = F.shape
        Pv = torch.cat([d, torch.ones(B, k, dtype=F64)], -1)
        one = torch.ones(B, n, dtype=F64)
        Av = torch.cat(
            [one, torch.cat([F.mT, -torch.ones(B, k, 1, dtype=F64)], -1).reshape(B, -1), -one, one], -1
        )
        q = torch.cat([-mu, torch.zeros(B, k, dtype=F64)], -1)
        x = self.solver.solve(Pv, Av, q, self.b.expand(B, -1)).x[:, :n]
        if not backward:
            return x.detach(), None
        (x * weights(x)).sum().backward()
        return x.detach(), (F.grad, d.grad, mu.grad)


def best_ms(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Fastest of ``reps`` calls (after one warm-up), in ms, and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cap", type=float, default=0.02)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dense-reps", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, float64")
    print(f"B = {args.batch}, k = {args.k}, cap = {args.cap}; times in ms (best of reps)\n")
    print(
        "| n | factor fwd | factor fwd+bwd | dense fwd+bwd | Moreau factor fwd | Moreau factor fwd+bwd "
        "| dense / factor | Moreau / factor | max dx dense | max dx Moreau | grad rel diff dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    cap = args.cap
    for n in args.n:
        data = make_problem(args.batch, n, args.k)
        tf, (xf, _) = best_ms(lambda data=data: run_ours(data, cap, True, False), args.reps)
        tfb, (_, gf) = best_ms(lambda data=data: run_ours(data, cap, True, True), args.reps)
        tdb, (xd, gd) = best_ms(lambda data=data: run_ours(data, cap, False, True), args.dense_reps)
        mo = MoreauFactor(args.batch, n, args.k, cap)
        tm, (xm, _) = best_ms(lambda mo=mo, data=data: mo.run(data, False), args.reps)
        tmb, _ = best_ms(lambda mo=mo, data=data: mo.run(data, True), args.reps)
        grad = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(gf, gd, strict=True))
        print(
            f"| {n} | {tf:.1f} | {tfb:.1f} | {tdb:.0f} | {tm:.1f} | {tmb:.1f} | {tdb / tfb:.1f}x | "
            f"{tmb / tfb:.2f}x | {float((xf - xd).abs().max()):.1e} | {float((xf - xm).abs().max()):.1e} "
            f"| {grad:.1e} |"
        )


if __name__ == "__main__":
    main()
