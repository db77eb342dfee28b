"""Native L1 costs / turnover limits vs the old lifted formulation, and warm-start savings.

Run: ``python benchmarks/l1_warm.py [--quick]`` (one thread); writes ``benchmarks/results/l1_warm.md``.

1. Long-only, fully invested mean-variance QPs with ``P = F F' / k + diag(d)`` (dense for n = 20, 100;
   ``FactorCov`` for n = 500 natively, dense when lifted) and either a binding turnover limit or an L1
   cost: the native path (``solve_qp(..., l1=L1Cost(...))``) against the formulation ``QPLayer`` used
   before (``t >= |x - x0|``: ``n`` auxiliary variables, ``2n + 1`` rows, a ridge ``1e-9 max|P|`` on ``t``).
   Forward + backward time (median of repeats) and iterations (mean over the batch).
2. Warm starts: monthly rebalances of the embedded S&P 500 data (20 assets, trailing-year covariance
   and mean, 10% cap, turnover limit 0.2 around the previous weights), each month cold and warm
   from the previous month's solution; and training epochs (the same batch of 64 problems solved
   each epoch with ``q`` nudged as a training step would), cold and warm from the previous epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from portfolio_layers.data.loaders import load_embedded
from portfolio_layers.qp import FactorCov, L1Cost, solve_qp

F64 = torch.float64
OUT = Path(__file__).parent / "results" / "l1_warm.md"


def problem(n: int, B: int, k: int, seed: int) -> dict:
    """Factor risk, returns, cap and previous weights ``x0`` (the solution for other returns)."""
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(B, n, k, generator=g, dtype=F64) / k**0.5 * 0.2
    d = 0.02 + 0.05 * torch.rand(B, n, generator=g, dtype=F64)
    mu = 0.05 * torch.randn(B, n, generator=g, dtype=F64)
    cap = max(2.0 / n, 0.02)
    base = dict(A=torch.ones(1, n, dtype=F64), b=torch.ones(1, dtype=F64), lb=0.0, ub=cap)
    x0 = solve_qp(FactorCov(F, d), 0.05 * torch.randn(B, n, generator=g, dtype=F64), **base).x
    return dict(F=F, d=d, q=mu, base=base, x0=x0, cap=cap)


def lifted(P: torch.Tensor, q: torch.Tensor, pr: dict, kappa: float, tau: float | None) -> dict:
    """The old formulation over ``[x, t]``: ``-t <= x - x0 <= t``, ``1't <= tau``, cost ``kappa 1't``."""
    B, n = q.shape
    eye = torch.eye(n, dtype=F64)
    ridge = 1e-9 * P.abs().amax((-2, -1), keepdim=True)
    PP = torch.zeros(B, 2 * n, 2 * n, dtype=F64)
    PP[:, :n, :n] = P
    PP[:, n:, n:] = ridge * eye
    rows = [torch.cat([eye, -eye], 1), torch.cat([-eye, -eye], 1)]
    rhs = [pr["x0"], -pr["x0"]]
    if tau is not None:
        rows.append(torch.cat([torch.zeros(1, n, dtype=F64), torch.ones(1, n, dtype=F64)], 1))
        rhs.append(torch.full((B, 1), tau, dtype=F64))
    G = torch.cat(rows).expand(B, -1, -1)
    A = torch.cat([torch.ones(1, n, dtype=F64), torch.zeros(1, n, dtype=F64)], 1)
    lb = torch.cat([torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64)])
    ub = torch.cat([torch.full((n,), pr["cap"], dtype=F64), torch.full((n,), torch.inf, dtype=F64)])
    qq = torch.cat([q, torch.full((B, n), -kappa, dtype=F64)], -1)
    return dict(P=PP, q=qq, A=A, b=torch.ones(1, dtype=F64), G=G, h=torch.cat(rhs, -1), lb=lb, ub=ub)


def objective(
    P: torch.Tensor, q: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, kappa: float
) -> torch.Tensor:
    """``1/2 x'Px - q'x + kappa |x - x0|_1`` per element (the L1 cost makes near-ties of ``x`` common, so
    solutions are compared by objective)."""
    x = x.detach()
    return (
        0.5 * (x * (P @ x.unsqueeze(-1)).squeeze(-1)).sum(-1)
        - (q * x).sum(-1)
        + kappa * (x - x0).abs().sum(-1)
    )


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def native_vs_lifted(n: int, B: int, k: int, kind: str, repeats: int) -> dict:
    pr = problem(n, B, k, seed=n)
    kappa, tau = (0.0, 0.1) if kind == "limit" else (0.002, None)
    factor = n >= 500

    def native():
        q = pr["q"].clone().requires_grad_(True)
        P = FactorCov(pr["F"], pr["d"]) if factor else pr["F"] @ pr["F"].mT + torch.diag_embed(pr["d"])
        sol = solve_qp(P, q, **pr["base"], l1=L1Cost(pr["x0"], kappa, tau))
        sol.x.pow(2).sum().backward()
        return sol

    def old():
        q = pr["q"].clone().requires_grad_(True)
        P = pr["F"] @ pr["F"].mT + torch.diag_embed(pr["d"])
        sol = solve_qp(**lifted(P, q, pr, kappa, tau), throw=False)
        sol.x[..., :n].pow(2).sum().backward()
        return sol

    t_new, s_new = timed(native, repeats)
    t_old, s_old = timed(old, repeats)
    P = pr["F"] @ pr["F"].mT + torch.diag_embed(pr["d"])
    gap = objective(P, pr["q"], s_new.x, pr["x0"], kappa) - objective(
        P, pr["q"], s_old.x[..., :n], pr["x0"], kappa
    )
    return dict(
        n=n,
        B=B,
        kind=kind,
        P="FactorCov" if factor else "dense",
        t_new=t_new,
        t_old=t_old,
        it_new=float(s_new.iterations.double().mean()),
        it_old=float(s_old.iterations.double().mean()),
        gap=float(gap.max()),
        solved=int((s_new.status == 0).sum()),
        solved_old=int((s_old.status == 0).sum()),
    )


def monthly(l1: bool) -> dict:
    """Cold vs warm iterations over consecutive monthly rebalances of the embedded data."""
    prices = load_embedded("sp500")
    rets = np.log(prices).diff().dropna().to_numpy()
    n = rets.shape[1]
    cons = dict(A=torch.ones(1, n, dtype=F64), b=torch.ones(1, dtype=F64), lb=0.0, ub=0.1)
    x_prev = torch.full((n,), 1.0 / n, dtype=F64)
    prev = None
    cold_it, warm_it, worst = [], [], 0.0
    for end in range(252, rets.shape[0], 21):
        win = torch.as_tensor(rets[end - 252 : end], dtype=F64)
        P = 252 * torch.cov(win.T) * 5.0
        q = 252 * win.mean(0)
        l1c = L1Cost(x_prev, 0.001, 0.2) if l1 else None
        cold = solve_qp(P, q, **cons, l1=l1c)
        warm = solve_qp(P, q, **cons, l1=l1c, warm_start=prev) if prev is not None else cold
        if prev is not None:
            cold_it.append(int(cold.iterations))
            warm_it.append(int(warm.iterations))
            kap = 0.001 if l1 else 0.0
            gap = objective(P, q, warm.x, x_prev, kap) - objective(P, q, cold.x, x_prev, kap)
            worst = max(worst, abs(float(gap)))
        prev, x_prev = cold, cold.x
    return dict(months=len(cold_it), cold=np.mean(cold_it), warm=np.mean(warm_it), diff=worst)


def epochs(l1: bool, n: int = 50, B: int = 64, E: int = 10) -> dict:
    """Cold vs warm iterations over training epochs: ``q`` moves by a small step each epoch."""
    pr = problem(n, B, 5, seed=7)
    P = pr["F"] @ pr["F"].mT + torch.diag_embed(pr["d"])
    g = torch.Generator().manual_seed(8)
    q = pr["q"].clone()
    l1c = L1Cost(pr["x0"], 0.001, 0.3) if l1 else None
    prev, cold_it, warm_it, worst = None, [], [], 0.0
    for _ in range(E):
        q = q + 0.002 * torch.randn(q.shape, generator=g, dtype=F64)
        cold = solve_qp(P, q, **pr["base"], l1=l1c)
        if prev is not None:
            warm = solve_qp(P, q, **pr["base"], l1=l1c, warm_start=prev)
            cold_it.append(float(cold.iterations.double().mean()))
            warm_it.append(float(warm.iterations.double().mean()))
            kap = 0.001 if l1 else 0.0
            gap = objective(P, q, warm.x, pr["x0"], kap) - objective(P, q, cold.x, pr["x0"], kap)
            worst = max(worst, float(gap.abs().max()))
        prev = cold
    return dict(epochs=len(cold_it), cold=np.mean(cold_it), warm=np.mean(warm_it), diff=worst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no n = 500")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else 3
    cells = [(20, 64, 5), (100, 64, 5)] + ([] if args.quick else [(500, 16, 10)])
    rows = [  # one repeat at n = 500: the lifted path takes tens of seconds there
        native_vs_lifted(n, B, k, kind, 1 if n >= 500 else repeats)
        for n, B, k in cells
        for kind in ("limit", "cost")
    ]
    lines = [
        "# Native L1 costs and warm starts (`benchmarks/l1_warm.py`, one thread)",
        "",
        "Forward + backward, long-only fully invested, cap max(2/n, 2%); turnover limit 0.1 (binding) or",
        "L1 cost 0.002 per unit traded. Old: the lifted formulation (`t >= |x - x0|`, 2n + 1 rows, dense).",
        "",
        "Objective gap: max over the batch of (native - old) objective (negative: native lower).",
        "",
        "| n | B | P | term | native ms | old ms | speed-up | native it | old it | solved native/old | gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['B']} | {r['P']} | {r['kind']} | {r['t_new']:.1f} | {r['t_old']:.1f} | "
            f"{r['t_old'] / r['t_new']:.1f}x | {r['it_new']:.1f} | {r['it_old']:.1f} | "
            f"{r['solved']}/{r['solved_old']} | {r['gap']:.1e} |"
        )
    lines += [
        "",
        "Warm starts (iterations per solve, mean; warm = from the previous solution, `warm_start=`):",
        "",
        "| sequence | L1 | solves | cold it | warm it | max abs objective gap warm vs cold |",
        "|---|---|---|---|---|---|",
    ]
    for l1 in (False, True):
        m = monthly(l1)
        lines.append(
            f"| monthly rebalances, S&P 500 (n = 20) | {'cost + limit' if l1 else '-'} | {m['months']} | "
            f"{m['cold']:.2f} | {m['warm']:.2f} | {m['diff']:.1e} |"
        )
        e = epochs(l1)
        lines.append(
            f"| training epochs (n = 50, B = 64) | {'cost + limit' if l1 else '-'} | {e['epochs']} x 64 | "
            f"{e['cold']:.2f} | {e['warm']:.2f} | {e['diff']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
