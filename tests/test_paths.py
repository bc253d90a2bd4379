"""The shared affine path: coefficients, derivatives and the parameterization conversions."""

import math

import pytest
import torch

from pipeline.parameterization import (Prediction, from_x0_and_eps, to_eps, to_score, to_velocity, to_x0,
                                       to_x0_and_eps)
from pipeline.paths import DiscreteLinearBetaPath, LinearPath, SubVPPath, VEPath, VPPath

PATHS = {
    "ddpm": DiscreteLinearBetaPath(),
    "vp": VPPath(),
    "subvp": SubVPPath(),
    "ve": VEPath(0.01, 10.0),
    "linear": LinearPath(),
    "linear_sigma_min": LinearPath(1e-3),
}


@pytest.mark.parametrize("name", PATHS)
def test_derivatives_match_finite_differences(name):
    path = PATHS[name]
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64) + 1e-4  # off DDPM's grid points
    h = 1e-7
    c, up, down = path(t), path(t + h), path(t - h)
    assert torch.allclose(c.d_alpha, (up.alpha - down.alpha) / (2 * h), rtol=1e-5, atol=1e-8)
    assert torch.allclose(c.d_sigma, (up.sigma - down.sigma) / (2 * h), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("prediction", list(Prediction))
def test_conversions_round_trip_in_float64(name, prediction):
    path = PATHS[name]
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(64, generator=generator, dtype=torch.float64)
    c = path(t).broadcast_to(x0)
    x_t = c.alpha * x0 + c.sigma * eps
    output = from_x0_and_eps(x0, eps, prediction, c)
    back_x0, back_eps = to_x0_and_eps(output, prediction, x_t, c)
    assert torch.allclose(back_x0, x0, atol=1e-9) and torch.allclose(back_eps, eps, atol=1e-9)
    assert torch.allclose(to_x0(output, prediction, x_t, c), x0, atol=1e-9)
    assert torch.allclose(to_eps(output, prediction, x_t, c), eps, atol=1e-9)
    assert torch.allclose(to_score(output, prediction, x_t, c), -eps / c.sigma, atol=1e-8)
    velocity = c.d_alpha * x0 + c.d_sigma * eps
    assert torch.allclose(to_velocity(output, prediction, x_t, c), velocity, atol=1e-8)
    # the velocity is the probability-flow drift f x - 1/2 g^2 score
    assert torch.allclose(velocity, c.drift * x_t + 0.5 * c.diffusion_squared * eps / c.sigma, atol=1e-8)


def test_discrete_path_matches_the_ddpm_chain_at_grid_points():
    path = DiscreteLinearBetaPath(1000, 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    steps = torch.tensor([1, 10, 500, 1000])
    c = path(steps.double() / 1000)
    assert torch.allclose(c.alpha**2, alpha_bar[steps - 1], rtol=1e-12)
    assert torch.allclose(c.alpha**2 + c.sigma**2, torch.ones(4, dtype=torch.float64))
    assert abs(float(path(torch.ones(1, dtype=torch.float64)).alpha ** 2) - 4.04e-5) < 1e-6  # Ho et al.: ~4e-5


def test_vp_diffusion_is_beta_and_subvp_variance_is_below_vp():
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    vp, subvp = VPPath(0.1, 20), SubVPPath(0.1, 20)
    assert torch.allclose(vp(t).diffusion_squared, 0.1 + t * 19.9, rtol=1e-8)
    assert (subvp(t).sigma < vp(t).sigma).all()
    assert math.isclose(float(subvp(torch.tensor(1e-3, dtype=torch.float64)).sigma), 1.1e-4, rel_tol=0.1)


def test_linear_path_is_flow_matching_in_reversed_time():
    """x_t = (1 - t) x + t eps is FM's x_tau = tau x1 + (1 - tau) x0 with tau = 1 - t; velocities flip sign."""
    path = LinearPath()
    generator = torch.Generator().manual_seed(1)
    x_data, noise = torch.randn(8, 2, generator=generator), torch.randn(8, 2, generator=generator)
    tau = torch.rand(8, generator=generator)
    x_tau = tau[:, None] * x_data + (1 - tau[:, None]) * noise
    assert torch.allclose(path.sample(x_data, noise, 1 - tau), x_tau, atol=1e-6)
    c = path(1 - tau).broadcast_to(x_data)
    assert torch.allclose(from_x0_and_eps(x_data, noise, Prediction.VELOCITY, c), -(x_data - noise))


def test_coefficients_at_a_time_tensor_are_computed_once_and_follow_its_changes():
    """AffinePath.at reuses the coefficients of the same time tensor (a sampler step's preconditioning and
    output conversion), and recomputes once the tensor is changed in place or another one is given."""
    path, x = VPPath(), torch.randn(5, 2)
    t = torch.full((5,), 0.3)
    first = path.at(t, x)
    assert path.at(t, x) is first
    assert torch.equal(first.alpha, path(t).broadcast_to(x).alpha)
    t.fill_(0.6)
    moved = path.at(t, x)
    assert moved is not first and torch.equal(moved.sigma, path(torch.full((5,), 0.6)).broadcast_to(x).sigma)
    with torch.inference_mode():
        assert path.at(t, x) is not moved and torch.equal(path.at(torch.full((5,), 0.3), x).alpha, first.alpha)
    assert path.at(t, x) is moved  # inference mode neither used nor replaced the cache
    assert path.at(torch.full((5,), 0.6), x) is not moved  # equal values, another tensor: computed again
    assert path.at(t, x.double()).alpha.dtype == torch.float64
    learned = torch.full((5,), 0.3, requires_grad=True)
    path.at(learned, x).alpha.sum().backward()
    assert learned.grad is not None and path.at(learned, x).alpha.grad_fn is not None


@pytest.mark.parametrize("method_name, sampler, per_call", [
    ("flow_matching", "ode_euler", 1), ("flow_matching", "ddim-eta1.0-uniform", 1), ("vp_sde", "ancestral_posterior", 1),
    ("vp_sde", "euler_maruyama", 2)])  # the reverse SDE's diffusion g(t) is one more
def test_a_sampler_step_evaluates_its_path_once_per_network_call(monkeypatch, method_name, sampler, per_call):
    """The per-step coefficient work behind the samplers' overhead (pipeline bench): the preconditioning, the
    output conversion and the reverse SDE's drift share one evaluation of the path at the step's time (the old
    code made three), and a chain asks alpha_sigma for each grid time once."""
    from pipeline.methods import build_method
    from pipeline.schema import MLPSettings, NetworkSection
    from pipeline.rng import SampleStreams
    from pipeline.config import load_params
    from pathlib import Path

    params = load_params(Path(__file__).resolve().parents[1] / "profiles" / "smoke.yaml")
    method = build_method(method_name, params.method_config(method_name), (2,))
    net = method.make_network(NetworkSection(mlp=MLPSettings(hidden=8, depth=1, time_embedding=4))).eval()
    calls = []
    original = type(method.path).__call__
    monkeypatch.setattr(type(method.path), "__call__", lambda self, t: calls.append(t.numel()) or original(self, t))
    result = method.sample(net, sampler, 10, 6, SampleStreams(0, torch.arange(6)))
    batch_calls = sum(1 for n in calls if n == 6)
    assert result.nfe <= batch_calls <= per_call * result.nfe
    assert len(calls) - batch_calls <= 2 * result.nfe + 2  # the chains' float times: each at most once
