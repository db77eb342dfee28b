"""Market-history encoders: the DEQ (default) and two explicit baselines of similar size for ablations.

Every encoder maps a window ``x`` of shape ``(batch, T, n, F)`` (T rows, n assets, F features per asset
and row) to per-asset embeddings ``(batch, n, d)`` and returns ``(emb, info)``; ``info`` is the
:class:`~portfolio_layers.deq.DEQInfo` of the equilibrium for the DEQ and ``None`` for the baselines.
All of them accept any T and n and are permutation-equivariant across assets: the per-asset maps share
weights and assets exchange information only through a mean over assets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from portfolio_layers.errors import ConfigError, ShapeError

__all__ = ["ENCODERS", "LSTMEncoder", "MLPEncoder", "make_encoder"]

ENCODERS = ("deq", "mlp", "lstm")


def _check_window(x: Tensor, n_features: int) -> None:
    if x.dim() != 4 or x.shape[-1] != n_features:
        raise ShapeError(f"expected a window of shape (batch, T, n, F={n_features}), got {tuple(x.shape)}")


class _AssetMixing(nn.Module):
    """One residual block that lets each asset see the cross-sectional mean: ``h + tanh(W [h, mean_n h])``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * d_model, d_model)

    def forward(self, h: Tensor) -> Tensor:
        market = h.mean(dim=-2, keepdim=True).expand_as(h)
        return h + self.linear(torch.cat([h, market], dim=-1)).tanh()


class MLPEncoder(nn.Module):
    """Per-(row, asset) MLP, mean and last-row pooling over time, then one cross-asset mixing block.

    Parameters
    ----------
    n_features : int
        Features per asset and row ``F``.
    d_model : int
        Embedding size ``d``.
    hidden : int, optional
        Hidden width (default ``3 * d_model // 2``: about the DEQ encoder's parameter count).
    """

    def __init__(self, n_features: int, d_model: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 3 * d_model // 2
        self.n_features = n_features
        self.step = nn.Sequential(
            nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.project = nn.Linear(2 * hidden, d_model)
        self.mixing = _AssetMixing(d_model)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        """Embeddings of a window.

        Parameters
        ----------
        x : Tensor of shape (batch, T, n, F)

        Returns
        -------
        emb : Tensor of shape (batch, n, d)
        info : None
        """
        _check_window(x, self.n_features)
        h = self.step(x)  # (batch, T, n, hidden)
        pooled = torch.cat([h.mean(dim=1), h[:, -1]], dim=-1)  # (batch, n, 2 hidden)
        return self.mixing(self.project(pooled).tanh()), None


class LSTMEncoder(nn.Module):
    """One LSTM over time per asset (shared weights), last hidden state projected, then cross-asset mixing.

    Parameters
    ----------
    n_features : int
        Features per asset and row ``F``.
    d_model : int
        Embedding size ``d``.
    hidden : int, optional
        LSTM state size (default ``d_model``).
    """

    def __init__(self, n_features: int, d_model: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.n_features = n_features
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True)
        self.project = nn.Linear(hidden, d_model)
        self.mixing = _AssetMixing(d_model)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        """Embeddings of a window.

        Parameters
        ----------
        x : Tensor of shape (batch, T, n, F)

        Returns
        -------
        emb : Tensor of shape (batch, n, d)
        info : None
        """
        _check_window(x, self.n_features)
        batch, T, n, F = x.shape
        sequences = x.permute(0, 2, 1, 3).reshape(batch * n, T, F)
        _, (last, _) = self.lstm(sequences)  # last: (1, batch * n, hidden)
        h = self.project(last[0]).tanh().reshape(batch, n, -1)
        return self.mixing(h), None


def make_encoder(name: str, n_features: int, d_model: int, **options: object) -> nn.Module:
    """Build an encoder by name.

    Parameters
    ----------
    name : {"deq", "mlp", "lstm"}
        ``"deq"`` is :class:`portfolio_layers.deq.DEQEncoder`; the others are the explicit baselines.
    n_features : int
        Features per asset and row ``F``.
    d_model : int
        Embedding size ``d``.
    **options
        Keyword arguments of the encoder's constructor (unknown ones raise ``TypeError`` there).

    Returns
    -------
    nn.Module
        ``forward(x (batch, T, n, F)) -> (emb (batch, n, d), info)``.
    """
    if name == "deq":
        from portfolio_layers.deq import DEQEncoder

        return DEQEncoder(n_features, d_model, **options)
    if name == "mlp":
        return MLPEncoder(n_features, d_model, **options)
    if name == "lstm":
        return LSTMEncoder(n_features, d_model, **options)
    raise ConfigError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
