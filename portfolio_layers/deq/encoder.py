"""``DEQEncoder``: per-asset embeddings of a market-history window at the equilibrium of a mixing cell.

Architecture (for ``x`` of shape (batch, T, n, F)):

1. Temporal injection (per asset, shared weights): ``h_t = GELU(x_t W_in + b)`` for every day, then
   exponentially weighted averages of ``h`` over the window with K learnable half-lives (initialized at
   5, 20 and 60 days, the most recent day weighted most), concatenated and projected:
   ``u = [ewma_1(h), ..., ewma_K(h)] W_u + b_u`` of shape (batch, n, d). Any T >= 1 works.
2. Equilibrium cell, mixing across assets, with ``u`` injected at every iteration:
   ``f(z) = tanh(c * (a_0 z W_0' + a_1 A(u) z W_1' + a_2 mean_n(z) W_2') + u)``, where ``A(u)`` is the
   symmetric normalized similarity graph ``D^-1/2 exp(q q' / sqrt(d_k)) D^-1/2`` with ``q = u W_q``
   (spectral norm exactly 1), ``mean_n`` averages over assets, ``a = softmax(learned logits)`` and
   ``c = contraction < 1``. With ``norm="spectral"`` every ``||W_i||_2 <= 1``, so ``f`` is a
   ``c``-contraction in the Frobenius norm of each batch element: contractive by construction.
3. ``emb = LayerNorm(z*)``.

``forward`` returns ``(emb, info)``: :class:`DEQInfo` holds the solver diagnostics and, in training mode
with ``jacobian_samples > 0``, a Jacobian penalty to add to the loss.

Every step treats assets symmetrically, so the encoder is **permutation-equivariant across assets**:
permuting the asset axis of ``x`` permutes the rows of ``emb`` the same way (tested), and any n works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from portfolio_layers.deq.adjoint import Adjoint
from portfolio_layers.deq.implicit import DEFAULT_ADJOINT, fixed_point
from portfolio_layers.deq.solution import DEQSolution
from portfolio_layers.deq.solvers import Anderson, SolverLike, make_solver
from portfolio_layers.deq.stability import jacobian_penalty, normalize_linear
from portfolio_layers.errors import ConfigError, InputError, NonFiniteError, ShapeError

ENCODER_SOLVER = Anderson(max_iter=30)


class TemporalInjection(nn.Module):
    """Summarize the time axis per asset: ``x (batch, T, n, F) -> u (batch, n, d)`` (see module docstring)."""

    def __init__(self, n_features: int, d_model: int, halflives: Sequence[float] = (5.0, 20.0, 60.0)) -> None:
        super().__init__()
        if len(halflives) < 1 or min(halflives) <= 0:
            raise ConfigError(f"halflives must be a non-empty sequence of positive days, got {halflives}.")
        self.inp = nn.Linear(n_features, d_model)
        self.log_halflife = nn.Parameter(torch.log(torch.tensor([float(h) for h in halflives])))
        self.out = nn.Linear(len(halflives) * d_model, d_model)

    def pooling_weights(self, T: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Tensor of shape (K, T): EWMA weights over the window, each row summing to one."""
        lags = torch.arange(T - 1, -1, -1, dtype=dtype, device=device)  # 0 for the latest day
        rate = math.log(2.0) / self.log_halflife.exp().to(dtype)
        return torch.softmax(-rate[:, None] * lags[None, :], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        B, T, n, _ = x.shape
        h = nn.functional.gelu(self.inp(x))  # (B, T, n, d)
        w = self.pooling_weights(T, x.dtype, x.device)
        pooled = torch.einsum("kt,btnd->bnkd", w, h).reshape(B, n, -1)
        return self.out(pooled)

    def rolling(self, x: Tensor, T: int) -> Tensor:
        """``forward`` of every window of ``T`` consecutive rows of one series, each row's work done once.

        Parameters
        ----------
        x : Tensor of shape (P, n, F)
            Consecutive rows, ``P >= T``.
        T : int
            Window length.

        Returns
        -------
        Tensor of shape (P - T + 1, n, d)
            Element ``s`` equals ``forward(x[s : s + T][None])[0]`` (the windows share the per-row
            projection; the pooling is a convolution over rows).
        """
        P, n, _ = x.shape
        h = nn.functional.gelu(self.inp(x))  # (P, n, d)
        d = h.shape[-1]
        w = self.pooling_weights(T, x.dtype, x.device)  # (K, T)
        pooled = nn.functional.conv1d(h.permute(1, 2, 0).reshape(n * d, 1, P), w[:, None, :])
        pooled = pooled.reshape(n, d, len(w), P - T + 1).permute(3, 0, 2, 1).reshape(P - T + 1, n, -1)
        return self.out(pooled)


class MixingCell(nn.Module):
    """The equilibrium map ``f(z; u)`` mixing assets (module docstring); ``z, u`` of shape (batch, n, d)."""

    def __init__(
        self, d_model: int, *, d_key: int = 16, contraction: float = 0.9, norm: str | None = "spectral"
    ) -> None:
        super().__init__()
        if not 0.0 < contraction < 1.0:
            raise ConfigError(f"contraction must be in (0, 1), got {contraction}.")
        self.contraction = float(contraction)
        self.self_map = normalize_linear(nn.Linear(d_model, d_model, bias=False), norm)
        self.graph_map = normalize_linear(nn.Linear(d_model, d_model, bias=False), norm)
        self.mean_map = normalize_linear(nn.Linear(d_model, d_model, bias=False), norm)
        self.mix_logits = nn.Parameter(torch.zeros(3))
        self.query = nn.Linear(d_model, d_key)

    def graph(self, u: Tensor) -> Tensor:
        """Tensor of shape (batch, n, n): symmetric normalized similarity of the assets' injections."""
        q = self.query(u)
        s = q @ q.transpose(-1, -2) / math.sqrt(q.shape[-1])
        # D^-1/2 exp(s) D^-1/2 with D = diag(row sums), in log space: a row whose similarities are all far
        # below another row's would otherwise underflow to a zero sum (an inf gradient). Every entry is <= 1
        # because s_ij <= (s_ii + s_jj) / 2 <= (L_i + L_j) / 2.
        L = torch.logsumexp(s, dim=-1)
        return torch.exp(s - 0.5 * (L.unsqueeze(-1) + L.unsqueeze(-2)))

    def prepare(self, u: Tensor) -> dict[str, Tensor]:
        """Everything ``f`` needs that does not depend on ``z``, computed once per forward with autograd on.

        Precomputing matters: the forward iterations of ``fixed_point`` run under ``no_grad``, so a weight
        first materialized inside ``f`` (e.g. by ``parametrize.cached()``) would carry no gradient.
        """
        return {
            "u": u,
            "A": self.graph(u),
            "a": torch.softmax(self.mix_logits, 0) * self.contraction,
            "W0": self.self_map.weight,
            "W1": self.graph_map.weight,
            "W2": self.mean_map.weight,
        }

    @staticmethod
    def step(z: Tensor, p: dict[str, Tensor]) -> Tensor:
        """One application ``f(z)``; ``z`` of shape (batch, n, d), ``p`` from :meth:`prepare`."""
        a = p["a"]
        mixed = (
            a[0] * (z @ p["W0"].T)
            + a[1] * ((p["A"] @ z) @ p["W1"].T)
            + a[2] * (z.mean(dim=-2, keepdim=True) @ p["W2"].T).expand_as(z)
        )
        return torch.tanh(mixed + p["u"])

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """``f(z; u)`` for ``z, u`` of shape (batch, n, d) (recomputes the prepared tensors)."""
        return self.step(z, self.prepare(u))


@dataclass(frozen=True)
class DEQInfo:
    """What :class:`DEQEncoder` reports beside the embeddings.

    Attributes
    ----------
    solution : DEQSolution
        Status, iterations and residuals of the equilibrium, per batch element.
    jacobian_loss : Tensor of shape () or None
        Hutchinson estimate of ``||J_f(z*)||_F^2 / dim`` averaged over the batch, differentiable in the
        cell's parameters (training mode with ``jacobian_samples > 0`` only, else None). Add
        ``weight * jacobian_loss`` to the training loss to keep the equilibrium well conditioned.
    """

    solution: DEQSolution
    jacobian_loss: Tensor | None = None


class DEQEncoder(nn.Module):
    """Deep-equilibrium encoder of a market-history window into per-asset embeddings.

    Parameters
    ----------
    n_features : int
        F, features per asset and day (e.g. ``len(FeatureSet.names)``).
    d_model : int
        d, size of the embeddings.
    halflives : sequence of float
        Initial half-lives (days) of the EWMA pooling over the window.
    d_key : int
        Size of the similarity keys of the asset graph.
    contraction : float in (0, 1)
        Lipschitz bound of the cell when ``norm="spectral"``.
    norm : {"spectral", "weight", None}
        Normalization of the cell's linear maps (only "spectral" guarantees contraction).
    solver : solver instance or name
        Update and stopping rule of the equilibrium solve (default ``Anderson(max_iter=30)``), see
        :func:`~portfolio_layers.deq.fixed_point`.
    adjoint : Implicit, JFB or Unrolled
        How gradients pass through the equilibrium (default ``Implicit()``).
    damping : float in [0, 1)
        Damping of the map, see :func:`~portfolio_layers.deq.fixed_point`.
    jacobian_samples : int
        If > 0, ``DEQInfo.jacobian_loss`` carries a Hutchinson Jacobian penalty (training mode only).
    throw : bool
        Raise when the equilibrium is not reached (default False: the best iterate is used and the
        per-element status is in ``DEQInfo.solution``).

    Notes
    -----
    ``forward(x)`` takes ``x`` of shape (batch, T, n, F), finite (drop feature warm-up rows first) and of
    the dtype of the encoder's weights (float32 as built: call ``encoder.double()`` for float64 input; the
    input is not cast silently, which would hide a loss of precision), and returns ``(emb, info)`` with
    ``emb`` of shape (batch, n, d_model) and ``info`` a :class:`DEQInfo`. Permutation-equivariant across
    assets; any T and n.
    """

    def __init__(
        self,
        n_features: int,
        d_model: int,
        *,
        halflives: Sequence[float] = (5.0, 20.0, 60.0),
        d_key: int = 16,
        contraction: float = 0.9,
        norm: str | None = "spectral",
        solver: SolverLike = ENCODER_SOLVER,
        adjoint: Adjoint = DEFAULT_ADJOINT,
        damping: float = 0.0,
        jacobian_samples: int = 0,
        throw: bool = False,
    ) -> None:
        super().__init__()
        if n_features < 1 or d_model < 1:
            raise ConfigError(f"n_features and d_model must be >= 1, got {n_features} and {d_model}.")
        self.n_features, self.d_model = int(n_features), int(d_model)
        self.inject = TemporalInjection(n_features, d_model, halflives)
        self.cell = MixingCell(d_model, d_key=d_key, contraction=contraction, norm=norm)
        self.out_norm = nn.LayerNorm(d_model)
        self.solver, self.adjoint = make_solver(solver), adjoint
        self.damping, self.throw = float(damping), bool(throw)
        self.jacobian_samples = int(jacobian_samples)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputError(
                f"DEQEncoder expects x as a torch.Tensor of shape (batch, T, n, F={self.n_features}), got "
                f"{type(x).__name__}; convert it with torch.as_tensor(x, dtype=torch.float64)."
            )
        dtype = self.inject.inp.weight.dtype
        if x.dtype != dtype:
            raise InputError(
                f"DEQEncoder input x is {x.dtype} but the encoder's weights are {dtype}: call .double() (or "
                f".to(x.dtype)) on the encoder, or cast the input with x.to({dtype})."
            )
        if x.dim() != 4 or x.shape[-1] != self.n_features:
            raise ShapeError(
                f"DEQEncoder expects x of shape (batch, T, n, F={self.n_features}), got {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single window."
            )
        if min(x.shape[:3]) < 1:
            raise ShapeError(f"DEQEncoder got an empty window of shape {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise NonFiniteError(
                "DEQEncoder input holds NaN/inf: drop the feature warm-up rows (FeatureSet.warmup) first."
            )

    def forward(
        self, x: Tensor, *, solver: SolverLike | None = None, adjoint: Adjoint | None = None
    ) -> tuple[Tensor, DEQInfo]:
        """Embed ``x`` of shape (batch, T, n, F) into ``emb`` of shape (batch, n, d_model).

        ``solver`` and ``adjoint`` replace the encoder's own for this call.
        """
        self._check(x)
        return self.equilibrium(self.inject(x), solver=solver, adjoint=adjoint)

    def rolling(
        self, x: Tensor, T: int, *, solver: SolverLike | None = None, adjoint: Adjoint | None = None
    ) -> tuple[Tensor, DEQInfo]:
        """``forward`` of every window of ``T`` consecutive rows of ``x`` of shape (P, n, F).

        Returns ``emb`` of shape (P - T + 1, n, d_model), element ``s`` from rows ``s .. s + T - 1``: the
        same as ``forward`` of the stacked windows, with each row projected once
        (:meth:`TemporalInjection.rolling`), for models that embed every row of a long history.
        """
        if isinstance(x, Tensor) and x.dim() != 3:
            raise ShapeError(
                f"DEQEncoder.rolling expects the rows of one series, x of shape (P, n, F={self.n_features}), "
                f"got {tuple(x.shape)}; for a batch of windows call the encoder itself."
            )
        self._check(x[None] if isinstance(x, Tensor) else x)
        if not 1 <= T <= x.shape[0]:
            raise ShapeError(f"rolling windows of T = {T} rows need 1 <= T <= {x.shape[0]} (the rows of x).")
        return self.equilibrium(self.inject.rolling(x, T), solver=solver, adjoint=adjoint)

    def equilibrium(
        self, u: Tensor, *, solver: SolverLike | None = None, adjoint: Adjoint | None = None
    ) -> tuple[Tensor, DEQInfo]:
        """``LayerNorm(z*)`` at the fixed point of the cell with injection ``u`` of shape (batch, n, d)."""
        prepared = self.cell.prepare(u)  # capped weights computed once, with autograd on

        def f(z: Tensor) -> Tensor:
            return self.cell.step(z, prepared)

        z, sol = fixed_point(
            f,
            torch.zeros_like(u),
            solver=self.solver if solver is None else solver,
            adjoint=self.adjoint if adjoint is None else adjoint,
            damping=self.damping,
            throw=self.throw,
        )
        jac = None
        if self.jacobian_samples > 0 and self.training and torch.is_grad_enabled():
            jac = jacobian_penalty(f, z.detach(), samples=self.jacobian_samples)
        return self.out_norm(z), DEQInfo(sol, jac)
