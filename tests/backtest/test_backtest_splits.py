from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portfolio_layers.backtest.splits import Step, walk_forward
from portfolio_layers.errors import ConfigError, DataError, LookAheadError


def test_small_schedule_by_hand():
    steps = walk_forward(10, lookback=3, rebalance=3)
    assert [s.t for s in steps] == [3, 6]  # t <= T-2 = 8
    assert steps[0].view == slice(0, 4) and steps[0].hold == slice(4, 7)
    assert steps[1].view == slice(3, 7) and steps[1].hold == slice(7, 10)
    assert all(s.train is None for s in steps)


@given(
    n_rows=st.integers(3, 200),
    lookback=st.integers(1, 30),
    rebalance=st.integers(1, 30),
    retrain_every=st.integers(1, 50),
    train_window=st.integers(2, 60),
    window=st.sampled_from(["rolling", "expanding"]),
    first_row=st.one_of(st.none(), st.integers(0, 200)),
)
def test_folds_never_look_ahead_and_holds_partition(
    n_rows, lookback, rebalance, retrain_every, train_window, window, first_row
):
    t0 = lookback if first_row is None else max(lookback, first_row)
    if n_rows >= lookback + 2 and t0 > n_rows - 2:
        with pytest.raises(DataError, match="no trade possible"):
            walk_forward(n_rows, lookback, rebalance, first_row=first_row)
        return
    if n_rows < lookback + 2:
        with pytest.raises(DataError, match="too few rows"):
            walk_forward(n_rows, lookback, rebalance)
        return
    steps = walk_forward(
        n_rows,
        lookback,
        rebalance,
        retrain_every=retrain_every,
        train_window=train_window,
        window=window,
        first_row=first_row,
    )
    held = [row for s in steps for row in range(s.hold.start, s.hold.stop)]
    assert held == list(range(t0 + 1, n_rows))  # every return row once, in order
    assert steps[0].t == t0 and steps[0].train is not None
    last_fit = None
    for s in steps:
        assert s.view.start == s.t - lookback and s.view.stop == s.t + 1
        assert s.hold.start == s.t + 1 and s.hold.stop <= n_rows
        if s.train is not None:
            assert s.train.stop == s.t + 1
            assert s.train.start == (0 if window == "expanding" else max(0, s.t + 1 - train_window))
            assert last_fit is None or s.t - last_fit >= retrain_every
            last_fit = s.t
        else:
            assert s.t - last_fit < retrain_every


def test_step_refuses_look_ahead_and_bad_options():
    with pytest.raises(LookAheadError):
        Step(t=5, view=slice(2, 7), train=None, hold=slice(6, 8))
    with pytest.raises(LookAheadError):
        Step(t=5, view=slice(2, 6), train=slice(0, 7), hold=slice(6, 8))
    with pytest.raises(ConfigError, match="train_window"):
        walk_forward(20, 3, 2, retrain_every=5, train_window=None)
    with pytest.raises(ConfigError, match="window"):
        walk_forward(20, 3, 2, window="sliding")
