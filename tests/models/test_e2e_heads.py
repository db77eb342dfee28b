from __future__ import annotations

import pytest
import torch

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.encoders import LSTMEncoder, MLPEncoder, make_encoder
from portfolio_layers.models.heads import ReturnHead, RiskHead, sample_covariance


def test_sample_covariance_matches_numpy():
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    for b in range(2):
        torch.testing.assert_close(sample_covariance(x)[b], torch.cov(x[b].T))


@pytest.mark.parametrize("blend", [True, False])
def test_risk_head_is_positive_definite_symmetric_and_differentiable(blend):
    torch.manual_seed(0)
    head = RiskHead(8, 3, blend=blend).double()
    emb = 3 * torch.randn(4, 6, 8, dtype=torch.float64)
    returns = 0.01 * torch.randn(4, 40, 6, dtype=torch.float64)
    cov = head(emb, sample_covariance(returns) * 252 if blend else None)
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert float(torch.linalg.eigvalsh(cov.detach()).min()) > 0
    cov.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_risk_head_blend_limits():
    head = RiskHead(4, 2, blend=True, blend_init=0.5).double()
    assert float(head.blend_weight.detach()) == pytest.approx(0.5)
    with pytest.raises(ShapeError, match="sample_cov"):
        head(torch.randn(1, 3, 4, dtype=torch.float64))
    with pytest.raises(ConfigError):
        RiskHead(4, 2, blend_init=1.0)


def test_heads_are_permutation_equivariant():
    torch.manual_seed(0)
    risk, ret = RiskHead(5, 2, blend=False).double(), ReturnHead(5).double()
    emb = torch.randn(2, 6, 5, dtype=torch.float64)
    perm = torch.randperm(6)
    torch.testing.assert_close(ret(emb[:, perm]), ret(emb)[:, perm])
    torch.testing.assert_close(risk(emb[:, perm]), risk(emb)[:, perm][:, :, perm])


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_baseline_encoders_shapes_equivariance_and_any_n(name):
    torch.manual_seed(0)
    enc = make_encoder(name, 3, 8).double()
    for n in (2, 7):
        x = torch.randn(2, 12, n, 3, dtype=torch.float64)
        emb, info = enc(x)
        assert emb.shape == (2, n, 8) and info is None
        perm = torch.randperm(n)
        torch.testing.assert_close(enc(x[:, :, perm])[0], emb[:, perm])
    with pytest.raises(ShapeError, match="F=3"):
        enc(torch.randn(2, 12, 4, 5, dtype=torch.float64))


def test_baselines_have_similar_size():
    sizes = [sum(p.numel() for p in E(4, 16).parameters()) for E in (MLPEncoder, LSTMEncoder)]
    assert max(sizes) / min(sizes) < 2.0


def test_unknown_encoder():
    with pytest.raises(ConfigError, match="unknown encoder"):
        make_encoder("transformer", 3, 8)
