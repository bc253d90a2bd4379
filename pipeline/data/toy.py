"""2-D benchmark distributions, each a pure function of (n, numpy Generator) -> float64 array [n, 2].

The shapes follow the usual toy benchmarks of the field (e.g. FFJORD, Grathwohl et al. 2019);
`gaussian_mixture` is the oracle set whose density is known exactly (pipeline.oracle). `exact_law`
gives every set's law in the oracle's terms, so that samplers can be fed each set's exact score.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.oracle import GaussianMixture, UniformBoxes, oracle_mixture


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

def _curve_mixture(curve, low: float, high: float, speed: float, noise: float) -> GaussianMixture:
    """c(t) + N(0, noise^2 I) with t ~ U[low, high], as the mixture of N(c(t_k), noise^2 I) over composite
    Gauss-Legendre nodes t_k (8 per panel, weights the rule's): panels of at most 2 noise / speed in t,
    speed the largest |c'(t)|, so each panel spans two jitter widths along the curve. Against a rule 4x
    finer, log p of the test splits moves by less than 1e-10 (a midpoint rule of as many nodes: 0.05 near
    the curves' ends)."""
    panels = math.ceil((high - low) * speed / (2 * noise))
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(low, high, panels + 1)
    half = np.diff(edges)[:, None] / 2
    t = (edges[:-1, None] + half * (nodes[None] + 1)).ravel()
    means = torch.from_numpy(np.stack(curve(t), 1))
    covariances = torch.eye(2, dtype=torch.float64).expand(len(t), 2, 2) * noise**2
    return GaussianMixture(torch.from_numpy((half * weights[None]).ravel()), means, covariances)


def _moons_law(refine: float = 1.0) -> GaussianMixture:
    upper = _curve_mixture(lambda a: (np.cos(a), np.sin(a)), 0.0, math.pi, refine, 0.05)
    lower = _curve_mixture(lambda a: (1.0 - np.cos(a), 0.5 - np.sin(a)), 0.0, math.pi, refine, 0.05)
    return GaussianMixture(torch.cat([upper.weights, lower.weights]), torch.cat([upper.means, lower.means]),
                           torch.cat([upper.covariances, lower.covariances]))


def _swiss_roll_law(refine: float = 1.0) -> GaussianMixture:
    high = 4.5 * math.pi
    return _curve_mixture(lambda t: (t * np.cos(t), t * np.sin(t)), 1.5 * math.pi, high,
                          refine * math.hypot(1, high), 0.25)


def _eight_gaussians_law(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    angle = 2 * math.pi * np.arange(8) / 8
    means = torch.from_numpy(radius * np.stack([np.cos(angle), np.sin(angle)], 1))
    return GaussianMixture(torch.ones(8), means, torch.eye(2, dtype=torch.float64).expand(8, 2, 2) * std**2)


def _checkerboard_law() -> UniformBoxes:
    corners = [(column - 2.0, 2.0 * r + column % 2 - 2.0) for column in range(4) for r in range(2)]
    lower = torch.tensor(corners, dtype=torch.float64)
    return UniformBoxes(torch.ones(len(corners)), lower, lower + 1.0)


_LAWS = {"moons": _moons_law, "swiss_roll": _swiss_roll_law, "eight_gaussians": _eight_gaussians_law,
         "checkerboard": _checkerboard_law, "gaussian_mixture": oracle_mixture}


def exact_law(name: str, mean=(0.0, 0.0), std=(1.0, 1.0)) -> GaussianMixture | UniformBoxes:
    """The law the generator of `name` draws from, of (x - mean) / std (the data file's meta standardizes
    with the training split's moments): exact, or for the curves a quadrature exact to float precision."""
    return _LAWS[name]().standardized(torch.tensor(mean), torch.tensor(std))


#: sets whose samples are standardized (zero mean, unit variance per axis, from the training split)
STANDARDIZED = {"moons", "swiss_roll", "eight_gaussians", "checkerboard"}
