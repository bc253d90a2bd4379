"""Probability-flow (continuous normalizing flow) log-likelihood, methods.md 2.12B.

For dx/dt = v(x, t) integrated from the data end t_start to the noise end t_end,
    log p_{t_start}(x) = log p_{t_end}(x(t_end)) + int_{t_start}^{t_end} div v(x(t), t) dt
(Chen et al. 2018; Song et al. 2021, eq. 39). The divergence is exact (d backward passes, used in
low dimension) or Hutchinson's estimate v^T (dv/dx) v with one Rademacher probe per sample that
stays fixed along the whole trajectory (Grathwohl et al. 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pipeline import rng
from pipeline.solvers import VelocityFn, dopri5


@dataclass(frozen=True)
class LikelihoodResult:
    log_prob: Tensor  # per-sample log-density, nats
    nfe: float  # mean over samples


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """sum_i dv_i/dx_i by one backward pass per dimension (x flattened per sample)."""
    flat_v = v.flatten(1)
    div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        grad = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)[0]
        div = div + grad.flatten(1)[:, i]
    return div


def hutchinson_divergence(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """Unbiased estimate probe^T (dv/dx) probe from one vector-Jacobian product."""
    grad = torch.autograd.grad((v * probe).sum(), x)[0]
    return (grad * probe).flatten(1).sum(1)


def ode_log_likelihood(velocity_fn: VelocityFn, x: Tensor, prior_log_prob: Callable[[Tensor], Tensor],
                       t_start: float, t_end: float = 1.0, divergence: str = "exact",
                       generator: rng.Source = None, rtol: float = 1e-5,
                       atol: float = 1e-5) -> LikelihoodResult:
    """log p_{t_start}(x) through the probability-flow ODE solved in float64 by RK45 with per-sample step
    control (pipeline.solvers.dopri5) on the state (x, integral of div v), its error norm torchdiffeq's for a
    pair of tensors (the larger of the two RMS norms), per sample. NFE: the mean over samples."""
    x = x.double()
    probe = None
    if divergence == "hutchinson":
        probe = rng.rademacher_like(x, generator)
    elif divergence != "exact":
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', not {divergence!r}")
    size = x[0].numel()
    rest = tuple(x.shape[1:])

    def rhs(state: Tensor, t: Tensor) -> Tensor:
        """d/dt of the rows' (x, integral, probe): the probe rides in the state (d/dt 0), so a subset of rows
        (the solver drops finished ones) carries its own probes."""
        with torch.enable_grad():
            y = state[:, :size].reshape(-1, *rest).detach().requires_grad_(True)
            v = velocity_fn(y, t)
            div = (exact_divergence(v, y) if probe is None
                   else hutchinson_divergence(v, y, state[:, size + 1:].reshape(y.shape)))
        return torch.cat([v.detach().flatten(1), div.detach()[:, None], torch.zeros_like(state[:, size + 1:])], 1)

    def norm(scaled: Tensor) -> Tensor:
        return torch.maximum(scaled[:, :size].pow(2).mean(1).sqrt(), scaled[:, size].abs())

    parts = [x.flatten(1), x.new_zeros(x.shape[0], 1)] + ([] if probe is None else [probe.flatten(1)])
    end, evaluations = dopri5(rhs, torch.cat(parts, 1), t_start, t_end, rtol, atol, norm=norm)
    log_prob = prior_log_prob(end[:, :size].reshape(x.shape)) + end[:, size]
    return LikelihoodResult(log_prob, float(evaluations.double().mean()))


def bits_per_dim(nll_nats: Tensor, dim: int, scale: float = 2.0) -> Tensor:
    """Bits/dim of dequantized 8-bit data mapped to [-1, 1]: nll/(d ln 2) - log2(scale) + 8 (methods.md 2.12C)."""
    return nll_nats / (dim * math.log(2.0)) - math.log2(scale) + 8.0


def pixel_grid(x: Tensor) -> Tensor:
    """Snap images in [-1, 1] to the 8-bit grid 2k/255 - 1.

    k = floor(128 (x + 1)) clipped to {0..255} recovers k both from grid values 2k/255 - 1 and from
    dequantized values 2(k + u)/256 - 1, u in [0, 1), so the ELBO and the ODE see the same pixels.
    """
    k = torch.floor(128.0 * (x + 1.0)).clamp(0, 255)
    return 2.0 * k / 255.0 - 1.0


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: float | Tensor) -> Tensor:
    """log P(x | mean, std) of 8-bit images under DDPM's discretized Gaussian decoder, summed per sample.

    P(k) = Phi((x + 1/255 - mu)/s) - Phi((x - 1/255 - mu)/s), the lower edge at -inf for k = 0 and
    the upper edge at +inf for k = 255 (Ho et al. 2020, eq. 13; methods.md 2.12A), in log space and
    clamped at 1e-12. `x` is snapped to the pixel grid first (pixel_grid).
    """
    x = pixel_grid(x.double())
    mean = mean.double()
    std = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64, device=x.device),
                                        torch.ones((), dtype=torch.float64, device=x.device))
    upper = normal.cdf((x + 1.0 / 255.0 - mean) / std)
    lower = normal.cdf((x - 1.0 / 255.0 - mean) / std)
    top, bottom = x > 1.0 - 1e-6, x < -1.0 + 1e-6
    upper = torch.where(top, torch.ones_like(upper), upper)
    lower = torch.where(bottom, torch.zeros_like(lower), lower)
    log_p = torch.log((upper - lower).clamp_min(1e-12))
    return log_p.flatten(1).sum(1)
