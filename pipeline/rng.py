"""Every random draw of the pipeline, in one place: each draws with the caller's seeded generator on the
device of the tensor it is for, and refuses a generator of another device with one clear line.

torch draws on the default device (the CPU) unless told otherwise, and a CUDA generator cannot draw
there: a draw written without `device=` works on the CPU and raises on a GPU (the Hutchinson probe of
the image likelihood did). Here the device always comes from a tensor (or is named by the caller), and
the generator must live on it. The stages make their generators on the run's device
(`torch.Generator(device=device)`), so on one machine and device every draw is reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"a random generator on {generator.device} cannot draw on {device}: make it with "
                         f"torch.Generator(device=...) on the device of the tensors it draws for")
    return device


def normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str,
           dtype: torch.dtype | None = None) -> Tensor:
    """N(0, 1) draws of the given shape on `device`."""
    return torch.randn(shape, generator=generator, device=_device(generator, device), dtype=dtype)


def normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) draws of x's shape, dtype and device."""
    return normal(tuple(x.shape), generator, x.device, x.dtype)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype | None = None) -> Tensor:
    """U[0, 1) draws of the given shape on `device`."""
    return torch.rand(shape, generator=generator, device=_device(generator, device), dtype=dtype)


def integers(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device | str) -> Tensor:
    """Integers uniform on {low, ..., high - 1} (int64) on `device`."""
    return torch.randint(low, high, shape, generator=generator, device=_device(generator, device))


def rademacher_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """+-1 with probability 1/2 each, of x's shape, dtype and device (Hutchinson's probe)."""
    return integers(0, 2, tuple(x.shape), generator, x.device).to(x.dtype) * 2 - 1


def permutation(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """A uniformly random permutation of 0..n-1 on `device`."""
    return torch.randperm(n, generator=generator, device=_device(generator, device))


def categorical(weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """n indices drawn with replacement in proportion to `weights`, on the weights' device."""
    _device(generator, weights.device)
    return torch.multinomial(weights, n, replacement=True, generator=generator)
