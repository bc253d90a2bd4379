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
    nfe: float  # per sample: the steps' evaluations, or an adaptive solver's mean over samples


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


# Dormand-Prince 5(4) (Dormand & Prince 1980) with torchdiffeq's embedded error weights (its dopri5 tableau)
_DOPRI5_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DOPRI5_WEIGHTS = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DOPRI5_ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
                 -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60)


def _combine(weights: tuple[float, ...], stages: Tensor) -> Tensor:
    """sum_j w_j k_j elementwise (a matrix product's rounding would depend on the batch's shape)."""
    total = torch.zeros_like(stages[0])
    for weight, stage in zip(weights, stages):
        if weight:
            total = total + weight * stage
    return total


def _rms(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).mean(1).sqrt()


def dopri5(fn: VelocityFn, y: Tensor, t_start: float, t_end: float, rtol: float, atol: float,
           norm: Callable[[Tensor], Tensor] = _rms, max_steps: int = 100_000) -> tuple[Tensor, Tensor]:
    """Adaptive Dormand-Prince RK45 on dy/dt = fn(y, t) with one step size per sample: each row of y has its own
    time, step, error norm (RMS over the row) and accept/reject decision, so a row's solution does not depend on
    the rows solved beside it (torchdiffeq's dopri5 shares one step size and one error norm over the batch).
    Rows that have reached t_end drop out of the evaluations, so a batch costs its rows' NFE, not its slowest's.
    The controller is torchdiffeq's (Hairer's initial step; safety 0.9, growth at most 10x, shrink at most
    5x, no shrink after an accepted step); a step never passes t_end (torchdiffeq's step_t at the end).
    `norm` maps the scaled error (rows, ...) to one number per row (default: RMS over the row).
    Returns y at t_end and each row's function evaluations (2 to start, 6 per attempted step).
    """
    rows, shape = y.shape[0], (-1, *([1] * (y.ndim - 1)))
    direction = 1.0 if t_end >= t_start else -1.0
    time = torch.full((rows,), float(t_start), dtype=torch.float64, device=y.device)
    remaining = torch.full((rows,), abs(t_end - t_start), dtype=torch.float64, device=y.device)
    evaluate = lambda x, t: fn(x, t.to(y.dtype))
    slope = evaluate(y, time)
    step = _initial_step(evaluate, y, slope, time, direction, rtol, atol, norm, abs(t_end - t_start))
    evaluations = torch.full((rows,), 2, dtype=torch.int64, device=y.device)
    y = y.clone()
    for _ in range(max_steps):
        active = torch.nonzero(remaining > 0).squeeze(1)  # finished rows are no longer evaluated
        if active.numel() == 0:
            return y, evaluations
        y_a, slope_a, time_a, remaining_a = y[active], slope[active], time[active], remaining[active]
        size = torch.minimum(step[active], remaining_a)
        h = (direction * size).to(y.dtype).reshape(shape)
        stages = [slope_a]
        for i, row in enumerate(_DOPRI5_WEIGHTS[1:], start=1):
            stages.append(evaluate(y_a + h * _combine(row, stages), time_a + direction * _DOPRI5_NODES[i] * size))
        y_next = y_a + h * _combine(_DOPRI5_WEIGHTS[-1], stages)
        error = h * _combine(_DOPRI5_ERROR, stages)
        ratio = norm(error / (atol + rtol * torch.maximum(y_a.abs(), y_next.abs()))).double()
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, math.inf))  # reject, shrink 5x
        accept = ratio <= 1
        last = accept & (size >= remaining_a)
        time[active] = torch.where(last, torch.full_like(time_a, float(t_end)),
                                   torch.where(accept, time_a + direction * size, time_a))
        remaining[active] = torch.where(last, torch.zeros_like(remaining_a),
                                        torch.where(accept, remaining_a - size, remaining_a))
        y[active] = torch.where(accept.reshape(shape), y_next, y_a)
        slope[active] = torch.where(accept.reshape(shape), stages[6], slope_a)
        evaluations[active] += 6
        shrink = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, 0.2))
        factor = torch.clamp(0.9 / ratio.clamp_min(1e-300) ** 0.2, max=10.0)
        factor = torch.where(ratio == 0, torch.full_like(ratio, 10.0), torch.maximum(factor, shrink))
        step[active] = size * factor
    raise RuntimeError(f"RK45 did not reach t = {t_end} within {max_steps} steps (rtol {rtol}, atol {atol})")


def _initial_step(evaluate, y: Tensor, slope: Tensor, time: Tensor, direction: float, rtol: float,
                  atol: float, norm: Callable[[Tensor], Tensor], span: float) -> Tensor:
    """Per-row initial step (Hairer, Norsett & Wanner, Solving ODEs I, sec. II.4; torchdiffeq's
    _select_initial_step at order 4), one evaluation. Its trial step stays within the interval (`span`): one
    row's small slope would otherwise probe far outside it (the VP path has no sigma_t at t < 0)."""
    shape = (-1, *([1] * (y.ndim - 1)))
    scale = atol + y.abs() * rtol
    d0, d1 = norm(y / scale).double(), norm(slope / scale).double()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = h0.clamp_max(span)
    y1 = y + (direction * h0).to(y.dtype).reshape(shape) * slope
    d2 = norm((evaluate(y1, time + direction * h0) - slope) / scale).double() / h0
    h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15), torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / torch.maximum(d1, d2).clamp_min(1e-300)) ** 0.2)
    return torch.minimum(100 * h0, h1)


def ode_rk45(velocity_fn: VelocityFn, x: Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
             atol: float = 1e-5) -> SolverResult:
    """Adaptive RK45 with per-sample step control (`dopri5`) from t_start to t_end. NFE: the mean over samples
    of each sample's evaluations (the cost of one sample solved alone; a batch runs until its slowest)."""
    x_end, evaluations = dopri5(velocity_fn, x, t_start, t_end, rtol, atol)
    return SolverResult(x_end, float(evaluations.double().mean()))


def sde_euler_maruyama(drift_fn: VelocityFn, diffusion_fn: Callable[[Tensor], Tensor], x: Tensor,
                       time_grid: Tensor, generator: rng.Source, final_noise: bool = False) -> SolverResult:
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


def langevin_step(score: Tensor, x: Tensor, snr: float, scale: float, noise_std: float,
                  generator: rng.Source) -> Tensor:
    """One Langevin MCMC step x + eps s + sqrt(2 eps) z by the signal-to-noise rule eps = 2 scale (snr ||z|| / ||s||)^2
    (Song et al. 2021, Alg. 4-5) with the norms at their expectations, E||z||^2 = d and
    E||s_t||^2 = E||eps||^2 / sigma_t^2 ~ d / sigma_t^2: eps = 2 scale (snr sigma_t)^2. The released code averages
    the two norms over the batch, which makes a sample depend on its batch; each sample's own norms (the
    algorithm read literally) take huge steps where ||s|| is small and miss the oracle's mixture by 4-6x its
    W2 floor in 2-D, the expected norms land within it (tests/test_score_sde.py)."""
    step = 2.0 * scale * (snr * noise_std) ** 2
    return x + step * score + math.sqrt(2.0 * step) * rng.normal_like(x, generator)


def predictor_corrector(score_fn: VelocityFn, transition_fn: Callable[[float, float], tuple[float, float]],
                        noise_std_fn: Callable[[float], float], x: Tensor, time_grid: Tensor,
                        generator: rng.Source, snr: float, corrector_steps: int = 1) -> SolverResult:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3): at each grid time t, `corrector_steps`
    Langevin steps, then one reverse-diffusion step to the next grid time.

    transition_fn(t, t_next) -> (a, G^2) describes the forward kernel x_t | x_{t_next} ~ N(a x_{t_next}, G^2 I);
    noise_std_fn(t) is the marginal's sigma_t (the corrector's step size, langevin_step).
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
            x = langevin_step(fn(x, tt), x, snr, a**2, noise_std_fn(t), generator)
        x = (2.0 - a) * x + g_squared * fn(x, tt) + g_squared**0.5 * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)


def annealed_langevin(score_fn: VelocityFn, x: Tensor, level_times: Tensor, step_sizes: Tensor,
                      steps_per_level: int, generator: rng.Source) -> SolverResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): for each level, from the noisiest,
    `steps_per_level` steps x <- x + eta s(x, t_level) + sqrt(2 eta) z with that level's step size eta.
    NFE = levels x steps_per_level."""
    fn = CountingFn(score_fn)
    for t, eta in zip(level_times.tolist(), step_sizes.tolist()):
        tt = _time(t, x)
        for _ in range(steps_per_level):
            x = x + eta * fn(x, tt) + (2.0 * eta) ** 0.5 * rng.normal_like(x, generator)
    return SolverResult(x, fn.calls)
