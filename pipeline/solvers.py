"""ODE and SDE integrators. They see only a drift (and diffusion) function of (x, t), never a method.

Time grids run from the noise end to the data end (decreasing t), so every step has h = t_next - t < 0.
Every solver returns the number of function evaluations (NFE) it really used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

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


def ode_rk45(velocity_fn: VelocityFn, x: Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
             atol: float = 1e-5) -> SolverResult:
    """Adaptive Dormand-Prince RK45 (torchdiffeq's dopri5) from t_start to t_end."""
    from torchdiffeq import odeint

    fn = CountingFn(velocity_fn)

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        return fn(y, _time(t, y))

    times = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    path = odeint(rhs, x, times, rtol=rtol, atol=atol, method="dopri5")
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
            x = x + g * abs(float(h)) ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                            device=x.device)
    return SolverResult(x, fn.calls)


def uniform_grid(num_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """num_steps + 1 evenly spaced times from t_start to t_end."""
    return torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float64)
