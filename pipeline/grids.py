"""Time grids of the fixed-step samplers, and the one rule that turns a step budget into steps.

A grid runs from the noise end to the data end (decreasing t, pipeline's convention t = 1 noise, t = 0
data), float64. Continuous grids are times; a discrete chain's grids (DDPM's sub-sequences of 1..T) are
integer steps. Every sampler builds its grid here (pipeline.samplers) and spends at most its budget:

    steps = (budget - finishing NFE) // NFE per step                (steps_within)

so Heun and the predictor-corrector (2 NFE a step) spend budget - 1 where a final denoising step makes the
budget odd, and a reported NFE is what the sampler really used (the contract tests count the calls). A
budget that cannot pay for one step raises BudgetTooSmall, and the sample stage leaves that run out (e.g.
Heun at 1 NFE, or annealed Langevin over 10 noise levels at 10): never more NFE than the budget.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

SPACINGS = ("uniform", "quadratic", "log_snr")


class BudgetTooSmall(ValueError):
    """A fixed-step sampler's budget cannot pay for one step and its finishing evaluations."""


def steps_within(budget: int, nfe_per_step: int = 1, finishing_nfe: int = 0) -> int:
    """Steps of a fixed-step sampler that spends at most `budget` NFE; BudgetTooSmall below one step."""
    steps = (budget - finishing_nfe) // nfe_per_step
    if steps < 1:
        raise BudgetTooSmall(f"a budget of {budget} NFE cannot pay for one step of {nfe_per_step} NFE"
                             + (f" and {finishing_nfe} finishing NFE" if finishing_nfe else ""))
    return steps


def uniform(num_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """num_steps + 1 evenly spaced times from t_start to t_end."""
    return torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float64)


def quadratic(num_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """num_steps + 1 times t_end + (t_start - t_end) (k / S)^2, k = S .. 0: dense near the data end
    (DDIM's quadratic skipping, Song, Meng, Ermon 2021 app. D.2, in continuous time from the prior)."""
    k = torch.arange(num_steps, -1, -1, dtype=torch.float64)
    return t_end + (t_start - t_end) * (k / num_steps) ** 2


def log_snr_uniform(log_snr: Callable[[Tensor], Tensor], num_steps: int, t_start: float = 1.0,
                    t_end: float = 0.0) -> Tensor:
    """num_steps + 1 times from t_start to t_end evenly spaced in the log-SNR lambda_t = log(alpha_t / sigma_t)
    (Lu et al. 2022, "logSNR" steps), lambda decreasing in t, inverted by bisection to float64 precision.
    Both ends must have a finite lambda."""
    ends = log_snr(torch.tensor([t_start, t_end], dtype=torch.float64))
    if not torch.isfinite(ends).all():
        raise ValueError("log_snr_uniform needs a finite log-SNR at both ends")
    targets = torch.linspace(float(ends[0]), float(ends[1]), num_steps + 1, dtype=torch.float64)
    low = torch.full_like(targets, min(t_start, t_end))
    high = torch.full_like(targets, max(t_start, t_end))
    for _ in range(64):
        middle = 0.5 * (low + high)
        above = log_snr(middle) > targets  # lambda(middle) too high: the time is too early
        low, high = torch.where(above, middle, low), torch.where(above, high, middle)
    grid = 0.5 * (low + high)
    grid[0], grid[-1] = t_start, t_end
    return grid


def continuous(spacing: str, num_steps: int, t_start: float, t_end: float,
               log_snr: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The continuous grid of a spacing name; log-SNR spacing falls back to uniform where an end has an
    infinite log-SNR (a flow's noise end alpha_1 = 0 or data end sigma_0 = 0)."""
    if spacing == "uniform":
        return uniform(num_steps, t_start, t_end)
    if spacing == "quadratic":
        return quadratic(num_steps, t_start, t_end)
    if spacing == "log_snr":
        if log_snr is not None and torch.isfinite(log_snr(torch.tensor([t_start, t_end], dtype=torch.float64))).all():
            return log_snr_uniform(log_snr, num_steps, t_start, t_end)
        return uniform(num_steps, t_start, t_end)
    raise ValueError(f"unknown spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")


# ---------------------------------------------------------------- a discrete chain's sub-sequences


def chain_uniform(num_steps: int, budget: int) -> Tensor:
    """tau_k = floor(k T / S) + 1, k = 0..S-1 (Song, Meng, Ermon 2021, sec. 4.2)."""
    budget = min(budget, num_steps)
    return (torch.arange(budget, dtype=torch.float64) * num_steps / budget).floor().long() + 1


def chain_quadratic(num_steps: int, budget: int) -> Tensor:
    """floor(linspace(0, sqrt(0.8 T), S)^2) + 1 as in the Analytic-DPM code (the DDIM paper's quadratic
    skipping on CIFAR-10), repeated steps pushed up by one so that the sequence strictly increases."""
    budget = min(budget, num_steps)
    steps = (torch.linspace(0, math.sqrt(0.8 * num_steps), budget, dtype=torch.float64) ** 2).floor().long() + 1
    offset = torch.arange(budget)
    return torch.cummax(steps - offset, 0).values + offset


def chain_log_snr(alpha_bars: Tensor, budget: int) -> Tensor:
    """tau_1 < ... < tau_S: the chain's steps nearest to a grid uniform in log-SNR from step T to step 1
    (Lu et al. 2022's "logSNR" steps on a discrete chain; alpha_bars at steps 0..T), repeats pushed up by
    one as in the quadratic skipping and then, where that passes step T, pulled down to T - (S - i), so
    that S = budget steps strictly increase within 1..T (near S = T a clamp at T repeated steps: a zero
    log-SNR step)."""
    num_steps = len(alpha_bars) - 1
    budget = min(budget, num_steps)
    log_snr = 0.5 * (alpha_bars.log() - (1 - alpha_bars).log())  # log(alpha / sigma), steps 0..T
    targets = torch.linspace(float(log_snr[1]), float(log_snr[num_steps]), budget, dtype=torch.float64)
    nearest = (log_snr[1:, None] - targets[None]).abs().argmin(0) + 1
    offset = torch.arange(budget)
    steps = torch.cummax(nearest - offset, 0).values + offset
    return torch.minimum(steps, num_steps - budget + 1 + offset)


def chain(spacing: str, alpha_bars: Tensor, budget: int) -> Tensor:
    """A discrete chain's sub-sequence tau_1 < ... < tau_S of a spacing name."""
    num_steps = len(alpha_bars) - 1
    if spacing == "uniform":
        return chain_uniform(num_steps, budget)
    if spacing == "quadratic":
        return chain_quadratic(num_steps, budget)
    if spacing == "log_snr":
        return chain_log_snr(alpha_bars, budget)
    raise ValueError(f"unknown spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")
