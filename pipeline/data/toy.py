"""2-D benchmark distributions, each a pure function of (n, numpy Generator) -> float64 array [n, 2].

The shapes follow the usual toy benchmarks of the field (e.g. FFJORD, Grathwohl et al. 2019);
`gaussian_mixture` is the oracle set whose density is known exactly (pipeline.oracle).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.oracle import oracle_mixture


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """Two interleaved half circles with Gaussian jitter."""
    upper = rng.random(n) < 0.5
    angle = rng.random(n) * math.pi
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], 1) + noise * rng.standard_normal((n, 2))


def swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.25) -> np.ndarray:
    """The planar Swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi]."""
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    return np.stack([t * np.cos(t), t * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))


def eight_gaussians(n: int, rng: np.random.Generator, radius: float = 2.0, std: float = 0.1) -> np.ndarray:
    """Eight isotropic Gaussians evenly spaced on a circle."""
    angle = 2 * math.pi * rng.integers(0, 8, n) / 8
    centers = radius * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centers + std * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the black squares of a 4 x 4 board over [-2, 2]^2."""
    x = rng.random(n) * 4 - 2
    column = np.floor(x + 2).astype(int)
    row = 2 * rng.integers(0, 2, n) + (column % 2)
    y = rng.random(n) + row - 2
    return np.stack([x, y], 1)


def gaussian_mixture(n: int, rng: np.random.Generator) -> np.ndarray:
    """Samples of pipeline.oracle.oracle_mixture (not standardized, so its density stays exact)."""
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return oracle_mixture().sample(n, generator).numpy()


TOY_DATASETS = {
    "moons": two_moons,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "gaussian_mixture": gaussian_mixture,
}

#: sets whose density is known in closed form: name -> log p(x) per sample (the NLL floor of the report)
EXACT_LOG_DENSITIES = {"gaussian_mixture": oracle_mixture().log_prob}

#: sets whose samples are standardized (zero mean, unit variance per axis, from the training split)
STANDARDIZED = {"moons", "swiss_roll", "eight_gaussians", "checkerboard"}
