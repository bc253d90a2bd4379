"""The comparison: reports/results.csv (long form), reports/summary.md and reports/figures/.

The table is built from params.yaml's methods, data sets and seeds, never from a glob, so a
removed method leaves no stale rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.io import atomic_directory, write_text
from pipeline.stages import (StageError, baseline_file, load_samples, loss_file, metrics_file, samples_file)

COLUMNS = ["dataset", "method", "sampler", "nfe", "seed", "metric", "value"]
#: headline metrics of the summary table, in column order, and whether lower is better
HEADLINE_METRICS = {"w2": True, "nll": True}


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
        raise StageError(f"{path} is missing; run `dvc repro` so every evaluate stage has run")
    return json.loads(path.read_text())


def collect_results(root: Path, params: Params) -> pd.DataFrame:
    rows = []
    for dataset in params.datasets:
        rows += _rows_from_table(_read_json(baseline_file(root, dataset)), dataset, "data", params.data.seed)
        for method in params.methods:
            for seed in params.seeds:
                rows += _rows_from_table(_read_json(metrics_file(root, method, dataset, seed)), dataset, method, seed)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    order = {name: i for i, name in enumerate(["data", *params.methods])}
    dataset_order = {name: i for i, name in enumerate(params.datasets)}
    frame = frame.assign(_m=frame.method.map(order), _d=frame.dataset.map(dataset_order))
    frame = frame.sort_values(["_d", "_m", "sampler", "nfe", "seed", "metric"], kind="stable")
    return frame.drop(columns=["_m", "_d"]).reset_index(drop=True)


def _closest_nfe(group: pd.DataFrame, target: int) -> pd.DataFrame:
    nfes = np.array(sorted(group.nfe.unique()))
    best = nfes[np.lexsort((-nfes, np.abs(np.log(np.maximum(nfes, 1)) - np.log(target))))[0]]
    return group[group.nfe == best]


def _format(values: pd.Series, se: pd.Series | None = None) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    text = f"{values.mean():.3f}"
    if len(values) > 1:
        text += f" ± {values.std(ddof=1):.3f}"
    elif se is not None and not se.dropna().empty:
        text += f" ± {se.dropna().mean():.3f}"
    return text


def headline_table(frame: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Rows method/sampler, columns dataset x metric at the NFE closest to the headline budget."""
    target = params.report.headline_nfe
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for (method, sampler, dataset, metric), group in frame[frame.metric.isin(HEADLINE_METRICS)].groupby(
            ["method", "sampler", "dataset", "metric"], sort=False):
        chosen = _closest_nfe(group, target)
        se_rows = frame[(frame.method == method) & (frame.sampler == sampler) & (frame.dataset == dataset)
                        & (frame.metric == f"{metric}_se") & (frame.nfe.isin(chosen.nfe))]
        nfe = int(chosen.nfe.iloc[0])
        label = f"{_format(chosen.value, se_rows.value if len(se_rows) else None)}"
        if method != "data":
            label += f" ({nfe})"
        cells.setdefault((method, sampler), {})[f"{dataset} {metric}"] = label
    columns = [f"{d} {m}" for d in params.datasets for m in HEADLINE_METRICS]
    order = ["data", *params.methods]
    keys = sorted(cells, key=lambda k: (order.index(k[0]), k[1]))
    table = pd.DataFrame([[cells[k].get(c, "—") for c in columns] for k in keys], columns=columns,
                         index=[f"{m} / {s}" for m, s in keys])
    return table


def budget_table(frame: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    sub = frame[(frame.dataset == dataset) & (frame.metric == metric) & (frame.method != "data")]
    if sub.empty:
        return pd.DataFrame()
    pivot = sub.groupby(["method", "sampler", "nfe"], sort=False).value.mean().unstack("nfe")
    pivot = pivot.reindex(sorted(pivot.columns), axis=1)
    pivot.index = [f"{m} / {s}" for m, s in pivot.index]
    return pivot.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")


def summary_markdown(frame: pd.DataFrame, params: Params) -> str:
    lines = ["# Benchmark summary", "",
             f"Methods: {', '.join(params.methods)}. Data sets: {', '.join(params.datasets)}. "
             f"Seeds: {', '.join(map(str, params.seeds))}.", "",
             f"## Headline comparison (NFE closest to {params.report.headline_nfe})", "",
             "Each cell: mean (± sd over seeds, or ± standard error for one seed) and, in brackets, the NFE "
             "used. `w2`: exact 2-Wasserstein distance to held-out data (lower is better); `nll`: negative "
             "log-likelihood in nats per sample on held-out data (ELBO for DDPM's ancestral samplers, "
             "probability-flow ODE otherwise). Row `data / data` is the floor: W2 between two disjoint "
             "samples of the data set, and the true NLL where the density is known.", "",
             headline_table(frame, params).to_markdown(), ""]
    for metric in ("w2", "nll"):
        lines += [f"## {metric} against the number of function evaluations", ""]
        for dataset in params.datasets:
            table = budget_table(frame, dataset, metric)
            if table.empty:
                continue
            lines += [f"### {dataset}", "", table.to_markdown(), ""]
    lines += ["## Figures", "", "![samples](figures/samples.png)", "", "![w2 vs nfe](figures/w2_vs_nfe.png)", "",
              "![loss curves](figures/loss_curves.png)", ""]
    return "\n".join(lines)


def _figures(root: Path, frame: pd.DataFrame, params: Params, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline import data as datasets
    from pipeline.stages import data_file

    seed = params.seeds[0]
    methods = list(params.methods)
    rows, cols = len(methods) + 1, len(params.datasets)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for j, dataset in enumerate(params.datasets):
        data = datasets.load(data_file(root, dataset))
        flat = data.kind == "toy"
        lim = np.quantile(np.abs(data.test), 0.995) * 1.3 if flat else None
        panels = [("data", data.test)]
        for method in methods:
            index, samples = load_samples(samples_file(root, method, dataset, seed))
            first = index[0]["sampler"]
            best = max((r for r in index if r["sampler"] == first), key=lambda r: r["nfe"])
            panels.append((f"{method}\n{first} ({best['nfe']})", samples[best["key"]]))
        for i, (title, x) in enumerate(panels):
            ax = axes[i, j]
            if flat:
                x = x[np.isfinite(x).all(1)][:2000]
                ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5, rasterized=True)
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if i else f"{dataset}\ndata", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.2), squeeze=False)
    w2 = frame[frame.metric == "w2"]
    for j, dataset in enumerate(params.datasets):
        ax = axes[0, j]
        sub = w2[(w2.dataset == dataset) & (w2.method != "data")]
        for (method, sampler), group in sub.groupby(["method", "sampler"], sort=False):
            curve = group.groupby("nfe").value.mean()
            ax.plot(curve.index, curve.values, marker="o", ms=3, label=f"{method}/{sampler}")
        floor = w2[(w2.dataset == dataset) & (w2.method == "data")].value
        if len(floor):
            ax.axhline(float(floor.iloc[0]), color="k", ls="--", lw=1, label="data floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(dataset, fontsize=9)
        if j == 0:
            ax.set_ylabel("W2 to held-out data")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.05 + 0.03 * (len(labels) // 4), 1, 1))
    fig.savefig(out / "w2_vs_nfe.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.0), squeeze=False)
    for j, dataset in enumerate(params.datasets):
        ax = axes[0, j]
        for method in methods:
            path = loss_file(root, method, dataset, seed)
            if path.exists():
                curve = pd.read_csv(path)
                ax.plot(curve.step, curve.loss, lw=1, label=method)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(dataset, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=90)
    plt.close(fig)


def run_report(root: Path, params: Params) -> Path:
    frame = collect_results(root, params)
    reports = root / "reports"
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    write_text(reports / "results.csv", buffer.getvalue())
    write_text(reports / "summary.md", summary_markdown(frame, params))
    with atomic_directory(reports / "figures") as tmp:
        _figures(root, frame, params, tmp)
    return reports / "summary.md"
