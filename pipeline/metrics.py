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
