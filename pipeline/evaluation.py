"""How generated samples are scored against held-out data, shared by the evaluate and convergence steps
and by the data floor: the scorers of pipeline.metric_table's `samples` metrics (W2 and the mode
metrics on 2-D sets, FID / KID / precision / recall / sliced W2 on images); and the one way a value
enters a metrics table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline import data as datasets
from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.layout import features_file
from pipeline.metric_table import known, select
from pipeline.metrics import prdc_scores, structure_scores, w2_exact


def record_metric(table: dict, sampler: str, nfe: int, metric: str, value: float) -> None:
    table.setdefault(sampler, {}).setdefault(str(nfe), {})[metric] = clean_value(value)


def clean_value(value: float) -> float | None:
    value = float(value)
    return round(value, 10) if math.isfinite(value) else None


class SampleScorer:
    """Every `samples` metric of pipeline.metric_table for the data's kind, of one set of generated samples
    (the first `n`) against held-out data: each scorer the table names runs once."""

    def __init__(self, root: Path, params: Params, dataset: str, data, device: torch.device):
        self.params, self.dataset, self.data, self.device = params, dataset, data, device
        self.kind = data.kind
        if self.kind == "image":
            self.extractor = load_extractor(root, params, dataset)  # fails before any work when weights are missing
            self.against = fid_against(params, data)
            self.n = min(params.evaluate.image.fid_samples, len(self.against))
        else:
            self.against = data.test
            self.n = min(params.evaluate.w2_points, len(data.test))
        self.scorers = list(dict.fromkeys(m.scorer for m in select(self.kind, source="samples")))

    def __call__(self, samples: np.ndarray, metric_seed: int) -> dict[str, float]:
        x = samples[:self.n]
        real = self.against[:len(x)]
        scores: dict[str, float] = {}
        for name in self.scorers:
            scores |= SCORERS[name](self, x, real, metric_seed)
        unknown = [name for name in scores if not known(name, self.kind)]
        if unknown:
            raise AssertionError(f"metrics {unknown} are not in pipeline.metric_table for {self.kind} data")
        return scores


def _w2(scorer: SampleScorer, x: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    return {"w2": w2_exact(x, real), "w2_n": len(x)}


def _prdc(scorer: SampleScorer, x: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    return prdc_scores(real, x, scorer.params.evaluate.prdc_k)


def _structure(scorer: SampleScorer, x: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    """The data set's structure score where its law is known (pipeline.metrics.structure_scores)."""
    law = datasets.exact_law(scorer.dataset, scorer.data.meta["mean"], scorer.data.meta["std"])
    return structure_scores(law, np.asarray(x, np.float64))


def _fidelity(scorer: SampleScorer, x: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    """fid, fid_se, kid, kid_sd, precision, recall (torch-fidelity; fid_se a jackknife) of images x against real, both quantized to
    uint8 first (pipeline.data.images.to_uint8) as FID protocols ask; NaN where a sample is not finite."""
    from pipeline.data.images import to_uint8
    from pipeline.fidelity import FidelityError, fidelity_metrics

    cfg = scorer.params.evaluate.image
    metrics = dict.fromkeys(["fid", "fid_se", "kid", "kid_sd", "precision", "recall"], math.nan)
    if np.isfinite(x).all():
        try:
            metrics = fidelity_metrics(to_uint8(x), to_uint8(real), scorer.extractor, cfg.kid_subset_size,
                                       cfg.prc_neighborhood, seed, scorer.device, cfg.batch_size,
                                       cfg.fid_jackknife_groups)
        except FidelityError as error:
            raise StageError(str(error)) from None
    return metrics | {"fid_n": len(x)}


def _sliced_w2(scorer: SampleScorer, x: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    """Sliced W2 (POT) between the uint8-quantized images in model space; NaN where a sample is not finite."""
    from pipeline.data.images import to_model_space, to_uint8
    from pipeline.metrics import sliced_w2

    projections = scorer.params.evaluate.image.sliced_w2_projections
    value = math.nan
    if np.isfinite(x).all():
        value = sliced_w2(to_model_space(to_uint8(x)), to_model_space(to_uint8(real)), projections, seed % 2**32)
    return {"sliced_w2": value, "sliced_w2_projections": projections}


#: the scorers pipeline.metric_table names, each computing its metrics of samples x against real
SCORERS = {"w2": _w2, "prdc": _prdc, "structure": _structure, "fidelity": _fidelity, "sliced_w2": _sliced_w2}


def load_extractor(root: Path, params: Params, dataset: str):
    from pipeline.fidelity import FidelityError, resolve_extractor

    try:
        return resolve_extractor(params.evaluate.image, features_file(root, dataset), root)
    except FidelityError as error:
        raise StageError(str(error)) from None


def fid_against(params: Params, data) -> np.ndarray:
    """The real images FID, KID, precision/recall and sliced W2 compare with (evaluate.image.fid_against)."""
    return data.train if params.evaluate.image.fid_against == "train" else data.test


def bits_per_dim(nll: torch.Tensor, estimator: str, dim: int) -> torch.Tensor:
    """Bits/dim: a discrete ELBO needs no offset (methods.md 2.12A); a density of dequantized images
    in [-1, 1] is converted by pipeline.likelihood.bits_per_dim (+7 offset, methods.md 2.12C)."""
    from pipeline.likelihood import bits_per_dim

    return nll / (dim * math.log(2.0)) if estimator == "elbo" else bits_per_dim(nll, dim)
