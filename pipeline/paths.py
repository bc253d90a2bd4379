"""Affine Gaussian probability paths x_t = alpha_t * x_data + sigma_t * noise.

One description serves DDPM (discrete linear betas viewed in continuous time), the VP, sub-VP
and VE SDEs of Song et al. (2021) and the linear path of flow matching / rectified flow.
Time convention: t in [0, 1], t = 0 the data end, t = 1 the noise end. Flow-matching papers use
tau = 1 - t (tau = 1 data); their formulas are converted here, where they enter.

The equivalent linear SDE dx = f(t) x dt + g(t) dw has (methods.md 1.2)
    f(t) = d log alpha_t / dt,    g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline import rng


@dataclass(frozen=True)
class Coefficients:
    """alpha_t, sigma_t and their time derivatives at one or many times (broadcastable tensors)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    @property
    def drift(self) -> Tensor:
        """f(t) = alpha'_t / alpha_t of the forward SDE."""
        return self.d_alpha / self.alpha

    @property
    def diffusion_squared(self) -> Tensor:
        """g(t)^2 = 2 sigma_t (sigma'_t - f(t) sigma_t)."""
        return 2.0 * self.sigma * (self.d_sigma - self.drift * self.sigma)

    def broadcast_to(self, x: Tensor) -> Coefficients:
        """Reshape per-sample coefficients of shape [B] to [B, 1, ..., 1] to multiply x."""

        def shape(v: Tensor) -> Tensor:
            v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
            if v.ndim == 0:
                return v
            return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))

        return Coefficients(shape(self.alpha), shape(self.sigma), shape(self.d_alpha), shape(self.d_sigma))


class AffinePath(ABC):
    """A Gaussian conditional path p_t(x_t | x) = N(alpha_t x, sigma_t^2 I), t in [0, 1]."""

    #: standard deviation of the prior N(0, prior_std^2 I) that sampling starts from at t = 1
    prior_std: float = 1.0

    @abstractmethod
    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at times t (any shape, float tensor)."""

    def at(self, t: Tensor, like: Tensor) -> Coefficients:
        """self(t).broadcast_to(like), reused for the same time tensor: a sampler's step needs the coefficients
        of its times twice, for the network's preconditioning and to convert its output
        (pipeline.parameterization), and the second use costs no tensor work. The reuse is keyed by the
        tensor itself and its version counter, which every torch operation that writes to it bumps (a write
        through `.data` or a NumPy view does not: give such a tensor anew). Times that carry a gradient, inference
        tensors (no version counter) and calls in inference mode are evaluated every time."""
        if t.requires_grad or t.is_inference() or torch.is_inference_mode_enabled():
            return self(t).broadcast_to(like)
        key = (t._version, like.ndim, like.dtype, like.device)
        last = self.__dict__.get("_last_at")
        if last is not None and last[0] is t and last[1] == key:
            return last[2]
        coefficients = self(t).broadcast_to(like)
        self.__dict__["_last_at"] = (t, key, coefficients)
        return coefficients

    def sample(self, x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha_t x_data + sigma_t noise, with t of shape [B]."""
        c = self(t).broadcast_to(x_data)
        return c.alpha * x_data + c.sigma * noise

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator, device="cpu") -> Tensor:
        return self.prior_std * rng.normal(shape, generator, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I), summed over all but the batch dimension."""
        d = x[0].numel()
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * sq / self.prior_std**2 - d * math.log(self.prior_std) - 0.5 * d * math.log(2 * math.pi)


class DiscreteLinearBetaPath(AffinePath):
    """DDPM's chain (Ho et al. 2020, eq. 4): beta_i linear from beta_1 to beta_T, alpha_bar_i = prod(1 - beta_j).

    Step i in {0..T} sits at t_i = i / T (alpha_bar_0 = 1). Between grid points log alpha_bar is
    interpolated linearly, so the continuous view agrees with the chain at every t_i.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_steps = num_steps
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        log_alpha_bar = torch.cumsum(torch.log1p(-self.betas), 0)
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha_bar])
        self._tables: dict[torch.device, Tensor] = {self.log_alpha_bar.device: self.log_alpha_bar}

    def alpha_bar(self, index: Tensor) -> Tensor:
        """alpha_bar at integer steps (0 gives 1), float64."""
        return self.log_alpha_bar[index.long()].exp()

    def _table(self, device: torch.device) -> Tensor:
        """log alpha_bar on the device of the times (copied once per device, no host sync per call)."""
        if device not in self._tables:
            self._tables[device] = self.log_alpha_bar.to(device)
        return self._tables[device]

    def __call__(self, t: Tensor) -> Coefficients:
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        table = self._table(t.device)
        s = t.double().clamp(0, 1) * self.num_steps
        lower = s.floor().clamp(max=self.num_steps - 1).long()
        frac = s - lower
        slope = (table[lower + 1] - table[lower]) * self.num_steps
        log_ab = table[lower] + frac * slope / self.num_steps
        alpha_bar = log_ab.exp()
        alpha = alpha_bar.sqrt()
        sigma = (-torch.expm1(log_ab)).clamp_min(0).sqrt()
        d_alpha = 0.5 * alpha * slope
        d_sigma = -0.5 * alpha_bar * slope / sigma.clamp_min(1e-12)
        return Coefficients(*(v.to(dtype=dtype, device=t.device) for v in (alpha, sigma, d_alpha, d_sigma)))


class VPPath(AffinePath):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta linear (Song et al. 2021, eq. 11)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = beta_min
        self.beta_max = beta_max

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def __call__(self, t: Tensor) -> Coefficients:
        t = torch.as_tensor(t)
        log_alpha = self.log_alpha(t)
        alpha = log_alpha.exp()
        sigma = (-torch.expm1(2 * log_alpha)).sqrt()
        beta = self.beta(t)
        d_alpha = -0.5 * beta * alpha
        d_sigma = 0.5 * beta * alpha**2 / sigma.clamp_min(1e-12)
        return Coefficients(alpha, sigma, d_alpha, d_sigma)


class SubVPPath(VPPath):
    """sub-VP SDE (Song et al. 2021, eq. 34): same mean as VP, standard deviation sigma_t = 1 - alpha_t^2."""

    def __call__(self, t: Tensor) -> Coefficients:
        t = torch.as_tensor(t)
        log_alpha = self.log_alpha(t)
        alpha = log_alpha.exp()
        beta = self.beta(t)
        sigma = -torch.expm1(2 * log_alpha)
        d_alpha = -0.5 * beta * alpha
        d_sigma = beta * alpha**2
        return Coefficients(alpha, sigma, d_alpha, d_sigma)


class VEPath(AffinePath):
    """Variance-exploding SDE: x_t = x + sigma(t) noise, sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    As in Song et al.'s code the sigma_min^2 offset of the exact marginal is dropped (methods.md 2.6).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.prior_std = sigma_max

    def __call__(self, t: Tensor) -> Coefficients:
        t = torch.as_tensor(t)
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        sigma = self.sigma_min * torch.exp(t * log_ratio)
        one = torch.ones_like(sigma)
        return Coefficients(one, sigma, torch.zeros_like(sigma), sigma * log_ratio)


class LinearPath(AffinePath):
    """Flow matching's conditional OT path (Lipman et al. 2023, eq. 20) in unified time t = 1 - tau:

    x_t = (1 - t) x_data + (sigma_min + (1 - sigma_min) t) noise. sigma_min = 0 is rectified flow's
    straight line X_tau = tau X_1 + (1 - tau) X_0 (Liu et al. 2023).
    """

    def __init__(self, sigma_min: float = 0.0):
        self.sigma_min = sigma_min

    def __call__(self, t: Tensor) -> Coefficients:
        t = torch.as_tensor(t)
        alpha = 1.0 - t
        sigma = self.sigma_min + (1.0 - self.sigma_min) * t
        return Coefficients(alpha, sigma, -torch.ones_like(t), (1.0 - self.sigma_min) * torch.ones_like(t))
