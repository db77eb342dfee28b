"""Benchmark of the differentiable QP layer against Moreau, dQP, qpth, cvxpylayers and proxsuite, in one run.

Long-only, fully-invested mean-variance problems ``min 1/2 x'Px - mu'x  s.t. 1'x = 1, x >= 0`` (and
``x <= cap``) with ``P = gamma S = F F' + diag(d)``, S a 5-factor covariance with idiosyncratic noise,
float64 on CPU, one thread for every method (torch, OpenMP, MKL, OpenBLAS). For each method and cell
(n, batch, cap): forward ms, forward+backward ms (loss ``sum(w * x)``, gradients w.r.t. ``P`` and ``mu``;
Moreau's factor form differentiates w.r.t. ``F``, ``d`` and ``mu``), max |x - x_clarabel| (cvxpy +
Clarabel at 1e-12 tolerances, on up to 8 elements of the batch), max constraint violation, and the
relative difference of the gradients to those of the ``ipm`` backend (``mu`` only for the factor form).

Ours are ``auto`` (what ``solve_qp(backend="auto")`` picks), ``active_set`` (DAQP per element with
the active-set backward) and ``ipm`` (the batched interior point). An anchor whose forward+backward
took over 10 s in a cell is skipped in the larger cells of the same batch ("-"), so that no cell costs
more than about a minute per anchor.

Usage: ``python benchmarks/qp_layer.py [--quick] [--cells 20:1:0.1,100:64:none] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
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
from threadpoolctl import threadpool_limits

from portfolio_layers.qp import FactorCov, solve_qp
from portfolio_layers.qp.backends import _solve_cvxpylayers
from portfolio_layers.qp.layer import auto_backend
from portfolio_layers.qp.problem import canonicalize

F64 = torch.float64
GAMMA = 20.0  # risk aversion: 10-20 names held at n = 100, some at the 10% cap
FULL_SIZES, QUICK_SIZES, BATCHES, CAPS = (20, 100, 250, 500, 1000), (20, 100), (1, 64), (None, 0.1)
SKIP_AFTER_S = 10.0
MAX_N = {"cvxpylayers Clarabel": 500, "cvxpylayers SCS": 500}
"""Anchors left out above this n: at n = 1000 a cvxpylayers call (diffcp, dense P) took over 15 GB."""
MAX_REPS, SHORT_BUDGET_S, BLOCK, REWARM = 101, 0.25, 5, 3
REF_ELEMENTS = 8


def make_problem(
    batch: int, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``P = gamma S = F F' + diag(d)`` of shape (batch, n, n), ``mu``, ``F (batch, n, 5)`` and ``d``."""
    g = torch.Generator().manual_seed(seed)
    loadings = 0.1 + 0.15 * torch.randn(batch, n, 5, generator=g, dtype=F64)
    fvar = torch.tensor([0.04, 0.01, 0.01, 0.005, 0.005], dtype=F64)
    idio = (0.05 + 0.25 * torch.rand(batch, n, generator=g, dtype=F64)) ** 2
    F = loadings * (GAMMA * fvar).sqrt()
    d = GAMMA * idio
    mu = 0.03 + 0.1 * torch.randn(batch, n, generator=g, dtype=F64)
    return F @ F.mT + torch.diag_embed(d), mu, F, d


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


# A method takes (P, mu, F, d, cap) and returns x; the factor-form methods differentiate F, d instead of P.


def ours(backend: str) -> Callable:
    def run(P, q, F, d, cap):  # noqa: ANN001, ANN202
        n = q.shape[-1]
        return solve_qp(
            P, q, torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64), lb=0.0, ub=cap, backend=backend
        ).x

    return run


def ours_factor(P, q, F, d, cap):  # noqa: ANN001, ANN201
    """``solve_qp(backend="auto")`` with ``P`` as ``FactorCov(F, d)``: the input Moreau's factor form gets."""
    n = q.shape[-1]
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    return solve_qp(FactorCov(F, d), q, A, b, lb=0.0, ub=cap, backend="auto").x


def method_qpth(P, q, F, d, cap):  # noqa: ANN001, ANN201
    n = q.shape[-1]
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    return solve_qp(P, q, A, b, lb=0.0, ub=cap, backend="qpth", tol=1e-12, max_iter=50, throw=False).x


def make_cvxpylayers(method: str) -> Callable:
    def run(P, q, F, d, cap):  # noqa: ANN001, ANN202
        n = q.shape[-1]
        return _solve_cvxpylayers(
            canonicalize(P, q, torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64), lb=0.0, ub=cap), method
        )

    return run


def method_proxsuite(P, q, F, d, cap):  # noqa: ANN001, ANN201
    from proxsuite.torch.qplayer import QPFunction

    B, n = q.shape
    A, b = torch.ones(B, 1, n, dtype=F64), torch.ones(B, 1, dtype=F64)
    G = torch.eye(n, dtype=F64).expand(B, n, n)
    lo = torch.zeros(B, n, dtype=F64)
    up = torch.full((B, n), cap if cap else 1e20, dtype=F64)
    x, _, _ = QPFunction(eps=1e-9, maxIter=1000)(P, -q, A, b, G, lo, up)
    return x


def method_dqp(P, q, F, d, cap):  # noqa: ANN001, ANN201
    """dQP (libdqp) with DAQP as its forward solver; bounds become rows of G (its API has no bounds)."""
    import dqp

    B, n = q.shape
    eye = torch.eye(n, dtype=F64)
    G = (torch.cat([-eye, eye]) if cap else -eye).expand(B, -1, n)
    h = torch.cat([torch.zeros(n, dtype=F64)] + ([torch.full((n,), cap, dtype=F64)] if cap else [])).expand(
        B, -1
    )
    layer = _cached(("dqp",), lambda: dqp.dQP_layer(dqp.build_settings(qp_solver="daqp", eps_abs=1e-10)))
    args = (P, -q, G, h, torch.ones(B, 1, n, dtype=F64), torch.ones(B, 1, dtype=F64))
    if B == 1:  # dQP reads a leading dimension of 1 as no batch
        args = tuple(v[0] for v in args)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints when it falls back to least squares
        return layer(*args)[0].reshape(B, n)


_CACHE: dict = {}


def _cached(key: tuple, build: Callable) -> object:
    """A solver object built once per shape (constructing a layer is setup, not the per-call cost)."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _csr(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR row offsets, column indices and the (row-major) positions of the nonzeros of a pattern ``M``."""
    nz = M.nonzero()
    offsets = torch.zeros(M.shape[0] + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(nz[:, 0], minlength=M.shape[0]).cumsum(0)
    return offsets, nz[:, 1].contiguous(), nz[:, 0] * M.shape[1] + nz[:, 1]


def _moreau_solver(n_var: int, Pp: torch.Tensor, Ap: torch.Tensor, zero: int, batch: int):  # noqa: ANN202
    import moreau
    from moreau.torch import Solver

    (pro, pci, _), (aro, aci, _) = _csr(Pp), _csr(Ap)
    cones = moreau.Cones(num_zero_cones=zero, num_nonneg_cones=Ap.shape[0] - zero)
    settings = moreau.Settings(batch_size=batch, enable_grad=True, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Solver(n_var, Ap.shape[0], pro, pci, aro, aci, cones, settings)


def _rows(n: int, cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``1'x = 1``, ``-x <= 0`` (and ``x <= cap``) as Moreau's ``Ax + s = b``, s in zero x nonneg cones."""
    eye = torch.eye(n, dtype=F64)
    A = torch.cat([torch.ones(1, n, dtype=F64), -eye] + ([eye] if cap else []))
    b = torch.cat(
        [torch.ones(1, dtype=F64), torch.zeros(n, dtype=F64)]
        + ([torch.full((n,), cap, dtype=F64)] if cap else [])
    )
    return A, b


def method_moreau(P, q, F, d, cap):  # noqa: ANN001, ANN201
    """Moreau with a dense ``P`` (its default solver choice: active set for n <= 500, else interior point)."""
    B, n = q.shape
    A, b = _rows(n, cap)
    solver = _cached(("moreau", n, B, cap), lambda: _moreau_solver(n, torch.ones(n, n), A, 1, B))
    _, _, apos = _csr(A)
    sol = solver.solve(P.reshape(B, n * n), A.reshape(-1)[apos].expand(B, -1), -q, b.expand(B, -1))
    return sol.x


def method_moreau_factor(P, q, F, d, cap):  # noqa: ANN001, ANN201
    """Moreau's factor form: variables ``(x, y)``, ``y = F'x`` (k equalities), cost ``x'Dx/2 + y'y/2``."""
    B, n = q.shape
    k = F.shape[-1]
    A0, b0 = _rows(n, cap)
    # rows: F'x - y = 0 (k), 1'x = 1, -x <= 0, x <= cap; the pattern of F' is dense
    A = torch.zeros(k + A0.shape[0], n + k, dtype=F64)
    A[:k, :n], A[:k, n:] = 1.0, -torch.eye(k, dtype=F64)
    A[k:, :n] = A0
    solver = _cached(
        ("moreau-factor", n, k, B, cap), lambda: _moreau_solver(n + k, torch.eye(n + k), A, k + 1, B)
    )
    _, _, apos = _csr(A)
    full = A.expand(B, -1, -1).clone()
    full = torch.cat([torch.cat([F.mT, full[:, :k, n:]], -1), full[:, k:]], 1)  # differentiable in F
    Pv = torch.cat([d, torch.ones(B, k, dtype=F64)], -1)
    b = torch.cat([torch.zeros(k, dtype=F64), b0])
    sol = solver.solve(
        Pv, full.reshape(B, -1)[:, apos], torch.cat([-q, torch.zeros(B, k, dtype=F64)], -1), b.expand(B, -1)
    )
    return sol.x[:, :n]


FACTOR_FORM = {"Moreau factor form", "auto factor form (ours)"}
OURS, OURS_FACTOR = "auto (ours)", "auto factor form (ours)"


def available_methods() -> dict[str, Callable]:
    methods = {
        OURS: ours("auto"),
        "active_set (ours)": ours("active_set"),
        "ipm (ours)": ours("ipm"),
        OURS_FACTOR: ours_factor,
    }
    for name, module, fn in (
        ("Moreau dense", "moreau", method_moreau),
        ("Moreau factor form", "moreau", method_moreau_factor),
        ("dQP DAQP", "dqp", method_dqp),
        ("proxsuite QPLayer", "proxsuite.torch.qplayer", method_proxsuite),
    ):
        try:
            __import__(module)
            methods[name] = fn
        except ImportError:
            print(f"{module} not installed: {name} skipped", file=sys.stderr)
    methods["qpth (1 thread)"] = method_qpth
    methods["cvxpylayers Clarabel"] = make_cvxpylayers("Clarabel")
    methods["cvxpylayers SCS"] = make_cvxpylayers("SCS")
    return methods


def timed(
    calls: dict[str, Callable[[], object]], first_ms: dict[str, float], reps: int
) -> dict[str, tuple[float, float, object]]:
    """Median wall and process CPU times in ms of each call, and its last result.

    The calls take turns in blocks of ``BLOCK`` runs, each block after ``REWARM`` runs that are not
    counted (the first runs after another method's are cold), a different call first in each round, so
    that a change of load on a shared machine, or the state the cell's setup leaves, hits every method
    alike. Each call gets ``reps`` runs: 1-2 when a run is slow (as
    ``first_ms``, the warm-up's time, or its first run says); more, up to ``MAX_REPS`` or about
    ``SHORT_BUDGET_S`` in all, when runs are short, since sub-millisecond times vary most. The CPU time
    (``time.process_time``, every thread of the process) leaves out waiting for a core.
    """
    walls: dict[str, list[float]] = {k: [] for k in calls}
    cpus: dict[str, list[float]] = {k: [] for k in calls}
    outs: dict[str, object] = {}
    live = list(calls)
    gc.collect()
    gc.freeze()  # the objects made so far (solver objects, references) no longer slow the collector down
    turn = 0
    while live:
        turn += 1
        for name in live[turn % len(live) :] + live[: turn % len(live)]:  # a different method goes first
            w = walls[name]
            for j in range(-REWARM if (w[0] if w else first_ms[name]) < 300 else 0, BLOCK):
                t, c = time.perf_counter(), time.process_time()
                outs[name] = calls[name]()
                if j < 0:
                    continue
                cpus[name].append(1e3 * (time.process_time() - c))
                w.append(1e3 * (time.perf_counter() - t))
                i = len(w)
                slow = (i == 1 and w[0] > 2000) or (i == 2 and w[0] > 300)
                if slow or (i >= reps and (i >= MAX_REPS or sum(w) > 1e3 * SHORT_BUDGET_S)):
                    live.remove(name)
                    break
    return {k: (statistics.median(walls[k]), statistics.median(cpus[k]), outs[k]) for k in calls}


def run_case(
    n: int, batch: int, cap: float | None, methods: dict[str, Callable], reps: int, skip: set[str]
) -> list[dict]:
    P, q, F, d = make_problem(batch, n, seed=n + batch)
    r = min(batch, REF_ELEMENTS)
    ref = clarabel_reference(P[:r], q[:r], cap)
    obj_ref = objective(P[:r], q[:r], ref)
    w = torch.randn(batch, n, generator=torch.Generator().manual_seed(1), dtype=F64)
    rows, grads_ref, fwds, fwd_bwds, first = {}, None, {}, {}, {}
    for name, fn in methods.items():
        if name in skip or n > MAX_N.get(name, n):
            why = "over the memory of the machine" if name not in skip else None
            rows[name] = dict(method=name, skipped=True, why=why)
            continue
        factor = name in FACTOR_FORM

        def fwd(fn=fn):  # noqa: ANN001, ANN202
            with torch.no_grad():
                return fn(P, q, F, d, cap)

        def fwd_bwd(fn=fn, factor=factor):  # noqa: ANN001, ANN202
            leaves = [v.clone().requires_grad_(True) for v in (P, q, F, d)]
            x = fn(*leaves, cap)
            (x * w).sum().backward()
            return x.detach(), leaves[0].grad if not factor else None, leaves[1].grad

        try:
            t = time.perf_counter()
            fwd_bwd()  # warm-up: lazy imports, solver construction
            first[name] = 1e3 * (time.perf_counter() - t)
        except Exception as exc:  # an anchor failing is a result, not a crash of the benchmark
            rows[name] = dict(method=name, error=f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        fwds[name], fwd_bwds[name] = fwd, fwd_bwd
    forward, backward = timed(fwds, first, reps), timed(fwd_bwds, first, reps)
    for name in fwds:
        (t_f, c_f, x), (t_fb, c_fb, (_, gP, gq)) = forward[name], backward[name]
        if t_fb > SKIP_AFTER_S * 1e3:
            skip.add(name)
        x = x.detach()
        xr = x[:r].numpy()
        err = float(np.abs(xr - ref).max()) if bool(torch.isfinite(x).all()) else math.inf
        viol = max(float((x.sum(-1) - 1).abs().max()), float((-x).clamp_min(0).max()))
        if cap:
            viol = max(viol, float((x - cap).clamp_min(0).max()))
        if name == "ipm (ours)":
            grads_ref = (gP, gq)
        gap = float((objective(P[:r], q[:r], xr) - obj_ref).max()) if math.isfinite(err) else math.inf
        times = dict(fwd=t_f, fwd_bwd=t_fb, cpu_fwd=c_f, cpu_fwd_bwd=c_fb)
        rows[name] = dict(method=name, **times, err=err, viol=viol, gP=gP, gq=gq, gap=gap)
    rows = [rows[name] for name in methods]
    for row in rows:
        gd = []
        if grads_ref is not None and "gq" in row:
            gd.append(float((row["gq"] - grads_ref[1]).abs().max() / grads_ref[1].abs().max()))
            if row["gP"] is not None:
                gd.append(float((row["gP"] - grads_ref[0]).abs().max() / grads_ref[0].abs().max()))
        held = float((torch.as_tensor(ref) > 1e-6).sum(-1).double().mean())
        row.update(n=n, batch=batch, cap=cap, held=held, grad=max(gd) if gd else math.nan)
        row["auto"] = auto_backend(canonicalize(P, q))
        row["auto_factor"] = auto_backend(canonicalize(FactorCov(F, d), q))
    return rows


def fmt(v: float, kind: str) -> str:
    if not math.isfinite(v):
        return "nan/inf"
    return (f"{v:.2f}" if v < 10 else f"{v:.1f}") if kind == "ms" else f"{v:.1e}"


def cell_name(r: dict) -> str:
    return f"n={r['n']}, B={r['batch']}, " + ("no cap" if r["cap"] is None else f"cap {r['cap']:.0%}")


def to_markdown(rows: list[dict], header: str) -> str:
    cols = ["n", "batch", "cap", "names held", "method", "fwd ms", "fwd+bwd ms", "fwd CPU ms",
            "fwd+bwd CPU ms", "max abs err vs Clarabel", "max (obj - obj Clarabel)", "max violation",
            "grad rel. diff vs ipm"]  # fmt: skip
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cap = "-" if r["cap"] is None else f"{r['cap']:.0%}"
        lead = f"| {r['n']} | {r['batch']} | {cap} | {r['held']:.1f} | {r['method']} |"
        if r.get("skipped"):
            skipped = f"skipped: {r['why'] or f'over {SKIP_AFTER_S:.0f} s in a smaller cell'}"
            lines.append(f"{lead} - | - | - | - | {skipped} | | | |")
        elif "error" in r:
            lines.append(f"{lead} failed: {r['error']} | | | | | | | |")
        else:
            vals = [fmt(r[k], "ms") for k in ("fwd", "fwd_bwd", "cpu_fwd", "cpu_fwd_bwd")]
            vals += [fmt(r[k], "e") for k in ("err", "gap", "viol")]
            vals.append("-" if math.isnan(r["grad"]) else fmt(r["grad"], "e"))
            lines.append(f"{lead} " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict], cpu: bool) -> str:
    """Anchor time / our ("auto") time per cell, forward+backward (forward in parentheses).

    A factor-form anchor is compared with our factor form (``FactorCov``), the others with the dense ``P``.
    """
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(cell_name(r), []).append(r)
    anchors = [m for m in dict.fromkeys(r["method"] for r in rows) if "(ours)" not in m]
    f, fb = ("cpu_fwd", "cpu_fwd_bwd") if cpu else ("fwd", "fwd_bwd")
    what = "process CPU time" if cpu else "wall time"
    out = ["", f"Anchor {what} / our {what} (`auto`; > 1: we are faster), forward+backward (forward); a "
           "factor-form anchor against our factor form:", ""]  # fmt: skip
    out += ["| cell | auto picks (dense / factor) | " + " | ".join(anchors) + " |"]
    out.append("|" + "---|" * (len(anchors) + 2))
    ours_names = (OURS, OURS_FACTOR)
    for name, case in cells.items():
        ours_ = {k: next((r for r in case if r["method"] == k and "fwd" in r), None) for k in ours_names}
        if ours_[OURS] is None:
            continue
        parts = []
        for a in anchors:
            r = next((r for r in case if r["method"] == a), None)
            o = ours_[OURS_FACTOR if a in FACTOR_FORM else OURS]
            if r is None or "fwd" not in r or o is None:
                parts.append("-")
            else:
                parts.append(f"{r[fb] / o[fb]:.2f} ({r[f] / o[f]:.2f})")
        picks = f"{ours_[OURS]['auto']} / {ours_[OURS]['auto_factor']}"
        out.append(f"| {name} | {picks} | " + " | ".join(parts) + " |")
    return "\n".join(out)


def parse_cells(text: str) -> list[tuple[int, int, float | None]]:
    """``"20:1:0.1,100:64:none"`` -> [(20, 1, 0.1), (100, 64, None)]."""
    out = []
    for part in text.split(","):
        n, b, cap = part.split(":")
        out.append((int(n), int(b), None if cap.lower() in ("none", "-", "0") else float(cap)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/qp_layer.md")
    ap.add_argument("--quick", action="store_true", help="n in {20, 100} only")
    ap.add_argument("--cells", help="comma-separated n:batch:cap cells, e.g. 20:1:0.1,100:64:none")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument(
        "--methods",
        help="comma-separated substrings: only the methods whose name contains one (ipm always runs)",
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    threadpool_limits(1)  # OpenMP, MKL, OpenBLAS of numpy and the anchors' C code
    if args.cells:
        cells = parse_cells(args.cells)
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
        cells = [(n, b, c) for b in BATCHES for n in sizes for c in CAPS]
    methods = available_methods()
    if args.methods:
        wanted = [w.strip().lower() for w in args.methods.split(",")]
        keep = [k for k in methods if k == "ipm (ours)" or any(w in k.lower() for w in wanted)]
        methods = {k: methods[k] for k in keep}
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    cmd = " ".join(["python benchmarks/qp_layer.py", *(argv if argv is not None else sys.argv[1:])])
    rows, skip, start = [], {b: set() for b in {c[1] for c in cells}}, time.perf_counter()
    # by batch, then n (an anchor slow in a cell skips the larger ones); cells with n >= 1000 last
    for k, (n, batch, cap) in enumerate(sorted(cells, key=lambda c: (c[0] >= 1000, c[1], c[0]))):
        rows.extend(run_case(n, batch, cap, methods, args.reps, skip[batch]))
        print(f"done n={n} batch={batch} cap={cap}", file=sys.stderr)
        progress = (k + 1, len(cells), time.perf_counter() - start)
        text = report(rows, cmd, load_start, progress)  # written after every cell: a cut run keeps its cells
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)


def report(
    rows: list[dict], cmd: str, load_start: tuple[float, ...], progress: tuple[int, int, float]
) -> str:
    """The results file: header, the table of every method and cell, the ratio tables."""
    rows = sorted(rows, key=lambda r: (r["n"], r["batch"], r["cap"] is not None))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    load0 = f"{load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}"
    done, total, seconds = progress
    state = "" if done == total else f" PARTIAL: {done} of {total} cells done."
    header = (
        "# QP layer benchmark\n\n"
        f"`{cmd}` ({seconds / 60:.0f} min);{state} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch "
        f"{torch.__version__}, one thread for every method (torch, OpenMP, MKL, OpenBLAS), float64, risk "
        f"aversion {GAMMA}, 5 factors; load average (1 / 5 / 15 min) at the start {load0}, at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
        " "
        "Times are medians (of 7 runs; of more, up to 101 or about 0.25 s in all, for short calls; of 1-2 "
        "runs for calls over 0.3 s; the methods of a cell take turns in blocks of 5 runs, each after three "
        "uncounted runs, another method first in each round), wall time and process CPU time (all "
        "threads; it leaves out waiting for a core on a shared machine), "
        "after one warm-up call (solver "
        "objects such as Moreau's are built once per shape, outside the timing). Errors are on up to "
        f"{REF_ELEMENTS} elements of the batch against cvxpy + Clarabel at 1e-12 tolerances; a negative "
        "objective difference means a lower (better) objective than the reference. cvxpylayers runs through "
        "diffcp with Clarabel or SCS at their default tolerances; dQP with DAQP at eps_abs 1e-10; Moreau at "
        "its "
        "default settings (active set below n = 500). `auto` is `solve_qp(backend='auto')` with the dense "
        "`P`, `auto factor form` the same with `P` as `FactorCov(F, d)` (what Moreau's factor form gets); "
        "the column 'auto picks' says which backends they ran."
    )
    return to_markdown(rows, header) + "\n" + ratios(rows, cpu=True) + "\n" + ratios(rows, cpu=False) + "\n"


if __name__ == "__main__":
    main()
