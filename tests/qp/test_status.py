"""The QP's Status extends the package's status base: codes, messages, ``.ok`` and one way to raise."""

from __future__ import annotations

import pytest
import torch

from portfolio_layers.errors import ConvergenceError, InfeasibleError, SolverError, StatusCode
from portfolio_layers.qp import Status


def test_status_codes_and_flags() -> None:
    assert issubclass(Status, StatusCode)
    assert [(s.name, int(s)) for s in Status] == [
        ("SOLVED", 0),
        ("MAX_ITER", 1),
        ("PRIMAL_INFEASIBLE", 2),
        ("DUAL_INFEASIBLE", 3),
        ("NUMERICAL_ERROR", 4),
    ]
    assert Status.SOLVED.ok and Status.success() is Status.SOLVED
    assert Status.MAX_ITER.ok is False
    assert all(s.message for s in Status) and "max_iter" in Status.MAX_ITER.message


@pytest.mark.parametrize(
    ("codes", "error"),
    [
        ([Status.SOLVED, Status.PRIMAL_INFEASIBLE], InfeasibleError),
        ([Status.MAX_ITER, Status.SOLVED], ConvergenceError),
        ([Status.DUAL_INFEASIBLE, Status.NUMERICAL_ERROR], SolverError),
        ([Status.PRIMAL_INFEASIBLE, Status.MAX_ITER], SolverError),
    ],
)
def test_raise_for_picks_the_error_class(codes: list[Status], error: type[SolverError]) -> None:
    status = torch.tensor(codes, dtype=torch.int8)
    with pytest.raises(SolverError) as info:
        Status.raise_for(status, "solve_qp", hint="Or pass throw=False to get the statuses instead.")
    assert type(info.value) is error
    bad = [i for i, c in enumerate(codes) if not c.ok]
    assert info.value.indices == tuple((i,) for i in bad)
    assert "solve_qp failed" in str(info.value) and "throw=False" in str(info.value)
    assert Status.failed(status).tolist() == [not c.ok for c in codes]


def test_raise_for_is_silent_when_all_solved() -> None:
    Status.raise_for(torch.zeros(3, dtype=torch.int8), "solve_qp")
    assert Status.describe(torch.zeros(3, dtype=torch.int8)) == []
