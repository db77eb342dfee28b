"""Checkpoints of fitted networks: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds ``{"model": state_dict, **extra}`` (:func:`save_checkpoint`). Writes are atomic (a reader
sees the old file or the complete new one), so a file that cannot be read back was damaged afterwards (a
disk fault, a copy cut short) or was not written by this package. Either way reading it raises
:class:`~portfolio_layers.errors.InputError` naming the file and saying to delete it, rather than warning
and re-training: a silent re-train would hide the fault, and deleting the file gives the same re-train on
purpose. A file that torch's safe loader refuses (a pickle asking to import code) is reported as unsafe,
never with a hint to load it unsafely.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from portfolio_layers.atomic import atomic_write_bytes
from portfolio_layers.errors import InputError
from portfolio_layers.models.training import TrainHistory

__all__ = ["load_checkpoint", "restore_fit", "save_checkpoint"]

_DELETE = "Delete the file to re-train what it held (the other checkpoints are kept and still resume)."


def save_checkpoint(path: str | Path, net: nn.Module, **extra: object) -> Path:
    """Write ``{"model": state_dict, **extra}`` with :func:`torch.save`, atomically.

    ``extra`` values must be loadable with ``weights_only=True``: tensors, numbers, strings, and lists,
    tuples and dicts of those.
    """
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), **extra}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _damaged(path: Path, reason: str) -> InputError:
    return InputError(f"checkpoint {path} is damaged: {reason}. {_DELETE}")


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(..., weights_only=True)``).

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    dict
        ``{"model": state_dict, **extra}``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    InputError
        The file is damaged (empty, truncated, not a checkpoint, no ``"model"`` entry) or unsafe (a pickle
        that asks to import code, refused by torch's safe loader); the message names the file and says to
        delete it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise InputError(f"checkpoint {path} cannot be read ({exc.strerror}); fix its permissions.") from exc
    except pickle.UnpicklingError as exc:
        # ``from None``: torch's message for a refused file suggests loading it with weights_only=False.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise _damaged(path, "it is not a checkpoint (torch's safe loader cannot read it)") from None
        raise InputError(
            f"checkpoint {path} is not a checkpoint this package wrote and is unsafe: it asks to import "
            f"{found.group(1)} when loaded, so it was not loaded. Delete it, and check who can write to "
            f"{path.parent}."
        ) from None
    except Exception as exc:  # torch.load fails with many types on a damaged file (EOFError, OSError...)
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        empty = path.stat().st_size == 0
        reason = "it is empty" if empty else f"it cannot be read ({type(exc).__name__}: {detail})"
        raise _damaged(path, reason) from exc
    if not isinstance(state, Mapping) or "model" not in state:
        got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise _damaged(path, f"it holds no 'model' entry (got {got})")
    return dict(state)


def restore_fit(path: str | Path, net: nn.Module) -> TrainHistory:
    """Load a fit saved with ``save_checkpoint(path, net, history=history.to_dict())`` into ``net``.

    The parameters are checked against ``net`` (names and shapes) before any is copied, so a damaged file
    leaves ``net`` as it was.

    Parameters
    ----------
    path : path-like
        The checkpoint.
    net : nn.Module
        The network to load the parameters into.

    Returns
    -------
    TrainHistory
        The history saved with the fit.

    Raises
    ------
    InputError
        As :func:`load_checkpoint`, or the parameters or history do not fit (missing or unexpected entries,
        other shapes); the message names the file and says to delete it.
    """
    path = Path(path)
    state = load_checkpoint(path)
    if "history" not in state:
        raise _damaged(path, f"it holds no 'history' entry (got {sorted(map(str, state))})")
    params, own = state["model"], net.state_dict()
    if not isinstance(params, Mapping):
        raise _damaged(path, f"its 'model' entry is a {type(params).__name__}, not a state dict")
    missing, unexpected = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    if missing or unexpected:
        raise _damaged(path, f"its parameters do not fit the model (missing {missing}, extra {unexpected})")
    for name, value in params.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[name].shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise _damaged(path, f"parameter {name!r} is {got} where the model has {tuple(own[name].shape)}")
    try:
        history = TrainHistory.from_dict(state["history"])
    except (TypeError, KeyError, ValueError) as exc:
        raise _damaged(path, f"its 'history' entry is not a training history ({exc})") from exc
    net.load_state_dict(params)
    return history
