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
from pipeline.solvers import VelocityFn


@dataclass(frozen=True)
class LikelihoodResult:
    log_prob: Tensor  # per-sample log-density, nats
    nfe: int


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
                       generator: torch.Generator | None = None, rtol: float = 1e-5,
                       atol: float = 1e-5) -> LikelihoodResult:
    """log p_{t_start}(x) through the probability-flow ODE solved by dopri5 in float64."""
    from torchdiffeq import odeint

    x = x.double()
    probe = None
    if divergence == "hutchinson":
        probe = rng.rademacher_like(x, generator)
    elif divergence != "exact":
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', not {divergence!r}")
    calls = 0

    def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        y = state[0]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            tt = torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device)
            v = velocity_fn(y, tt)
            div = exact_divergence(v, y) if probe is None else hutchinson_divergence(v, y, probe)
        return v.detach(), div.detach()

    times = torch.tensor([t_start, t_end], dtype=torch.float64, device=x.device)
    zero = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    x_end, integral = odeint(rhs, (x, zero), times, rtol=rtol, atol=atol, method="dopri5")
    return LikelihoodResult(prior_log_prob(x_end[-1]) + integral[-1], calls)


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
