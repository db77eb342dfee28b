"""Training loop of the end-to-end model: Adam, gradient clipping, early stopping.

The loop is a function, :func:`train`, of a network, a :class:`~portfolio_layers.models.samples.WindowData`
block and a :class:`TrainConfig`. The last ``val_fraction`` of the block's decision rows is the validation
split (purged: training samples whose horizon reaches into it are dropped); the state with the best
validation loss is kept. Everything random comes from ``TrainConfig.seed`` through a local generator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from portfolio_layers.deq import Status as DEQStatus
from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.models.checks import MAX_SEED, check_fields, number
from portfolio_layers.models.losses import LOSSES, PERIODS_PER_YEAR, mse_loss, portfolio_returns, returns_loss
from portfolio_layers.models.samples import Batch, WindowData, drift_weights
from portfolio_layers.qp import Status as QPStatus

logger = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "TrainConfig", "TrainHistory", "train"]

OBJECTIVES = (*LOSSES, "mse")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`.

    Attributes
    ----------
    loss : {"sharpe", "sortino", "utility", "mse"}
        Backtest loss on net returns of the next ``H`` rows, or ``"mse"`` for the two-stage
        predict-then-optimize model (MSE of the return forecast plus MSE of the covariance forecast against
        the realised second moments; the QP is not used in training).
    epochs : int
        Maximum passes over the training samples.
    batch_size : int
    lr : float
        Adam learning rate.
    weight_decay : float
    clip_norm : float
        Gradient norm clipping threshold.
    val_fraction : float
        Share of the decision rows (the latest ones) held out for early stopping.
    patience : int
        Epochs without a validation improvement before stopping.
    stride : int
        Keep every ``stride``-th decision row as a sample.
    cost_bps : float
        Trading cost of the loss, against the model's own previous weights drifted to the decision row.
    chain : int
        ``K``, consecutive rebalances per sample with a cost (or a turnover limit): decision ``j`` sees
        decision ``j-1`` drifted to its row, with gradient through it, so that the loss sees the turnover
        the backtest charges; the chain is started by one more decision computed without gradient (truncated
        backpropagation through the rebalances). ``K = 1`` is a single decision after that starting one.
    risk_aversion : float
        Risk aversion of the ``"utility"`` loss.
    aux_mse : float
        Weight of an auxiliary MSE of the return head (0 disables it).
    jacobian_weight : float
        Weight of the DEQ's Jacobian regularizer when the encoder returns one.
    equal_weight_competes : bool
        For a network with a prior at equal weight (a decision layer with a gate ``tau``): equal weight (the
        initial parameters with ``tau = 0``) competes on validation with the initial parameters and every
        epoch, at every fit. Without it equal weight competes only where training starts from it (a first
        fit); a warm-started re-fit starts from the previous fold's model.
    seed : int
        In ``[0, 2**32 - 1]``.

    Every numeric field is checked at construction (an integer or a finite number in its range, e.g.
    ``lr > 0``, ``clip_norm >= 0`` with 0 for no clipping): a bad value raises :class:`ConfigError` here.
    """

    loss: str = "sharpe"
    epochs: int = number(20, integer=True, low=0, low_open=True)
    batch_size: int = number(32, integer=True, low=0, low_open=True)
    lr: float = number(3e-3, low=0, low_open=True)
    weight_decay: float = number(0.0, low=0)
    clip_norm: float = number(1.0, low=0)
    val_fraction: float = number(0.2, low=0, high=1, high_open=True)
    patience: int = number(4, integer=True, low=0)
    stride: int = number(1, integer=True, low=0, low_open=True)
    cost_bps: float = number(0.0, low=0)
    chain: int = number(1, integer=True, low=0, low_open=True)
    risk_aversion: float = number(5.0, low=0)
    aux_mse: float = number(0.0, low=0)
    jacobian_weight: float = number(0.0, low=0)
    equal_weight_competes: bool = False
    seed: int = number(0, integer=True, low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        if self.loss not in OBJECTIVES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(OBJECTIVES)}")
        if not isinstance(self.equal_weight_competes, bool):
            raise ConfigError(
                f"TrainConfig.equal_weight_competes must be true or false, got {self.equal_weight_competes!r}"
            )
        check_fields(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainHistory:
    """Curves and diagnostics of one :func:`train` call (one entry per epoch).

    Attributes
    ----------
    train_loss, val_loss : tuple of float
        Mean training loss and validation loss (NaN without a validation split).
    diagnostics : tuple of dict
        Per epoch: ``deq_iterations`` (mean), ``deq_residual`` (max relative residual), ``deq_failed``
        (elements not converged), ``qp_iterations`` (mean), ``qp_failed`` (solves not optimal), ``grad_norm``,
        ``skipped_steps`` (steps not applied: a non-finite loss or gradient, or a failed QP or DEQ solve).
    best_epoch : int
        Epoch whose state was kept (index into the curves); ``-1`` when no epoch beat the validation loss
        of the initial parameters, which are then kept; ``-2`` when equal weight was kept
        (``TrainConfig.equal_weight_competes``).
    stopped_early : bool
    seconds : float
    n_train, n_val : int
        Number of training and validation samples.
    initial_val_loss : float
        Validation loss of the parameters before training (NaN without a validation split).
    decision : dict
        The kept parameters of the decision layer, when the network has one: ``tau`` (gate of the prior at
        equal weight), ``cost_multiplier`` and ``risk_aversion``.
    """

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    diagnostics: tuple[dict, ...] = field(default_factory=tuple)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    n_train: int = 0
    n_val: int = 0
    initial_val_loss: float = float("nan")
    decision: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain Python containers (for checkpoints and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainHistory:
        values = dict(values)
        for key in ("train_loss", "val_loss", "diagnostics"):
            values[key] = tuple(values[key])
        return cls(**values)


def split_rows(rows: np.ndarray, val_fraction: float, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Split decision rows into training and (later) validation rows, purging the horizon overlap.

    Parameters
    ----------
    rows : ndarray of shape (s,)
        Sorted decision rows.
    val_fraction : float
        Share of the rows held out at the end.
    horizon : int
        ``H``: training rows ``t`` with ``t + H >= first validation row`` are dropped.
    """
    n_val = int(math.floor(len(rows) * val_fraction))
    if n_val == 0:
        return rows, rows[:0]
    val = rows[-n_val:]
    train = rows[: len(rows) - n_val]
    return train[train + horizon < val[0]], val


def _diagnostics(out, grad_norm: float) -> dict:
    diag = {"grad_norm": grad_norm}
    deq, qp = getattr(out, "deq", None), getattr(out, "qp", None)
    if deq is not None:
        sol = deq.solution
        diag["deq_iterations"] = float(sol.iterations.float().mean())
        diag["deq_residual"] = float(sol.rel_residual.max())
        diag["deq_failed"] = int(DEQStatus.failed(sol.status).sum())
    if qp is not None:
        diag["qp_iterations"] = float(qp.iterations.float().mean())
        diag["qp_failed"] = int(QPStatus.failed(qp.status).sum())
    return diag


def batch_loss(
    net: nn.Module, batch: Batch, config: TrainConfig, *, periods_per_year: float = PERIODS_PER_YEAR
) -> tuple[Tensor, object]:
    """Loss of ``net`` on one batch, and the network output of the last decision (for diagnostics).

    ``periods_per_year`` (rows per year of the data) annualises the loss, as in
    :func:`~portfolio_layers.models.losses.portfolio_loss`.

    With a cost (``cost_bps > 0``) or a network that uses previous weights, each sample is a chain of
    decisions (:class:`~portfolio_layers.models.samples.Batch`): ``d_0`` is decided without previous weights
    and without gradient; each of ``d_1 .. d_K`` sees the decision before it drifted to its row (with
    gradient), is
    charged the cost of its trade and scored on its ``H`` rows, and the loss is taken over the ``K H`` net
    returns together, as the engine would compute them. Without a cost the sample is its last decision alone.
    """
    if config.loss == "mse":
        out = net.predict(batch.x, batch.sample_cov)
        realised = (
            torch.einsum("bhi,bhj->bij", batch.future, batch.future)
            / batch.future.shape[1]
            * periods_per_year
        )
        loss = mse_loss(out.mu, batch.future, periods_per_year=periods_per_year)
        loss = loss + (out.cov - realised).square().mean()
        return loss, out
    if batch.chain_x is not None and chained(net, config):
        returns, mu, future, out = chain_returns(net, batch, config.cost_bps)
    else:
        out = net(batch.x, batch.sample_cov)
        returns = portfolio_returns(out.weights, batch.future, None, config.cost_bps)
        mu, future = out.mu, batch.future
    loss = returns_loss(
        config.loss, returns, risk_aversion=config.risk_aversion, periods_per_year=periods_per_year
    )
    if config.aux_mse:
        loss = loss + config.aux_mse * mse_loss(mu, future, periods_per_year=periods_per_year)
    jacobian = getattr(getattr(out, "deq", None), "jacobian_loss", None)
    if config.jacobian_weight and jacobian is not None:
        loss = loss + config.jacobian_weight * jacobian
    return loss, out


def chained(net: nn.Module, config: TrainConfig) -> bool:
    """Whether the samples are scored as chains of decisions: a backtest loss with a cost, or a network that
    uses previous weights."""
    return config.loss != "mse" and (config.cost_bps > 0 or bool(getattr(net, "needs_previous", False)))


def chain_returns(net: nn.Module, batch: Batch, cost_bps: float) -> tuple[Tensor, Tensor, Tensor, object]:
    """Net returns of a chain of consecutive decisions, each seeing the previous one drifted (with gradient).

    Parameters
    ----------
    net : nn.Module
        ``net(x, cov, previous)``; with ``predict`` and ``decide`` (as :class:`E2ENet`) the encoder runs once
        over the whole chain.
    batch : Batch
        With ``chain_x (batch, K+1, T, n, F)``, ``chain_cov``, ``chain_future (batch, K, H, n)``, ``drift``.
    cost_bps : float
        Cost of each trade, on the first row after it.

    Returns
    -------
    returns : Tensor of shape (batch, K * H)
        Net returns of decisions ``d_1 .. d_K`` one after the other.
    mu : Tensor of shape (batch * K, n)
        Return forecasts of ``d_1 .. d_K``.
    future : Tensor of shape (batch * K, H, n)
        Their realised returns.
    out : NetOutput
        Output of the last decision (its ``deq`` is that of the whole chain when the encoder ran once).
    """
    B, K1 = batch.chain_x.shape[:2]
    K = K1 - 1
    flat = batch.chain_x.reshape(B * K1, *batch.chain_x.shape[2:])
    covs = batch.chain_cov.reshape(B * K1, *batch.chain_cov.shape[2:])
    shared = hasattr(net, "decide") and hasattr(net, "predict")
    if shared:
        pred = net.predict(flat, covs)
        steps = [
            dataclasses.replace(
                pred,
                mu=pred.mu.reshape(B, K1, -1)[:, j],
                cov=pred.cov.reshape(B, K1, *pred.cov.shape[1:])[:, j],
            )
            for j in range(K1)
        ]

        def decide(j: int, previous: Tensor | None) -> object:
            return net.decide(steps[j], previous)

    else:

        def decide(j: int, previous: Tensor | None) -> object:
            return net(batch.chain_x[:, j], batch.chain_cov[:, j], previous)

    with torch.no_grad():
        if shared:
            first = net.decide(
                dataclasses.replace(steps[0], mu=steps[0].mu.detach(), cov=steps[0].cov.detach()), None
            ).weights
        else:
            first = decide(0, None).weights
    previous = drift_weights(first, batch.drift[:, 0])
    returns, mus = [], []
    for j in range(1, K1):
        out = decide(j, previous)
        returns.append(portfolio_returns(out.weights, batch.chain_future[:, j - 1], previous, cost_bps))
        mus.append(out.mu)
        if j < K:
            previous = drift_weights(out.weights, batch.drift[:, j])
    if shared:
        out = dataclasses.replace(out, deq=pred.deq)
    mu = torch.stack(mus, 1).reshape(B * K, -1)
    future = batch.chain_future.reshape(B * K, *batch.chain_future.shape[2:])
    return torch.cat(returns, 1), mu, future, out


def _evaluate(net: nn.Module, data: WindowData, rows: np.ndarray, config: TrainConfig) -> float:
    if len(rows) == 0:
        return float("nan")
    with torch.no_grad():
        loss, _ = batch_loss(net, data.batch(rows), config, periods_per_year=data.periods_per_year)
    return float(loss)


def train(
    net: nn.Module, data: WindowData, config: TrainConfig, *, progress: bool = False, desc: str = "train"
) -> TrainHistory:
    """Fit ``net`` on the decision samples of ``data``; keeps the state with the best validation loss.

    Parameters
    ----------
    net : nn.Module
        ``net(x, sample_cov, previous) -> out`` with ``out.weights (batch, n)`` and ``out.mu (batch, n)``,
        and ``net.predict(x, sample_cov) -> out`` with ``out.mu`` and ``out.cov`` (see
        :class:`~portfolio_layers.models.model.E2ENet`).
    data : WindowData
        One block of history; samples never leave it. Its ``periods_per_year`` annualises the losses.
    config : TrainConfig
    progress : bool
        Show a tqdm bar (stderr) with the losses and the DEQ/QP diagnostics.
    desc : str
        Label of the bar.

    Returns
    -------
    TrainHistory
    """
    start = time.perf_counter()
    if data.rebalance and chained(net, config) and data.chain != config.chain:
        raise ConfigError(
            f"the samples hold chains of {data.chain} decisions but TrainConfig.chain is {config.chain}; "
            "build "
            f"WindowData with chain={config.chain}"
        )
    rows = data.decision_rows()[:: config.stride]
    # a chained sample's loss scores the rows of its whole chain: the purge covers the chain's reach too
    reach = data.reach() if data.rebalance and chained(net, config) else 0
    train_rows, val_rows = split_rows(rows, config.val_fraction, data.horizon + reach)
    if len(train_rows) < 2:
        raise DataError(
            f"only {len(train_rows)} training samples in a block of {data.n_rows} rows (warm-up "
            f"{data.warmup}, window {data.window}, covariance window {data.cov_window}, horizon "
            f"{data.horizon}); use a longer training window or smaller windows"
        )
    generator = torch.Generator().manual_seed(config.seed)
    devices = sorted({p.device.index or 0 for p in net.parameters() if p.device.type == "cuda"})
    # Anything inside that draws from torch's global generator (the DEQ's Hutchinson Jacobian penalty) is
    # seeded by config.seed, without touching the caller's random state.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        history = _train_loop(net, data, config, train_rows, val_rows, generator, progress, desc, start)
    skipped = sum(d.get("skipped_steps", 0) for d in history.diagnostics)
    if skipped:
        logger.warning(
            "%s: %d optimizer steps skipped (non-finite loss or gradient, or failed QP/DEQ solves); see the "
            "diagnostics",
            desc,
            skipped,
        )
    return history


def _train_loop(
    net: nn.Module,
    data: WindowData,
    config: TrainConfig,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    generator: torch.Generator,
    progress: bool,
    desc: str,
    start: float,
) -> TrainHistory:
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_curve: list[float] = []
    val_curve: list[float] = []
    diagnostics: list[dict] = []
    net.eval()
    initial_val = _evaluate(net, data, val_rows, config)
    # With a validation split the initial parameters compete too: training never makes the kept model worse
    # on validation than where it started (for a warm-started re-fit: the previous fold's model). A
    # non-finite starting loss competes as +inf, so that any finite epoch replaces it.
    best = (initial_val if len(val_rows) and math.isfinite(initial_val) else math.inf, -1, _copy_state(net))
    equal = _equal_weight_state(net) if config.equal_weight_competes and len(val_rows) else None
    if equal is not None:
        net.load_state_dict(equal)
        equal_val = _evaluate(net, data, val_rows, config)
        net.load_state_dict(best[2])
        if equal_val < best[0]:
            best = (equal_val, -2, equal)
    stopped = False
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        net.train()
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        losses, epoch_diag = [], []
        for i in range(0, len(order), config.batch_size):
            batch = data.batch(np.sort(order[i : i + config.batch_size]))
            loss, out = batch_loss(net, batch, config, periods_per_year=data.periods_per_year)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(
                net.parameters(), config.clip_norm if config.clip_norm else math.inf
            )
            diag = _diagnostics(out, float(norm))
            # A non-finite loss or gradient (an overflow) would turn every parameter into NaN through Adam,
            # and the implicit gradients of a QP or DEQ solve that failed are taken at a point that is not a
            # solution: such a step is skipped and counted instead.
            finite = bool(torch.isfinite(loss.detach()) and torch.isfinite(norm))
            solved = not (diag.get("qp_failed", 0) or diag.get("deq_failed", 0))
            diag["skipped_steps"] = int(not (finite and solved))
            if not diag["skipped_steps"]:
                optimizer.step()
                project = getattr(net, "project_", None)
                if project is not None:  # e.g. the decision layer's gate tau >= 0
                    project()
                losses.append(float(loss.detach()))
            epoch_diag.append(diag)
        net.eval()
        val = _evaluate(net, data, val_rows, config)
        train_curve.append(float(np.mean(losses)) if losses else float("nan"))
        val_curve.append(val)
        diagnostics.append(_merge(epoch_diag))
        bar.set_postfix(_postfix(train_curve[-1], val, diagnostics[-1]))
        score = val if len(val_rows) else train_curve[-1]
        if score < best[0]:
            best = (score, epoch, _copy_state(net))
        elif epoch - best[1] >= config.patience:
            stopped = True
            break
    bar.close()
    net.load_state_dict(best[2])
    return TrainHistory(
        tuple(train_curve),
        tuple(val_curve),
        tuple(diagnostics),
        best_epoch=best[1],
        stopped_early=stopped,
        seconds=time.perf_counter() - start,
        n_train=len(train_rows),
        n_val=len(val_rows),
        initial_val_loss=initial_val,
        decision=_decision_parameters(net),
    )


def _decision_parameters(net: nn.Module) -> dict:
    """``tau``, ``cost_multiplier`` and ``risk_aversion`` of a network with a decision layer (else empty)."""
    layer, out = getattr(net, "qp", None), {}
    tau, kappa = getattr(layer, "tau", None), getattr(layer, "kappa", None)
    if tau is not None:
        out["tau"] = float(tau.detach())
    if kappa is not None:
        out["cost_multiplier"] = float(kappa.detach() / layer.cost)
    if isinstance(getattr(net, "risk_aversion", None), Tensor):
        out["risk_aversion"] = float(net.risk_aversion.detach())
    return out


def _equal_weight_state(net: nn.Module) -> dict | None:
    """A copy of ``net``'s state with the gate of its prior at equal weight set to 0 (the network then holds
    equal weight), or ``None`` when it has no such gate or the gate is already 0."""
    gate = getattr(getattr(net, "qp", None), "prior_gate", None)
    if not isinstance(gate, Tensor) or not bool((gate > 0).any()):
        return None
    name = next(k for k, p in net.named_parameters() if p is gate)
    state = _copy_state(net)
    state[name] = torch.zeros_like(state[name])
    return state


def _copy_state(net: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _merge(per_step: list[dict]) -> dict:
    merged: dict = {}
    for key in per_step[0]:
        values = [d[key] for d in per_step if key in d]
        if key.endswith("failed") or key == "skipped_steps":
            merged[key] = int(sum(values))
        elif key == "deq_residual":
            merged[key] = float(max(values))
        else:
            merged[key] = float(np.mean(values))
    return merged


def _postfix(train_loss: float, val_loss: float, diag: dict) -> dict:
    shown = {"loss": f"{train_loss:.3f}", "val": f"{val_loss:.3f}"}
    if "deq_iterations" in diag:
        shown["deq_it"] = f"{diag['deq_iterations']:.1f}"
        shown["deq_fail"] = diag["deq_failed"]
    if "qp_iterations" in diag:
        shown["qp_it"] = f"{diag['qp_iterations']:.1f}"
        shown["qp_fail"] = diag["qp_failed"]
    return shown
