"""The shared sampler table (pipeline.samplers) on every path that can run it, against the analytic oracle,
and the grids and the budget rule (pipeline.grids)."""

import pytest
import torch

from pipeline import grids
from pipeline.methods import METHODS, build_method
from pipeline.metrics import w2_exact
from pipeline.samplers import SAMPLERS, ddim_samplers

GAUSSIAN_PATHS = ["vp_sde", "subvp_sde", "ve_sde", "flow_matching", "rectified_flow"]
CROSS_SAMPLERS = ["ddim-eta0.0-uniform", "ddim-eta0.0-quadratic", "ddim-eta1.0-uniform", "ddim-eta1.0-quadratic",
                  "ancestral_beta", "ancestral_posterior", "ode_heun"]


def _method(name):
    cls = METHODS[name]
    return cls(cls.Config(), (2,))


@pytest.mark.parametrize("sampler", CROSS_SAMPLERS)
@pytest.mark.parametrize("name", GAUSSIAN_PATHS)
def test_a_shared_sampler_fed_the_oracle_reproduces_the_mixture(mixture, mixture_reference, name, sampler):
    """DDIM, ancestral sampling and Heun, which ran on DDPM (or the SDEs) only, on every Gaussian path."""
    method = _method(name)
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, sampler, 100, 1500, torch.Generator().manual_seed(7))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (name, sampler, w2, floor)
    assert result.nfe <= 100


def test_on_the_linear_path_deterministic_ddim_is_euler(mixture):
    """alpha_t = 1 - t, sigma_t = t: x_s = alpha_s x0_hat + sigma_s eps_hat is x_t + (s - t) v exactly."""
    method = _method("flow_matching")
    net = mixture.network(method.path, method.prediction)
    ddim = method.sample(net, "ddim-eta0.0-uniform", 10, 300, torch.Generator().manual_seed(4))
    euler = method.sample(net, "ode_euler", 10, 300, torch.Generator().manual_seed(4))
    torch.testing.assert_close(ddim.x, euler.x, rtol=1e-5, atol=1e-5)  # float32 rounding


def test_on_a_continuous_path_ddim_with_eta_one_is_ancestral_with_the_posterior_variance(mixture):
    """The identity Song, Meng, Ermon 2021 eq. 16 states for DDPM holds on any affine path (VP here)."""
    method = _method("vp_sde")
    net = mixture.network(method.path, method.prediction)
    ddim = method.sample(net, "ddim-eta1.0-uniform", 50, 256, torch.Generator().manual_seed(3))
    ancestral = method.sample(net, "ancestral_posterior", 50, 256, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim.x, ancestral.x, rtol=1e-4, atol=1e-4)


def test_the_capabilities_decide_the_table():
    """Stochastic chains need the path's Gaussian posterior: not on OT-coupled or reflowed flows, whose noise
    is coupled with the data; DDPM's discrete chain has no continuous ODE; SMLD has only its own sampler."""
    assert {"ancestral_beta", "ddim-eta1.0-uniform"} & set(_method("ot_flow_matching").samplers) == set()
    assert {"ddim-eta0.0-uniform", "dpm_solver_pp_2m", "ode_heun"} <= set(_method("ot_flow_matching").samplers)
    reflowed = build_method("rectified_flow", METHODS["rectified_flow"].Config(), (2,), reflowed=True)
    assert "ancestral_beta" not in reflowed.samplers and "ancestral_beta" in _method("rectified_flow").samplers
    assert "ode_euler" not in _method("ddpm").samplers
    assert set(_method("smld").samplers) == {"annealed_langevin"}
    assert set(_method("pfgm").samplers) == {"ode_euler", "ode_heun", "ode_rk45"}
    for name in ["vp_sde", "subvp_sde", "ve_sde"]:
        assert set(SAMPLERS) | set(ddim_samplers([0.0, 1.0], ["uniform", "quadratic"])) == set(_method(name).samplers)


@pytest.mark.parametrize("budget, per_step, finishing, steps", [
    (1000, 1, 0, 1000), (1000, 1, 1, 999), (1000, 2, 1, 499), (10, 2, 1, 4), (10, 2, 0, 5), (3, 2, 1, 1),
    (1000, 10, 1, 99), (11, 10, 1, 1)])
def test_the_budget_rule(budget, per_step, finishing, steps):
    assert grids.steps_within(budget, per_step, finishing) == steps
    assert steps * per_step + finishing <= budget


@pytest.mark.parametrize("budget, per_step, finishing", [(1, 2, 0), (2, 2, 1), (10, 10, 1), (0, 1, 0)])
def test_a_budget_below_one_step_is_refused(budget, per_step, finishing):
    with pytest.raises(grids.BudgetTooSmall, match=f"budget of {budget} NFE"):
        grids.steps_within(budget, per_step, finishing)


def test_the_grids_run_from_the_noise_end_to_the_data_end():
    for spacing in ["uniform", "quadratic"]:
        grid = grids.continuous(spacing, 8, 1.0, 1e-3)
        assert grid[0] == 1.0 and grid[-1] == 1e-3 and len(grid) == 9 and (grid.diff() < 0).all()
    quadratic = grids.quadratic(4, 1.0, 0.0)
    torch.testing.assert_close(quadratic, torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], dtype=torch.float64))
    # a flow's log-SNR is infinite at its noise end: log-SNR spacing falls back to uniform there
    flow = _method("flow_matching")
    torch.testing.assert_close(grids.continuous("log_snr", 5, 1.0, 0.0, flow.log_snr), grids.uniform(5))
    with pytest.raises(ValueError, match="unknown spacing"):
        grids.continuous("cubic", 5, 1.0, 0.0)


@pytest.mark.parametrize("name", ["flow_matching", "vp_sde"])
def test_the_drawn_paths_are_heuns_steps_from_the_samplers_prior_draws(mixture, name):
    """The report's trajectories (pipeline.stages.draw_trajectories): the first samples' prior draws, Heun's
    states on a uniform grid, ending where Heun's sampler with the same grid ends before its finishing step."""
    from pipeline.rng import SampleStreams
    from pipeline.samplers import flow_trajectory
    from pipeline.solvers import ode_heun
    from pipeline.stages import TRAJECTORY_SAMPLES, TRAJECTORY_STEPS, draw_trajectories

    method = _method(name)
    net = mixture.network(method.path, method.prediction)
    paths = draw_trajectories(method, net, 11, torch.device("cpu"))
    assert paths.shape == (TRAJECTORY_STEPS + 1, TRAJECTORY_SAMPLES, 2)
    streams = SampleStreams(11, torch.arange(TRAJECTORY_SAMPLES))
    prior = method.prior_sample(TRAJECTORY_SAMPLES, streams, "cpu")
    assert torch.equal(torch.from_numpy(paths[0]), prior.float())
    flow = method.probability_flow(net)
    end = ode_heun(flow.velocity, prior, grids.uniform(TRAJECTORY_STEPS, flow.t_start, flow.t_end)).x
    assert torch.allclose(torch.from_numpy(paths[-1]), end.float(), atol=1e-5)
    assert flow_trajectory(method, net, prior[:3], 4).shape == (5, 3, 2)


def test_no_paths_without_a_sampling_ode_or_on_images():
    from pipeline.stages import draw_trajectories

    assert draw_trajectories(_method("smld"), None, 0, torch.device("cpu")) is None
    cls = METHODS["flow_matching"]
    assert draw_trajectories(cls(cls.Config(), (1, 8, 8)), None, 0, torch.device("cpu")) is None


def test_a_method_says_which_budgets_pay_for_one_step_without_running_its_network():
    """SMLD's ten levels and final step need 11 NFE; Heun needs 2; the probe stops before any network call."""
    smld, flow = _method("smld"), _method("flow_matching")
    assert not smld.fits_budget("annealed_langevin", 10) and smld.fits_budget("annealed_langevin", 11)
    assert not flow.fits_budget("ode_heun", 1) and flow.fits_budget("ode_heun", 2)
    assert flow.fits_budget("ode_rk45", None) and flow.fits_budget("ode_euler", 1)
