"""How generated samples are scored against held-out data, shared by the evaluate and convergence steps
and by the data floor: W2 and the mode metrics on 2-D sets, FID / KID / precision / recall / sliced W2
on images; and the one way a value enters a metrics table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline import data as datasets
from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.layout import features_file
from pipeline.metrics import prdc_scores, structure_scores, w2_exact


def record_metric(table: dict, sampler: str, nfe: int, metric: str, value: float) -> None:
    table.setdefault(sampler, {}).setdefault(str(nfe), {})[metric] = clean_value(value)


def clean_value(value: float) -> float | None:
    value = float(value)
    return round(value, 10) if math.isfinite(value) else None


class SampleScorer:
    """The metrics of one set of generated samples against held-out data: W2 and the mode metrics on
    2-D sets, FID / KID / precision / recall / sliced W2 on images (the first `n` samples)."""

    def __init__(self, root: Path, params: Params, dataset: str, data, device: torch.device):
        self.params, self.dataset, self.data, self.device = params, dataset, data, device
        self.image = data.kind == "image"
        if self.image:
            self.extractor = load_extractor(root, params, dataset)  # fails before any work when weights are missing
            self.against = fid_against(params, data)
            self.n = min(params.evaluate.image.fid_samples, len(self.against))
        else:
            self.n = min(params.evaluate.w2_points, len(data.test))

    def __call__(self, samples: np.ndarray, metric_seed: int) -> dict[str, float]:
        x = samples[:self.n]
        if self.image:
            return image_metrics(self.params, x, self.against[:len(x)], self.extractor, metric_seed, self.device)
        real = self.data.test[:self.n]
        return ({"w2": w2_exact(x, real), "w2_n": len(x)}
                | mode_metrics(self.params, self.dataset, self.data, x, real))


def mode_metrics(params: Params, dataset: str, data, x: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """The 2-D metrics that see modes: precision, recall, density, coverage against `real`, and the data
    set's structure score where its law is known (pipeline.metrics)."""
    scores = prdc_scores(real, x, params.evaluate.prdc_k)
    law = datasets.exact_law(dataset, data.meta["mean"], data.meta["std"])
    return scores | structure_scores(law, np.asarray(x, np.float64))


def load_extractor(root: Path, params: Params, dataset: str):
    from pipeline.fidelity import FidelityError, resolve_extractor

    try:
        return resolve_extractor(params.evaluate.image, features_file(root, dataset), root)
    except FidelityError as error:
        raise StageError(str(error)) from None


def fid_against(params: Params, data) -> np.ndarray:
    """The real images FID, KID, precision/recall and sliced W2 compare with (evaluate.image.fid_against)."""
    return data.train if params.evaluate.image.fid_against == "train" else data.test


def image_metrics(params: Params, x: np.ndarray, real: np.ndarray, extractor, seed: int,
                   device: torch.device) -> dict[str, float]:
    """fid, kid, kid_sd, precision, recall (torch-fidelity) and sliced_w2 (POT) of images x against real.

    Both sets are quantized to uint8 first (pipeline.data.images.to_uint8), as FID protocols ask;
    any non-finite sample makes every metric of the run NaN.
    """
    from pipeline.data.images import to_model_space, to_uint8
    from pipeline.fidelity import FidelityError, fidelity_metrics
    from pipeline.metrics import sliced_w2

    cfg = params.evaluate.image
    metrics = {"fid": math.nan, "kid": math.nan, "kid_sd": math.nan, "precision": math.nan, "recall": math.nan,
               "sliced_w2": math.nan}
    if np.isfinite(x).all():
        pixels, real_pixels = to_uint8(x), to_uint8(real)
        try:
            metrics = fidelity_metrics(pixels, real_pixels, extractor, cfg.kid_subset_size, cfg.prc_neighborhood,
                                       seed, device, cfg.batch_size)
        except FidelityError as error:
            raise StageError(str(error)) from None
        metrics["sliced_w2"] = sliced_w2(to_model_space(pixels), to_model_space(real_pixels),
                                         cfg.sliced_w2_projections, seed % 2**32)
    return metrics | {"fid_n": len(x), "sliced_w2_projections": cfg.sliced_w2_projections}


def bits_per_dim(nll: torch.Tensor, estimator: str, dim: int) -> torch.Tensor:
    """Bits/dim: a discrete ELBO needs no offset (methods.md 2.12A); a density of dequantized images
    in [-1, 1] is converted by pipeline.likelihood.bits_per_dim (+7 offset, methods.md 2.12C)."""
    from pipeline.likelihood import bits_per_dim

    return nll / (dim * math.log(2.0)) if estimator == "elbo" else bits_per_dim(nll, dim)
