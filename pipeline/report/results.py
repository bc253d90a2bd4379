"""The report's input: every stage's metrics gathered into one long table (reports/results.csv), and the
cell texts the tables share (mean and interval over seeds, the evaluation's own error, the NFE used).

The table is built from params.yaml's methods, data sets and seeds, never from a glob, so a removed
method leaves no stale rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.errors import StageError
from pipeline.layout import baseline_file, features_metrics_file, metrics_file
from pipeline.metric_table import METRICS
from pipeline.uncertainty import seed_interval


COLUMNS = ["dataset", "method", "sampler", "nfe", "seed", "metric", "value"]


ADAPTIVE_COLUMN = "adaptive"


METRIC_ENTRIES = {(m.name, m.kind): m for m in METRICS}


def _rows_from_table(table: dict, dataset: str, method: str, seed: int) -> list[dict]:
    rows = []
    for sampler, by_nfe in table.items():
        for nfe, metrics in by_nfe.items():
            for metric, value in metrics.items():
                rows.append({"dataset": dataset, "method": method, "sampler": sampler, "nfe": int(nfe),
                             "seed": seed, "metric": metric, "value": value})
    return rows


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise StageError(f"{path} is missing; run `dvc repro` so every run and evaluate stage has run")
    return json.loads(path.read_text())


def collect_results(root: Path, params: Params) -> pd.DataFrame:
    rows = []
    for dataset in params.datasets:
        rows += _rows_from_table(_read_json(baseline_file(root, dataset)), dataset, "data", params.data.seed)
        if DATASETS[dataset] == "image":
            rows += _rows_from_table(_read_json(features_metrics_file(root, dataset)), dataset, "features",
                                     params.data.seed)
        for method in params.evaluated_methods():
            for seed in params.seeds:
                rows += _rows_from_table(_read_json(metrics_file(root, method, dataset, seed)), dataset, method, seed)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    order = {name: i for i, name in enumerate(["data", *params.evaluated_methods()])}
    dataset_order = {name: i for i, name in enumerate(params.datasets)}
    frame = frame.assign(_m=frame.method.map(order), _d=frame.dataset.map(dataset_order))
    frame = frame.sort_values(["_d", "_m", "sampler", "nfe", "seed", "metric"], kind="stable")
    return frame.drop(columns=["_m", "_d"]).reset_index(drop=True)


def closest_nfe(group: pd.DataFrame, target: int) -> pd.DataFrame:
    """Each seed's row at the NFE closest to `target` (in log NFE, ties to the larger): an adaptive sampler's
    NFE differs from seed to seed, so the choice is made per seed."""
    chosen = []
    for _, rows in group.groupby("seed", sort=True):
        nfes = np.array(sorted(rows.nfe.unique()))
        best = nfes[np.lexsort((-nfes, np.abs(np.log(np.maximum(nfes, 1)) - np.log(target))))[0]]
        chosen.append(rows[rows.nfe == best])
    return pd.concat(chosen)


def nfe_text(nfes: pd.Series) -> str:
    low, high = int(nfes.min()), int(nfes.max())
    return f"{low}" if low == high else f"{low}-{high}"


def interval_text(values: pd.Series) -> str:
    """mean ± the 95% t half-width over seeds (the mean alone for one seed); a seed without a value is named."""
    finite = values.dropna()
    mean, half = seed_interval(finite.tolist())
    if not math.isfinite(mean):
        return "—"
    missing = f" ({len(finite)} of {len(values)} seeds)" if len(finite) < len(values) else ""
    return f"{mean:.3f}" + (f" ± {half:.3f}" if math.isfinite(half) else "") + missing


def evaluation_error(frame: pd.DataFrame, method: str, sampler: str, dataset: str, metric: str, kind: str,
                     nfes) -> float:
    """The evaluation's own error of a number: its companion standard error (pipeline.metric_table's `error`,
    mean over seeds), else the data floor's spread over reference chunks of the same size (`<metric>_sd`)."""
    companion = METRIC_ENTRIES.get((metric, kind))
    name = companion.error if companion is not None and companion.error else None
    if name is not None:
        rows = frame[(frame.method == method) & (frame.sampler == sampler) & (frame.dataset == dataset)
                     & (frame.metric == name) & frame.nfe.isin(nfes)]
    else:
        rows = frame[(frame.method == "data") & (frame.dataset == dataset) & (frame.metric == f"{metric}_sd")]
    return float(rows.value.mean()) if len(rows) else math.nan


#: samplers fed each 2-D set's exact score (scripts/oracle_floor_study.py), shown beside rows above 2x the floor
ORACLE_STUDY = Path("reports") / "studies" / "oracle_floor.csv"


def load_oracle_study(root: Path) -> pd.DataFrame:
    path = root / ORACLE_STUDY
    return pd.read_csv(path) if path.exists() else pd.DataFrame()
