"""Analytic-DPM (Bao, Li, Zhu, Zhang 2022): the optimal reverse variance of a trained eps-network.

Notation of the paper, on a sub-sequence step r -> s (s < r; methods.md 2.8 substitutes n - 1 -> s,
alpha_n -> ab_r / ab_s): bar_beta = 1 - alpha_bar, and the generalized posterior
    q(x_s | x_r, x0) = N(mu_tilde, lambda^2 I),
    mu_tilde = sqrt(ab_s) x0 + sqrt(bar_beta_s - lambda^2) (x_r - sqrt(ab_r) x0) / sqrt(bar_beta_r),
with lambda^2 = beta_tilde (DDPM) or 0 (DDIM). The Gaussian reverse kernel with mean
mu_tilde(x_r, E[x0 | x_r]) has the optimal isotropic variance (Bao et al. 2022, Thm. 1 / eq. 7)
    sigma*^2 = lambda^2 + gamma^2 * xbar^2,
    gamma    = sqrt(ab_s) - sqrt(bar_beta_s - lambda^2) sqrt(ab_r / bar_beta_r)   (the x0-coefficient of mu_tilde),
    xbar^2   = E||x0 - E[x0 | x_r]||^2 / d = (bar_beta_r / ab_r) (1 - bar_beta_r Gamma_r),
and bar_beta_r Gamma_r = E||eps_theta(x_r, r)||^2 / d is estimated by Monte Carlo over training data.
This is the paper's first form, (sqrt(bar_beta_r / alpha_r) - sqrt(bar_beta_s - lambda^2))^2 (1 - bar_beta_r Gamma_r)
written through gamma (the two agree term by term).

Clipping (the authors' code, methods.md 2.8): xbar^2 is clamped into [0, ((b - a)/2)^2], the largest
variance of a distribution on [a, b]. Images live in [-1, 1], giving 1. For data without a fixed range
(2-D benchmarks) the bound is the mean over coordinates of ((max - min)/2)^2 over the training split:
each coordinate's posterior variance is at most its own ((b_i - a_i)/2)^2, so their mean bounds the
isotropic xbar^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pipeline import rng


def mean_square_eps(eps_fn: Callable[[Tensor, int], Tensor], alpha_bar: Tensor, data: Tensor, steps: list[int],
                    generator: torch.Generator, batch_size: int = 4096) -> Tensor:
    """E||eps_theta(x_n, n)||^2 / d = bar_beta_n Gamma_n for each n in `steps` (float64, one entry per step).

    x_n = sqrt(ab_n) x_m + sqrt(bar_beta_n) eps_m over the given points x_m, one fresh noise draw per
    point and step, as the authors' `save_ms_eps` (Bao et al. 2022, eq. 8). alpha_bar is indexed by step.
    """
    values = []
    for n in steps:
        ab = float(alpha_bar[n])
        total = 0.0
        for chunk in data.split(batch_size):
            noise = rng.normal_like(chunk, generator)
            x_n = math.sqrt(ab) * chunk + math.sqrt(1 - ab) * noise
            total += float(eps_fn(x_n, n).double().flatten(1).pow(2).sum())
        values.append(total / data[0].numel() / data.shape[0])
    return torch.tensor(values, dtype=torch.float64)


def x0_variance(mean_square_eps_r: float, alpha_bar_r: float, bound: float) -> float:
    """xbar_r^2 = (bar_beta_r / ab_r)(1 - E||eps||^2/d), clamped into [0, bound] as in the authors' code."""
    raw = (1 - alpha_bar_r) / alpha_bar_r * (1 - mean_square_eps_r)
    return min(max(raw, 0.0), bound)


def x0_coefficient(alpha_bar_r: float, alpha_bar_s: float, lambda_sq: float) -> float:
    """gamma: the coefficient of x0 in mu_tilde(x_r, x0) for the step r -> s."""
    return math.sqrt(alpha_bar_s) - math.sqrt((1 - alpha_bar_s - lambda_sq) * alpha_bar_r / (1 - alpha_bar_r))


def optimal_variance(alpha_bar_r: float, alpha_bar_s: float, lambda_sq: float, mean_square_eps_r: float,
                     bound: float) -> float:
    """sigma*^2 = lambda^2 + gamma^2 xbar_r^2 (Bao et al. 2022, Thm. 1, clipped as their code)."""
    gamma = x0_coefficient(alpha_bar_r, alpha_bar_s, lambda_sq)
    return lambda_sq + gamma**2 * x0_variance(mean_square_eps_r, alpha_bar_r, bound)


def x0_variance_bound(train: Tensor) -> float:
    """mean_i ((max_i - min_i) / 2)^2 over the coordinates of the training split (the clamp's upper end)."""
    flat = train.double().flatten(1)
    half_range = (flat.max(0).values - flat.min(0).values) / 2
    return float(half_range.pow(2).mean())


@dataclass(frozen=True)
class AnalyticTable:
    """What Analytic-DPM computes once per trained model.

    mean_square_eps[n] = E||eps_theta(x_n, n)||^2 / d for n = 1..T (entry 0 unused, 0);
    x0_variance_bound: the clamp's upper end; points: how many training points the estimate used.
    """

    mean_square_eps: Tensor
    x0_variance_bound: float
    points: int

    def gamma(self, alpha_bar: Tensor) -> Tensor:
        """Gamma_n = E||grad log q_n||^2 / d = E||eps||^2 / (d bar_beta_n), n = 1..T."""
        return self.mean_square_eps[1:] / (1 - alpha_bar[1:])

    def variance(self, alpha_bar: Tensor, r: int, s: int, lambda_sq: float) -> float:
        return optimal_variance(float(alpha_bar[r]), float(alpha_bar[s]), lambda_sq,
                                float(self.mean_square_eps[r]), self.x0_variance_bound)

    def to_dict(self) -> dict:
        return {"mean_square_eps": self.mean_square_eps.cpu(), "x0_variance_bound": self.x0_variance_bound,
                "points": self.points}

    @classmethod
    def from_dict(cls, saved: dict) -> AnalyticTable:
        return cls(saved["mean_square_eps"].double(), float(saved["x0_variance_bound"]), int(saved["points"]))


def estimate_table(eps_fn: Callable[[Tensor, int], Tensor], alpha_bar: Tensor, train: Tensor, points: int,
                   generator: torch.Generator) -> AnalyticTable:
    """The table for steps 1..T from `points` training examples drawn without replacement."""
    index = rng.permutation(train.shape[0], generator, train.device)[:points]
    subset = train[index]
    num_steps = alpha_bar.shape[0] - 1
    values = mean_square_eps(eps_fn, alpha_bar, subset, list(range(1, num_steps + 1)), generator)
    table = torch.cat([torch.zeros(1, dtype=torch.float64), values])
    return AnalyticTable(table, x0_variance_bound(train), subset.shape[0])
