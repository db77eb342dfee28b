"""Benchmark of the differentiable QP layer against qpth, cvxpylayers and proxsuite, in one run.

Long-only, fully-invested mean-variance problems ``min 1/2 x'(gamma S)x - mu'x  s.t. 1'x = 1, x >= 0``
(and ``x <= cap``), S a 5-factor covariance with idiosyncratic noise, float64 on CPU. For each method
and case: forward ms, forward+backward ms (loss ``sum(w * x)``, gradients w.r.t. S-scaled P and mu),
max |x - x_clarabel| (cvxpy + Clarabel at 1e-12 tolerances), max constraint violation, and the
relative difference of the gradients to those of the ``ipm`` backend.

Usage: ``python benchmarks/qp_layer.py --out benchmarks/results/qp_layer.md [--quick] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import cvxpy as cp
import numpy as np
import torch

from portfolio_layers.qp import solve_qp
from portfolio_layers.qp.backends import _solve_cvxpylayers
from portfolio_layers.qp.problem import canonicalize

F64 = torch.float64
GAMMA = 20.0  # risk aversion: 10-20 names held at n = 100, some at the 10% cap


def make_problem(batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``P = gamma * S (batch, n, n)`` and ``mu (batch, n)`` (annualized scales)."""
    g = torch.Generator().manual_seed(seed)
    loadings = 0.1 + 0.15 * torch.randn(batch, n, 5, generator=g, dtype=F64)
    fvar = torch.tensor([0.04, 0.01, 0.01, 0.005, 0.005], dtype=F64)
    idio = (0.05 + 0.25 * torch.rand(batch, n, generator=g, dtype=F64)) ** 2
    S = loadings @ torch.diag(fvar) @ loadings.mT + torch.diag_embed(idio)
    mu = 0.03 + 0.1 * torch.randn(batch, n, generator=g, dtype=F64)
    return GAMMA * S, mu


def objective(P: torch.Tensor, q: torch.Tensor, x: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x, dtype=F64)
    return (0.5 * (xt.unsqueeze(-2) @ P @ xt.unsqueeze(-1)).squeeze((-1, -2)) - (q * xt).sum(-1)).numpy()


def clarabel_reference(P: torch.Tensor, q: torch.Tensor, cap: float | None) -> np.ndarray:
    out = []
    for Pi, qi in zip(P.numpy(), q.numpy(), strict=True):
        x = cp.Variable(len(qi))
        cons = [cp.sum(x) == 1, x >= 0] + ([x <= cap] if cap else [])
        prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Pi)) - qi @ x), cons)
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
        out.append(x.value)
    return np.stack(out)


def method_ipm(P, q, A, b, cap):  # noqa: ANN001, ANN201
    return solve_qp(P, q, A, b, lb=0.0, ub=cap).x


def method_qpth(P, q, A, b, cap):  # noqa: ANN001, ANN201
    return solve_qp(P, q, A, b, lb=0.0, ub=cap, backend="qpth", tol=1e-12, max_iter=50, throw=False).x


def make_cvxpylayers(method: str) -> Callable:
    def run(P, q, A, b, cap):  # noqa: ANN001, ANN202
        return _solve_cvxpylayers(canonicalize(P, q, A, b, lb=0.0, ub=cap), method)

    return run


def method_proxsuite(P, q, A, b, cap):  # noqa: ANN001, ANN201
    from proxsuite.torch.qplayer import QPFunction

    B, n = q.shape
    G = torch.eye(n, dtype=F64).expand(B, n, n)
    lo = torch.zeros(B, n, dtype=F64)
    up = torch.full((B, n), cap if cap else 1e20, dtype=F64)
    x, _, _ = QPFunction(eps=1e-9, maxIter=1000)(P, -q, A.expand(B, 1, n), b.expand(B, 1), G, lo, up)
    return x


def available_methods() -> dict[str, Callable]:
    methods = {"ipm (ours)": method_ipm, "qpth (1 thread)": method_qpth}
    methods["cvxpylayers Clarabel"] = make_cvxpylayers("Clarabel")
    methods["cvxpylayers SCS"] = make_cvxpylayers("SCS")
    try:
        import proxsuite.torch.qplayer  # noqa: F401

        methods["proxsuite QPLayer"] = method_proxsuite
    except ImportError:
        print("proxsuite not installed: skipped (pip install proxsuite)", file=sys.stderr)
    return methods


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Median wall time in ms over ``reps`` runs (fewer when one run is slow), and the last result."""
    times, out = [], None
    for i in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(1e3 * (time.perf_counter() - t))
        if i == 0 and times[0] > 2000:
            break
        if i == 1 and times[0] > 300:
            break
    return statistics.median(times), out


def run_case(n: int, batch: int, cap: float | None, methods: dict[str, Callable], reps: int) -> list[dict]:
    P, q = make_problem(batch, n, seed=n + batch)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    ref = clarabel_reference(P, q, cap)
    obj_ref = objective(P, q, ref)
    w = torch.randn(batch, n, generator=torch.Generator().manual_seed(1), dtype=F64)
    rows, grads_ref = [], None
    for name, fn in methods.items():

        def fwd(fn=fn):  # noqa: ANN001, ANN202
            with torch.no_grad():
                return fn(P, q, A, b, cap)

        def fwd_bwd(fn=fn):  # noqa: ANN001, ANN202
            Pg, qg = P.clone().requires_grad_(True), q.clone().requires_grad_(True)
            x = fn(Pg, qg, A, b, cap)
            (x * w).sum().backward()
            return x.detach(), Pg.grad, qg.grad

        try:
            t_f, x = timed(fwd, reps)
            t_fb, (_, gP, gq) = timed(fwd_bwd, reps)
        except Exception as exc:  # an anchor failing is a result, not a crash of the benchmark
            rows.append(dict(method=name, error=f"{type(exc).__name__}: {str(exc)[:80]}"))
            continue
        x = x.detach()
        err = float(np.abs(x.numpy() - ref).max()) if bool(torch.isfinite(x).all()) else math.inf
        viol = max(float((x.sum(-1) - 1).abs().max()), float((-x).clamp_min(0).max()))
        if cap:
            viol = max(viol, float((x - cap).clamp_min(0).max()))
        if grads_ref is None:
            grads_ref = (gP, gq)
        gdiff = max(
            float((gP - grads_ref[0]).abs().max() / grads_ref[0].abs().max()),
            float((gq - grads_ref[1]).abs().max() / grads_ref[1].abs().max()),
        )
        gap = float((objective(P, q, x.numpy()) - obj_ref).max()) if math.isfinite(err) else math.inf
        rows.append(dict(method=name, fwd=t_f, fwd_bwd=t_fb, err=err, viol=viol, grad=gdiff, gap=gap))
    held = float((torch.as_tensor(ref) > 1e-6).sum(-1).double().mean())
    for r in rows:
        r.update(n=n, batch=batch, cap=cap, held=held)
    return rows


def fmt(v: float, kind: str) -> str:
    if not math.isfinite(v):
        return "nan/inf"
    return f"{v:.1f}" if kind == "ms" else f"{v:.1e}"


def to_markdown(rows: list[dict], header: str) -> str:
    cols = ["n", "batch", "cap", "names held", "method", "fwd ms", "fwd+bwd ms", "max abs err vs Clarabel",
            "max (obj - obj Clarabel)", "max violation", "grad rel. diff vs ipm"]  # fmt: skip
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cap = "-" if r["cap"] is None else f"{r['cap']:.0%}"
        lead = f"| {r['n']} | {r['batch']} | {cap} | {r['held']:.1f} | {r['method']} |"
        if "error" in r:
            lines.append(f"{lead} failed: {r['error']} | | | | | |")
        else:
            vals = [fmt(r["fwd"], "ms"), fmt(r["fwd_bwd"], "ms")]
            vals += [fmt(r[k], "e") for k in ("err", "gap", "viol", "grad")]
            lines.append(f"{lead} " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    out = ["", "Speed-up of ipm (ours) in forward+backward (anchor ms / ours ms):", ""]
    keys = []
    for r in rows:
        if (r["n"], r["batch"], r["cap"]) not in keys:
            keys.append((r["n"], r["batch"], r["cap"]))
    for key in keys:
        case = [r for r in rows if (r["n"], r["batch"], r["cap"]) == key and "error" not in r]
        ours = [r for r in case if r["method"].startswith("ipm")]
        if not ours:
            continue
        parts = [f"{r['method']} {r['fwd_bwd'] / ours[0]['fwd_bwd']:.1f}x" for r in case if r is not ours[0]]
        cap = "no cap" if key[2] is None else f"cap {key[2]:.0%}"
        out.append(f"- n={key[0]}, batch={key[1]}, {cap}: " + ", ".join(parts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/qp_layer.md")
    ap.add_argument("--quick", action="store_true", help="n in {20, 100}, batch 64 only, 3 repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for all methods")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sizes = [20, 100] if args.quick else [20, 100, 250]
    batches = [64] if args.quick else [1, 64]
    reps = 3 if args.quick else args.reps
    methods = available_methods()
    for fn in methods.values():  # warm-up: first calls pay for lazy imports and kernel setup
        P, q = make_problem(4, 10)
        fn(P, q, torch.ones(1, 10, dtype=F64), torch.ones(1, dtype=F64), 0.2)
    rows = []
    for n in sizes:
        for batch in batches:
            for cap in (None, 0.1):
                rows.extend(run_case(n, batch, cap, methods, reps))
                print(f"done n={n} batch={batch} cap={cap}", file=sys.stderr)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    header = (
        "# QP layer benchmark\n\n"
        f"`python benchmarks/qp_layer.py{' --quick' if args.quick else ''} --threads {args.threads}`; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} torch thread(s) for every method (qpth always 1), float64, risk aversion {GAMMA}; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}. Times are medians "
        "(of up to 7 runs; 1-2 runs for calls over 0.3 s). cvxpylayers runs through diffcp (DIFFCP solver) "
        "with Clarabel or SCS at their default tolerances. The Clarabel reference is solved by cvxpy at "
        "1e-12 tolerances; a negative objective difference means a lower (better) objective than it, "
        "i.e. the error column is then partly the reference's own."
    )
    text = to_markdown(rows, header) + "\n" + ratios(rows) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
