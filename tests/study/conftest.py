"""Fixtures: the small study, run once per test module in this process, and a copy a test may change."""

from __future__ import annotations

import shutil

import pytest
from study_helpers import SMALL, SerialExecutor

from portfolio_layers.study.runner import run_study


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """The study of SMALL with seeds 0 and 1, run serially: (outcome, folder)."""
    out = tmp_path_factory.mktemp("study")
    outcome = run_study(SMALL, [0, 1], SerialExecutor(), out, progress=False)
    assert not outcome.failed, [o.error for o in outcome.failed]
    return outcome, out


@pytest.fixture
def study_copy(small_study, tmp_path):
    """A copy of the small study's folder that a test may change."""
    _, out = small_study
    return shutil.copytree(out, tmp_path / "study")
