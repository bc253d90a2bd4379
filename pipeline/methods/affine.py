"""Methods on an affine Gaussian path, and the samplers they all share (probability-flow ODE).

Training regresses the network onto its prediction target at x_t = alpha_t x + sigma_t eps;
every sampler and likelihood goes through pipeline.parameterization, so eps-, score- and
velocity-networks share the same ODE code. The network is preconditioned for the method's path and
target (pipeline.parameterization.Preconditioned), so its output can follow a target that grows with
|x_t|; the loss is the method's own, on the preconditioned output.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from pipeline import rng
from pipeline.likelihood import ode_log_likelihood
from pipeline.methods.base import EvalContext, LikelihoodRecord, Method, SamplerSpec, call_network
from pipeline.nets import network_settings
from pipeline.parameterization import Preconditioned, Prediction, from_x0_and_eps, to_score, to_velocity, to_x0
from pipeline.paths import AffinePath
from pipeline.solvers import (SolverResult, dpm_solver_pp, log_snr_grid, ode_euler, ode_heun, ode_rk45,
                              uniform_grid)


class AffineMethod(Method):
    """A method trained by regression on an affine Gaussian path."""

    prediction: ClassVar[Prediction]
    #: smallest training time (the score blows up like 1/sigma_t at t = 0, methods.md 6.1)
    t_min_train: ClassVar[float] = 1e-5
    #: where samplers stop: 0 for flows, 1e-3 for diffusions (Song et al. 2021)
    t_end_sample: ClassVar[float] = 1e-3
    #: where the likelihood integral starts
    t_start_likelihood: ClassVar[float] = 1e-5
    #: finish diffusion samplers with the Tweedie denoising step x0_hat(x, t_end) (one more NFE)
    denoise_final: ClassVar[bool] = True

    path: AffinePath

    def make_network(self, network_section) -> nn.Module:
        """The data kind's net behind the preconditioning of this path and target."""
        sigma_data = network_settings(self.data_shape, network_section).sigma_data
        return Preconditioned(super().make_network(network_section), self.path, self.prediction, sigma_data)

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        u = rng.uniform((n,), generator, device)
        return self.t_min_train + (1.0 - self.t_min_train) * u

    def loss_weight(self, t: Tensor) -> Tensor | float:
        return 1.0

    def loss(self, net: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        """E || net(x_t, t) - target ||^2, averaged over dimensions (Ho et al. 2020 eq. 14; Lipman et al. 2023 eq. 23)."""
        t = self.sample_time(batch.shape[0], generator, batch.device)
        noise = rng.normal(tuple(batch.shape), generator, batch.device)
        c = self.path(t).broadcast_to(batch)
        x_t = c.alpha * batch + c.sigma * noise
        target = from_x0_and_eps(batch, noise, self.prediction, c)
        error = (self.output(net, x_t, t) - target).pow(2).flatten(1).mean(1)
        return self.loss_weight(t) * error

    def prior_sample(self, n: int, generator: torch.Generator, device) -> Tensor:
        return self.path.prior_sample((n, *self.data_shape), generator, device)

    def output(self, net: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return call_network(net, x, t)

    def velocity_fn(self, net: nn.Module):
        """Probability-flow velocity dx/dt of the trained model."""

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            return to_velocity(self.output(net, x, t), self.prediction, x, self.path(t).broadcast_to(x))

        return velocity

    def score_fn(self, net: nn.Module):
        def score(x: Tensor, t: Tensor) -> Tensor:
            return to_score(self.output(net, x, t), self.prediction, x, self.path(t).broadcast_to(x))

        return score

    def x0_fn(self, net: nn.Module):
        """The model's data prediction x0_hat(x, t) (Tweedie's mean, methods.md 2.7)."""

        def x0(x: Tensor, t: Tensor) -> Tensor:
            return to_x0(self.output(net, x, t), self.prediction, x, self.path(t).broadcast_to(x))

        return x0

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """alpha_t and sigma_t of the path at one time, as floats (for the exponential integrators)."""
        c = self.path(torch.tensor([t], dtype=torch.float64))
        return float(c.alpha[0]), float(c.sigma[0])

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) of the path."""
        c = self.path(t)
        return c.alpha.log() - c.sigma.log()

    def denoise(self, net: nn.Module, result: SolverResult) -> SolverResult:
        """Tweedie's x0_hat at the end time (methods.md 2.7), when the method asks for it."""
        if not self.denoise_final or self.t_end_sample == 0:
            return result
        x = result.x
        t = torch.full((x.shape[0],), self.t_end_sample, dtype=x.dtype, device=x.device)
        x0 = to_x0(self.output(net, x, t), self.prediction, x, self.path(t).broadcast_to(x))
        return SolverResult(x0, result.nfe + 1)

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """Probability-flow ODE likelihood (Song et al. 2021, app. D.2), exact divergence in low dimension."""
        estimator = "exact" if self.dim <= 16 else "hutchinson"
        result = ode_log_likelihood(self.velocity_fn(net), x, self.path.prior_log_prob, self.t_start_likelihood,
                                    1.0, divergence=estimator, generator=generator, rtol=context.rtol,
                                    atol=context.atol)
        return [LikelihoodRecord("ode_rk45", result.nfe, result.log_prob, f"ode_{estimator}")]


def sample_ode_euler(method: AffineMethod, net: nn.Module, x: Tensor, budget: int, generator) -> SolverResult:
    """Euler on the probability-flow ODE, `budget` steps from t = 1 to t_end."""
    steps = budget - 1 if method.denoise_final and method.t_end_sample > 0 and budget > 1 else budget
    grid = uniform_grid(steps, 1.0, method.t_end_sample)
    return method.denoise(net, ode_euler(method.velocity_fn(net), x, grid))


def sample_ode_heun(method: AffineMethod, net: nn.Module, x: Tensor, budget: int, generator) -> SolverResult:
    """Heun (2 NFE per step) on the probability-flow ODE, budget // 2 steps."""
    grid = uniform_grid(max(budget // 2, 1), 1.0, method.t_end_sample)
    return method.denoise(net, ode_heun(method.velocity_fn(net), x, grid))


def sample_ode_rk45(method: AffineMethod, net: nn.Module, x: Tensor, budget, generator) -> SolverResult:
    """Adaptive Dormand-Prince (rtol = atol = 1e-5) on the probability-flow ODE; reports its NFE."""
    return method.denoise(net, ode_rk45(method.velocity_fn(net), x, 1.0, method.t_end_sample))


def sample_dpm_solver_pp(method: AffineMethod, net: nn.Module, x: Tensor, budget: int, generator,
                         order: int = 2) -> SolverResult:
    """DPM-Solver++(2M) (Lu et al. 2022) on the probability-flow ODE. Steps uniform in log-SNR where it is
    finite at both ends (the SDEs; Lu et al.'s "logSNR" steps), uniform in t on the flows, whose log-SNR is
    -inf at t = 1 (there the first step is exact and, on the linear path, the first order is Euler)."""
    steps = budget - 1 if method.denoise_final and method.t_end_sample > 0 and budget > 1 else budget
    alpha_noise, _ = method.alpha_sigma(1.0)
    _, sigma_data = method.alpha_sigma(method.t_end_sample)
    if alpha_noise > 0 and sigma_data > 0:
        grid = log_snr_grid(method.log_snr, steps, 1.0, method.t_end_sample)
    else:
        grid = uniform_grid(steps, 1.0, method.t_end_sample)
    return method.denoise(net, dpm_solver_pp(method.x0_fn(net), x, grid, method.alpha_sigma, order))


ODE_SAMPLERS = {
    "ode_euler": SamplerSpec(sample_ode_euler, description="probability-flow ODE, Euler"),
    "ode_heun": SamplerSpec(sample_ode_heun, description="probability-flow ODE, Heun"),
    "ode_rk45": SamplerSpec(sample_ode_rk45, uses_budget=False, description="probability-flow ODE, RK45"),
    "dpm_solver_pp_2m": SamplerSpec(sample_dpm_solver_pp, description="probability-flow ODE, DPM-Solver++(2M)"),
}


def device_of(net: nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def flow_path_metrics(method: "AffineMethod", net: nn.Module, n: int, generator: torch.Generator,
                      context: EvalContext, grid_points: int = 65) -> list[tuple[str, int, str, float]]:
    """Straightness S(Z) and transport cost E||Z1 - Z0||^2 of a velocity flow, from n noise draws.

    The ODE is solved by RK45 (dense output at `grid_points` uniform times); in native time
    tau = 1 - t the velocity is minus the unified one, so the integrand is
    ||(Z1 - Z0) + v_unified(Z_t, t)||^2, integrated by the trapezoid rule (Liu et al. 2023, def. 3.4).
    Returned as (sampler, nfe, metric, value) rows under sampler `ode_rk45`, nfe being the solver's
    (the grid_points evaluations of the integrand come on top).
    """
    from torchdiffeq import odeint

    device = device_of(net)
    velocity = method.velocity_fn(net)
    calls = 0

    def rhs(t: Tensor, x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return velocity(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))

    z0 = method.prior_sample(n, generator, device).double()
    times = torch.linspace(1.0, 0.0, grid_points, dtype=torch.float64, device=device)
    with torch.no_grad():
        trajectory = odeint(rhs, z0, times, rtol=context.rtol, atol=context.atol, method="dopri5")
        z1 = trajectory[-1]
        displacement = (z1 - z0).flatten(1)
        deviation = torch.stack([
            (displacement + velocity(x, torch.full((n,), float(t), dtype=x.dtype, device=device)).flatten(1))
            .pow(2).sum(1).mean() for x, t in zip(trajectory, times)])
    straightness = torch.trapezoid(deviation, dx=1.0 / (grid_points - 1))
    transport_cost = displacement.pow(2).sum(1).mean()
    return [("ode_rk45", calls, "straightness", float(straightness)),
            ("ode_rk45", calls, "transport_cost", float(transport_cost))]
