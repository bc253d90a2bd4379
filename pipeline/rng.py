"""Every random draw of the pipeline, in one place: each draws with the caller's seeded generator on the
device of the tensor it is for, and refuses a generator of another device with one clear line.

torch draws on the default device (the CPU) unless told otherwise, and a CUDA generator cannot draw
there: a draw written without `device=` works on the CPU and raises on a GPU (the Hutchinson probe of
the image likelihood did). Here the device always comes from a tensor (or is named by the caller), and
the generator must live on it. The stages make their generators on the run's device
(`torch.Generator(device=device)`), so on one machine and device every draw is reproducible.

Sampling draws from `SampleStreams` instead of a generator: sample i's k-th draw is a function of
(seed, i, k) alone (a counter-based generator, like Salmon et al. 2011's Philox, here a vectorized
integer hash), so a sample is the same in any batch, at any batch size and in any process, and every
sampler of a seed starts from the same prior draws. Every function below takes either source.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor


_MASK32 = 0xFFFFFFFF
_BLOCK_ELEMENTS = 1 << 20   # draws are made in blocks of consecutive counters of about this many numbers


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash of int64 tensors holding values in [0, 2^32): three xorshift-multiply rounds
    (Wellons' hash-prospector form) whose multipliers are below 2^31, so every product fits in int64.
    (torch.bitwise_right_shift is several times faster than the `>>` operator with a Python int.)"""
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x5BD1E995), (13, 0x31848BAB)):
        x = torch.bitwise_and(torch.bitwise_xor(x, torch.bitwise_right_shift(x, shift)) * multiplier, _MASK32)
    return torch.bitwise_xor(x, torch.bitwise_right_shift(x, 16))


class SampleStreams:
    """One random stream per sample: draw k of sample `index[b]` depends only on (seed, index[b], k).

    Draws are made by counter: the stream hashes (key of the sample, draw number, element, word) to 32 bits;
    a normal is Box-Muller of two such words in float64. Draws of one shape are made `block` counters at a
    time (values do not depend on the block), so a step costs a few tensor operations, not a loop over
    samples.
    """

    def __init__(self, seed: int, index: Tensor):
        self.index = index.to(torch.int64)
        self.device = index.device
        keys = torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32], dtype=torch.int64, device=self.device)
        key = _mix32(_mix32(keys[1:]) ^ keys[:1])
        self.keys = _mix32(_mix32(key ^ (self.index & _MASK32)) ^ (self.index >> 32))  # (B,)
        self.draws = 0
        self._cache: tuple[tuple[int, ...], int, int, Tensor] | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def _draw(self, kind: str, shape: tuple[int, ...], words: int, transform) -> Tensor:
        """The next draw of a (B, *shape[1:]) tensor: `transform` of `words` uniform 32-bit words (int64) per
        element, computed for a block of consecutive counters at once and served from it."""
        if not shape or shape[0] != len(self):
            raise ValueError(f"a draw from {len(self)} sample streams must have {len(self)} rows, not shape {shape}")
        per_sample = tuple(shape[1:])
        size = math.prod(per_sample) * words
        cached = self._cache
        if cached is None or cached[0] != (kind, per_sample) or not cached[1] <= self.draws < cached[2]:
            block = max(1, min(64, _BLOCK_ELEMENTS // max(1, size * len(self))))
            counters = torch.arange(self.draws, self.draws + block, dtype=torch.int64, device=self.device)
            elements = torch.arange(size, dtype=torch.int64, device=self.device)
            salt = _mix32(torch.bitwise_xor(counters[:, None] * 0x9E3779B9 % (1 << 32), elements))
            bits = _mix32(torch.bitwise_xor(self.keys[:, None, None], salt[None]))   # (B, block, size)
            values = transform(bits.reshape(len(self), block, *per_sample, words))
            cached = self._cache = ((kind, per_sample), self.draws, self.draws + block, values)
        values = cached[3][:, self.draws - cached[1]]
        self.draws += 1
        return values

    def uniform(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """U(0, 1) draws from the top 24 bits of a word: (k + 1/2) / 2^24, exact in float32, never 0 or 1."""
        return self._draw("uniform", shape, 1, _open_unit)[..., 0].to(dtype or torch.get_default_dtype())

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """N(0, 1) draws by Box-Muller (Box & Muller 1958; each pair of words gives two): in float64 from 32-bit
        words when float64 is asked for, else in float32 from 24-bit uniforms (tails cut at 5.9 sd)."""
        dtype = dtype or torch.get_default_dtype()
        size = math.prod(shape[1:])
        wide = dtype == torch.float64
        pairs = self._draw(f"normal-{wide}", (shape[0], (size + 1) // 2), 2, partial(_box_muller, wide=wide))
        return pairs.reshape(shape[0], -1)[:, :size].reshape(shape).to(dtype)

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        """Integers uniform on {low, ..., high - 1} (bias below (high - low) / 2^32)."""
        return low + (self._draw("word", shape, 1, lambda bits: bits)[..., 0] * (high - low)) // (1 << 32)


def _open_unit(bits: Tensor) -> Tensor:
    return (torch.bitwise_right_shift(bits, 8).float() + 0.5) / 2.0**24


def _box_muller(bits: Tensor, wide: bool) -> Tensor:
    """(..., pairs, 2) words -> (..., 2 pairs) normals: r cos(theta) and r sin(theta) of each pair."""
    u = (bits.double() + 0.5) / 2.0**32 if wide else _open_unit(bits)
    radius, angle = torch.sqrt(-2.0 * torch.log(u[..., 0])), 2.0 * math.pi * u[..., 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1).flatten(-2)


class RowShard:
    """Rows start..stop-1 of every per-row draw of a global batch of `rows`, from a torch.Generator that every
    process of a data-parallel run holds in the same state (pipeline.distributed): a per-row draw (the
    default of every draw below; its first dimension is the shard's rows) is made for all `rows` and sliced,
    a draw made with per_row=False is made whole. So each process draws exactly its rows of what one process
    would draw for the global batch, and the generators stay in lock-step. (A loss that couples its rows,
    like minibatch OT or PFGM's field of the batch, couples each process's rows only.)"""

    def __init__(self, generator: torch.Generator, rows: int, start: int, stop: int):
        self.generator, self.rows, self.start, self.stop = generator, rows, start, stop
        self.device = generator.device

    def draw(self, make, shape: tuple[int, ...], per_row: bool) -> Tensor:
        """make(shape) -> tensor: made for the global batch and sliced where the draw is per row."""
        if not per_row:
            return make(shape)
        if not shape or shape[0] != self.stop - self.start:
            raise ValueError(f"a per-row draw of shape {tuple(shape)} from a shard of {self.stop - self.start} rows: "
                             f"its first dimension must be the rows (per_row=False for a draw that is not per row)")
        return make((self.rows, *shape[1:]))[self.start:self.stop]


Source = torch.Generator | SampleStreams | RowShard | None


def _device(generator: Source, device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if isinstance(generator, SampleStreams):
        if generator.device.type != device.type:
            raise ValueError(f"sample streams on {generator.device} cannot draw on {device}")
        return device
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"a random generator on {generator.device} cannot draw on {device}: make it with "
                         f"torch.Generator(device=...) on the device of the tensors it draws for")
    return device


def normal(shape: tuple[int, ...], generator: Source, device: torch.device | str,
           dtype: torch.dtype | None = None, per_row: bool = True) -> Tensor:
    """N(0, 1) draws of the given shape on `device` (per_row: its first dimension is a batch's rows; RowShard)."""
    if isinstance(generator, SampleStreams):
        return generator.normal(tuple(shape), dtype).to(_device(generator, device))
    if isinstance(generator, RowShard):
        return generator.draw(lambda s: normal(s, generator.generator, device, dtype), tuple(shape), per_row)
    return torch.randn(shape, generator=generator, device=_device(generator, device), dtype=dtype)


def normal_like(x: Tensor, generator: Source) -> Tensor:
    """N(0, 1) draws of x's shape, dtype and device."""
    return normal(tuple(x.shape), generator, x.device, x.dtype)


def uniform(shape: tuple[int, ...], generator: Source, device: torch.device | str,
            dtype: torch.dtype | None = None, per_row: bool = True) -> Tensor:
    """U[0, 1) draws of the given shape on `device` (per_row as in `normal`)."""
    if isinstance(generator, SampleStreams):
        return generator.uniform(tuple(shape), dtype).to(_device(generator, device))
    if isinstance(generator, RowShard):
        return generator.draw(lambda s: uniform(s, generator.generator, device, dtype), tuple(shape), per_row)
    return torch.rand(shape, generator=generator, device=_device(generator, device), dtype=dtype)


def integers(low: int, high: int, shape: tuple[int, ...], generator: Source,
             device: torch.device | str, per_row: bool = True) -> Tensor:
    """Integers uniform on {low, ..., high - 1} (int64) on `device` (per_row as in `normal`)."""
    if isinstance(generator, SampleStreams):
        return generator.integers(low, high, tuple(shape)).to(_device(generator, device))
    if isinstance(generator, RowShard):
        return generator.draw(lambda s: integers(low, high, s, generator.generator, device), tuple(shape),
                              per_row)
    return torch.randint(low, high, shape, generator=generator, device=_device(generator, device))


def rademacher_like(x: Tensor, generator: Source) -> Tensor:
    """+-1 with probability 1/2 each, of x's shape, dtype and device (Hutchinson's probe)."""
    return integers(0, 2, tuple(x.shape), generator, x.device).to(x.dtype) * 2 - 1


def permutation(n: int, generator: Source, device: torch.device | str) -> Tensor:
    """A uniformly random permutation of 0..n-1 on `device` (a generator's: a permutation is not per sample)."""
    if isinstance(generator, SampleStreams):
        raise TypeError("a permutation draws from a torch.Generator, not from per-sample streams")
    if isinstance(generator, RowShard):  # a permutation is not per row: the same on every process
        generator = generator.generator
    return torch.randperm(n, generator=generator, device=_device(generator, device))


def categorical(weights: Tensor, n: int, generator: Source) -> Tensor:
    """n indices drawn with replacement in proportion to `weights`, on the weights' device."""
    _device(generator, weights.device)
    if isinstance(generator, SampleStreams):  # inverse CDF of one uniform per sample
        cdf = torch.cumsum(weights.double(), 0) / weights.double().sum()
        u = generator.uniform((n,), torch.float64).to(weights.device)
        return torch.searchsorted(cdf, u).clamp_max(len(weights) - 1)
    if isinstance(generator, RowShard):
        return generator.draw(lambda s: categorical(weights, s[0], generator.generator), (n,), True)
    return torch.multinomial(weights, n, replacement=True, generator=generator)
