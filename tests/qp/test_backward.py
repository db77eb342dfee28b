"""Implicit KKT backward: gradcheck for every input, summed gradients of broadcast inputs."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.qp import solve_qp
from tests.qp.conftest import random_qp

NAMES = ["P", "q", "A", "b", "G", "h", "lb", "ub"]


def _as_inputs(prob: dict) -> list[torch.Tensor]:
    out = []
    for k in NAMES:
        v = prob[k]
        v = (
            v
            if isinstance(v, torch.Tensor)
            else torch.full((prob["q"].shape[-1],), float(v), dtype=torch.float64)
        )
        out.append(v.clone())
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_each_input(seed: int, name: str) -> None:
    prob = random_qp(seed, 6, batch=(2,), mix="all")
    inputs = _as_inputs(prob)
    k = NAMES.index(name)
    inputs[k].requires_grad_(True)

    def f(v: torch.Tensor) -> torch.Tensor:
        args = list(inputs)
        args[k] = v
        return solve_qp(*args, tol=1e-12).x

    assert torch.autograd.gradcheck(f, (inputs[k],), atol=1e-6, rtol=1e-4, fast_mode=True)


def test_broadcast_gradients_are_summed() -> None:
    prob = random_qp(2, 5, batch=(3,), mix="portfolio")
    P = prob["P"][0].clone().requires_grad_(True)  # shared by the batch
    q = prob["q"].clone().requires_grad_(True)
    w = torch.randn(3, 5, dtype=torch.float64)
    (solve_qp(P, q, prob["A"], prob["b"], lb=0.0, ub=prob["ub"]).x * w).sum().backward()
    total = torch.zeros_like(P)
    for i in range(3):
        Pi = prob["P"][0].clone().requires_grad_(True)
        (solve_qp(Pi, q[i].detach(), prob["A"], prob["b"], lb=0.0, ub=prob["ub"]).x * w[i]).sum().backward()
        total += Pi.grad
    torch.testing.assert_close(P.grad, total, atol=1e-9, rtol=1e-7)


def test_finite_difference_portfolio() -> None:
    prob = random_qp(9, 8, mix="portfolio")
    q = prob["q"].clone().requires_grad_(True)
    w = torch.randn(8, dtype=torch.float64)

    def loss(qq):
        return (solve_qp(prob["P"], qq, prob["A"], prob["b"], lb=0.0, ub=prob["ub"], tol=1e-12).x * w).sum()  # noqa: E731

    loss(q).backward()
    eps = 1e-6
    fd = torch.stack(
        [
            (loss(q.detach() + eps * e) - loss(q.detach() - eps * e)) / (2 * eps)
            for e in torch.eye(8, dtype=torch.float64)
        ]
    )
    torch.testing.assert_close(q.grad, fd, atol=1e-6, rtol=1e-4)
