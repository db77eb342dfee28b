"""The qpth and cvxpylayers backends cross-check the ipm backend (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.errors import ConfigError
from portfolio_layers.qp import solve_qp
from tests.qp.conftest import random_qp

NAMES = ["P", "q", "A", "b", "G", "h", "lb", "ub"]


def _grads(prob: dict, backend: str, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    n = prob["q"].shape[-1]
    inputs = []
    for k in NAMES:
        v = prob.get(k)
        if v is None:
            inputs.append(None)
            continue
        v = v if isinstance(v, torch.Tensor) else torch.full((n,), float(v), dtype=torch.float64)
        inputs.append(v.clone().requires_grad_(True))
    x = solve_qp(*inputs, backend=backend).x
    (x * w).sum().backward()
    return x.detach(), [None if t is None else t.grad for t in inputs]


@pytest.mark.parametrize("backend", ["qpth", "cvxpylayers"])
@pytest.mark.parametrize("mix", ["all", "portfolio"])
def test_backends_agree_with_ipm(backend: str, mix: str) -> None:
    prob = random_qp(11, 7, batch=(2,), mix=mix)
    w = torch.randn(2, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ref, g_ref = _grads(prob, "ipm", w)
    x, g = _grads(prob, backend, w)
    tol = 1e-6 if backend == "qpth" else 1e-4  # cvxpylayers: Clarabel via diffcp at default tolerances
    torch.testing.assert_close(x, x_ref, atol=tol, rtol=0)
    for name, a, b in zip(NAMES, g, g_ref, strict=True):
        if b is None:
            continue
        scale = 1.0 + float(b.abs().max())
        assert float((a - b).abs().max()) <= 50 * tol * scale, f"gradient of {name} differs for {backend}"


def test_unknown_backend_and_warm_start_rejected() -> None:
    prob = random_qp(0, 4, mix="box")
    with pytest.raises(ConfigError, match="unknown backend"):
        solve_qp(**prob, backend="osqp")
    with pytest.raises(ConfigError, match="warm_start"):
        solve_qp(**prob, backend="qpth", warm_start=torch.zeros(4, dtype=torch.float64))
