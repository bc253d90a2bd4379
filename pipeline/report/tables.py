"""The report's tables, as data frames of cell texts: the grid of every method x sampler at the headline
budget, each metric against NFE, the floor check, modes and coverage, the learned check, the flows'
straightness."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.metric_table import directions, metric as metric_entry, select
from pipeline.report.results import (ADAPTIVE_COLUMN, closest_nfe, evaluation_error, interval_text, nfe_text)
from pipeline.uncertainty import holm_significant, paired_p_value, seed_interval


#: headline metrics of the summary table (pipeline.metric_table), in column order, and whether lower is better
HEADLINE_METRICS = directions("toy", table="headline")


IMAGE_HEADLINE_METRICS = directions("image", table="headline")


#: properties of a flow's ODE trajectories (Liu et al. 2023), reported by the flows that define them
PATH_METRICS = list(directions("toy", table="path"))


#: the 2-D metrics that see modes (pipeline.metrics.prdc_scores, structure_scores), higher is better
MODE_METRICS = list(directions("toy", table="modes"))


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
        chosen = closest_nfe(group, target)
        error = evaluation_error(frame, method, sampler, dataset, metric, kind, chosen.nfe.unique())
        label = interval_text(chosen.value)
        if method == "data":  # the floor keeps its own error: its spread over reference chunks, or FID's jackknife se
            label += f" ± {error:.3f}" if math.isfinite(error) and len(chosen) == 1 else ""
        else:
            label += (f" [{error:.3f}]" if math.isfinite(error) else "") + f" ({nfe_text(chosen.nfe)})"
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
        finite = [k for k in entries if np.isfinite(entries[k].mean())]  # before sorting: nan breaks sorted()
        ranked = sorted(finite, key=lambda k: entries[k].mean() if lower else -entries[k].mean())
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
    pivot = sub.groupby(["method", "sampler", "nfe"], sort=False).value.agg(interval_text).unstack("nfe")
    ranges = frame[(frame.dataset == dataset) & (frame.metric == metric)].groupby(["method", "sampler"]).nfe
    if ADAPTIVE_COLUMN in pivot.columns:
        pivot[ADAPTIVE_COLUMN] = [f"{v} (NFE {nfe_text(ranges.get_group(k))})" if isinstance(v, str) else v
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
        text = "—" if not math.isfinite(value) else f"{int(value)}" if metric == "modes" and value == int(value) \
            else f"{value:.3f}"
        cells.setdefault((method, sampler), {})[f"{dataset} {metric}"] = text
    columns = [f"{d} {m}" for d in toy for m in shown if f"{d} {m}" in {c for v in cells.values() for c in v}]
    order = ["data", *params.evaluated_methods()]
    keys = sorted(cells, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1]))
    return pd.DataFrame([[cells[k].get(c, "—") for c in columns] for k in keys], columns=columns,
                        index=[f"{m} / {s}" for m, s in keys])


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
            finite = scores.coverage.notna().any()  # none where every sampler diverged: not learned
            row = {"dataset": dataset, "method": method, "coverage": scores.coverage.max(),
                   "best sampler": scores.coverage.idxmax() if finite else "—", "coverage floor": floor.coverage}
            ok = row["coverage"] >= (1 - tolerance) * floor.coverage
            if "modes" in scores and scores.modes.notna().any():
                row |= {"modes": scores.modes.max(), "modes floor": floor.modes}
                ok = ok and row["modes"] >= floor.modes
            rows.append(row | {"learned": "yes" if ok else "no"})
    return pd.DataFrame(rows)


def path_table(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows method, columns straightness and transport cost (means over seeds)."""
    sub = frame[(frame.dataset == dataset) & frame.metric.isin(PATH_METRICS)]
    if sub.empty:
        return pd.DataFrame()
    pivot = sub.groupby(["method", "metric"], sort=False).value.mean().unstack("metric")
    pivot = pivot.reindex([m for m in PATH_METRICS if m in pivot.columns], axis=1)
    return pivot.map(lambda v: "" if pd.isna(v) else f"{v:.4f}")


def budget_label(budget: int | None) -> str:
    return "any NFE" if budget is None else f"≤ {budget} NFE"


@dataclass(frozen=True)
class Option:
    """One way a method can be sampled within a budget: a sampler at one NFE, its value per seed."""
    sampler: str
    nfe_label: str   # "100", or an adaptive sampler's range over seeds, "131-157"
    nfe: float       # where it sits on an NFE axis (an adaptive sampler's mean over seeds)
    values: pd.Series
    nfe_max: float   # its largest NFE over seeds: what a budget must allow
    nfes: pd.Series  # the NFE of each seed's run (index seed)


def sampler_options(rows: pd.DataFrame, budget: int | None) -> list[Option]:
    """One method's rows of one metric on one data set, as the options that fit in `budget` NFE (None: any):
    a fixed-step sampler once per NFE all its seeds share, an adaptive one (no shared NFE) once, where every
    seed's NFE fits."""
    options = []
    for sampler, group in rows.groupby("sampler", sort=True):
        by_seed = [set(seed_rows.nfe) for _, seed_rows in group.groupby("seed")]
        shared = set.intersection(*by_seed)
        if shared:
            for nfe in sorted(n for n in shared if budget is None or n <= budget):
                runs = group[group.nfe == nfe].set_index("seed")
                options.append(Option(sampler, str(nfe), float(nfe), runs.value, float(nfe), runs.nfe))
            continue
        fitting = group[group.nfe <= budget] if budget is not None else group
        if len(fitting) and fitting.seed.nunique() == len(by_seed):
            chosen = closest_nfe(fitting, budget or int(fitting.nfe.max()))
            runs = chosen.set_index("seed")
            options.append(Option(sampler, nfe_text(chosen.nfe), float(chosen.nfe.mean()), runs.value,
                                  float(chosen.nfe.max()), runs.nfe))
    return options


def best_option(options: list[Option], lower_is_better: bool) -> Option | None:
    """The option with the best mean over seeds (ties: the first in sampler, NFE order)."""
    scored = [option for option in options if np.isfinite(option.values.mean())]
    if not scored:
        return None
    return min(scored, key=lambda o: o.values.mean() if lower_is_better else -o.values.mean())


def quality_curve(frame: pd.DataFrame, dataset: str, method: str, metric: str, lower_is_better: bool) -> pd.DataFrame:
    """The best a method does within each NFE: at every NFE one of its options needs (an adaptive sampler's
    largest over seeds), the best option needing at most that many on every seed (as the ranking's budgets;
    so the curve never worsens with budget), its mean and 95% interval over seeds.
    Columns nfe (the budget), sampler, nfe_label (the NFE it used), mean, low, high."""
    rows = frame[(frame.dataset == dataset) & (frame.method == method) & (frame.metric == metric)]
    options = sampler_options(rows, None) if len(rows) else []
    points = []
    for nfe in sorted({o.nfe_max for o in options}):
        best = best_option([o for o in options if o.nfe_max <= nfe], lower_is_better)
        if best is None:
            continue
        mean, half = seed_interval(best.values.dropna().tolist())  # the seeds it has (the ranking names a gap)
        half = 0.0 if not math.isfinite(half) else half
        points.append({"nfe": nfe, "sampler": best.sampler, "nfe_label": best.nfe_label, "mean": mean,
                       "low": mean - half, "high": mean + half})
    return pd.DataFrame(points, columns=["nfe", "sampler", "nfe_label", "mean", "low", "high"])


def ranking_picks(frame: pd.DataFrame, params: Params, dataset: str) -> dict[str, dict[int | None, Option | None]]:
    """{method: {budget: its best option within that budget}} by the data kind's ranked metric, for every
    budget of params.report.rank_budgets (None: any NFE)."""
    from pipeline.metric_table import ranked

    metric = ranked(DATASETS[dataset])
    rows = frame[(frame.dataset == dataset) & (frame.metric == metric.name)]
    picks = {}
    for method in params.evaluated_methods():
        sub = rows[rows.method == method]
        picks[method] = {budget: best_option(sampler_options(sub, budget), metric.lower_is_better) if len(sub) else None
                         for budget in params.report.rank_budgets}
    return picks


def ranking_column(params: Params) -> int | None:
    """The budget the ranking orders by: the headline NFE where it is one of the budgets, else the last."""
    budgets = params.report.rank_budgets
    return params.report.headline_nfe if params.report.headline_nfe in budgets else budgets[-1]


def ranking_table(frame: pd.DataFrame, params: Params, dataset: str) -> pd.DataFrame:
    """The summary's answer for one data set: rows method in rank order, a column per NFE budget of
    params.report.rank_budgets, each cell the method at its best sampler within that budget by the data
    kind's ranked metric (pipeline.metric_table): mean ± 95% interval over seeds, sampler (NFE); the
    evaluation's own error is under the table (floor_line). Ranked by ranking_column's budget; the best of
    a column is bold where it beats the runner-up by the paired, Holm-corrected test. The pick is made on
    the same seeds as its interval, so a best cell is optimistic (a winner's curse)."""
    from pipeline.metric_table import ranked

    metric = ranked(DATASETS[dataset])
    picks = ranking_picks(frame, params, dataset)
    budgets = params.report.rank_budgets
    if not any(option is not None for by_budget in picks.values() for option in by_budget.values()):
        return pd.DataFrame()
    cells: dict[str, dict[str, str]] = {}
    per_seed: dict[str, dict[str, pd.Series]] = {}
    for method, by_budget in picks.items():
        for budget, best in by_budget.items():
            column = budget_label(budget)
            if best is None:
                cells.setdefault(method, {})[column] = "—"
                continue
            cells.setdefault(method, {})[column] = f"{interval_text(best.values)} {best.sampler} ({best.nfe_label})"
            per_seed.setdefault(column, {})[method] = best.values
    columns = [budget_label(b) for b in budgets]
    winners = best_entries(per_seed, {c: metric.lower_is_better for c in columns})
    for column, method in winners.items():
        cells[method][column] = f"**{cells[method][column]}**"
    order = ranking_column(params)

    def mean(method: str) -> float:
        option = picks[method][order]
        return math.nan if option is None else float(option.values.mean())

    sign = 1 if metric.lower_is_better else -1
    methods = sorted(picks, key=lambda m: (not math.isfinite(mean(m)), sign * mean(m) if math.isfinite(mean(m)) else 0))
    table = pd.DataFrame([[cells[m].get(c, "—") for c in columns] for m in methods], columns=columns)
    table.insert(0, "method", methods)
    table.insert(0, "rank", [str(i + 1) if math.isfinite(mean(m)) else "" for i, m in enumerate(methods)])
    table.attrs["winners"] = winners  # {column: method} of the paired test, for readers other than the bold mark
    return table


def headline_values(frame: pd.DataFrame, params: Params) -> dict:
    """{dataset: {method: {"<metric>_nfe_<budget>": mean over seeds}}} of the rankings (reports/headline.json,
    what `dvc metrics show` lists), with each data set's floor under `data`."""
    from pipeline.metric_table import ranked

    values = {}
    for dataset in params.datasets:
        metric = ranked(DATASETS[dataset]).name
        table = {}
        for method, by_budget in ranking_picks(frame, params, dataset).items():
            table[method] = {f"{metric}_nfe_{'any' if b is None else f'le_{b}'}": round(float(o.values.mean()), 6)
                             for b, o in by_budget.items() if o is not None and np.isfinite(o.values.mean())}
        floor = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == metric)].value
        if len(floor):
            table["data"] = {f"{metric}_floor": round(float(floor.iloc[0]), 6)}
        values[dataset] = table
    return values


def floor_line(frame: pd.DataFrame, params: Params, dataset: str, metric: str) -> str:
    """The line under a ranking: the data floor, and the evaluation's own error of its cells: the metric's
    companion standard error where it has one (FID's jackknife: one per run, so its range over the runs
    behind the ranking's cells), else the floor's spread over reference chunks (the same for every cell)."""
    kind = DATASETS[dataset]
    companion = next((m.error for m in select(kind, name=metric) if m.error), None)
    errors = frame[(frame.dataset == dataset) & (frame.metric == companion)]
    cells = [(method, option) for method, picks in ranking_picks(frame, params, dataset).items()
             for option in picks.values() if option is not None] if companion else []
    runs = pd.concat([errors[(errors.method == method) & (errors.sampler == option.sampler)].merge(
        option.nfes.rename("nfe").reset_index(), on=["seed", "nfe"]) for method, option in cells]).value.dropna() \
        if cells else pd.Series(dtype=float)
    spread = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == f"{metric}_sd")]
    if len(runs):
        floor_error = errors[errors.method == "data"].value
        text = (f" The evaluation's own error of a cell, {companion} ({metric_entry(companion, kind).computed}), "
                f"is {runs.min():.3f}-{runs.max():.3f} over the runs behind the cells"
                + (f", the floor's {float(floor_error.iloc[0]):.3f}." if len(floor_error) else "."))
    elif len(spread):
        text = (f" The evaluation's own error of every cell, the floor's sd over disjoint reference samples of "
                f"the same size, is {float(spread.value.iloc[0]):.3f} (a lower bound for an imperfect model).")
    else:
        text = ""
    return f"Data floor (real vs real): {floor_text(frame, dataset, metric)}.{text}"


def budget_cap_line(params: Params, dataset: str) -> str:
    """On images, what `any NFE` means: fixed-step budgets above sample.image.max_budget are not run."""
    cap = params.sample.image.max_budget
    if DATASETS[dataset] != "image" or cap is None:
        return ""
    return (f"Budgets above `sample.image.max_budget` = {cap} NFE are not run on images (params.yaml), so "
            f"`any NFE` means at most {cap} here for every fixed-step sampler (an adaptive solver chooses its "
            f"own): a sampler designed for hundreds of steps is scored at that cap, not at its best.")


def floor_text(frame: pd.DataFrame, dataset: str, metric: str) -> str:
    """The data floor of a metric on a data set: its value ± its spread over the reference chunks."""
    rows = frame[(frame.dataset == dataset) & (frame.method == "data")]
    value = rows[rows.metric == metric].value
    spread = rows[rows.metric == f"{metric}_sd"].value
    if not len(value):
        return "—"
    return f"{float(value.iloc[0]):.3f}" + (f" ± {float(spread.iloc[0]):.3f}" if len(spread) else "")


def quality_table(frame: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Every data set's quality_curve per method, long form (reports/quality_vs_nfe.csv: `dvc plots show`)."""
    from pipeline.metric_table import ranked

    parts = []
    for dataset in params.datasets:
        metric = ranked(DATASETS[dataset])
        for method in params.evaluated_methods():
            curve = quality_curve(frame, dataset, method, metric.name, metric.lower_is_better)
            if not curve.empty:
                parts.append(curve.assign(dataset=dataset, method=method, metric=metric.name))
    columns = ["dataset", "method", "metric", "nfe", "sampler", "nfe_label", "mean", "low", "high"]
    return pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)


def overview_table(frame: pd.DataFrame, params: Params, places: int = 3) -> pd.DataFrame:
    """One row per data set: its ranked metric, the first `places` methods of its ranking (ranking_table, at
    ranking_column's budget) with their cells, and its floor: every data set's answer at a glance."""
    from pipeline.metric_table import ranked

    column = budget_label(ranking_column(params))
    rows = []
    for dataset in params.datasets:
        table = ranking_table(frame, params, dataset)
        if table.empty:
            continue
        metric = ranked(DATASETS[dataset])
        row = {"data set": dataset, "metric": f"{metric.name} ({'lower' if metric.lower_is_better else 'higher'} "
                                              f"is better), {column}"}
        for place in range(places):
            if place < len(table) and table["rank"].iloc[place]:
                method, cell = table.method.iloc[place], table[column].iloc[place]
                bold = cell.startswith("**")
                text = f"{method}: {cell.strip('*')}"
                row[f"#{place + 1}"] = f"**{text}**" if bold else text
            else:
                row[f"#{place + 1}"] = "—"
        rows.append(row | {"#1 ahead of #2": _lead(table, column, params),
                           "data floor": floor_text(frame, dataset, metric.name)})
    return pd.DataFrame(rows)


def _lead(table: pd.DataFrame, column: str, params: Params) -> str:
    """Whether the first of a ranking is significantly ahead (ranking_table's paired-test winners), said in
    words: a podium whose first place is within the seeds' noise must not read as a winner."""
    if len(params.seeds) < 2:
        return "untested (one seed)"
    if len(table) < 2 or not table["rank"].iloc[1]:
        return "—"
    ahead = table.attrs["winners"].get(column) == table.method.iloc[0]
    return "yes (paired test)" if ahead else "no (within the seeds' noise)"
