from __future__ import annotations

import pytest

import portfolio_layers
from portfolio_layers import errors


def test_version_is_exposed():
    assert portfolio_layers.__version__.count(".") == 2


@pytest.mark.parametrize(
    "cls",
    [errors.ShapeError, errors.DataError, errors.InfeasibleError, errors.ConfigError, errors.LookAheadError],
)
def test_bad_input_errors_are_value_errors(cls):
    assert issubclass(cls, ValueError)
    assert issubclass(cls, errors.PortfolioLayersError)


def test_solver_error_keeps_indices():
    err = errors.ConvergenceError("no", indices=[(0, 2)])
    assert err.indices == ((0, 2),)
