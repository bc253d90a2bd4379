"""The shared sampler table: every sampler that more than one method can run, keyed by its results.csv name,
with what it needs of a method. A method declares its capabilities and draws every sampler that needs no
more (pipeline.methods.base.Method.sampler_table); a sampler only one model can run (SMLD's annealed
Langevin, Analytic-DPM's variances) stays in its method's module.

Capabilities and what a method then provides:
  ode                 probability_flow(net) -> FlowODE: a velocity dx/dt and the interval it is solved on
  affine_ode          alpha_sigma(t), data_and_noise_fn(net) -> (x0_hat, eps_hat), time_grid(budget, spacing),
                      finish(net, result): the affine interpolation x_t = alpha_t x0 + sigma_t eps behind the flow
  gaussian_posterior  the noise is independent of the data, so q(x_s | x_r, x0) is the path's Gaussian
                      posterior (DDPM, the SDEs, flow matching; not a reflowed or OT-coupled flow)
  reverse_sde         reverse_sde(net) -> (drift, diffusion), transition(t, t_next), score_fn(net), config.snr

Budgets follow one rule (pipeline.grids.steps_within): a fixed-step sampler spends at most its budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from pipeline import grids, rng
from pipeline.nets import float64_copy
from pipeline.schema import RK45_TOLERANCE
from pipeline.solvers import (CountingFn, SolverResult, dpm_solver_pp, ode_euler, ode_heun, ode_rk45,
                              predictor_corrector, sde_euler_maruyama)

VarianceFn = Callable[[float, float], float]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: fn(method, net, x_init, budget, generator) -> SolverResult.

    requires: the capabilities a method must have to run it. uses_budget: whether it runs once per step
    budget of params.yaml (False for adaptive solvers, which report the NFE they used).
    """

    fn: Callable[..., SolverResult]
    uses_budget: bool = True
    description: str = ""
    requires: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class FlowODE:
    """A method's sampling ODE: dx/dt = velocity(x, t) from t_start (noise) to t_end, then finish(result),
    which may spend finishing_nfe more evaluations (a diffusion's final denoising step)."""

    velocity: Callable[[Tensor, Tensor], Tensor]
    t_start: float
    t_end: float
    finish: Callable[[SolverResult], SolverResult] = lambda result: result
    finishing_nfe: int = 0


# ---------------------------------------------------------------- the probability-flow ODE


def flow_trajectory(method, net, x: Tensor, steps: int) -> Tensor:
    """The states of Heun's method along a method's sampling ODE (capability `ode`) on a uniform grid of
    `steps` steps, before any finishing step: [steps + 1, n, ...] (the paths the report draws)."""
    flow = method.probability_flow(net)
    grid = grids.uniform(steps, flow.t_start, flow.t_end)
    states = [x]
    with torch.no_grad():
        for t, t_next in zip(grid[:-1], grid[1:]):
            states.append(ode_heun(flow.velocity, states[-1], torch.stack([t, t_next])).x)
    return torch.stack(states)


def sample_ode_euler(method, net, x: Tensor, budget: int, generator) -> SolverResult:
    """Euler on the sampling ODE, uniform steps."""
    flow = method.probability_flow(net)
    grid = grids.uniform(grids.steps_within(budget, 1, flow.finishing_nfe), flow.t_start, flow.t_end)
    return flow.finish(ode_euler(flow.velocity, x, grid))


def sample_ode_heun(method, net, x: Tensor, budget: int, generator) -> SolverResult:
    """Heun (2 NFE a step; Karras et al. 2022, Alg. 1) on the sampling ODE, uniform steps."""
    flow = method.probability_flow(net)
    grid = grids.uniform(grids.steps_within(budget, 2, flow.finishing_nfe), flow.t_start, flow.t_end)
    return flow.finish(ode_heun(flow.velocity, x, grid))


def sample_ode_rk45(method, net, x: Tensor, budget, generator) -> SolverResult:
    """Adaptive Dormand-Prince (rtol = atol = 1e-5, per-sample step control) on the sampling ODE, in float64
    (pipeline.nets.float64_copy); reports the mean NFE per sample."""
    flow = method.probability_flow(float64_copy(net))
    result = flow.finish(ode_rk45(flow.velocity, x.double(), flow.t_start, flow.t_end, RK45_TOLERANCE, RK45_TOLERANCE))
    return SolverResult(result.x.to(x.dtype), result.nfe)


# ---------------------------------------------------------------- chains on an affine path


def implicit_chain(alpha_sigma: Callable[[float], tuple[float, float]], data_and_noise, x: Tensor, grid: Tensor,
                   lambda_sq: VarianceFn, variance: VarianceFn, generator: torch.Generator) -> SolverResult:
    """x_s = alpha_s x0_hat + sqrt(sigma_s^2 - lambda^2) eps_hat + sqrt(variance) z along the grid (Song, Meng,
    Ermon 2021, eq. 12 on any affine path). DDIM draws with variance = lambda^2; Analytic-DDIM keeps lambda = 0
    in the mean and draws with its sigma*^2 (Bao et al. 2022, eq. 9). No noise onto sigma_s = 0."""
    fn = CountingFn(data_and_noise)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x0, eps = fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        alpha_s, sigma_s = alpha_sigma(t_next)
        x = alpha_s * x0 + math.sqrt(max(sigma_s**2 - lambda_sq(t, t_next), 0.0)) * eps
        step_variance = variance(t, t_next) if sigma_s > 0 else 0.0
        if step_variance > 0:
            x = x + math.sqrt(step_variance) * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)


def ancestral_chain(alpha_sigma: Callable[[float], tuple[float, float]], data_and_noise, x: Tensor, grid: Tensor,
                    variance: VarianceFn, generator: torch.Generator) -> SolverResult:
    """x_s = posterior mean(x0_hat, x_r) + sqrt(variance(r, s)) z along the grid, no noise onto sigma_s = 0
    (Ho et al. 2020, Alg. 2, on any affine path): with the forward kernel x_r | x_s ~ N(a x_s, G^2 I),
    a = alpha_r / alpha_s, G^2 = sigma_r^2 - a^2 sigma_s^2, the mean is
    (alpha_s G^2 x0_hat + a sigma_s^2 x_r) / sigma_r^2 (DDPM: beta_{r|s} = G^2, methods.md 2.1)."""
    fn = CountingFn(data_and_noise)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x0, _ = fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        (alpha_r, sigma_r), (alpha_s, sigma_s) = alpha_sigma(t), alpha_sigma(t_next)
        ratio = alpha_r / alpha_s
        kernel = sigma_r**2 - ratio**2 * sigma_s**2
        x = (alpha_s * kernel / sigma_r**2) * x0 + (ratio * sigma_s**2 / sigma_r**2) * x
        if sigma_s > 0:
            x = x + math.sqrt(variance(t, t_next)) * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)


def kernel_variance(alpha_sigma, t: float, t_next: float) -> float:
    """G^2 = sigma_r^2 - (alpha_r / alpha_s)^2 sigma_s^2 of the forward kernel from s = t_next to r = t
    (DDPM's beta_{r|s} = 1 - ab_r / ab_s)."""
    (alpha_r, sigma_r), (alpha_s, sigma_s) = alpha_sigma(t), alpha_sigma(t_next)
    return sigma_r**2 - (alpha_r / alpha_s) ** 2 * sigma_s**2


def posterior_variance(alpha_sigma, t: float, t_next: float) -> float:
    """Variance sigma_s^2 G^2 / sigma_r^2 of q(x_s | x_r, x0) (DDPM's beta_tilde_{r|s})."""
    sigma_r, sigma_s = alpha_sigma(t)[1], alpha_sigma(t_next)[1]
    return sigma_s**2 / sigma_r**2 * kernel_variance(alpha_sigma, t, t_next)


def sample_ancestral(method, net, x: Tensor, budget: int, generator, variance: str) -> SolverResult:
    """Ancestral sampling on uniform steps with the reverse variance G^2 ("beta": optimal for N(0, I) data)
    or the posterior's ("posterior": optimal for a point mass; Ho et al. 2020, sec. 3.2)."""
    rule = kernel_variance if variance == "beta" else posterior_variance
    result = ancestral_chain(method.alpha_sigma, method.data_and_noise_fn(net), x,
                             method.time_grid(budget, "uniform"), partial(rule, method.alpha_sigma), generator)
    return method.finish(net, result)


def sample_ddim(method, net, x: Tensor, budget: int, generator, eta: float, skip: str) -> SolverResult:
    """DDIM with lambda^2 = eta^2 x the posterior variance (Song, Meng, Ermon 2021, eq. 16), on the method's
    uniform or quadratic grid: eta = 0 is deterministic, eta = 1 draws DDPM's posterior variance."""

    def lambda_sq(t: float, t_next: float) -> float:
        return eta**2 * posterior_variance(method.alpha_sigma, t, t_next)

    result = implicit_chain(method.alpha_sigma, method.data_and_noise_fn(net), x, method.time_grid(budget, skip),
                            lambda_sq, lambda_sq, generator)
    return method.finish(net, result)


def ddim_name(eta: float, skip: str) -> str:
    """The results.csv name of one DDIM variant, e.g. ddim-eta0.0-uniform."""
    return f"ddim-eta{float(eta)}-{skip}"


def ddim_samplers(etas, skips) -> dict[str, SamplerSpec]:
    """One DDIM sampler per eta x skipping; eta > 0 draws from the path's Gaussian posterior."""
    return {ddim_name(eta, skip): SamplerSpec(
        partial(sample_ddim, eta=float(eta), skip=skip), description=f"DDIM, eta = {eta}, {skip} steps",
        requires=frozenset({"affine_ode"} | ({"gaussian_posterior"} if eta > 0 else set())))
        for eta in etas for skip in skips}


def sample_dpm_solver_pp(method, net, x: Tensor, budget: int, generator, order: int = 2) -> SolverResult:
    """DPM-Solver++(2M) (Lu et al. 2022) on the method's log-SNR-uniform grid (uniform in t where an end's
    log-SNR is infinite, as on the flows: there the first step is exact and, on the linear path, the first
    order is Euler); its first order is DDIM with eta = 0 on the same grid."""

    def data(x: Tensor, t: Tensor) -> Tensor:
        return data_and_noise(x, t)[0]

    data_and_noise = method.data_and_noise_fn(net)
    return method.finish(net, dpm_solver_pp(data, x, method.time_grid(budget, "log_snr"), method.alpha_sigma,
                                            order))


# ---------------------------------------------------------------- the reverse SDE


def sample_euler_maruyama(method, net, x: Tensor, budget: int, generator) -> SolverResult:
    """Euler-Maruyama on the reverse SDE, uniform steps, then the method's finish (Tweedie's denoising step)."""
    drift, diffusion = method.reverse_sde(net)
    grid = method.time_grid(budget, "uniform")
    return method.finish(net, sde_euler_maruyama(drift, diffusion, x, grid, generator, final_noise=True))


def sample_predictor_corrector(method, net, x: Tensor, budget: int, generator) -> SolverResult:
    """Reverse-diffusion predictor + one Langevin corrector step per time (Song et al. 2021, Alg. 2-3): 2 NFE a
    step, then the method's finish."""
    grid = method.time_grid(budget, "uniform", nfe_per_step=2)
    noise_std = lambda t: method.alpha_sigma(t)[1]
    result = predictor_corrector(method.score_fn(net), method.transition, noise_std, x, grid, generator,
                                 method.config.snr)
    return method.finish(net, result)


SAMPLERS: dict[str, SamplerSpec] = {
    "ode_euler": SamplerSpec(sample_ode_euler, description="sampling ODE, Euler", requires=frozenset({"ode"})),
    "ode_heun": SamplerSpec(sample_ode_heun, description="sampling ODE, Heun", requires=frozenset({"ode"})),
    "ode_rk45": SamplerSpec(sample_ode_rk45, uses_budget=False, description="sampling ODE, RK45",
                            requires=frozenset({"ode"})),
    "dpm_solver_pp_2m": SamplerSpec(sample_dpm_solver_pp, description="DPM-Solver++(2M), log-SNR steps",
                                    requires=frozenset({"affine_ode"})),
    "ancestral_beta": SamplerSpec(partial(sample_ancestral, variance="beta"), description="ancestral, variance G^2",
                                  requires=frozenset({"affine_ode", "gaussian_posterior"})),
    "ancestral_posterior": SamplerSpec(partial(sample_ancestral, variance="posterior"),
                                       description="ancestral, posterior variance",
                                       requires=frozenset({"affine_ode", "gaussian_posterior"})),
    "euler_maruyama": SamplerSpec(sample_euler_maruyama, description="reverse SDE, Euler-Maruyama",
                                  requires=frozenset({"reverse_sde"})),
    "pc": SamplerSpec(sample_predictor_corrector, description="reverse diffusion + Langevin corrector",
                      requires=frozenset({"reverse_sde"})),
}


def applicable(capabilities: frozenset[str], etas=(), skips=()) -> dict[str, SamplerSpec]:
    """The shared samplers (and DDIM's eta x skipping variants) a method with these capabilities runs."""
    table = {**SAMPLERS, **ddim_samplers(etas, skips)}
    return {name: spec for name, spec in table.items() if spec.requires <= capabilities}
