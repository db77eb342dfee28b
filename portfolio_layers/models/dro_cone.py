"""The reference robust layers of :mod:`portfolio_layers.models.dro`: cone programs on cvxpylayers.

The dual reformulations (derived in :func:`portfolio_layers.models.dro.dro_layer`), written as DPP cvxpy
problems and solved with Clarabel through diffcp. Exact, but diffcp's dense derivative makes the
backward slow (about 0.3 s for TV and 0.75 s for Hellinger per element at ``n = 20``, ``N = 104``); the
native solver of :mod:`portfolio_layers.models.dro_native` is the default and this is its reference.

- Hellinger: ``minimize xi + (delta - 1) lam + (1/N) sum_j beta_j - gamma y_hat'z`` s.t. ``l_j + tau_j <=
  xi + lam`` and ``beta_j tau_j >= lam^2`` (rotated second-order cones ``||(2 lam, beta_j - tau_j)||
  <= beta_j + tau_j``);
- TV: ``minimize xi + delta lam + (1/N) sum_j beta_j - gamma y_hat'z`` s.t. ``beta_j >= l_j - xi``,
  ``beta_j >= -lam``, ``l_j <= xi + lam``,

with ``l_j = (eps_j'z - c)^2``, ``z >= 0``, ``1'z = 1``. The program is built once per ``(N, n, ambiguity)``
with parameters ``E``, ``y_hat``, ``gamma``, ``delta`` (``gamma y_hat'z`` is written ``gamma mu`` with
``mu = y_hat'z``). The errors are rescaled to unit root mean square (and ``y_hat`` by the square of the
same factor), which leaves the weights unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import cvxpy as cp
import numpy as np
import torch
from torch import Tensor

from portfolio_layers.errors import ConfigError, SolverError, format_indices

AMBIGUITY_SETS = ("hellinger", "tv")
#: Clarabel settings of the cone programs: tighter than its defaults (1e-8), so that the weights
#: are accurate to a few 1e-7 after the internal rescaling of the errors to unit size.
CLARABEL_SETTINGS: dict[str, Any] = {
    "tol_gap_abs": 1e-11,
    "tol_gap_rel": 1e-11,
    "tol_feas": 1e-11,
    "tol_ktratio": 1e-8,
    "max_iter": 200,
}
#: Largest violation of ``z >= 0`` and ``1'z = 1`` accepted from the cone solver.
FEASIBILITY_TOL = 1e-6


def solve_cone(
    E: Tensor, y: Tensor, g: Tensor, d: Tensor, ambiguity: str, solver_args: dict[str, Any] | None
) -> Tensor:
    """The cone program of :func:`dro_layer` for ``E (B, N, n)``, ``y (B, n)``, ``g (B,)``, ``d (B,)``."""
    B, N, n = E.shape
    with torch.no_grad():  # the minimiser is invariant to E -> sE, y_hat -> s^2 y_hat: s needs no gradient
        rms = E.square().mean((-2, -1)).sqrt()
        s = torch.where(rms > 0, rms.reciprocal(), torch.ones_like(rms))
    params = (
        (E * s[:, None, None]).double(),
        (y * s[:, None].square()).double(),
        g.double(),
        d.double(),
    )
    args = {**CLARABEL_SETTINGS, **(solver_args or {})}
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        args["mode"] = "dense"  # exact derivative (diffcp forwards "mode" to Clarabel without a backward)
    (z,) = _cone_layer(N, n, ambiguity)(*params, solver_args=args)
    with torch.no_grad():  # diffcp does not report Clarabel's status: check what came back
        bad = (
            ~torch.isfinite(z).all(-1)
            | (z.amin(-1) < -FEASIBILITY_TOL)
            | ((z.sum(-1) - 1).abs() > FEASIBILITY_TOL)
        )
    if bool(bad.any()):
        idx = [(int(i),) for i in bad.nonzero().squeeze(-1)]
        raise SolverError(
            f"dro_layer ({ambiguity}): the cone solver returned non-finite or infeasible weights at batch "
            f"indices {format_indices(idx)} (of the elements solved as cone programs). Check the scale of "
            "y_hat and gamma against the errors, or pass solver_args={'max_iter': ...}.",
            idx,
        )
    return z.to(E.dtype)


def dro_problem(N: int, n: int, ambiguity: str) -> tuple[cp.Problem, list[cp.Parameter], cp.Variable]:
    """The DPP cvxpy problem of :func:`dro_layer` (see its docstring for the formulation).

    Parameters
    ----------
    N, n : int
        Number of error rows and of assets.
    ambiguity : {"hellinger", "tv"}

    Returns
    -------
    problem : cvxpy.Problem
    parameters : list of cvxpy.Parameter
        ``[E (N, n), y_hat (n,), gamma (), delta ()]``, in this order.
    z : cvxpy.Variable of shape (n,)
        The weights.
    """
    if ambiguity not in AMBIGUITY_SETS:
        raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
    E, y = cp.Parameter((N, n), name="errors"), cp.Parameter(n, name="y_hat")
    gamma, delta = cp.Parameter(name="gamma"), cp.Parameter(nonneg=True, name="delta")
    z, c, mu = cp.Variable(n, nonneg=True, name="z"), cp.Variable(name="c"), cp.Variable(name="mu")
    xi, lam, beta = cp.Variable(name="xi"), cp.Variable(nonneg=True, name="lam"), cp.Variable(N, name="beta")
    loss = cp.square(E @ z - c)
    constraints = [cp.sum(z) == 1, mu == y @ z]
    if ambiguity == "hellinger":
        tau = cp.Variable(N, nonneg=True, name="tau")
        constraints += [
            loss + tau <= xi + lam,
            cp.SOC(beta + tau, cp.vstack([2 * lam * np.ones(N), beta - tau]), axis=0),
        ]
        risk = xi + (delta - 1) * lam + cp.sum(beta) / N
    else:
        constraints += [beta >= loss - xi, beta >= -lam, loss <= xi + lam]
        risk = xi + delta * lam + cp.sum(beta) / N
    problem = cp.Problem(cp.Minimize(risk - gamma * mu), constraints)
    return problem, [E, y, gamma, delta], z


@functools.lru_cache(maxsize=32)
def _cone_layer(N: int, n: int, ambiguity: str) -> Any:
    from cvxpylayers.torch import CvxpyLayer

    problem, params, z = dro_problem(N, n, ambiguity)
    return CvxpyLayer(problem, parameters=params, variables=[z], solver_args={"solve_method": "Clarabel"})
