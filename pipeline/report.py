"""The comparison: reports/results.csv (long form), reports/summary.md and reports/figures/.

The table is built from params.yaml's methods, data sets and seeds, never from a glob, so a
removed method leaves no stale rows.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.convergence import STUDY as CONVERGENCE_STUDY
from pipeline.convergence import collect_convergence, convergence_figure, convergence_lines
from pipeline.io import atomic_directory, write_text
from pipeline.data import DATASETS
from pipeline.errors import StageError
from pipeline.metric_table import METRICS, directions
from pipeline.protocol import protocol_table
from pipeline.uncertainty import holm_significant, paired_p_value, seed_interval
from pipeline.layout import (baseline_file, data_file, features_metrics_file, load_samples, loss_file, metrics_file,
                             samples_file)

#: (line style, marker) per method, so that curves stay distinguishable once colours repeat
LINE_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v"), ("--", "P"), (":", "X"), ("-.", "*")]
COLUMNS = ["dataset", "method", "sampler", "nfe", "seed", "metric", "value"]
#: headline metrics of the summary table (pipeline.metric_table), in column order, and whether lower is better
HEADLINE_METRICS = directions("toy", table="headline")
IMAGE_HEADLINE_METRICS = directions("image", table="headline")
#: properties of a flow's ODE trajectories (Liu et al. 2023), reported by the flows that define them
PATH_METRICS = list(directions("toy", table="path"))
METRIC_ENTRIES = {(m.name, m.kind): m for m in METRICS}
ADAPTIVE_COLUMN = "adaptive"
#: how to read a cell of the headline and NFE tables (pipeline.uncertainty)
READING = ("How to read a cell: mean over training seeds ± the half-width of its 95% Student-t interval over "
           "those seeds (no ± with one seed); in [brackets] the evaluation's own error at its sample size: the "
           "metric's standard error where it has one (NLL over held-out points), else the data floor's sd over "
           "disjoint reference samples of the same size (W2, FID, coverage), a lower bound there: an imperfect "
           "model's own sample set can spread more (about 3x on an undertrained smoke-profile model); in (parentheses) the NFE used. "
           "Within a seed every method and sampler starts sample i from the same noise, so rows are paired. A "
           "**bold** cell is the best of its column and beats the runner-up by a one-sided paired t-test over "
           "seeds, Holm-corrected over the columns at level 0.05; with fewer than two seeds nothing is bold.")


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


def _closest_nfe(group: pd.DataFrame, target: int) -> pd.DataFrame:
    """Each seed's row at the NFE closest to `target` (in log NFE, ties to the larger): an adaptive sampler's
    NFE differs from seed to seed, so the choice is made per seed."""
    chosen = []
    for _, rows in group.groupby("seed", sort=True):
        nfes = np.array(sorted(rows.nfe.unique()))
        best = nfes[np.lexsort((-nfes, np.abs(np.log(np.maximum(nfes, 1)) - np.log(target))))[0]]
        chosen.append(rows[rows.nfe == best])
    return pd.concat(chosen)


def _nfe_text(nfes: pd.Series) -> str:
    low, high = int(nfes.min()), int(nfes.max())
    return f"{low}" if low == high else f"{low}-{high}"


def _interval_text(values: pd.Series) -> str:
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


def headline_table(frame: pd.DataFrame, params: Params, metrics: dict = HEADLINE_METRICS,
                   kind: str = "toy") -> pd.DataFrame:
    """Rows method/sampler, columns dataset x metric at the NFE closest to the headline budget (the data sets
    of one kind: `toy` with HEADLINE_METRICS, `image` with IMAGE_HEADLINE_METRICS). A cell: mean ± the 95%
    interval over seeds, [the evaluation's own error], (NFE); the best of a column in bold where it beats
    the runner-up by pipeline.uncertainty's paired test."""
    target = params.report.headline_nfe
    names = [d for d in params.datasets if DATASETS[d] == kind]
    frame = frame[frame.dataset.isin(names) & (frame.method != "features")]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    per_seed: dict[str, dict[tuple[str, str], pd.Series]] = {}
    for (method, sampler, dataset, metric), group in frame[frame.metric.isin(metrics)].groupby(
            ["method", "sampler", "dataset", "metric"], sort=False):
        chosen = _closest_nfe(group, target)
        error = evaluation_error(frame, method, sampler, dataset, metric, kind, chosen.nfe.unique())
        label = _interval_text(chosen.value)
        if method == "data":  # the floor keeps its spread over reference chunks
            label += f" ± {error:.3f}" if math.isfinite(error) and len(chosen) == 1 else ""
        else:
            label += (f" [{error:.3f}]" if math.isfinite(error) else "") + f" ({_nfe_text(chosen.nfe)})"
            per_seed.setdefault(f"{dataset} {metric}", {})[(method, sampler)] = chosen.set_index("seed").value
        cells.setdefault((method, sampler), {})[f"{dataset} {metric}"] = label
    for column, key in best_entries(per_seed, {f"{d} {m}": metrics[m] for d in names for m in metrics}).items():
        cells[key][column] = f"**{cells[key][column]}**"
    columns = [f"{d} {m}" for d in names for m in metrics]
    order = ["data", *params.evaluated_methods()]
    keys = sorted(cells, key=lambda k: (order.index(k[0]), k[1]))
    table = pd.DataFrame([[cells[k].get(c, "—") for c in columns] for k in keys], columns=columns,
                         index=[f"{m} / {s}" for m, s in keys])
    return table


def best_entries(per_seed: dict[str, dict[tuple, pd.Series]], lower_is_better: dict[str, bool]) -> dict[str, tuple]:
    """{column: key} of the columns whose best entry (by mean over seeds) beats the runner-up by a one-sided
    paired t-test over seeds, Holm-corrected over the columns tested (pipeline.uncertainty)."""
    tested, p_values = [], []
    for column, entries in per_seed.items():
        lower = lower_is_better[column]
        ranked = sorted(entries, key=lambda k: entries[k].mean() if lower else -entries[k].mean())
        ranked = [k for k in ranked if np.isfinite(entries[k].mean())]
        if len(ranked) < 2:
            continue
        best, runner_up = entries[ranked[0]], entries[ranked[1]]
        seeds = best.index.intersection(runner_up.index)
        tested.append((column, ranked[0]))
        p_values.append(paired_p_value(best[seeds].tolist(), runner_up[seeds].tolist(), lower))
    return {column: key for (column, key), significant in zip(tested, holm_significant(p_values)) if significant}


def budget_table(frame: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    """Rows method/sampler, columns NFE: mean ± the 95% interval over seeds."""
    sub = frame[(frame.dataset == dataset) & (frame.metric == metric) & (frame.method != "data")]
    if sub.empty:
        return pd.DataFrame()
    # an adaptive sampler (no NFE shared by all its seeds) gets one column, its NFE range beside the value
    shared = sub.groupby(["method", "sampler"]).apply(
        lambda g: bool(set.intersection(*(set(r.nfe) for _, r in g.groupby("seed")))), include_groups=False)
    adaptive = sub.set_index(["method", "sampler"]).index.map(lambda key: not shared[key])
    sub = sub.assign(nfe=np.where(adaptive, ADAPTIVE_COLUMN, sub.nfe.astype(object)))
    pivot = sub.groupby(["method", "sampler", "nfe"], sort=False).value.agg(_interval_text).unstack("nfe")
    ranges = frame[(frame.dataset == dataset) & (frame.metric == metric)].groupby(["method", "sampler"]).nfe
    if ADAPTIVE_COLUMN in pivot.columns:
        pivot[ADAPTIVE_COLUMN] = [f"{v} (NFE {_nfe_text(ranges.get_group(k))})" if isinstance(v, str) else v
                                  for k, v in zip(pivot.index, pivot[ADAPTIVE_COLUMN])]
    pivot = pivot.reindex(sorted(pivot.columns, key=lambda c: (c == ADAPTIVE_COLUMN, 0 if c == ADAPTIVE_COLUMN else c)),
                          axis=1)
    pivot.index = [f"{m} / {s}" for m, s in pivot.index]
    return pivot.fillna("")


def floor_ratio_table(frame: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Every 2-D sampler at its largest NFE: W2 (mean over seeds) as a multiple of the data floor, worst first."""
    toy = [d for d in params.datasets if DATASETS[d] == "toy"]
    w2 = frame[frame.dataset.isin(toy) & (frame.metric == "w2")]
    floors = w2[w2.method == "data"].groupby("dataset").value.mean()
    runs = w2[w2.method != "data"]
    if runs.empty or floors.empty:
        return pd.DataFrame()
    largest = runs.groupby(["dataset", "method", "sampler", "seed"]).nfe.transform("max")  # per seed: adaptive NFE
    top = runs[runs.nfe == largest].groupby(["dataset", "method", "sampler"], sort=False).agg(
        nfe=("nfe", "max"), value=("value", "mean"))
    table = top.reset_index().rename(columns={"value": "w2"})
    table["floor"] = table.dataset.map(floors)
    table["ratio"] = table.w2 / table.floor
    return table.sort_values("ratio", ascending=False, kind="stable").reset_index(drop=True)


#: samplers fed each 2-D set's exact score (scripts/oracle_floor_study.py), shown beside rows above 2x the floor
ORACLE_STUDY = Path("reports") / "studies" / "oracle_floor.csv"


def load_oracle_study(root: Path) -> pd.DataFrame:
    path = root / ORACLE_STUDY
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def floor_check_lines(frame: pd.DataFrame, params: Params, oracle: pd.DataFrame | None = None) -> list[str]:
    """The summary's check that every sampler, at its largest budget, is within twice the data floor (W2);
    rows above it are shown beside the same sampler fed the exact score, where the oracle study has it."""
    table = floor_ratio_table(frame, params)
    if table.empty:
        return []
    above = table[table.ratio > 2]
    worst = table.iloc[0]
    lines = ["## Samplers at their largest budget against the data floor", "",
             f"W2 of every 2-D sampler at its largest NFE divided by the data floor of its data set (mean over "
             f"seeds). Worst: {worst.method} / {worst.sampler} on {worst.dataset} at {int(worst.nfe)} NFE, "
             f"{worst.ratio:.2f}x the floor ({worst.w2:.3f} against {worst.floor:.3f}). "]
    if above.empty:
        lines[-1] += "No sampler is above 2x the floor."
        return lines + [""]
    lines[-1] += f"{len(above)} of {len(table)} are above 2x the floor:"
    shown = above.assign(w2=above.w2.map("{:.3f}".format), floor=above.floor.map("{:.3f}".format),
                         ratio=above.ratio.map("{:.2f}".format))
    if oracle is not None and not oracle.empty:
        exact = oracle.set_index(["dataset", "method", "sampler"])
        keys = list(zip(above.dataset, above.method, above.sampler))
        ratios = [exact.w2.get(key, float("nan")) / exact.floor.get(key, float("nan")) for key in keys]
        shown = shown.assign(**{"exact-score w2": [f"{exact.w2.get(key, float('nan')):.3f}" for key in keys],
                                "exact-score ratio": [f"{r:.2f}" for r in ratios]})
        known = [r for r in ratios if r == r]
        if known:
            lines[-1] += (f" beside each, the same sampler at the same budget fed the data set's exact score "
                          f"(pipeline.data.toy.exact_law; for PFGM the exact Poisson field of the training split; "
                          f"{ORACLE_STUDY}, made by "
                          f"scripts/oracle_floor_study.py).")
            if len(known) == len(ratios) and max(known) < 1.5:
                lines[-1] += (f" Fed the exact target, every one of them is within {max(known):.2f}x the floor, "
                              f"so the excess is the trained network's, not the sampler's: these rows measure "
                              f"how well the method's network learned the data at this training budget.")
    lines += ["", shown.to_markdown(index=False, disable_numparse=True)]
    return lines + [""]


#: the 2-D metrics that see modes (pipeline.metrics.prdc_scores, structure_scores), higher is better
MODE_METRICS = list(directions("toy", table="modes"))


def mode_table(frame: pd.DataFrame, params: Params, shown: tuple[str, ...] = ("coverage", "modes", "on_support")
               ) -> pd.DataFrame:
    """Rows method/sampler, columns dataset x mode metric, each sampler at its largest NFE (mean over seeds);
    row `data / data` is the reference split against the test split."""
    toy = [d for d in params.datasets if DATASETS[d] == "toy"]
    sub = frame[frame.dataset.isin(toy) & frame.metric.isin(shown)]
    if sub.empty:
        return pd.DataFrame()
    largest = sub.groupby(["dataset", "method", "sampler", "seed"]).nfe.transform("max")
    means = sub[sub.nfe == largest].groupby(["method", "sampler", "dataset", "metric"], sort=False).value.mean()
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for (method, sampler, dataset, metric), value in means.items():
        text = f"{int(value)}" if metric == "modes" and value == int(value) else f"{value:.3f}"
        cells.setdefault((method, sampler), {})[f"{dataset} {metric}"] = text
    columns = [f"{d} {m}" for d in toy for m in shown if f"{d} {m}" in {c for v in cells.values() for c in v}]
    order = ["data", *params.evaluated_methods()]
    keys = sorted(cells, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1]))
    return pd.DataFrame([[cells[k].get(c, "—") for c in columns] for k in keys], columns=columns,
                        index=[f"{m} / {s}" for m, s in keys])


def mode_lines(frame: pd.DataFrame, params: Params) -> list[str]:
    table = mode_table(frame, params)
    if table.empty:
        return []
    return ["## Modes and coverage (2-D, each sampler at its largest budget)", "",
            f"W2 can rate a ring as eight Gaussians; these cannot. `coverage`: share of held-out points whose "
            f"{params.evaluate.prdc_k}-NN ball holds a generated point (Naeem et al. 2020; `precision`, `recall` "
            f"and `density` are in results.csv); `modes`: modes of the mixture holding at least half their "
            f"expected share of samples within 3 standard deviations; `on_support`: share of samples on the "
            f"checkerboard's occupied squares. Row `data / data` is the reference split against the same "
            f"held-out points (mean over the floor's chunks).", "", table.to_markdown(), ""]


def learned_table(frame: pd.DataFrame, params: Params, tolerance: float = 0.1) -> pd.DataFrame:
    """Per 2-D data set and method, with its best sampler at that sampler's largest NFE (mean over seeds):
    coverage against (1 - tolerance) x the data floor's, and the modes held against the floor's (where the
    data set has modes). Column `learned`: both hold."""
    toy = [d for d in params.datasets if DATASETS[d] == "toy"]
    sub = frame[frame.dataset.isin(toy) & frame.metric.isin(["coverage", "modes"])]
    if sub.empty:
        return pd.DataFrame()
    largest = sub.groupby(["dataset", "method", "sampler", "seed"]).nfe.transform("max")
    means = sub[sub.nfe == largest].groupby(["dataset", "method", "sampler", "metric"], sort=False).value.mean()
    means = means.unstack("metric")
    rows = []
    for dataset in toy:
        if dataset not in means.index.get_level_values(0):
            continue
        by_method = means.loc[dataset]
        floor = by_method.loc["data"].iloc[0]
        for method in params.evaluated_methods():
            if method not in by_method.index.get_level_values(0):
                continue
            scores = by_method.loc[method]
            row = {"dataset": dataset, "method": method, "coverage": scores.coverage.max(),
                   "best sampler": scores.coverage.idxmax(), "coverage floor": floor.coverage}
            ok = row["coverage"] >= (1 - tolerance) * floor.coverage
            if "modes" in scores and scores.modes.notna().any():
                row |= {"modes": scores.modes.max(), "modes floor": floor.modes}
                ok = ok and row["modes"] >= floor.modes
            rows.append(row | {"learned": "yes" if ok else "no"})
    return pd.DataFrame(rows)


def learned_lines(frame: pd.DataFrame, params: Params, convergence: pd.DataFrame | None = None) -> list[str]:
    """The learned check (learned_table); for a method that misses it and is in the convergence study, what
    the study's longest training reached (does it get there with more steps?)."""
    table = learned_table(frame, params)
    if table.empty:
        return []
    missed = table[table.learned == "no"]
    lines = ["## Has each model learned its data?", "",
             f"A method has learned a 2-D set when, with its best sampler at that sampler's largest budget, its "
             f"coverage is within 10% of the real-vs-real floor's and it holds every mode the floor holds "
             f"(`eight_gaussians`, `gaussian_mixture`). {len(table) - len(missed)} of {len(table)} pass."]
    if not missed.empty:
        lines[-1] += " Missed: " + "; ".join(
            f"{r.method} on {r.dataset} (coverage {r.coverage:.3f} against {r['coverage floor']:.3f}"
            + (f", {int(r.modes)} of {int(r['modes floor'])} modes" if "modes" in r and r.modes == r.modes else "")
            + ")" for _, r in missed.iterrows()) + "."
        lines += _study_verdicts(missed, convergence)
    shown = table.copy()
    for column in ("coverage", "coverage floor"):
        shown[column] = shown[column].map("{:.3f}".format)
    for column in ("modes", "modes floor"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if v != v else f"{v:g}")
    return lines + ["", shown.to_markdown(index=False, disable_numparse=True), ""]


def _study_verdicts(missed: pd.DataFrame, convergence: pd.DataFrame | None) -> list[str]:
    from pipeline.convergence import curves

    if convergence is None or (convergence.method != "data").sum() == 0:
        return []
    table = curves(convergence)
    verdicts = []
    for _, row in missed.iterrows():
        sub = table[(table.dataset == row.dataset) & (table.method == row.method)]
        if sub.empty:
            continue
        last = sub[sub.step == sub.step.max()]
        coverage = last[last.metric == "coverage"]["mean"].max()
        modes = last[last.metric == "modes"]["mean"].max()
        reached = coverage >= 0.9 * row["coverage floor"] and (modes != modes or modes >= row.get("modes floor", 0))
        verdicts.append(f"{row.method} on {row.dataset}: at {int(sub.step.max())} steps the convergence study "
                        f"reaches coverage {coverage:.3f}" + ("" if modes != modes else f" and {modes:g} modes")
                        + (", so more training gets there" if reached else ", so more training does not get "
                           "there either"))
    return ["", "In the convergence study: " + "; ".join(verdicts) + "."] if verdicts else []


def path_table(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows method, columns straightness and transport cost (means over seeds)."""
    sub = frame[(frame.dataset == dataset) & frame.metric.isin(PATH_METRICS)]
    if sub.empty:
        return pd.DataFrame()
    pivot = sub.groupby(["method", "metric"], sort=False).value.mean().unstack("metric")
    pivot = pivot.reindex([m for m in PATH_METRICS if m in pivot.columns], axis=1)
    return pivot.map(lambda v: "" if pd.isna(v) else f"{v:.4f}")


def extractor_label(frame: pd.DataFrame, params: Params, dataset: str) -> str:
    """Which features FID, KID and precision/recall of `dataset` were computed on."""
    if params.evaluate.image.extractor == "inception":
        return "torch-fidelity's InceptionV3 (pool3, 2048 features; comparable with papers' FIDs)"
    accuracy = frame[(frame.dataset == dataset) & (frame.method == "features") & (frame.metric == "test_accuracy")]
    known = f", test accuracy {accuracy.value.iloc[0]:.3f}" if len(accuracy) else ""
    return (f"the {dataset} feature classifier (pipeline.features, {params.evaluate.image.classifier.features} "
            f"features{known}; comparable only within this data set, not with Inception FIDs)")


def clipping_note(frame: pd.DataFrame, dataset: str) -> str:
    """Which methods' numbers on a data set were made with x0_hat clipped to [-1, 1] (their `clip_x0` rows)."""
    rows = frame[(frame.dataset == dataset) & (frame.metric == "clip_x0")]
    clipped = sorted(set(rows[rows.value == 1].method))
    unclipped = sorted(set(rows[rows.value == 0].method))
    note = ""
    if clipped:
        note += f" x0_hat clipped to [-1, 1] as in the papers' code (`clip_x0` = 1 in results.csv): {', '.join(clipped)}."
    if unclipped:
        note += f" Not clipped (`clip_x0` = 0): {', '.join(unclipped)}."
    return note


def image_summary(frame: pd.DataFrame, params: Params) -> list[str]:
    """The image section: extractor and floor per data set, headline metrics, FID against NFE."""
    images = [d for d in params.datasets if DATASETS[d] == "image"]
    if not images:
        return []
    cfg = params.evaluate.image
    lines = [f"## Images (NFE closest to {params.report.headline_nfe})", "",
             f"`fid`, `kid` (mean ± sd over subsets of {cfg.kid_subset_size}), `precision`, `recall`: "
             f"torch-fidelity on uint8 samples against the held-out {cfg.fid_against} images, n as below; "
             f"`nll_bpd`: bits/dim on {cfg.nll_points} test images (the discrete-decoder ELBO for the "
             f"ancestral samplers, the probability-flow ODE with one fixed Hutchinson probe per image on "
             f"uniformly dequantized images otherwise; ± standard error); `sliced_w2`: sliced 2-Wasserstein "
             f"distance in pixel space over {cfg.sliced_w2_projections} random directions (POT). Row "
             f"`data / data` is the real-vs-real floor: the disjoint reference split against the same "
             f"{cfg.fid_against} images, at the same n.", ""]
    for dataset in images:
        n = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == "fid_n")].value
        size = f"n = {int(n.iloc[0])} images per set; " if len(n) else ""
        lines += [f"- **{dataset}**: {size}FID, KID, precision and recall on {extractor_label(frame, params, dataset)}."
                  + clipping_note(frame, dataset)]
    lines += ["", headline_table(frame, params, IMAGE_HEADLINE_METRICS, kind="image").to_markdown(), ""]
    for dataset in images:
        table = budget_table(frame, dataset, "fid")
        floor = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == "fid")].value
        if table.empty:
            continue
        lines += [f"### FID against the number of function evaluations: {dataset}", "",
                  f"Real-vs-real floor: {floor.iloc[0]:.3f}." if len(floor) else "", "", table.to_markdown(), ""]
    lines += [f"![{dataset} samples](figures/samples_{dataset}.png)" for dataset in images] + [""]
    return lines


def summary_markdown(frame: pd.DataFrame, params: Params, oracle: pd.DataFrame | None = None,
                     convergence: tuple[pd.DataFrame, str] | None = None) -> str:
    lines = ["# Benchmark summary", "",
             f"Methods: {', '.join(params.evaluated_methods())}. Data sets: {', '.join(params.datasets)}. "
             f"Seeds: {', '.join(map(str, params.seeds))}.", "",
             f"## Headline comparison (NFE closest to {params.report.headline_nfe})", "",
             READING, "",
             "`w2`: exact 2-Wasserstein distance to held-out data (lower is better); `nll`: negative "
             "log-likelihood in nats per sample on held-out data (the variational bound of the reverse chain "
             "for DDPM's ancestral samplers and `analytic_ddpm`, the probability-flow ODE otherwise). Row "
             "`data / data` is the floor: W2 between disjoint samples of the data set (± sd over reference "
             "chunks), and the true NLL where the density is known.", "",
             headline_table(frame, params).to_markdown(), ""]
    lines += floor_check_lines(frame, params, oracle)
    lines += mode_lines(frame, params)
    lines += learned_lines(frame, params, None if convergence is None else convergence[0])
    if convergence is not None:
        section = convergence_lines(convergence[0], convergence[1])
        lines += section[:2] + [_trained_steps_line(params), ""] + section[2:] if section else []
    lines += image_summary(frame, params)
    for metric in ("w2", "nll"):
        lines += [f"## {metric} against the number of function evaluations", ""]
        for dataset in params.datasets:
            table = budget_table(frame, dataset, metric)
            if table.empty:
                continue
            lines += [f"### {dataset}", "", table.to_markdown(), ""]
    path_tables = [(dataset, path_table(frame, dataset)) for dataset in params.datasets]
    if any(not table.empty for _, table in path_tables):
        lines += ["## Straightness of the flows", "",
                  "`straightness`: int_0^1 E||(Z1 - Z0) - v(Z_t, t)||^2 dt along the RK45 trajectories (0 for "
                  "straight paths); `transport_cost`: E||Z1 - Z0||^2 between the noise and the sample it "
                  "becomes (Liu et al. 2023).", ""]
        for dataset, table in path_tables:
            if not table.empty:
                lines += [f"### {dataset}", "", table.to_markdown(), ""]
    lines += ["## Figures", "", "![samples](figures/samples.png)", "", "![w2 vs nfe](figures/w2_vs_nfe.png)", "",
              "![loss curves](figures/loss_curves.png)", ""]
    return "\n".join(lines + metric_glossary(frame, params))


def metric_glossary(frame: pd.DataFrame, params: Params) -> list[str]:
    """The metrics of this report (pipeline.metric_table), each with its direction and how it is computed."""
    present = {(metric, DATASETS[dataset]) for metric, dataset in zip(frame.metric, frame.dataset)}
    rows = [{"metric": m.name, "data": "2-D" if m.kind == "toy" else "images",
             "better": {True: "lower", False: "higher", None: "(count or setting)"}[m.lower_is_better],
             "from": m.source, "error estimate": m.error or "", "how": m.computed}
            for m in METRICS if (m.name, m.kind) in present]
    if not rows:
        return []
    return ["## Metrics", "", "Every metric in `results.csv` (`<metric>_sd` on a `data` row: its spread over the "
            "floor's reference chunks).", "", pd.DataFrame(rows).to_markdown(index=False), ""]


def image_grid(x: np.ndarray, side: int) -> np.ndarray:
    """The first side^2 images [N, C, H, W] in [-1, 1] tiled into one uint8 picture (1-pixel gaps)."""
    from pipeline.data.images import to_uint8

    pixels = to_uint8(x[: side * side])
    n, c, h, w = pixels.shape
    grid = np.full((side * (h + 1) - 1, side * (w + 1) - 1, c), 128, dtype=np.uint8)
    for k in range(n):
        row, col = divmod(k, side)
        grid[row * (h + 1):row * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = pixels[k].transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def _image_figures(root: Path, frame: pd.DataFrame, params: Params, dataset: str, out: Path) -> None:
    """samples_<dataset>.png: an 8 x 8 grid of held-out images, then of every method's samples, each at
    its first sampler's largest step budget, titled with the FID of that run."""
    import matplotlib.pyplot as plt

    from pipeline import data as datasets

    seed = params.seeds[0]
    fid = frame[(frame.dataset == dataset) & (frame.metric == "fid") & (frame.seed == seed)]
    floor = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == "fid")].value
    panels = [(f"data (test); floor FID {floor.iloc[0]:.2f}" if len(floor) else "data (test)",
               datasets.load(data_file(root, dataset)).test)]
    for method in params.evaluated_methods():
        index, samples = load_samples(samples_file(root, method, dataset, seed))
        first = index[0]["sampler"]
        best = max((r for r in index if r["sampler"] == first), key=lambda r: r["nfe"])
        value = fid[(fid.method == method) & (fid.sampler == first) & (fid.nfe == best["nfe"])].value
        label = f", FID {value.iloc[0]:.2f}" if len(value) and pd.notna(value.iloc[0]) else ""
        panels.append((f"{method} / {first} ({best['nfe']}){label}", samples[best["key"]]))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels):
        ax.imshow(image_grid(x, 8), cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"samples_{dataset}.png", dpi=100)
    plt.close(fig)


def _figures(root: Path, frame: pd.DataFrame, params: Params, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    _samples_figure(root, frame, params, out)
    for dataset in (d for d in params.datasets if DATASETS[d] == "image"):
        _image_figures(root, frame, params, dataset, out)
    _quality_figure(frame, params, out)
    _loss_figure(root, params, out)


#: what picks a method's sampler in the sample figure, per data kind: (metric, lower is better)
FIGURE_PICK = {"toy": ("coverage", False), "image": ("fid", True)}


def best_at_largest_budget(frame: pd.DataFrame, index: list[dict], method: str, dataset: str, seed: int) -> dict:
    """The index row of a method's best sampler at its largest budget: each sampler at its largest NFE,
    the best of them by FIGURE_PICK's metric (coverage on 2-D sets, FID on images), ties to the first."""
    metric, lower = FIGURE_PICK[DATASETS[dataset]]
    largest = {}
    for row in index:
        if row["sampler"] not in largest or row["nfe"] > largest[row["sampler"]]["nfe"]:
            largest[row["sampler"]] = row
    scores = frame[(frame.method == method) & (frame.dataset == dataset) & (frame.seed == seed)
                   & (frame.metric == metric)].set_index(["sampler", "nfe"]).value

    def score(row: dict) -> float:
        value = scores.get((row["sampler"], row["nfe"]), math.nan)
        return math.inf if not math.isfinite(value) else (value if lower else -value)

    return min(largest.values(), key=score)


def _samples_figure(root: Path, frame: pd.DataFrame, params: Params, out: Path) -> None:
    """samples.png: per data set (columns) the held-out data and each method at its best sampler at its
    largest budget (best_at_largest_budget), the pick's metric in the title."""
    import matplotlib.pyplot as plt

    from pipeline import data as datasets

    seed = params.seeds[0]
    methods = params.evaluated_methods()
    rows, cols = len(methods) + 1, len(params.datasets)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for j, dataset in enumerate(params.datasets):
        data = datasets.load(data_file(root, dataset))
        metric = FIGURE_PICK[data.kind][0]
        panels = [(f"{dataset}\ndata", data.test)]
        for method in methods:
            index, samples = load_samples(samples_file(root, method, dataset, seed))
            best = best_at_largest_budget(frame, index, method, dataset, seed)
            value = frame[(frame.method == method) & (frame.dataset == dataset) & (frame.seed == seed)
                          & (frame.sampler == best["sampler"]) & (frame.nfe == best["nfe"]) & (frame.metric == metric)]
            shown = f", {metric} {value.value.iloc[0]:.2f}" if len(value) else ""
            panels.append((f"{method}\n{best['sampler']} ({best['nfe']}){shown}", samples[best["key"]]))
        lim = np.quantile(np.abs(data.test), 0.995) * 1.3 if data.kind == "toy" else None
        for i, (title, x) in enumerate(panels):
            _sample_panel(axes[i, j], x, lim, title)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=90)
    plt.close(fig)


def _sample_panel(ax, x: np.ndarray, lim: float | None, title: str) -> None:
    """A scatter of 2-D points within +-lim, or an image grid (lim None)."""
    if lim is not None:
        x = x[np.isfinite(x).all(1)][:2000]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5, rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    else:
        ax.imshow(image_grid(x, 6), cmap="gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=6)


def _quality_figure(frame: pd.DataFrame, params: Params, out: Path) -> None:
    """w2_vs_nfe.png: W2 (FID on image sets) against NFE per method x sampler, and the data floor."""
    import matplotlib.pyplot as plt

    cols = len(params.datasets)
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.2), squeeze=False)
    curves = {"toy": frame[frame.metric == "w2"], "image": frame[frame.metric == "fid"]}  # FID on image sets
    for j, dataset in enumerate(params.datasets):
        ax = axes[0, j]
        w2 = curves[DATASETS[dataset]]
        sub = w2[(w2.dataset == dataset) & (w2.method != "data")]
        for (method, sampler), group in sub.groupby(["method", "sampler"], sort=False):
            curve = group.groupby("nfe").value.mean()
            style = LINE_STYLES[params.evaluated_methods().index(method) % len(LINE_STYLES)]
            ax.plot(curve.index, curve.values, marker=style[1], ls=style[0], ms=3, label=f"{method}/{sampler}")
        floor = w2[(w2.dataset == dataset) & (w2.method == "data")].value
        if len(floor):
            ax.axhline(float(floor.iloc[0]), color="k", ls="--", lw=1, label="data floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(dataset if DATASETS[dataset] == "toy" else f"{dataset} (FID)", fontsize=9)
        if j == 0:
            ax.set_ylabel("W2 to held-out data")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.05 + 0.03 * (len(labels) // 4), 1, 1))
    fig.savefig(out / "w2_vs_nfe.png", dpi=90)
    plt.close(fig)



def _loss_figure(root: Path, params: Params, out: Path) -> None:
    """loss_curves.png: each method's training loss per data set."""
    import matplotlib.pyplot as plt

    seed, cols = params.seeds[0], len(params.datasets)
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.0), squeeze=False)
    for j, dataset in enumerate(params.datasets):
        ax = axes[0, j]
        for method in params.evaluated_methods():
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


def _trained_steps_line(params: Params) -> str:
    """What this profile trains, beside the budget the study picks (they differ where a profile says why)."""
    steps = {}
    for method in params.methods:
        for dataset in params.datasets:
            label = "2-D sets" if DATASETS[dataset] == "toy" else "images"
            steps.setdefault(label, {}).setdefault(params.train_settings(method, DATASETS[dataset]).steps, []).append(method)
    parts = []
    for label, by_steps in steps.items():
        common = max(by_steps, key=lambda n: len(by_steps[n]))
        others = [f"{', '.join(dict.fromkeys(by_steps[n]))} {n}" for n in by_steps if n != common]
        parts.append(f"{common} steps on {label}" + (f" ({'; '.join(others)})" if others else ""))
    return f"This profile trains {', '.join(parts)} (params.yaml `train` and the methods' overrides)."


def run_report(root: Path, params: Params) -> Path:
    frame = collect_results(root, params)
    reports = root / "reports"
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    write_text(reports / "results.csv", buffer.getvalue())
    buffer = io.StringIO()
    protocol_table(frame, params, root).to_csv(buffer, index=False, float_format="%.10g")
    write_text(reports / "protocol.csv", buffer.getvalue())
    convergence = collect_convergence(root, params)
    buffer = io.StringIO()
    convergence.to_csv(buffer, index=False, float_format="%.10g")
    write_text(reports / "convergence.csv", buffer.getvalue())
    source = "this run's `train.snapshots`"
    if (convergence.method != "data").sum() == 0 and (root / CONVERGENCE_STUDY).exists():
        convergence = pd.read_csv(root / CONVERGENCE_STUDY)
        source = f"the study profile `profiles/convergence.yaml`, kept as {CONVERGENCE_STUDY}"
    has_curves = (convergence.method != "data").sum() > 0
    write_text(reports / "summary.md", summary_markdown(frame, params, load_oracle_study(root),
                                                        (convergence, source) if has_curves else None))
    with atomic_directory(reports / "figures") as tmp:
        _figures(root, frame, params, tmp)
        if has_curves:
            convergence_figure(convergence, tmp / "convergence.png")
    return reports / "summary.md"
