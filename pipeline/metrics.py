"""Sample-quality metrics through the field's libraries (POT for optimal transport).

`w2`: exact 2-Wasserstein distance between two equal-size point clouds: the optimal assignment
under squared Euclidean cost (POT's network simplex, Bonneel et al. 2011), sqrt of its mean cost.
`sliced_w2`: sliced 2-Wasserstein distance over random unit directions (Rabin et al. 2011).
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")

# POT's optional clustering extras: k-means / spectral initialisations of low-rank and quantized
# Gromov-Wasserstein, which this project never calls. Loading them costs ~1 s of every stage that
# imports POT; POT catches their ImportError and only disables those initialisations.
_POT_OPTIONAL_EXTRAS = ("sklearn", "networkx")


def import_pot():
    """POT's `ot` module, loaded without its optional scikit-learn and networkx extras."""
    if "ot" in sys.modules:
        return sys.modules["ot"]
    hidden = [name for name in _POT_OPTIONAL_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # a None entry makes `import name` raise ImportError
    try:
        import ot
    finally:
        for name in hidden:
            del sys.modules[name]
    return ot


def w2_exact(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W2 between the empirical measures of x [n, d] and y [m, d] (uniform weights)."""
    ot = import_pot()
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))


def sliced_w2(x: np.ndarray, y: np.ndarray, n_projections: int, seed: int) -> float:
    """Sliced W2 (POT's sliced_wasserstein_distance) over `n_projections` seeded random directions."""
    ot = import_pot()
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_projections, p=2, seed=seed))


def prdc_scores(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict[str, float]:
    """Precision and recall (Kynkaenniemi et al. 2019), density and coverage (Naeem et al. 2020) of `fake`
    against `real`, through the authors' `prdc` package; on 2-D data the coordinates are the features."""
    import contextlib
    import io

    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the sample sizes
        scores = compute_prdc(np.asarray(real, np.float32), np.asarray(fake, np.float32), nearest_k)
    return {name: float(value) for name, value in scores.items()}


def modes_held(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray,
               n_sd: float = 3.0) -> int:
    """Modes of a Gaussian mixture that hold at least half their expected share of the samples within
    `n_sd` standard deviations (Mahalanobis distance; expected share w_k P(chi^2_d <= n_sd^2))."""
    from scipy import stats

    n, d = samples.shape
    diff = samples[None] - means[:, None]
    maha = np.einsum("kni,kij,knj->kn", diff, np.linalg.inv(covariances), diff)
    held = (maha <= n_sd**2).sum(1)
    expected = weights * n * stats.chi2.cdf(n_sd**2, d)
    return int((held >= 0.5 * expected).sum())


def structure_scores(law, samples: np.ndarray) -> dict[str, float]:
    """What W2 can miss, where the data's structure is known (pipeline.data.toy.exact_law): `modes`, the
    modes held (modes_held) of a mixture of at most 16 Gaussians; `on_support`, the share of samples on
    a union of boxes (the checkerboard's occupied squares)."""
    import torch

    from pipeline.oracle import GaussianMixture, UniformBoxes

    if isinstance(law, UniformBoxes):
        return {"on_support": float(torch.isfinite(law.log_prob(torch.from_numpy(samples))).double().mean())}
    if isinstance(law, GaussianMixture) and len(law.weights) <= 16:
        return {"modes": float(modes_held(samples.astype(np.float64), law.means.numpy(), law.covariances.numpy(),
                                          law.weights.numpy()))}
    return {}
