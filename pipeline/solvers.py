"""ODE and SDE integrators. They see only a drift (and diffusion) function of (x, t), never a method.

Time grids (pipeline.grids) run from the noise end to the data end (decreasing t), so every step has
h = t_next - t < 0.
Every solver returns the number of function evaluations (NFE) it really used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pipeline import rng

VelocityFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SolverResult:
    x: Tensor
    nfe: int


class CountingFn:
    """Wraps f(x, t) and counts its calls (one call = one network evaluation on the batch)."""

    def __init__(self, fn: VelocityFn):
        self.fn = fn
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(x, t)


def _time(t: float | Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def ode_euler(velocity_fn: VelocityFn, x: Tensor, time_grid: Tensor) -> SolverResult:
    """Explicit Euler on dx/dt = v(x, t) along the grid."""
    fn = CountingFn(velocity_fn)
    for t, t_next in zip(time_grid[:-1], time_grid[1:]):
        x = x + (t_next - t) * fn(x, _time(t, x))
    return SolverResult(x, fn.calls)


def ode_heun(velocity_fn: VelocityFn, x: Tensor, time_grid: Tensor) -> SolverResult:
    """Heun's second-order method (explicit trapezoid), 2 NFE per step (Karras et al. 2022, Alg. 1)."""
    fn = CountingFn(velocity_fn)
    for t, t_next in zip(time_grid[:-1], time_grid[1:]):
        h = t_next - t
        d1 = fn(x, _time(t, x))
        x_euler = x + h * d1
        d2 = fn(x_euler, _time(t_next, x))
        x = x + h * 0.5 * (d1 + d2)
    return SolverResult(x, fn.calls)


def dpm_solver_pp(x0_fn: VelocityFn, x: Tensor, time_grid: Tensor, alpha_sigma: Callable[[float], tuple[float, float]],
                  order: int = 2) -> SolverResult:
    """DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095, Alg. 2; order 2 is "2M"): the exponential
    integrator of the probability-flow ODE written in the data prediction x0(x, t) and the path's log-SNR
    lambda_t = log(alpha_t / sigma_t), one NFE a step:

        x_next = (sigma_next / sigma) x + (alpha_next - sigma_next alpha / sigma) D,    e^{-h} = e^{lambda - lambda_next},

    D = x0(x, t) at first order (DDIM with eta = 0, Song et al. 2021 eq. 12) and, at second order,
    (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} with r = h_{i-1} / h_i. A step from or onto an end of infinite
    log-SNR (alpha = 0 at the noise end of a flow, sigma = 0 at its data end) has no finite h: it takes
    the first-order step, which is exact there (Lu et al.'s lower-order final step).
    """
    fn = CountingFn(x0_fn)
    previous: tuple[Tensor, float] | None = None
    for t, t_next in zip(time_grid[:-1], time_grid[1:]):
        (alpha, sigma), (alpha_next, sigma_next) = alpha_sigma(float(t)), alpha_sigma(float(t_next))
        h = _log_snr(alpha_next, sigma_next) - _log_snr(alpha, sigma)
        x0 = fn(x, _time(t, x))
        data = x0
        if order == 2 and previous is not None and math.isfinite(h) and math.isfinite(previous[1]):
            ratio = previous[1] / h
            data = (1 + 0.5 / ratio) * x0 - (0.5 / ratio) * previous[0]
        x = (sigma_next / sigma) * x + (alpha_next - sigma_next * alpha / sigma) * data
        previous = (x0, h)
    return SolverResult(x, fn.calls)


def _log_snr(alpha: float, sigma: float) -> float:
    if alpha <= 0:
        return -math.inf
    if sigma <= 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def ode_rk45(velocity_fn: VelocityFn, x: Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
             atol: float = 1e-5) -> SolverResult:
    """Adaptive Dormand-Prince RK45 (torchdiffeq's dopri5) from t_start to t_end."""
    from torchdiffeq import odeint

    fn = CountingFn(velocity_fn)

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        return fn(y, _time(t, y))

    times = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    # step_t: the last step lands on t_end instead of stepping past it and interpolating, so the drift
    # is never evaluated outside [t_end, t_start] (the VP path has no sigma_t at t < 0)
    path = odeint(rhs, x, times, rtol=rtol, atol=atol, method="dopri5", options={"step_t": times})
    return SolverResult(path[-1], fn.calls)


def sde_euler_maruyama(drift_fn: VelocityFn, diffusion_fn: Callable[[Tensor], Tensor], x: Tensor,
                       time_grid: Tensor, generator: torch.Generator, final_noise: bool = False) -> SolverResult:
    """Euler-Maruyama on dx = drift(x, t) dt + diffusion(t) dw, integrated backwards in time.

    Each step draws z ~ N(0, I) and adds diffusion(t) sqrt(|h|) z; the last step adds no noise
    unless final_noise (the returned x is then the step's mean, as in Song et al.'s samplers).
    """
    fn = CountingFn(drift_fn)
    steps = list(zip(time_grid[:-1], time_grid[1:]))
    for k, (t, t_next) in enumerate(steps):
        h = t_next - t
        tt = _time(t, x)
        x = x + h * fn(x, tt)
        if final_noise or k < len(steps) - 1:
            g = diffusion_fn(tt).reshape(-1, *([1] * (x.ndim - 1)))
            x = x + g * abs(float(h)) ** 0.5 * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)


def langevin_step(score: Tensor, x: Tensor, snr: float, scale: float, generator: torch.Generator) -> Tensor:
    """One Langevin MCMC step x + eps s + sqrt(2 eps) z whose size follows the signal-to-noise rule
    eps = 2 scale (snr ||z|| / ||s||)^2, norms averaged over the batch (Song et al. 2021, Alg. 4-5)."""
    z = rng.normal_like(x, generator)
    score_norm = score.flatten(1).norm(dim=1).mean()
    noise_norm = z.flatten(1).norm(dim=1).mean()
    step = 2.0 * scale * (snr * noise_norm / score_norm.clamp_min(1e-12)) ** 2
    return x + step * score + (2.0 * step).sqrt() * z


def predictor_corrector(score_fn: VelocityFn, transition_fn: Callable[[float, float], tuple[float, float]],
                        x: Tensor, time_grid: Tensor, generator: torch.Generator, snr: float,
                        corrector_steps: int = 1) -> SolverResult:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3): at each grid time t, `corrector_steps`
    Langevin steps, then one reverse-diffusion step to the next grid time.

    transition_fn(t, t_next) -> (a, G^2) describes the forward kernel x_t | x_{t_next} ~ N(a x_{t_next}, G^2 I).
    Reverse diffusion inverts the discretized forward step x_t = x_{t_next} + f + G z with f = (a - 1) x:
        x <- x - (a - 1) x + G^2 s(x, t) + G z        (Song et al. 2021, eq. 46; their ReverseDiffusionPredictor).
    The corrector's scale is a^2 (= alpha_i = 1 - beta_i of the step for VP / sub-VP, 1 for VE). Every step,
    the last included, adds its noise, so the result is a sample of p at the grid's end. NFE = steps (M + 1).
    """
    fn = CountingFn(score_fn)
    for t, t_next in zip(time_grid[:-1].tolist(), time_grid[1:].tolist()):
        tt = _time(t, x)
        a, g_squared = transition_fn(t, t_next)
        for _ in range(corrector_steps):
            x = langevin_step(fn(x, tt), x, snr, a**2, generator)
        x = (2.0 - a) * x + g_squared * fn(x, tt) + g_squared**0.5 * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)


def annealed_langevin(score_fn: VelocityFn, x: Tensor, level_times: Tensor, step_sizes: Tensor,
                      steps_per_level: int, generator: torch.Generator) -> SolverResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): for each level, from the noisiest,
    `steps_per_level` steps x <- x + eta s(x, t_level) + sqrt(2 eta) z with that level's step size eta.
    NFE = levels x steps_per_level."""
    fn = CountingFn(score_fn)
    for t, eta in zip(level_times.tolist(), step_sizes.tolist()):
        tt = _time(t, x)
        for _ in range(steps_per_level):
            x = x + eta * fn(x, tt) + (2.0 * eta) ** 0.5 * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)
