"""DDIM (Song, Meng, Ermon 2021) on the DDPM eps-network: naming, skipping, and the oracle."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.config import Params
from pipeline import grids
from pipeline.methods.ddpm import DDPM, DDPMConfig
from pipeline.samplers import sample_ode_rk45
from pipeline.metrics import w2_exact

DDIM_VARIANTS = ["ddim-eta0.0-uniform", "ddim-eta0.0-quadratic", "ddim-eta1.0-uniform", "ddim-eta1.0-quadratic"]


def test_quadratic_skipping_is_the_analytic_dpm_sequence_made_strictly_increasing():
    expected = (np.floor(np.linspace(0, np.sqrt(0.8 * 1000), 10) ** 2) + 1).astype(int).tolist()
    assert grids.chain_quadratic(1000, 10).tolist() == expected == [1, 10, 40, 89, 159, 247, 356, 484,
                                                                              633, 801]
    # the raw formula repeats steps when S is large; the repeats are pushed up by one
    assert grids.chain_quadratic(1000, 1000).tolist() == list(range(1, 1001))
    steps = grids.chain_quadratic(1000, 100)
    assert steps[0] == 1 and bool((steps.diff() > 0).all()) and steps[-1] == 801


def test_ddim_variants_come_from_the_config_and_the_base_name_selects_them_all():
    config = DDPMConfig(ddim_etas=[0.0, 0.5], ddim_skips=["quadratic"], samplers=["ddim", "ancestral_beta"],
                        budgets=[10])
    method = DDPM(config, (2,))
    assert method.sampler_runs() == [("ddim-eta0.0-quadratic", 10), ("ddim-eta0.5-quadratic", 10),
                                     ("ancestral_beta", 10)]
    assert "ddim-eta0.0-uniform" in DDPM(DDPMConfig(), (2,)).samplers
    with pytest.raises(ValidationError, match="unknown sampler 'ddim-eta0.3-uniform'"):
        Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {"samplers": ["ddim-eta0.3-uniform"]}}})
    with pytest.raises(ValidationError, match="ddim_etas"):
        Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {"ddim_etas": [1.5]}}})


@pytest.mark.parametrize("budget", [1000, 10])
def test_ddim_with_eta_one_is_the_ancestral_sampler_with_the_posterior_variance(mixture, budget):
    """DDIM's step (eq. 12) with eta = 1 equals the posterior-mean step of Ho et al. (an identity for any eps)."""
    method = DDPM(DDPMConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    ddim = method.sample(net, "ddim-eta1.0-uniform", budget, 256, torch.Generator().manual_seed(3))
    ancestral = method.sample(net, "ancestral_posterior", budget, 256, torch.Generator().manual_seed(3))
    assert ddim.nfe == ancestral.nfe == budget
    assert torch.allclose(ddim.x, ancestral.x, atol=1e-4), (ddim.x - ancestral.x).abs().max()
    deterministic = method.sample(net, "ddim-eta0.0-uniform", budget, 256, torch.Generator().manual_seed(3))
    assert (deterministic.x - ancestral.x).abs().max() > 0.1


def test_deterministic_ddim_follows_the_probability_flow_ode(mixture):
    """eta = 0 is an Euler step of the PF-ODE in sigma/alpha (methods.md 2.2): at T steps it lands where RK45 does."""
    method = DDPM(DDPMConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    x_init = method.prior_sample(200, torch.Generator().manual_seed(3), "cpu").double()
    ddim = method.samplers["ddim-eta0.0-uniform"].fn(method, net, x_init, 1000, None)
    ode = sample_ode_rk45(method, net, x_init, None, None)
    distance = (ddim.x - ode.x).norm(dim=1)
    assert distance.median() < 0.01 and distance.max() < 0.05, (float(distance.median()), float(distance.max()))


@pytest.mark.parametrize("sampler", DDIM_VARIANTS)
def test_ddim_fed_the_oracle_reproduces_the_mixture(mixture, mixture_reference, sampler):
    method = DDPM(DDPMConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, sampler, 100, 1500, torch.Generator().manual_seed(7))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)
    assert result.nfe == 100
