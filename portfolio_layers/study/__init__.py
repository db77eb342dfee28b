"""Studies: seeds x strategies x grid points as tasks, on a local process pool or on a Ray cluster.

One task is one strategy at one grid point with one seed; it builds its strategy through
:mod:`portfolio_layers.registry`, runs :func:`~portfolio_layers.backtest.engine.run_backtest` and writes one
run folder. Modules, from the command down:

- :mod:`~portfolio_layers.study.cli`: the ``portfolio-layers study`` arguments and output;
- :mod:`~portfolio_layers.study.runner`: :func:`~portfolio_layers.study.runner.run_study` (plan, resume, run,
  summarise) and the study folder's layout;
- :mod:`~portfolio_layers.study.spec`: seeds, grid files, tasks and run ids;
- :mod:`~portfolio_layers.study.executors`: :class:`~portfolio_layers.study.executors.LocalExecutor` and
  :class:`~portfolio_layers.study.executors.RayExecutor`;
- :mod:`~portfolio_layers.study.task`: what a worker runs for one task;
- :mod:`~portfolio_layers.study.summary` and :mod:`~portfolio_layers.study.report`: the summary tables and the
  report page, read back from the run folders.

This file re-exports nothing: the command line imports :mod:`~portfolio_layers.study.cli` to build its
parser, and importing the runner here would load torch for every command.
"""
