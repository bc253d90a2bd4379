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
from pipeline import metric_table
from pipeline.evaluation import SampleScorer, record_metric
from pipeline.io import derive_seed, save_torch, sha256_file, write_json
from pipeline.layout import baseline_file, data_file, features_file, features_metrics_file, resolve_device


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


def run_baseline(root: Path, params: Params, dataset: str) -> Path:
    """The data floor, scored as every model's samples are (pipeline.evaluation.SampleScorer): on 2-D sets
    disjoint reference chunks against the test split (mean and, as `<metric>_sd`, the sd over chunks) and
    the true NLL of the test points; on images the reference split against the images FID compares with."""
    data = datasets.load(data_file(root, dataset))
    scorer = SampleScorer(root, params, dataset, data, resolve_device(params.device))
    seed = derive_seed(params.data.seed, "baseline", dataset)
    table: dict = {}
    if data.kind == "image":
        n = min(scorer.n, len(data.reference))
        for metric, value in scorer(data.reference[:n], seed).items():
            record_metric(table, "data", 0, metric, value)
        write_json(baseline_file(root, dataset), table)
        return baseline_file(root, dataset)
    n = scorer.n
    chunks = [data.reference[k * n:(k + 1) * n] for k in range(params.evaluate.floor_repeats)
              if (k + 1) * n <= len(data.reference)]
    if not chunks:
        raise StageError(f"data.n_reference must be at least evaluate.w2_points ({n}) to compute the data floor")
    scores = [scorer(chunk, seed) for chunk in chunks]
    for metric in scores[0]:
        values = [score[metric] for score in scores]
        record_metric(table, "data", 0, metric, float(np.mean(values)))
        if metric_table.metric(metric, data.kind).lower_is_better is not None:
            spread = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            record_metric(table, "data", 0, f"{metric}_sd", spread)
    law = datasets.exact_law(dataset, data.meta["mean"], data.meta["std"])  # every 2-D law is known
    nll = -law.log_prob(torch.from_numpy(data.test[: params.evaluate.nll_points]).double())
    record_metric(table, "data", 0, "nll", nll.mean())
    record_metric(table, "data", 0, "nll_se", nll.std() / math.sqrt(len(nll)))
    record_metric(table, "data", 0, "nll_n", len(nll))
    write_json(baseline_file(root, dataset), table)
    return baseline_file(root, dataset)
