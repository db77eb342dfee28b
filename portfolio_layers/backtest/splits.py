"""Walk-forward schedule: which price rows a strategy may see, when it is re-trained, which rows it holds.

Rows are positions ``0 .. T-1`` of the price table. With lookback ``L`` and rebalance step ``k`` the
rebalance rows are ``t = t0, t0+k, t0+2k, ...`` while ``t <= T-2`` (a trade needs at least one later row to
be held), with ``t0 = L`` by default, or ``t0 = max(L, first_row)`` when trading may only start at
``first_row`` (the rows before it are then history only: lookback and training data). At t:

- ``view = t-L .. t``: the rows passed to ``strategy.weights`` (never a row after t);
- ``train``: the rows passed to ``strategy.fit`` when a re-training is due: ``max(0, t+1-train_window) .. t``
  (rolling) or ``0 .. t`` (expanding); the first re-training is at the first rebalance, the next one at the
  first rebalance row ``>= previous + retrain_every``;
- ``hold = t+1 .. t'`` with t' the next rebalance row (or ``T-1`` after the last one): the rows whose returns
  the weights chosen at t earn.

The hold ranges partition rows ``t0+1 .. T-1``. ``train`` and ``view`` end at t, ``hold`` starts at t+1 (see
the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from portfolio_layers.errors import ConfigError, DataError, LookAheadError


@dataclass(frozen=True)
class Step:
    """One rebalance of the walk-forward schedule (row positions, ``stop`` exclusive as in Python slices).

    Attributes
    ----------
    t : int
        Rebalance row.
    view : slice
        ``slice(t - L, t + 1)``.
    train : slice or None
        Training rows when ``fit`` is due at this rebalance, else None.
    hold : slice
        ``slice(t + 1, next_t + 1)``: rows whose returns the new weights earn.
    """

    t: int
    view: slice
    train: slice | None
    hold: slice

    def __post_init__(self) -> None:
        # Structural guard: nothing given to a strategy may extend past the rebalance row.
        if self.view.stop != self.t + 1 or (self.train is not None and self.train.stop != self.t + 1):
            raise LookAheadError(f"walk-forward step at row {self.t} would expose rows after {self.t}.")
        if self.hold.start != self.t + 1:
            raise LookAheadError(f"walk-forward step at row {self.t} must hold from row {self.t + 1}.")


def walk_forward(
    n_rows: int,
    lookback: int,
    rebalance: int,
    *,
    retrain_every: int | None = None,
    train_window: int | None = None,
    window: str = "rolling",
    first_row: int | None = None,
) -> list[Step]:
    """The rebalance steps of a walk-forward backtest over ``n_rows`` price rows.

    Parameters
    ----------
    n_rows : int
        Number of price rows T.
    lookback : int
        L >= 1, rows seen before (and including) the rebalance row are ``t-L .. t``.
    rebalance : int
        k >= 1, rows between rebalances.
    retrain_every : int, optional
        Rows between re-trainings; None means no ``train`` ranges (no strategy learns).
    train_window : int, optional
        Rolling training window length in rows (required when ``window="rolling"`` and
        ``retrain_every`` is set).
    window : {"rolling", "expanding"}
        Training window type.
    first_row : int, optional
        First row at which a trade may happen; the first rebalance is ``max(L, first_row)``.

    Returns
    -------
    list of Step
        In increasing t.

    Raises
    ------
    DataError
        Fewer than ``L + 2`` rows.
    ConfigError
        Invalid lengths or window type.
    """
    if lookback < 1 or rebalance < 1:
        raise ConfigError(f"lookback ({lookback}) and rebalance ({rebalance}) must be >= 1.")
    if window not in ("rolling", "expanding"):
        raise ConfigError(f"window must be 'rolling' or 'expanding', got {window!r}.")
    if retrain_every is not None:
        if retrain_every < 1:
            raise ConfigError(f"retrain_every must be >= 1, got {retrain_every}.")
        if window == "rolling" and (train_window is None or train_window < 2):
            raise ConfigError(f"a rolling training window needs train_window >= 2, got {train_window}.")
    if n_rows < lookback + 2:
        raise DataError(
            f"too few rows: {n_rows} price row(s) for lookback {lookback}; at least {lookback + 2} are "
            "needed "
            "(lookback + 1 rows to decide, one more to hold). Use a longer date range or a shorter lookback."
        )
    t0 = lookback if first_row is None else max(lookback, int(first_row))
    if t0 > n_rows - 2:
        raise DataError(
            f"no trade possible: the first trade row {t0} leaves no row to hold (the data has {n_rows} "
            "rows); move trade_start earlier or extend the data."
        )
    rows = list(range(t0, n_rows - 1, rebalance))
    steps: list[Step] = []
    last_fit: int | None = None
    for i, t in enumerate(rows):
        train = None
        if retrain_every is not None and (last_fit is None or t - last_fit >= retrain_every):
            start = 0 if window == "expanding" else max(0, t + 1 - int(train_window))  # type: ignore[arg-type]
            train = slice(start, t + 1)
            last_fit = t
        end = rows[i + 1] if i + 1 < len(rows) else n_rows - 1
        steps.append(Step(t=t, view=slice(t - lookback, t + 1), train=train, hold=slice(t + 1, end + 1)))
    return steps


__all__ = ["Step", "walk_forward"]
