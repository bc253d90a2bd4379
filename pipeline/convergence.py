"""The convergence study: every metric against training steps, over seeds, and the training budget it picks.

The run stage scores the EMA weights kept at each step of `train.snapshots`
(pipeline.stages.run_convergence, one CSV per run); under a constant learning rate those are the
weights of a run of that many steps. This module gathers those CSVs (with the data floor), reduces
them to a mean and a Student-t 95% interval over training seeds, states the budget rule and draws
the curves. profiles/convergence.yaml is the study; its gathered table is kept as
reports/studies/convergence.csv so that the default profile's report can show it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.layout import baseline_file, convergence_file
from pipeline.metric_table import select
from pipeline.uncertainty import seed_interval

#: where the study profile's gathered table is kept for other profiles' reports
STUDY = Path("reports") / "studies" / "convergence.csv"
COLUMNS = ["dataset", "method", "seed", "step", "sampler", "nfe", "metric", "value"]
#: metrics shown against steps (pipeline.metric_table's `convergence`), and whether higher is better
CURVE_METRICS = {m.name: not m.lower_is_better for kind in ("toy", "image") for convergence in ("rule", "curve")
                 for m in select(kind, convergence=convergence)}
#: metrics the budget rule requires to have converged (where a data set has them: W2 and the mode metrics
#: on 2-D sets, FID on images)
RULE_METRICS = tuple(dict.fromkeys(m.name for m in select(convergence="rule")))
#: the metric a sampler is chosen by (the first a run has), and for the likelihoods the likelihood itself
SAMPLE_SCORES = tuple(dict.fromkeys(m.name for m in select(ranks=True)))
LIKELIHOODS = tuple(dict.fromkeys(m.name for m in select(source="likelihood") if m.lower_is_better is not None))


def collect_convergence(root: Path, params: Params) -> pd.DataFrame:
    """The convergence rows of every run of params.yaml, plus each data set's floor as method `data`
    (step 0; with each metric's spread over reference chunks, `<metric>_sd`, the rule's margin). Empty
    when no run kept snapshots."""
    import json

    frames = []
    for dataset in params.datasets:
        runs = []
        for method in params.evaluated_methods():
            for seed in params.seeds:
                path = convergence_file(root, method, dataset, seed)
                if path.exists():
                    frame = pd.read_csv(path)
                    if len(frame):
                        runs.append(frame.assign(dataset=dataset, method=method, seed=seed))
        frames += runs
        if runs and baseline_file(root, dataset).exists():
            floor = json.loads(baseline_file(root, dataset).read_text())
            rows = [{"dataset": dataset, "method": "data", "seed": params.data.seed, "step": 0, "sampler": "data",
                     "nfe": 0, "metric": metric, "value": value}
                    for by_nfe in floor.values() for metrics in by_nfe.values()
                    for metric, value in metrics.items()
                    if metric in CURVE_METRICS or metric.removesuffix("_sd") in CURVE_METRICS]
            frames.append(pd.DataFrame(rows))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, sampler, metric, step): mean over seeds, interval half-width, seed count."""
    sub = frame[(frame.method != "data") & frame.metric.isin(CURVE_METRICS)]
    sub = sub[~((sub.metric == "nll") & (sub.dataset.map(DATASETS) == "image"))]  # images: bits/dim
    rows = []
    for key, group in sub.groupby(["dataset", "method", "sampler", "metric", "step"], sort=False):
        mean, half = seed_interval(group.value.to_numpy())
        rows.append(dict(zip(["dataset", "method", "sampler", "metric", "step"], key), mean=mean, half=half,
                         seeds=len(group)))
    return pd.DataFrame(rows, columns=["dataset", "method", "sampler", "metric", "step", "mean", "half", "seeds"])


def best_samplers(table: pd.DataFrame, metric: str = "w2") -> dict[tuple[str, str], str]:
    """(dataset, method) -> the sampler of lowest mean W2 (images: FID) at the largest step; for a likelihood
    metric, the likelihood of lowest mean value there. Every sample metric is shown for the W2 / FID choice."""
    best = {}
    for key, group in table.groupby(["dataset", "method"], sort=False):
        present = set(group.metric)
        by = metric if metric in LIKELIHOODS else next((m for m in SAMPLE_SCORES if m in present), None)
        scores = group[group.metric == by]
        if scores.empty:
            continue
        last = scores[scores.step == scores.step.max()]
        best[key] = last.sort_values(["mean", "sampler"]).sampler.iloc[0]
    return best


def converged_step(runs: pd.DataFrame, higher_is_better: bool, margin: float = 0.0) -> int:
    """The rule by which the study picks a training budget, on one metric's rows (step, seed, value): the
    smallest step from which, at every later step, the paired difference to the last step (same seed)
    is not worse by more than `margin` (the metric's own spread on real data) with significance: its 95%
    Student-t interval over seeds reaches -margin or lies beyond it on the better side (one seed: the
    difference itself). A step that is the last studied counts as converged: the study cannot see past
    it, and budget_table marks such curves (`still improving`)."""
    values = runs.pivot_table(index="step", columns="seed", values="value", aggfunc="first").sort_index()
    last = values.iloc[-1]
    step = int(values.index[-1])
    for s in values.index[::-1]:
        differences = (values.loc[s] - last).dropna().to_numpy()
        mean, half = seed_interval(differences) if len(differences) else (math.nan, math.nan)
        half = 0.0 if math.isnan(half) else half
        worse = mean + half < -margin if higher_is_better else mean - half > margin
        if worse:
            break
        step = int(s)
    return step


def budget_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method), its best sampler, the converged step of each rule metric and their largest;
    `still improving`: the rule metrics whose converged step is the last studied while the step before it
    is significantly worse (the curve has not flattened within the study)."""
    floors = frame[frame.method == "data"].groupby(["dataset", "metric"]).value.first()
    rows = []
    for (dataset, method), sampler in best_samplers(curves(frame)).items():
        row = {"dataset": dataset, "kind": DATASETS[dataset], "method": method, "sampler": sampler}
        improving = []
        for metric in RULE_METRICS:
            runs = frame[(frame.dataset == dataset) & (frame.method == method) & (frame.sampler == sampler)
                         & (frame.metric == metric)]
            if len(runs):
                margin = floors.get((dataset, f"{metric}_sd"), 0.0)
                margin = 0.0 if margin != margin else float(margin)
                row[metric] = converged_step(runs, CURVE_METRICS[metric], margin)
                if row[metric] == runs.step.max() and runs.step.nunique() > 1:
                    improving.append(metric)
        row["converged"] = max(row[m] for m in RULE_METRICS if m in row)
        row["still improving"] = ", ".join(improving)
        rows.append(row)
    return pd.DataFrame(rows)


def chosen_budget(frame: pd.DataFrame, kind: str = "toy") -> int | None:
    """The training budget of the rule for one kind of data: the largest converged step over every method and
    data set of that kind."""
    table = budget_table(frame)
    table = table[table.kind == kind] if not table.empty else table
    return None if table.empty else int(table.converged.max())


def _cell(mean: float, half: float, metric: str) -> str:
    digits = 2 if metric in ("modes",) else 3
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def curve_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows dataset / method (best sampler), columns training steps and the floor: mean ± 95% t-interval."""
    table = curves(frame)
    best = best_samplers(table, metric)
    floors = frame[(frame.method == "data") & (frame.metric == metric)].groupby("dataset").value.first()
    rows, index = [], []
    for (dataset, method), sampler in best.items():
        curve = table[(table.dataset == dataset) & (table.method == method) & (table.sampler == sampler)
                      & (table.metric == metric)]
        if curve.empty:
            continue
        cells = {f"{int(r.step)}": _cell(r["mean"], r.half, metric) for _, r in curve.sort_values("step").iterrows()}
        cells["floor"] = f"{floors[dataset]:.3f}" if dataset in floors else "—"
        rows.append(cells)
        index.append(f"{dataset} / {method} ({sampler})")
    steps = sorted({column for cells in rows for column in cells if column != "floor"}, key=int)
    return pd.DataFrame(rows, index=index, columns=[*steps, "floor"]).fillna("—")  # a longer arm's steps


def convergence_lines(frame: pd.DataFrame, source: str) -> list[str]:
    """The summary's convergence section (empty without convergence rows)."""
    if frame.empty or (frame.method != "data").sum() == 0:
        return []
    budgets = budget_table(frame)
    seeds = int(curves(frame).seeds.max())
    chosen = ", ".join(f"**{chosen_budget(frame, kind)} steps** on {'2-D sets' if kind == 'toy' else 'images'}"
                       for kind in dict.fromkeys(budgets.kind))
    lines = ["## Convergence: every metric against training steps", "",
             f"From {source}. Each method's EMA weights at each step of a run with a constant learning rate "
             f"after warm-up (so step s is an s-step run), scored as the final models are, each "
             f"sampler at `evaluate.convergence_budget` (the NFE it used is in the table's csv), with the sampler of lowest W2 (images: FID) at the last step (for a likelihood, the one of lowest NLL there). Cells: "
             f"mean ± half-width of the 95% Student-t interval over {seeds} training seed{'s' if seeds > 1 else ''}; `floor`: the data "
             f"set's real-vs-real value (for `nll`, the true NLL).", "",
             "**Budget rule.** For each method and data set, the converged step of a metric is the smallest step "
             "from which no later step is significantly worse than the last: the paired difference to the last "
             "step over seeds (same seed, same prior draws) has a 95% Student-t interval that reaches the "
             "metric's real-vs-real spread (`<metric>_sd` of the floor; zero where it has none) or lies beyond "
             "it on the better side. A curve whose last studied step is still a significant gain is marked "
             "`still improving`: its budget is at least the study's longest. The method's converged step is the largest over W2, coverage and, where the data "
             "set has one, the structure score (`modes`, `on_support`); on images, FID. The training budget of a "
             f"kind of data is the largest converged step over all its methods and data sets: {chosen}, the "
             f"same for every method.", "",
             budgets.to_markdown(index=False), ""]
    for metric in CURVE_METRICS:
        table = curve_table(frame, metric)
        if not table.empty:
            lines += [f"### {metric}", "", table.to_markdown(), ""]
    lines += ["![convergence](figures/convergence.png)", ""]
    return lines


def convergence_figure(frame: pd.DataFrame):
    """A row of panels per data set, one panel per metric it has: each method's best sampler, mean and 95%
    band against steps (log scale), the data floor dashed; one legend for every panel, right of them.
    Returns the figure (the report saves it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker

    table = curves(frame)
    datasets = list(dict.fromkeys(table.dataset))
    panels = {dataset: [m for m in CURVE_METRICS if m in set(table.metric[table.dataset == dataset])]
              for dataset in datasets}
    columns = max(len(metrics) for metrics in panels.values())
    fig, axes = plt.subplots(len(datasets), columns, figsize=(3.0 * columns, 2.4 * len(datasets)), squeeze=False)
    methods = list(dict.fromkeys(table.method))
    legend: dict = {}
    for i, dataset in enumerate(datasets):
        for j, ax in enumerate(axes[i]):
            metric = panels[dataset][j] if j < len(panels[dataset]) else None
            if metric is not None:
                _convergence_panel(ax, frame, table, methods, dataset, metric)
            if not ax.lines:
                ax.set_visible(False)
                continue
            legend.update(zip(*reversed(ax.get_legend_handles_labels())))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(labelsize=7)
            ax.set_title(f"{dataset}: {metric}", fontsize=8)
            ax.set_xlabel("training step", fontsize=7)
    fig.tight_layout()
    legend = {label: legend[label] for label in sorted(legend, key=lambda label: label == "data floor")}
    fig.legend(list(legend.values()), list(legend), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    return fig


def _convergence_panel(ax, frame: pd.DataFrame, table: pd.DataFrame, methods: list[str], dataset: str,
                       metric: str) -> None:
    for method in methods:
        sampler = best_samplers(table, metric).get((dataset, method))
        curve = table[(table.dataset == dataset) & (table.method == method) & (table.sampler == sampler)
                      & (table.metric == metric)].sort_values("step")
        if curve.empty:
            continue
        half = curve.half.fillna(0.0)
        color = f"C{methods.index(method) % 10}"  # one colour per method in every panel
        ax.plot(curve.step, curve["mean"], marker="o", ms=3, lw=1.2, label=method, color=color)
        ax.fill_between(curve.step, curve["mean"] - half, curve["mean"] + half, alpha=0.2, color=color)
    floor = frame[(frame.method == "data") & (frame.dataset == dataset) & (frame.metric == metric)].value
    if len(floor):
        ax.axhline(float(floor.iloc[0]), color="k", ls="--", lw=1, label="data floor")
