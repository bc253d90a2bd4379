"""Methods on an affine Gaussian path: what they offer the shared samplers (pipeline.samplers).

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

from pipeline import grids, rng
from pipeline.likelihood import ode_log_likelihood
from pipeline.methods.base import EvalContext, LikelihoodRecord, Method, call_network
from pipeline.nets import float64_copy, network_settings
from pipeline.parameterization import (Preconditioned, Prediction, from_x0_and_eps, to_score, to_velocity, to_x0,
                                       to_x0_and_eps)
from pipeline.paths import AffinePath
from pipeline.samplers import FlowODE
from pipeline.solvers import SolverResult


class AffineMethod(Method):
    """A method trained by regression on an affine Gaussian path."""

    capabilities = frozenset({"ode", "affine_ode", "gaussian_posterior"})
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
            return to_velocity(self.output(net, x, t), self.prediction, x, self.path.at(t, x))

        return velocity

    def score_fn(self, net: nn.Module):
        def score(x: Tensor, t: Tensor) -> Tensor:
            return to_score(self.output(net, x, t), self.prediction, x, self.path.at(t, x))

        return score

    def x0_fn(self, net: nn.Module):
        """The model's data prediction x0_hat(x, t) (Tweedie's mean, methods.md 2.7)."""

        def x0(x: Tensor, t: Tensor) -> Tensor:
            return to_x0(self.output(net, x, t), self.prediction, x, self.path.at(t, x))

        return x0

    def data_and_noise_fn(self, net: nn.Module):
        """(x0_hat, eps_hat)(x, t) of the trained model (pipeline.parameterization)."""

        def data_and_noise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return to_x0_and_eps(self.output(net, x, t), self.prediction, x, self.path.at(t, x))

        return data_and_noise

    @property
    def finishing_nfe(self) -> int:
        """NFE of the final denoising step (methods.md 2.7): 1 where the samplers stop short of t = 0."""
        return 1 if self.denoise_final and self.t_end_sample > 0 else 0

    def time_grid(self, budget: int, spacing: str, nfe_per_step: int = 1) -> Tensor:
        """Times from t = 1 to t_end for a fixed-step sampler within `budget` NFE (pipeline.grids)."""
        steps = grids.steps_within(budget, nfe_per_step, self.finishing_nfe)
        return grids.continuous(spacing, steps, 1.0, self.t_end_sample, self.log_snr)

    def finish(self, net: nn.Module, result: SolverResult) -> SolverResult:
        return self.denoise(net, result)

    def probability_flow(self, net: nn.Module) -> FlowODE:
        """The probability-flow ODE from t = 1 to t_end, then the denoising step."""
        return FlowODE(self.velocity_fn(net), 1.0, self.t_end_sample, lambda result: self.denoise(net, result),
                       self.finishing_nfe)

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """alpha_t and sigma_t of the path at one time, as floats (for the exponential integrators and the
        chains). A chain's step asks for the same two times several times over, so each is computed once."""
        known = self.__dict__.setdefault("_alpha_sigma", {})
        if t not in known:
            c = self.path(torch.tensor([t], dtype=torch.float64))
            known[t] = float(c.alpha[0]), float(c.sigma[0])
        return known[t]

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) of the path."""
        c = self.path(t)
        return c.alpha.log() - c.sigma.log()

    def denoise(self, net: nn.Module, result: SolverResult) -> SolverResult:
        """Tweedie's x0_hat at the end time (methods.md 2.7), when the method asks for it."""
        if not self.finishing_nfe:
            return result
        x = result.x
        t = torch.full((x.shape[0],), self.t_end_sample, dtype=x.dtype, device=x.device)
        x0 = to_x0(self.output(net, x, t), self.prediction, x, self.path.at(t, x))
        return SolverResult(x0, result.nfe + 1)

    def log_likelihood(self, net: nn.Module, x: Tensor, generator: torch.Generator,
                       context: EvalContext) -> list[LikelihoodRecord]:
        """Probability-flow ODE likelihood (Song et al. 2021, app. D.2), exact divergence in low dimension."""
        estimator = "exact" if self.dim <= 16 else "hutchinson"
        result = ode_log_likelihood(self.velocity_fn(float64_copy(net)), x, self.path.prior_log_prob, self.t_start_likelihood,
                                    1.0, divergence=estimator, generator=generator, rtol=context.rtol,
                                    atol=context.atol)
        return [LikelihoodRecord("ode_rk45", result.nfe, result.log_prob, f"ode_{estimator}")]


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
