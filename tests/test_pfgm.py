"""PFGM: the empirical field, the perturbation and prior laws, and the backward ODE and NLL on exact fields."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from pipeline.methods.base import EvalContext
from pipeline.methods.pfgm import (PFGM, PFGMConfig, empirical_field, exact_z_component, normalized_field)
from pipeline.metrics import w2_exact
from pipeline.nets.mlp import MLP
from pipeline.oracle import oracle_mixture


class ExactField(torch.nn.Module):
    """Stands in for a trained PFGM network: the normalized field of a set of charges at (x, z(t'))."""

    def __init__(self, method: PFGM, charges: torch.Tensor):
        super().__init__()
        self.method = method
        self.register_buffer("charges", charges.float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        low, high = math.log(self.method.config.z_min), math.log(self.method.config.z_max)
        z = torch.exp(t.float() * (high - low) + low)
        x = x.float() * torch.sqrt(z.pow(2) + 1)[:, None]  # undo PFGM.network_input
        return normalized_field(*empirical_field(x, z, self.charges), self.method.config.gamma)


def _closed_form_field(x, z, charges):
    """sum_j (x~ - y~_j)/||x~ - y~_j||^{d+1}: the field pointing away from the charges."""
    d = x.shape[1]
    diff = torch.cat([x[:, None, :] - charges[None], z[:, None, None].expand(-1, len(charges), 1)], dim=2)
    return (diff / diff.norm(dim=2, keepdim=True) ** (d + 1)).sum(1)


@pytest.mark.parametrize("d", [2, 5])
def test_empirical_field_is_the_normalized_coulomb_field(d):
    generator = torch.Generator().manual_seed(d)
    charges = torch.randn(6, d, generator=generator, dtype=torch.float64)
    x = 2 * torch.randn(50, d, generator=generator, dtype=torch.float64)
    z = torch.rand(50, generator=generator, dtype=torch.float64) + 0.05
    field_x, field_z = empirical_field(x, z, charges)
    estimate = torch.cat([field_x, field_z[:, None]], 1)
    exact = _closed_form_field(x, z, charges)
    # E^ = -E / sum_j ||x~ - y~_j||^{-(d+1)}: same line, opposite sense (toward the data)
    distances = torch.cat([x[:, None] - charges[None], z[:, None, None].expand(-1, 6, 1)], 2).norm(dim=2)
    torch.testing.assert_close(estimate, -exact / distances.pow(-(d + 1)).sum(1, keepdim=True))
    torch.testing.assert_close(field_z, -z)
    target = normalized_field(field_x, field_z, gamma=0.0)
    torch.testing.assert_close(target, -math.sqrt(d) * exact / exact.norm(dim=1, keepdim=True))


def test_empirical_field_does_not_underflow_in_image_dimension():
    """||x~ - y~||^{-(d+1)} underflows at d = 3072; ratios to the row minimum still single out the nearest charge."""
    generator = torch.Generator().manual_seed(0)
    charges = torch.randn(8, 3072, generator=generator)
    x = charges[3:4] + 0.3 * torch.randn(1, 3072, generator=generator)
    field_x, field_z = empirical_field(x, torch.tensor([0.5]), charges)
    assert torch.isfinite(field_x).all()
    torch.testing.assert_close(field_x, charges[3:4] - x)


def test_a_point_on_a_charge_at_zero_height_takes_that_charge():
    charges = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.5, 0.5]])
    field_x, field_z = empirical_field(charges[1:2].clone(), torch.zeros(1), charges)
    assert torch.isfinite(field_x).all() and torch.isfinite(field_z).all()
    torch.testing.assert_close(field_x, torch.zeros(1, 2))


def test_the_in_place_field_equals_the_differentiable_one():
    """Training targets are computed in place under no_grad; the oracle's divergence needs autograd."""
    generator = torch.Generator().manual_seed(2)
    charges = torch.randn(40, 2, generator=generator)
    x = 3 * torch.randn(30, 2, generator=generator)
    z = torch.rand(30, generator=generator) + 1e-3
    with torch.no_grad():
        in_place = empirical_field(x, z, charges)
    x_tracked = x.clone().requires_grad_(True)
    tracked = empirical_field(x_tracked, z, charges)
    for a, b in zip(in_place, tracked):
        torch.testing.assert_close(a, b.detach())
    (grad,) = torch.autograd.grad(tracked[0].sum(), x_tracked)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_exact_z_component_recovers_the_target():
    generator = torch.Generator().manual_seed(1)
    charges = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    x = 3 * torch.randn(200, 2, generator=generator, dtype=torch.float64)
    z = torch.exp(torch.empty(200, dtype=torch.float64).uniform_(-7, 3, generator=generator))
    for gamma in (0.1, 0.5, 5.0):
        target = normalized_field(*empirical_field(x, z, charges), gamma)
        torch.testing.assert_close(exact_z_component(target[:, :2], z, gamma), target[:, 2])


def _beta_ks(ratio_squared: torch.Tensor, d: int) -> float:
    """KS p-value of s = r^2/(r^2 + z^2) against Beta(d/2, 1/2), the radial law of the Cauchy kernel."""
    s = (ratio_squared / (1 + ratio_squared)).double().numpy()
    return stats.kstest(s, stats.beta(d / 2, 0.5).cdf).pvalue


@pytest.mark.parametrize("d", [2, 3])
def test_perturbation_given_z_is_the_cauchy_kernel(d):
    """||x - y|| / z = ||eps_x|| / |eps_z| whatever m is (S2 14.4), so x | y, z has the PFGM kernel."""
    method = PFGM(PFGMConfig(restrict_M=False), (d,))
    y = torch.zeros(20000, d)
    x, z = method.perturb(y, torch.Generator().manual_seed(0))
    assert _beta_ks(x.pow(2).sum(1) / z.pow(2), d) > 1e-3
    assert float(z.max()) > method.config.z_max  # the perturbations reach the prior's height


def test_prior_radius_follows_the_cauchy_law_up_to_clipping():
    method = PFGM(PFGMConfig(upper_norm=1e9), (2,))
    x = method.prior_sample(20000, torch.Generator().manual_seed(0), "cpu")
    assert _beta_ks(x.pow(2).sum(1) / method.config.z_max**2, 2) > 1e-3
    clipped = PFGM(PFGMConfig(upper_norm=100.0), (2,)).prior_sample(2000, torch.Generator().manual_seed(0), "cpu")
    assert float(clipped.norm(dim=1).max()) <= 100.0 + 1e-3


def test_loss_is_finite_and_uses_a_reference_batch():
    torch.manual_seed(0)
    method = PFGM(PFGMConfig(reference_batch=256), (2,))
    train = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    assert method.training_data(train) is train
    net = MLP(2, hidden=16, depth=1, time_embedding=8, extra_outputs=method.extra_outputs)
    loss = method.loss(net, train[:64], torch.Generator().manual_seed(2))
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    charges = method.reference_charges(train[:64], torch.Generator().manual_seed(3))
    assert charges.shape == (256, 2) and torch.equal(charges[:64], train[:64])


@pytest.mark.parametrize("sampler, budget", [("ode_rk45", None), ("ode_euler", 200)])
def test_backward_ode_on_the_exact_field_lands_on_the_charges(sampler, budget):
    charges = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.2, -1.0]])
    method = PFGM(PFGMConfig(), (2,))
    result = method.sample(ExactField(method, charges), sampler, budget, 600, torch.Generator().manual_seed(0))
    distance, nearest = torch.cdist(result.x, charges).min(1)
    # the z_min slice is the Cauchy kernel of width z_min around each charge: P(r > R) = z_min / sqrt(R^2 + z_min^2)
    assert float((distance < 0.02).float().mean()) > 0.9
    assert float(distance.median()) < 0.005
    counts = torch.bincount(nearest, minlength=3).float() / 600
    assert float((counts - 1 / 3).abs().max()) < 0.07  # each charge receives its share of the flux
    assert result.nfe == budget if budget else result.nfe > 10


def test_exact_field_sampler_reproduces_the_oracle_mixture():
    """The exact field of charges drawn from the mixture carries the prior onto the charges, each receiving an
    equal share of the flux, so the sampler is as close to the charges as resampling them is."""
    charges = oracle_mixture().sample(500, torch.Generator().manual_seed(1)).float()
    method = PFGM(PFGMConfig(), (2,))
    samples = method.sample(ExactField(method, charges), "ode_rk45", None, 2000, torch.Generator().manual_seed(2)).x
    floor = sum(w2_exact(charges[torch.randint(0, 500, (2000,), generator=torch.Generator().manual_seed(k))].numpy(),
                         charges.numpy()) for k in range(5)) / 5
    assert w2_exact(samples.numpy(), charges.numpy()) < 1.5 * floor


def test_likelihood_matches_the_exact_slice_density():
    """On a z-slice the density of the charges' field-line flow is the Cauchy-smoothed data (methods.md 2.9)."""
    charges = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -0.5]])
    charges = charges - charges.mean(0)
    method = PFGM(PFGMConfig(z_min=0.05), (2,))
    x = torch.tensor([[0.0, 0.0], [1.0, 0.4], [-2.0, 1.0], [0.5, -0.5]], dtype=torch.float64)
    record, = method.log_likelihood(ExactField(method, charges), x, torch.Generator(), EvalContext(1e-6, 1e-6))
    z = method.config.z_min
    kernel = z / (2 * math.pi) / (torch.cdist(x, charges.double()).pow(2) + z**2).pow(1.5)
    torch.testing.assert_close(record.log_prob, kernel.mean(1).log(), rtol=0.01, atol=0.0)
    assert record.estimator == "ode_exact"


def test_restrict_m_restricts_the_draws_with_small_absolute_eps_z():
    """The code restricts m where |eps_z| < 0.005 (forward_pz of the released code): with sigma = 0.01 that
    is 2 Phi(0.5) - 1 = 38% of the draws, not the 69% of a test on the signed draw. Restriction redraws m
    only, so with the same generator z changes exactly on the restricted draws."""
    n = 40000
    y = torch.zeros(n, 2)
    _, z_free = PFGM(PFGMConfig(restrict_M=False), (2,)).perturb(y, torch.Generator().manual_seed(0))
    _, z_restricted = PFGM(PFGMConfig(restrict_M=True), (2,)).perturb(y, torch.Generator().manual_seed(0))
    fraction = float((z_free != z_restricted).float().mean())
    expected = 2 * stats.norm.cdf(0.5) - 1
    assert abs(fraction - expected) < 3 * math.sqrt(expected * (1 - expected) / n), (fraction, expected)
