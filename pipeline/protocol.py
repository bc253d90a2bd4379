"""The protocol beside every number: reports/protocol.csv, one row per row of results.csv keyed by its first six
columns, saying how the number was made (sample counts, reference split, feature extractor and the sha256 of
its weights, EMA weights and their training step, solver and tolerance, NFE used, dequantization, clipping)
and with which library versions. MLflow's child runs carry their rows (pipeline.tracking)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.io import sha256_file
from pipeline.layout import features_file
from pipeline.metric_table import METRICS
from pipeline.schema import RK45_TOLERANCE

KEY_COLUMNS = ["dataset", "method", "sampler", "nfe", "seed", "metric"]
LIBRARIES = ("torch", "torch-fidelity", "POT", "dvc", "mlflow")
COLUMNS = [*KEY_COLUMNS, "n_generated", "n_reference", "reference_split", "extractor", "extractor_sha256", "weights",
           "checkpoint_step", "solver", "rtol", "atol", "nfe_used", "dequantization", "clip_x0", "clip_sigma",
           "precision", *(f"version_{name}" for name in LIBRARIES)]
_SOURCE = {(m.name, m.kind): m.source for m in METRICS}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version_{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version_{name}"] = "not installed"
    return versions


def _extractor(root: Path, params: Params, dataset: str) -> tuple[str, str]:
    """(name, sha256 of its weights) of an image set's feature extractor; empty for 2-D sets."""
    if DATASETS[dataset] != "image":
        return "", ""
    cfg = params.evaluate.image
    if cfg.extractor == "inception":
        return "inception-v3 (torch-fidelity)", sha256_file(Path(cfg.inception_weights))
    path = features_file(root, dataset)
    return "classifier (prepare stage)", sha256_file(path) if path.exists() else f"missing: {path}"


def _counts(params: Params, kind: str, source: str, method: str) -> tuple[float, float, str]:
    """(generated, reference, reference split) of a number from its metric's source."""
    cfg, image = params.evaluate, kind == "image"
    if source == "likelihood":
        return float("nan"), float(cfg.image.nll_points if image else cfg.nll_points), "test"
    if source != "samples":
        return float("nan"), float("nan"), ""
    generated = params.sample.image.n_samples if image else params.sample.n_samples
    reference = cfg.image.fid_samples if image else cfg.w2_points
    if method == "data":  # the floor: a reference chunk against the test split
        generated = reference
    return float(generated), float(reference), cfg.image.fid_against if image else "test"


def _dequantization(kind: str, source: str, sampler: str) -> str:
    if kind != "image" or source != "likelihood":
        return "none"
    return "uniform" if sampler == "ode_rk45" else "none (discretized decoder)"


def _precision(params: Params, source: str, sampler: str) -> str:
    """The precision of the network behind a number: the training's; a fixed-step sampler's too, while adaptive
    solves and likelihoods run the network in float64 (pipeline.config.Params.precision)."""
    if source == "likelihood" or sampler == "ode_rk45":
        return f"train {params.precision}, evaluate fp64"
    return params.precision


def protocol_table(frame: pd.DataFrame, params: Params, root: Path) -> pd.DataFrame:
    """One row per results row: how its number was made (COLUMNS)."""
    versions = library_versions()
    extractors = {dataset: _extractor(root, params, dataset) for dataset in params.datasets}
    settings = frame[frame.metric.isin(["checkpoint_step", "clip_x0", "clip_sigma"])]
    lookup = settings.pivot_table(index=["dataset", "method", "sampler", "nfe", "seed"], columns="metric",
                                  values="value", aggfunc="first")
    rows = []
    for row in frame.itertuples(index=False):
        kind = DATASETS[row.dataset]
        source = _SOURCE.get((row.metric.removesuffix("_sd"), kind), "")
        generated, reference, split = _counts(params, kind, source, row.method)
        key = (row.dataset, row.method, row.sampler, row.nfe, row.seed)
        found = lookup.loc[key] if key in lookup.index else {}
        adaptive = row.sampler == "ode_rk45" and source in ("samples", "likelihood", "trajectory")
        tolerance = ((params.evaluate.ode_rtol, params.evaluate.ode_atol) if source in ("likelihood", "trajectory")
                     else (RK45_TOLERANCE, RK45_TOLERANCE)) if adaptive else (float("nan"), float("nan"))
        extractor = extractors[row.dataset] if kind == "image" and source == "samples" else ("", "")
        model = row.method not in ("data", "features")
        rows.append([*key, row.metric, generated, reference, split, *extractor, "ema" if model else "",
                     found.get("checkpoint_step", float("nan")), row.sampler if model else "", *tolerance,
                     row.nfe if model else float("nan"),
                     _dequantization(kind, source, row.sampler),
                     found.get("clip_x0", float("nan")), found.get("clip_sigma", float("nan")),
                     _precision(params, source, row.sampler) if model else "", *versions.values()])
    return pd.DataFrame(rows, columns=COLUMNS)
