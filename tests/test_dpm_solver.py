"""DPM-Solver++(2M) (Lu et al. 2022) on every affine-path method, against DDIM and the analytic oracle."""

import pytest
import torch

from pipeline.schema import NetworkSection
from pipeline import grids
from pipeline.methods.ddpm import DDPM, DDPMConfig
from pipeline.samplers import implicit_chain, sample_dpm_solver_pp
from pipeline.methods.flow_matching import FlowMatching, FlowMatchingConfig
from pipeline.methods.rectified_flow import RectifiedFlow
from pipeline.methods.sde import VESDEConfig, VPSDEConfig
from pipeline.methods.subvp_sde import SubVPSDE
from pipeline.methods.ve_sde import VESDE
from pipeline.methods.vp_sde import VPSDE
from pipeline.metrics import w2_exact

BUILDERS = {
    "ddpm": lambda: DDPM(DDPMConfig(budgets=[20]), (2,)),
    "flow_matching": lambda: FlowMatching(FlowMatchingConfig(budgets=[20]), (2,)),
    "rectified_flow": lambda: RectifiedFlow(RectifiedFlow.Config(budgets=[20]), (2,)),
    "vp_sde": lambda: VPSDE(VPSDEConfig(budgets=[20]), (2,)),
    "subvp_sde": lambda: SubVPSDE(VPSDEConfig(budgets=[20]), (2,)),
    "ve_sde": lambda: VESDE(VESDEConfig(budgets=[20], sigma_max=10.0), (2,)),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_affine_method_has_it(name):
    assert "dpm_solver_pp_2m" in BUILDERS[name]().samplers


def test_first_order_is_ddim_with_eta_zero():
    method = DDPM(DDPMConfig(budgets=[10]), (2,))
    torch.manual_seed(0)
    net = method.make_network(NetworkSection()).eval()  # an untrained network: any x0_hat will do
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    steps = method.timesteps(10, "log_snr")
    assert len(steps) == 10 and steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] == 1000
    with torch.no_grad():
        first = sample_dpm_solver_pp(method, net, x, 10, None, order=1)
        ddim = implicit_chain(method.alpha_sigma, method.data_and_noise_fn(net), x, method.time_grid(10, "log_snr"),
                              lambda t, s: 0.0, lambda t, s: 0.0, torch.Generator().manual_seed(2))
        second = sample_dpm_solver_pp(method, net, x, 10, None, order=2)
    assert first.nfe == ddim.nfe == second.nfe == 10
    torch.testing.assert_close(first.x, ddim.x, rtol=1e-5, atol=1e-5)
    assert (second.x - ddim.x).abs().max() > 1e-3  # the second order is a different method


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fed_the_oracle_it_reproduces_the_mixture_at_twenty_nfe(mixture, mixture_reference, name):
    method = BUILDERS[name]()
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "dpm_solver_pp_2m", 20, 1500, torch.Generator().manual_seed(7))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)
    assert result.nfe == 20


def _error_to_the_exact_flow(method, net, x, truth, budget, order):
    result = sample_dpm_solver_pp(method, net, x, budget, None, order)
    return float((result.x - truth).norm(dim=1).mean())


def test_on_the_chain_the_second_order_is_nearer_the_exact_flow_than_ddim(mixture):
    """DDPM fed the oracle: at 10 and 20 NFE the second order lands nearer the probability-flow map (RK45)
    than its first order, DDIM on the same steps (on DDIM's uniform sub-sequence it did not)."""
    from pipeline.solvers import ode_rk45

    method = BUILDERS["ddpm"]()
    net = mixture.network(method.path, method.prediction)
    x = method.prior_sample(500, torch.Generator().manual_seed(3), "cpu").double()
    t_1 = 1.0 / method.num_steps  # both orders end with x0_hat at step 1, the chain's last noisy step
    solved = ode_rk45(method.velocity_fn(net), x, 1.0, t_1).x
    truth = method.x0_fn(net)(solved, torch.full((len(x),), t_1, dtype=x.dtype))
    for budget in (10, 20):
        second, first = (float((sample_dpm_solver_pp(method, net, x, budget, None, order).x - truth).norm(dim=1).mean())
                         for order in (2, 1))
        assert second < first, (budget, second, first)


@pytest.mark.parametrize("name", ["flow_matching", "vp_sde", "subvp_sde", "ve_sde"])
def test_it_converges_at_second_order_to_the_exact_flow(mixture, name):
    """Same prior draws; the oracle's probability-flow map solved by RK45 (rtol 1e-5) is the truth. From 20
    to 50 NFE the error of order 2 falls by more than (50/20)^1.5, that of order 1 (DDIM) by less."""
    method = BUILDERS[name]()
    net = mixture.network(method.path, method.prediction)
    x = method.prior_sample(500, torch.Generator().manual_seed(3), "cpu").double()
    truth = method.samplers["ode_rk45"].fn(method, net, x, None, None).x
    second = [_error_to_the_exact_flow(method, net, x, truth, budget, 2) for budget in (20, 50)]
    first = [_error_to_the_exact_flow(method, net, x, truth, budget, 1) for budget in (20, 50)]
    assert second[0] / second[1] > 2.5 ** 1.5, second
    assert first[0] / first[1] < 2.5 ** 1.5, first
    assert second[1] < first[1]


def test_on_the_linear_path_its_first_order_is_euler(mixture):
    """alpha_t = 1 - t, sigma_t = t: the exponential integrator's first-order step is exactly Euler's."""
    method = BUILDERS["flow_matching"]()
    net = mixture.network(method.path, method.prediction)
    x = method.prior_sample(200, torch.Generator().manual_seed(4), "cpu").double()
    from pipeline.solvers import dpm_solver_pp, ode_euler

    grid = grids.uniform(10, 1.0, 0.0)
    first = dpm_solver_pp(method.x0_fn(net), x, grid, method.alpha_sigma, order=1).x
    euler = ode_euler(method.velocity_fn(net), x, grid).x
    torch.testing.assert_close(first, euler, rtol=1e-9, atol=1e-9)


def test_the_log_snr_grid_is_uniform_in_log_snr():
    method = BUILDERS["vp_sde"]()
    grid = grids.log_snr_uniform(method.log_snr, 8, 1.0, 1e-3)
    steps = method.log_snr(grid).diff()
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=1e-9)
    assert grid[0] == 1.0 and grid[-1] == 1e-3 and (grid.diff() < 0).all()


@pytest.mark.parametrize("budget", [1, 2, 10, 100, 500, 900, 999, 1000, 5000])
def test_the_log_snr_chain_steps_strictly_increase_within_the_chain(budget):
    """At budgets near the chain's length, pushing repeats up ran past step T and the clamp repeated it:
    a zero step, and DPM-Solver++(2M)'s step ratio divided by zero (the default profile's 1000 NFE)."""
    method = DDPM(DDPMConfig(), (2,))
    steps = method.timesteps(budget, "log_snr")
    assert len(steps) == min(budget, 1000) and steps[0] >= 1 and steps[-1] <= 1000
    assert all(b > a for a, b in zip(steps, steps[1:]))
