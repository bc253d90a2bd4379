"""Analytic-DPM (Bao et al. 2022): the optimal variance, its table, samplers and bound, against the oracle."""

import io
import math

import pytest
import torch

from pipeline.schema import MLPSettings, NetworkSection
from pipeline.methods.analytic_dpm import (mean_square_eps, optimal_variance, x0_variance, x0_variance_bound)
from pipeline.methods.base import EvalContext
from pipeline.methods.ddpm import DDPM, DDPMConfig
from pipeline.metrics import w2_exact
from pipeline.nets import build_network


@pytest.fixture(scope="module")
def oracle_analytic(mixture):
    """DDPM with the exact eps-network and its Analytic-DPM table from 1000 mixture draws (2000 coordinates)."""
    method = DDPM(DDPMConfig(budgets=[1000, 100, 10], analytic_coordinates=2000), (2,))
    net = mixture.network(method.path, method.prediction)
    generator = torch.Generator().manual_seed(11)
    method.after_training(net, mixture.sample(5000, generator), generator)
    return method, net


def test_the_gamma_form_is_the_papers_form():
    """sigma*^2 = lambda^2 + (sqrt(bbar_r/alpha) - sqrt(bbar_s - lambda^2))^2 (1 - bbar_r Gamma_r), alpha = ab_r/ab_s."""
    ab_r, ab_s, mean_square = 0.3, 0.5, 0.6
    for lambda_sq in (0.0, 0.1, (1 - ab_s) * (1 - ab_r / ab_s) / (1 - ab_r)):
        paper = lambda_sq + (math.sqrt((1 - ab_r) * ab_s / ab_r) - math.sqrt(1 - ab_s - lambda_sq)) ** 2 \
            * (1 - mean_square)
        assert optimal_variance(ab_r, ab_s, lambda_sq, mean_square, bound=1e9) == pytest.approx(paper, rel=1e-12)


def test_clipping_keeps_the_x0_variance_in_its_range():
    assert x0_variance_bound(torch.tensor([[-1.0, 0.0], [1.0, 4.0]])) == pytest.approx((1.0 + 4.0) / 2)
    assert x0_variance(1.2, 0.5, bound=2.0) == 0.0  # a Monte Carlo E||eps||^2/d above 1
    assert x0_variance(-50.0, 0.01, bound=2.0) == 2.0
    assert x0_variance(0.5, 0.5, bound=2.0) == pytest.approx(0.5)


@pytest.mark.parametrize("r, s", [(20, 10), (300, 200), (200, 60)])
@pytest.mark.parametrize("posterior", [True, False])
def test_optimal_variance_matches_a_brute_force_estimate(mixture, r, s, posterior):
    """sigma*^2 from E||eps||^2/d equals E||x_s - mu_tilde(x_r, E[x0|x_r])||^2 / d under the generalized forward process."""
    method = DDPM(DDPMConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    generator = torch.Generator().manual_seed(r + s)
    ab_r, ab_s = float(method.alpha_bars[r]), float(method.alpha_bars[s])
    lambda_sq = method.posterior_variance(r, s) if posterior else 0.0
    mean_square = float(mean_square_eps(lambda x, n: method.eps_and_x0(net, x, n)[0], method.alpha_bars,
                                        mixture.sample(20000, generator), [r], generator)[0])
    formula = optimal_variance(ab_r, ab_s, lambda_sq, mean_square, bound=1e9)

    x0 = mixture.sample(20000, generator)
    x_r = math.sqrt(ab_r) * x0 + math.sqrt(1 - ab_r) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    def mu_tilde(x_start):
        return math.sqrt(ab_s) * x_start + math.sqrt(1 - ab_s - lambda_sq) * (x_r - math.sqrt(ab_r) * x_start) \
            / math.sqrt(1 - ab_r)

    x_s = mu_tilde(x0) + math.sqrt(lambda_sq) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    brute_force = float((x_s - mu_tilde(method.eps_and_x0(net, x_r, r)[1])).pow(2).sum(1).mean() / 2)
    assert formula == pytest.approx(brute_force, rel=0.06)
    assert formula > 1.02 * lambda_sq  # the optimal variance really adds to lambda^2


def test_analytic_bound_is_never_worse_than_ddpms(mixture, oracle_analytic):
    method, net = oracle_analytic
    x = mixture.sample(300, torch.Generator().manual_seed(5))
    bounds = {(r.sampler, r.nfe): float(-r.log_prob.mean())
              for r in method.log_likelihood(net, x, torch.Generator().manual_seed(0), EvalContext())
              if r.estimator == "elbo"}  # (DDPM's probability-flow ODE record is checked in test_spine_oracle)
    assert {nfe for _, nfe in bounds} == {1000, 100, 10}
    for budget in (1000, 100, 10):
        analytic = bounds[("analytic_ddpm", budget)]
        assert analytic <= bounds[("ancestral_beta", budget)], bounds
        assert analytic <= bounds[("ancestral_posterior", budget)], bounds
    assert bounds[("analytic_ddpm", 10)] < bounds[("ancestral_beta", 10)] - 0.05


@pytest.mark.parametrize("sampler", ["analytic_ddpm", "analytic_ddim"])
def test_analytic_samplers_fed_the_oracle_reproduce_the_mixture(mixture_reference, oracle_analytic, sampler):
    method, net = oracle_analytic
    result = method.sample(net, sampler, 20, 1500, torch.Generator().manual_seed(7))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)
    assert result.nfe == 20


def test_gamma_table_covers_every_step_and_survives_the_model_file():
    torch.manual_seed(0)
    net = build_network((2,), NetworkSection(mlp=MLPSettings(hidden=16, depth=1, time_embedding=8))).eval()
    method = DDPM(DDPMConfig(analytic_coordinates=128), (2,))
    train = torch.randn(500, 2)
    extras = method.after_training(net, train, torch.Generator().manual_seed(1))
    table = extras["analytic_dpm"]["mean_square_eps"]
    assert table.shape == (1001,) and table[0] == 0 and torch.isfinite(table).all() and (table[1:] > 0).all()
    assert extras["analytic_dpm"]["points"] == 64
    gamma = method.analytic.gamma(method.alpha_bars)
    assert gamma.shape == (1000,) and torch.isfinite(gamma).all()
    again = DDPM(DDPMConfig(analytic_coordinates=128), (2,)).after_training(net, train, torch.Generator().manual_seed(1))
    assert torch.equal(again["analytic_dpm"]["mean_square_eps"], table)

    loaded = DDPM(DDPMConfig(analytic_coordinates=128), (2,))
    with pytest.raises(RuntimeError, match="after training"):
        loaded.sample(net, "analytic_ddpm", 10, 8, torch.Generator().manual_seed(2))
    buffer = io.BytesIO()
    torch.save(extras, buffer)
    buffer.seek(0)
    loaded.load_extras(torch.load(buffer, weights_only=False))
    for sampler in ("analytic_ddpm", "analytic_ddim"):
        expected = method.sample(net, sampler, 10, 8, torch.Generator().manual_seed(2)).x
        assert torch.equal(loaded.sample(net, sampler, 10, 8, torch.Generator().manual_seed(2)).x, expected)
