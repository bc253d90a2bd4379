"""The papers' claims about their own methods (params.yaml's `report.claims`), tested on this run.

Each claim says that one entry (a method, narrowed to a sampler and an NFE) scores better than another on a
metric. On every data set where both entries have rows, the seeds pair them (within a seed every method and
sampler starts from the same noise), and a one-sided paired t-test over the seeds asks whether the claimed
direction holds; so does the opposite test. Holm's correction runs over both tests of every claim tested on
a data set, at level 0.05 (pipeline.uncertainty): the chance of any wrong verdict on a data set stays 0.05.
"""

from __future__ import annotations

import math

import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.errors import StageError
from pipeline.metric_table import known, metric, ranked
from pipeline.schema import Claim, ClaimSide
from pipeline.uncertainty import ALPHA, holm_significant, paired_p_value

COLUMNS = ["claim", "dataset", "metric", "seeds", "of_seeds", "better", "worse", "p", "p_opposite", "verdict"]


def claim_metric(claim: Claim, kind: str) -> str | None:
    """The metric a claim is scored by on data of `kind` ("quality": the ranked one); None where the metric
    is not computed on that kind or has no direction."""
    name = ranked(kind).name if claim.metric == "quality" else claim.metric
    if not known(name, kind) or name.endswith("_sd") or metric(name, kind).lower_is_better is None:
        return None
    return name


def side_values(frame: pd.DataFrame, dataset: str, side: ClaimSide, name: str, where: str) -> pd.Series:
    """{seed: value} of one side of a claim on a data set (empty where the run has no such rows)."""
    rows = frame[(frame.dataset == dataset) & (frame.method == side.method) & (frame.metric == name)]
    if side.sampler is not None:
        rows = rows[rows.sampler == side.sampler]
    if side.nfe is not None:
        rows = rows[rows.nfe == side.nfe]
    if rows.seed.duplicated().any():
        raise StageError(f"{where}: {side.method} has several {name} rows per seed on {dataset}; give the claim's "
                         f"side a sampler and an nfe")
    return rows.set_index("seed").value.astype(float)


def claim_results(frame: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One row per claim (its index in report.claims) x data set it can be tested on: the seeds both sides
    have a finite value for (`seeds`, of the `of_seeds` both have rows for), the two means over them, the
    one-sided p-values of the claim and of its opposite, and the verdict: "yes" (the claim holds after Holm),
    "opposite" (the reverse holds), "not shown", or "untested (one seed)" (fewer than two such seeds)."""
    rows = []
    for dataset in params.datasets:
        kind = DATASETS[dataset]
        tested = []
        for index, claim in enumerate(params.report.claims):
            name = claim_metric(claim, kind)
            if name is None:
                continue
            where = f"report.claims[{index}] ({claim.claim})"
            better = side_values(frame, dataset, claim.better, name, where)
            worse = side_values(frame, dataset, claim.worse, name, where)
            common = sorted(set(better.index) & set(worse.index))
            if not common:
                continue
            seeds = [s for s in common if math.isfinite(better[s]) and math.isfinite(worse[s])]  # diverged: out
            lower = metric(name, kind).lower_is_better
            better, worse = better[seeds].tolist(), worse[seeds].tolist()
            tested.append({"claim": index, "dataset": dataset, "metric": name, "seeds": len(seeds),
                           "of_seeds": len(common), "better": sum(better) / len(seeds) if seeds else math.nan,
                           "worse": sum(worse) / len(seeds) if seeds else math.nan,
                           "p": paired_p_value(better, worse, lower),
                           "p_opposite": paired_p_value(worse, better, lower)})
        significant = holm_significant([row["p"] for row in tested] + [row["p_opposite"] for row in tested])
        holds, reversed_ = significant[:len(tested)], significant[len(tested):]
        for row, claim_holds, opposite_holds in zip(tested, holds, reversed_):
            verdict = ("untested (one seed)" if row["seeds"] < 2 else "yes" if claim_holds
                       else "opposite" if opposite_holds else "not shown")
            rows.append(row | {"verdict": verdict})
    return pd.DataFrame(rows, columns=COLUMNS)


def _p_text(p: float) -> str:
    return "" if p != p else "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _cell(row: pd.Series) -> str:
    means = f"{row.better:.4g} vs {row.worse:.4g}"
    if row.seeds < row.of_seeds:  # a seed whose value is not finite (a diverged model) is left out, said so
        means += f", {row.seeds} of {row.of_seeds} seeds"
    if row.seeds < 2:
        return f"untested (one seed): {means}"
    verdict = {"yes": "**yes**", "opposite": "*opposite*", "not shown": "no"}[row.verdict]
    p = row.p_opposite if row.verdict == "opposite" else row.p
    return f"{verdict}: {means} ({_p_text(p)})"


def claim_lines(frame: pd.DataFrame, params: Params) -> list[str]:
    """The summary's section: a claim per row, a data set per column."""
    if not params.report.claims:
        return []
    results = claim_results(frame, params)
    lines = ["## The papers' claims, tested on this run", "",
             "Each row is what a paper says of its own method (params.yaml's `report.claims`: add your own), "
             "tested on each data set by a one-sided paired t-test over the training seeds that the first entry "
             f"scores better than the second, and the opposite test; Holm-corrected over both tests of a data "
             f"set's claims at level {ALPHA}. **yes**: the run supports the claim; *opposite*: it supports the "
             "reverse; no: the difference is within the seeds' noise; untested: fewer than two seeds. A cell gives "
             "the two means over the seeds and the p-value of its verdict; quality is W2 on 2-D sets and FID on "
             "images; — : the run lacks an entry (its method, sampler, NFE or metric).", ""]
    if results.empty:
        return lines + ["No claim could be tested: the run lacks the entries every claim names.", ""]
    datasets = [d for d in params.datasets if d in set(results.dataset)]
    table = []
    for index, claim in enumerate(params.report.claims):
        mine = results[results.claim == index].set_index("dataset")
        cells = {dataset: _cell(mine.loc[dataset]) if dataset in mine.index else "—" for dataset in datasets}
        table.append({"paper": claim.paper, "claim": claim.claim, "metric": claim.metric} | cells)
    return lines + [pd.DataFrame(table).to_markdown(index=False, disable_numparse=True), ""]
