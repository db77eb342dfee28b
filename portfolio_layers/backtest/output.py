"""Writing a :class:`~portfolio_layers.backtest.result.BacktestResult` to a run folder that always holds one
complete run.

Files: ``metrics.json`` (``{strategy: {metric: value}}``, NaN as null), ``returns.csv`` (net returns, one
column per strategy), ``weights/<strategy>.csv`` (target weights by rebalance date), ``turnover.csv``,
``config.toml`` (the resolved config), ``diagnostics/<strategy>/<name>.csv`` when a strategy offers
diagnostics, ``sharpe_tests.csv`` (vs the benchmark, when it ran), ``report.html``, and last
``manifest.json``, which lists every file of the run.

The folder rule (:func:`save_result`): the run is written into a fresh hidden sibling folder
``.<name>.tmp-<random>`` and renamed into place, so a crash or a kill during the writes leaves the folder
as it was (the partial sibling is removed unless the process is killed outright). An existing folder is
taken only when it is empty, or with ``overwrite=True`` when it holds nothing but the files its
``manifest.json`` lists (a run this package wrote): the old run is renamed aside to ``.<name>.old-<random>``,
the new one renamed into place, and only then are the listed files of the old run deleted. Between the two
renames (microseconds) the folder is absent and both complete runs are on disk. A file the package did not
write is never deleted.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.report import write_report
from portfolio_layers.backtest.result import BacktestResult
from portfolio_layers.errors import ConfigError

#: The file, written last, that lists every file of a run folder (what ``overwrite=True`` may delete).
MANIFEST = "manifest.json"


def safe_name(name: str) -> str:
    """File-system-safe version of a strategy or diagnostic name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def _csv(frame: pd.DataFrame, index_label: str = "date") -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index_label=index_label, float_format="%.10g")
    return buf.getvalue()


def metrics_json(result: BacktestResult) -> str:
    """``{strategy: {metric: value}}`` as JSON text (NaN and infinities become null)."""
    data = {
        name: {k: (float(v) if math.isfinite(v) else None) for k, v in row.items()}
        for name, row in result.metrics.to_dict(orient="index").items()
    }
    return json.dumps(data, indent=2) + "\n"


def _run_files(folder: Path) -> list[str]:
    """Files of the run in ``folder`` by its manifest; ConfigError if any other file or folder is there."""
    refuse = (
        "--overwrite only replaces a run folder that holds nothing but the files portfolio_layers wrote "
        "there; move or delete that yourself, or choose another folder."
    )
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            raise TypeError("files is not a list of names")
    except FileNotFoundError:
        raise ConfigError(
            f"output folder {folder} has no {MANIFEST}, so it is not a run folder written by this package "
            f"(or was written by a version before {MANIFEST} existed); {refuse}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / MANIFEST} is damaged ({exc}); {refuse}") from None
    files = {MANIFEST, *listed}
    folders = {parent.as_posix() for f in files for parent in Path(f).parents} - {"."}
    for root, dirs, names in os.walk(folder):
        for name in sorted(dirs) + sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            allowed = folders if name in dirs else files
            if path.is_symlink() or rel not in allowed:
                raise ConfigError(
                    f"output folder {folder} holds {rel}, which this package did not write; {refuse}"
                )
    return sorted(files)


def _checked(out: Path, overwrite: bool) -> list[str] | None:
    """The files of the old run that replacing ``out`` deletes (None: ``out`` does not exist)."""
    if out.is_symlink():
        raise ConfigError(
            f"output folder {out} is a symbolic link; give the folder it points to, or another one."
        )
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"output folder {out} is a file, not a folder; choose another path.")
    if not any(out.iterdir()):
        return []
    if not overwrite:
        raise ConfigError(
            f"output folder {out} is not empty; pass --overwrite (save_result(..., overwrite=True)) to "
            "replace the run in it, or choose another folder."
        )
    return _run_files(out)


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a run may be saved to ``out_dir`` (the rule of :func:`save_result`), before any work.

    Parameters
    ----------
    out_dir : path-like
        The output folder.
    overwrite : bool
        Whether an earlier run there may be replaced.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ConfigError
        ``out_dir`` is a file or a symbolic link, is not empty while ``overwrite`` is False, or holds a file
        or folder its manifest does not list (named in the message).
    """
    _checked(Path(out_dir), overwrite)
    return Path(out_dir)


def _sibling(target: Path, kind: str) -> Path:
    """A new name beside the absolute path ``target``."""
    return target.with_name(f".{target.name}.{kind}-{secrets.token_hex(4)}")


def _write_run(result: BacktestResult, folder: Path) -> None:
    atomic_write_text(folder / "config.toml", result.config.to_toml())
    atomic_write_text(folder / "returns.csv", _csv(result.returns))
    atomic_write_text(folder / "turnover.csv", _csv(result.turnover))
    for name, frame in result.weights.items():
        atomic_write_text(folder / "weights" / f"{safe_name(name)}.csv", _csv(frame))
    for name, diags in result.diagnostics.items():
        for key, frame in diags.items():
            atomic_write_text(
                folder / "diagnostics" / safe_name(name) / f"{safe_name(key)}.csv", _csv(frame, "index")
            )
    if result.config.benchmark in result.returns.columns and result.returns.shape[1] > 1:
        atomic_write_text(folder / "sharpe_tests.csv", _csv(result.sharpe_tests(), "strategy"))
    write_report(result, folder / "report.html")
    atomic_write_text(folder / "metrics.json", metrics_json(result))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    manifest = {"written_by": "portfolio_layers", "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _delete_run(folder: Path, files: list[str]) -> None:
    """Delete the listed files of an old run, then its folders if that left them empty."""
    for rel in files:
        (folder / rel).unlink(missing_ok=True)
    parents = {folder, *(folder / parent for rel in files for parent in Path(rel).parents)}
    for path in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:
            warnings.warn(
                f"{path} still holds files that appeared during the run; they were left there, in the old "
                "run's folder beside the new one.",
                stacklevel=3,
            )
            return


def save_result(result: BacktestResult, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write every output file of ``result`` into the folder ``out_dir``, which then holds exactly this run.

    The run is written into a fresh sibling folder and renamed into place (see the module docstring): a
    failure during the writes leaves ``out_dir`` as it was.

    Parameters
    ----------
    result : BacktestResult
        The run to write.
    out_dir : path-like
        The output folder: absent or empty, or (``overwrite=True``) a run folder written by this package.
        Its parent folders are created if needed.
    overwrite : bool
        Replace the run already in ``out_dir``; a folder holding any file its manifest does not list is
        refused all the same.

    Returns
    -------
    Path
        The output folder.

    Raises
    ------
    ConfigError
        ``out_dir`` may not take the run (see :func:`check_out_dir`).
    """
    out = Path(out_dir)
    _checked(out, overwrite)
    target = Path(os.path.abspath(out))  # renames need a name: ``out`` may be ``.``
    staging = _sibling(target, "tmp")
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        _write_run(result, staging)
        old_files = _checked(out, overwrite)  # again: the folder may have changed during the writes
        if old_files is None:
            staging.rename(target)
        else:
            old = _sibling(target, "old")
            target.rename(old)
            try:
                staging.rename(target)
            except BaseException:
                old.rename(target)
                raise
            _delete_run(old, old_files)
    except BaseException:
        # Also on KeyboardInterrupt: the staging folder is ours alone (absent once renamed into place).
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


__all__ = ["MANIFEST", "check_out_dir", "metrics_json", "safe_name", "save_result"]
