"""The prepare stage: a data set's splits, the feature classifier its image metrics use, and its data
floor (real against real, scored as every model's samples are)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline import data as datasets
from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.evaluation import fid_against, image_metrics, load_extractor, mode_metrics, record_metric
from pipeline.io import derive_seed, save_torch, sha256_file, write_json
from pipeline.layout import baseline_file, data_file, features_file, features_metrics_file, resolve_device
from pipeline.metrics import w2_exact


def run_prepare(root: Path, params: Params, dataset: str) -> Path:
    seed = derive_seed(params.data.seed, "prepare", dataset)
    return datasets.prepare(dataset, data_file(root, dataset), params.data, seed, root)


def run_features(root: Path, params: Params, dataset: str) -> Path:
    """Train the feature classifier of an image data set (pipeline.features) and record its accuracy.

    2-D data sets get a marker file and an empty metrics file instead, so that this step can run over
    every data set and the run stages can depend on its output uniformly.
    """
    from pipeline.features import CLASSIFIER_FORMAT, classifier_record, train_classifier

    data = datasets.load(data_file(root, dataset))
    if data.kind != "image":
        save_torch(features_file(root, dataset), {"format": CLASSIFIER_FORMAT, "kind": data.kind,
                                                  "note": "no feature classifier: FID is for image data"})
        write_json(features_metrics_file(root, dataset), {})
        return features_file(root, dataset)
    if "train" not in data.labels or "test" not in data.labels:
        raise StageError(f"{data_file(root, dataset)} has no class labels; run `dvc repro prepare@{dataset}` again")
    device = resolve_device(params.device)
    result = train_classifier(torch.from_numpy(data.train), torch.from_numpy(data.labels["train"]),
                              torch.from_numpy(data.test), torch.from_numpy(data.labels["test"]),
                              params.evaluate.image.classifier, derive_seed(params.data.seed, "features", dataset),
                              device)
    save_torch(features_file(root, dataset),
               classifier_record(result, sha256_file(data_file(root, dataset)), list(data.shape)))
    table: dict = {}
    record_metric(table, "classifier", 0, "test_accuracy", result.test_accuracy)
    record_metric(table, "classifier", 0, "train_accuracy", result.train_accuracy)
    write_json(features_metrics_file(root, dataset), table)
    return features_file(root, dataset)


def _image_baseline(root: Path, params: Params, dataset: str, data) -> dict:
    """Real-vs-real floor: the reference split against the images FID compares with, at the same n."""
    device = resolve_device(params.device)
    extractor = load_extractor(root, params, dataset)
    against = fid_against(params, data)
    n = min(params.evaluate.image.fid_samples, len(against), len(data.reference))
    table: dict = {}
    metrics = image_metrics(params, data.reference[:n], against[:n], extractor,
                             derive_seed(params.data.seed, "baseline", dataset), device)
    for metric, value in metrics.items():
        record_metric(table, "data", 0, metric, value)
    return table


def run_baseline(root: Path, params: Params, dataset: str) -> Path:
    """The data floor: W2 between disjoint reference chunks and the test split (mean and sd over chunks);
    for images, FID / KID / precision-recall / sliced W2 of the reference split against the test split."""
    data = datasets.load(data_file(root, dataset))
    if data.kind == "image":
        write_json(baseline_file(root, dataset), _image_baseline(root, params, dataset, data))
        return baseline_file(root, dataset)
    cfg = params.evaluate
    n = min(cfg.w2_points, len(data.test))
    chunks = [data.reference[k * n:(k + 1) * n] for k in range(cfg.floor_repeats) if (k + 1) * n <= len(data.reference)]
    if not chunks:
        raise StageError(f"data.n_reference must be at least evaluate.w2_points ({n}) to compute the data floor")
    values = [w2_exact(chunk, data.test[:n]) for chunk in chunks]
    table: dict = {}
    record_metric(table, "data", 0, "w2", float(np.mean(values)))
    record_metric(table, "data", 0, "w2_sd", float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))
    record_metric(table, "data", 0, "w2_n", n)
    modes = [mode_metrics(params, dataset, data, chunk, data.test[:n]) for chunk in chunks]
    for metric in modes[0]:
        scores = [m[metric] for m in modes]
        record_metric(table, "data", 0, metric, float(np.mean(scores)))
        record_metric(table, "data", 0, f"{metric}_sd", float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan"))
    if dataset in datasets.TOY_DATASETS:  # the true NLL of the held-out points: every 2-D law is known
        law = datasets.exact_law(dataset, data.meta["mean"], data.meta["std"])
        nll = -law.log_prob(torch.from_numpy(data.test[: cfg.nll_points]).double())
        record_metric(table, "data", 0, "nll", nll.mean())
        record_metric(table, "data", 0, "nll_se", nll.std() / math.sqrt(len(nll)))
        record_metric(table, "data", 0, "nll_n", len(nll))
    write_json(baseline_file(root, dataset), table)
    return baseline_file(root, dataset)
