"""OT flow matching: the minibatch coupling is the exact optimal assignment; the regression is flow matching's."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.methods.flow_matching import FlowMatching, FlowMatchingConfig
from pipeline.methods import ot_flow_matching
from pipeline.methods.flows import coupled_regression_loss
from pipeline.methods.ot_flow_matching import (OTFlowMatching, OTFlowMatchingConfig,
                                               ot_permutation)
from pipeline.nets.mlp import MLP


def _cost(noise: torch.Tensor, data: torch.Tensor, perm) -> float:
    return float((noise[list(perm)] - data).pow(2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_permutation_is_the_cheapest_assignment(seed):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(5, 2, generator=generator)
    data = torch.randn(5, 2, generator=generator) * 2 + 1
    perm = ot_permutation(noise, data)
    assert sorted(perm.tolist()) == list(range(5))
    brute_force = min(_cost(noise, data, p) for p in itertools.permutations(range(5)))
    assert _cost(noise, data, perm.tolist()) == pytest.approx(brute_force, rel=1e-9)


def test_ot_permutation_rejects_unequal_batches():
    with pytest.raises(ValueError, match="equal batch sizes"):
        ot_permutation(torch.zeros(4, 2), torch.zeros(5, 2))


def test_coupled_regression_is_flow_matchings_loss():
    """With the same time and noise draws, the regression on given pairs is FlowMatching.loss."""
    torch.manual_seed(0)
    config = FlowMatchingConfig(sigma_min=0.1)
    method = FlowMatching(config, (2,))
    net = MLP(2, hidden=16, depth=1, time_embedding=8)
    batch = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    expected = method.loss(net, batch, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    torch.rand(64, generator=replay)  # FlowMatching draws the times first, then the noise
    noise = torch.randn(batch.shape, generator=replay)
    got = coupled_regression_loss(method, net, batch, noise, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)


def test_ot_loss_is_finite_and_pairs_closer_than_independent_noise():
    torch.manual_seed(0)
    method = OTFlowMatching(OTFlowMatchingConfig(), (2,))
    net = MLP(2, hidden=16, depth=1, time_embedding=8)
    batch = 2.0 * torch.randn(128, 2, generator=torch.Generator().manual_seed(3))
    loss = method.loss(net, batch, torch.Generator().manual_seed(4))
    assert loss.shape == (128,) and torch.isfinite(loss).all()
    noise = torch.randn(batch.shape, generator=torch.Generator().manual_seed(5))
    paired = noise[ot_permutation(noise, batch)]
    assert (paired - batch).pow(2).sum() < 0.5 * (noise - batch).pow(2).sum()


def test_ot_batch_couples_each_minibatch_by_its_own_plan(monkeypatch):
    """ot_batch = 32 on a 128-batch: four exact plans, each between a data chunk and its own noise chunk."""
    seen = {}

    def capture(method, net, x_data, noise, generator):
        seen["noise"] = noise
        return noise.pow(2).sum(1)

    monkeypatch.setattr(ot_flow_matching, "coupled_regression_loss", capture)
    method = OTFlowMatching(OTFlowMatchingConfig(ot_batch=32), (2,))
    batch = 2.0 * torch.randn(128, 2, generator=torch.Generator().manual_seed(3))
    method.loss(None, batch, torch.Generator().manual_seed(4))
    raw = torch.randn(batch.shape, generator=torch.Generator().manual_seed(4))  # the loss's first draw
    for k in range(4):
        chunk, data = raw[32 * k:32 * (k + 1)], batch[32 * k:32 * (k + 1)]
        torch.testing.assert_close(seen["noise"][32 * k:32 * (k + 1)], chunk[ot_permutation(chunk, data)])
