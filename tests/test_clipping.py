"""DDPM-family x0 handling follows the data kind (issue 10, item 4): images as the papers' code (x0_hat
clipped to [-1, 1]; Analytic-DPM's step onto tau_1 capped at y pixel bins), 2-D data never."""

import math

import pytest
import torch

from pipeline.methods.analytic_dpm import AnalyticTable
from pipeline.methods import ddpm
from pipeline.methods.ddpm import DDPM, DDPMConfig


class _ConstantEps(torch.nn.Module):
    """An eps-network whose x0_hat lies far outside [-1, 1]."""

    def forward(self, x, t):
        return torch.full_like(x, -3.0)


@pytest.mark.parametrize("shape, clipped", [((1, 4, 4), True), ((2,), False)])
def test_x0_is_clipped_on_images_and_never_on_2d_data(shape, clipped):
    method = DDPM(DDPMConfig(num_steps=100), shape)
    x = torch.zeros(5, *shape)
    _, x0 = method.eps_and_x0(_ConstantEps(), x, 50)
    assert (float(x0.abs().max()) <= 1.0) == clipped
    assert method.protocol("ancestral_beta") == {"clip_x0": float(clipped)}
    samples = method.sample(_ConstantEps(), "ddim-eta0.0-uniform", 10, 5, torch.Generator().manual_seed(0)).x
    assert (float(samples.abs().max()) <= 1.0 + 1e-6) == clipped


def test_clipping_can_be_switched_off_for_images():
    method = DDPM(DDPMConfig(num_steps=100, clip_x0=False, clip_sigma=False), (1, 4, 4))
    _, x0 = method.eps_and_x0(_ConstantEps(), torch.zeros(2, 1, 4, 4), 50)
    assert float(x0.abs().max()) > 1
    assert method.protocol("analytic_ddpm") == {"clip_x0": 0.0, "clip_sigma": 0.0}


@pytest.mark.parametrize("shape, clipped", [((1, 4, 4), True), ((2,), False)])
@pytest.mark.parametrize("sampler, pixels", [("analytic_ddpm", 2), ("analytic_ddim", 1)])
def test_analytic_dpm_caps_the_noise_of_its_step_onto_tau_1_on_images(monkeypatch, shape, clipped, sampler, pixels):
    """The authors' clip_sigma_idx = 1: sigma^2 <= (y 2/255 sqrt(pi/2))^2 on the step landing on tau_1 only."""
    method = DDPM(DDPMConfig(num_steps=100), shape)
    # the largest x0 variance the clamp allows, so sigma*^2 exceeds the cap at tau_1
    method.analytic = AnalyticTable(torch.zeros(101, dtype=torch.float64), 1.0, 10)
    drawn = []
    chain = "ancestral_chain" if sampler == "analytic_ddpm" else "implicit_chain"
    original = getattr(ddpm, chain)

    def spy(alpha_sigma, data_and_noise, x, grid, *variances_and_generator):
        variance = variances_and_generator[-2]
        times = grid.tolist()
        drawn.extend((round(t * 100), round(t_next * 100), variance(t, t_next)) for t, t_next in zip(times, times[1:]))
        return original(alpha_sigma, data_and_noise, x, grid, *variances_and_generator)

    monkeypatch.setattr(ddpm, chain, spy)
    method.sample(_ConstantEps(), sampler, 10, 3, torch.Generator().manual_seed(0))
    threshold = (pixels * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    steps = method.timesteps(10)
    onto_first = [value for r, s, value in drawn if s == steps[0]]
    others = [value for r, s, value in drawn if s != steps[0]]
    assert len(onto_first) == 1 and any(value > threshold for value in others)
    assert (onto_first[0] <= threshold + 1e-15) == clipped
    unclipped = method.analytic_variance(steps[1], steps[0], 0.0 if sampler == "analytic_ddim"
                                         else method.posterior_variance(steps[1], steps[0]))
    assert unclipped > threshold
    assert method.protocol(sampler)["clip_sigma"] == float(clipped)
