"""The networks' output can follow a target that grows with |x_t| (issue 10, item 1).

An eps-network at t near 1 must return about x_t. A head ending in LayerNorm -> SiLU -> Linear is
bounded whatever its input, and the VP backward drift amplifies the shortfall on prior draws of large
radius: the deterministic samplers of eps-networks then throw those draws far away. The preconditioned
output c_skip x_t + c_out F(c_in x_t, t) (pipeline.parameterization) carries the linear part exactly.
"""

import math

import pytest
import torch

from pipeline.schema import MLPSettings, NetworkSection, TrainSettings
from pipeline.methods.base import Method
from pipeline.methods.ddpm import DDPM, DDPMConfig
from pipeline.methods.flow_matching import FlowMatching, FlowMatchingConfig
from pipeline.methods.sde import VESDEConfig, VPSDEConfig
from pipeline.methods.subvp_sde import SubVPSDE
from pipeline.methods.ve_sde import VESDE
from pipeline.methods.vp_sde import VPSDE
from pipeline.oracle import GaussianMixture
from pipeline.parameterization import Preconditioned, Prediction, from_x0_and_eps, preconditioning
from pipeline.training import train

PATH_METHODS = [
    (DDPM, DDPMConfig), (VPSDE, VPSDEConfig), (SubVPSDE, VPSDEConfig), (VESDE, VESDEConfig),
    (FlowMatching, FlowMatchingConfig),
]


def _gaussian(sigma_data: float) -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.zeros(1, 2), sigma_data**2 * torch.eye(2)[None])


class _Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("prediction", list(Prediction))
@pytest.mark.parametrize("method_cls, config_cls", PATH_METHODS)
def test_the_skip_part_alone_is_the_exact_target_of_gaussian_data(method_cls, config_cls, prediction):
    """With F = 0 the output is E[target | x_t] for N(0, sigma_data^2 I) data, on every path and target."""
    sigma_data = 0.7
    method = method_cls(config_cls(), (2,))
    oracle = _gaussian(sigma_data).network(method.path, prediction)
    net = Preconditioned(_Zero(), method.path, prediction, sigma_data)
    x = 3.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for time in (0.02, 0.3, 0.7, 1.0):
        t = torch.full((256,), time, dtype=torch.float64)
        torch.testing.assert_close(net(x, t), oracle(x, t), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("prediction", list(Prediction))
def test_the_residual_of_gaussian_data_has_unit_variance(prediction):
    """c_out is the standard deviation of target - c_skip x_t, so F regresses onto a unit-variance target."""
    sigma_data = 0.5
    method = VPSDE(VPSDEConfig(), (2,))
    generator = torch.Generator().manual_seed(1)
    x0 = sigma_data * torch.randn(200_000, 2, generator=generator, dtype=torch.float64)
    eps = torch.randn(200_000, 2, generator=generator, dtype=torch.float64)
    t = torch.full((200_000,), 0.4, dtype=torch.float64)
    c = method.path(t).broadcast_to(x0)
    c_skip, c_out, c_in = preconditioning(prediction, c, sigma_data)
    x_t = c.alpha * x0 + c.sigma * eps
    residual = (from_x0_and_eps(x0, eps, prediction, c) - c_skip * x_t) / c_out
    assert abs(float(residual.std()) - 1.0) < 0.01
    assert abs(float((c_in * x_t).std()) - 1.0) < 0.01


def _capped(net: torch.nn.Module, cap: float) -> torch.nn.Module:
    """An eps-network whose output norm saturates at `cap`, as a bounded head does."""

    class Capped(torch.nn.Module):
        def forward(self, x, t):
            out = net(x, t)
            return out * (cap / out.norm(dim=1, keepdim=True).clamp_min(cap))

    return Capped()


def _large_radius_draws(n: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    direction = torch.randn(n, 2, generator=generator)
    radius = torch.linspace(3.0, 5.0, n)
    return direction / direction.norm(dim=1, keepdim=True) * radius[:, None]


def _ddim(method: DDPM, net, x):
    with torch.no_grad():
        return method.samplers["ddim-eta0.0-uniform"].fn(method, net, x, 1000, None).x


def _vp_ode(method: VPSDE, net, x):
    with torch.no_grad():
        return method.samplers["ode_rk45"].fn(method, net, x, None, None).x


@pytest.mark.parametrize("method_cls, config_cls, sampler", [
    (DDPM, DDPMConfig, _ddim), (VPSDE, VPSDEConfig, _vp_ode),
])
def test_a_saturating_eps_throws_large_prior_draws_out_of_the_data(mixture, method_cls, config_cls, sampler):
    """The oracle with its eps capped at norm 3 reproduces the failure (DDIM eta 0 at 1000 steps, the VP
    probability-flow ODE); the exact oracle takes the same draws to the mixture's tail."""
    method = method_cls(config_cls(), (2,))
    exact = mixture.network(method.path, method.prediction)
    x = _large_radius_draws()
    data_radius = float(mixture.sample(20_000, torch.Generator().manual_seed(0)).norm(dim=1).max())
    assert float(sampler(method, exact, x).norm(dim=1).max()) < 1.5 * data_radius
    assert float(sampler(method, _capped(exact, 3.0), x).norm(dim=1).max()) > 10 * data_radius


def _fit_standard_normal(method: Method, net: torch.nn.Module, tmp_path, steps: int = 600) -> torch.nn.Module:
    data = torch.randn(4096, 2, generator=torch.Generator().manual_seed(2))
    settings = TrainSettings(steps=steps, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.9,
                             checkpoint_every=steps, log_every=steps)
    result = train(net, method.loss, data, settings, 0, tmp_path / "state.pt", "fit", "cpu", progress=False)
    net.load_state_dict(result.ema_state)
    return net.eval()


@pytest.mark.parametrize("method_cls, config_cls, sampler", [
    (DDPM, DDPMConfig, _ddim), (VPSDE, VPSDEConfig, _vp_ode),
])
def test_a_preconditioned_network_fitted_to_a_standard_normal_keeps_large_draws(
        tmp_path, method_cls, config_cls, sampler):
    """For N(0, I) data the VP path keeps x_t ~ N(0, I), so DDIM (eta 0) and the probability-flow ODE are
    the identity map: draws at radius 3-5 must keep their radius. The bounded head of the same MLP,
    fitted the same way, pulls them in towards the radius it saw in training (its output stops growing)."""
    method = method_cls(config_cls(), (2,))
    section = NetworkSection(mlp=MLPSettings(hidden=64, depth=2, time_embedding=16))
    x = _large_radius_draws()
    torch.manual_seed(0)
    new = _fit_standard_normal(method, method.make_network(section), tmp_path)
    radius_ratio = sampler(method, new, x).norm(dim=1) / x.norm(dim=1)
    assert float((radius_ratio - 1).abs().max()) < 0.1, radius_ratio

    torch.manual_seed(0)
    bounded = _fit_standard_normal(method, Method.make_network(method, section), tmp_path / "bounded")
    t = torch.ones(len(x))
    with torch.no_grad():
        eps_shortfall = 1 - method.output(bounded, x, t).norm(dim=1) / x.norm(dim=1)
    assert float(eps_shortfall.max()) > 0.2, eps_shortfall
    assert math.isfinite(float(sampler(method, bounded, x).norm()))


def test_the_unet_gets_the_same_preconditioned_output():
    """The U-Net ends in GroupNorm -> SiLU -> conv, bounded as the MLP's head: it is preconditioned the same way,
    so at t = 1 even an untrained eps-network returns about x_t, however large x_t is."""
    from pipeline.schema import UNetSettings

    method = DDPM(DDPMConfig(), (1, 8, 8))
    net = method.make_network(NetworkSection(unet=UNetSettings(channels=8, norm_groups=4)))
    assert isinstance(net, Preconditioned) and net.sigma_data == 0.5
    x = 10.0 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = method.output(net, x, torch.ones(4))
    assert float((eps - x).norm() / x.norm()) < 0.05
