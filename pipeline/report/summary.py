"""reports/summary.md (the answer first: per data set a ranking of methods at stated NFE budgets) and
reports/grid.md (every method x sampler x NFE), in Markdown."""

from __future__ import annotations

import pandas as pd

from pipeline.config import Params
from pipeline.convergence import convergence_lines
from pipeline.data import DATASETS
from pipeline.metric_table import METRICS, select
from pipeline.report.claims import claim_lines
from pipeline.report.results import ORACLE_STUDY
from pipeline.report.tables import (IMAGE_HEADLINE_METRICS, budget_cap_line, budget_label, budget_table, floor_line, floor_ratio_table,
                                    floor_text, headline_table, learned_table, mode_table, path_table,
                                    overview_table, ranking_column, ranking_table)


#: how to read a cell of the headline and NFE tables (pipeline.uncertainty)
READING = ("How to read a cell: mean over training seeds ± the half-width of its 95% Student-t interval over "
           "those seeds (no ± with one seed); in [brackets] the evaluation's own error at its sample size: the "
           "metric's standard error where it has one (NLL over held-out points; FID by a jackknife over the "
           "generated images), else the data floor's sd over disjoint reference samples of the same size (W2, "
           "coverage), a lower bound there: an imperfect model's own sample set can spread more (about 3x on an "
           "undertrained smoke-profile model); in (parentheses) the NFE used. "
           "Within a seed every method and sampler starts sample i from the same noise, so rows are paired. A "
           "**bold** cell is the best of its column and beats the runner-up by a one-sided paired t-test over "
           "seeds, Holm-corrected over the columns at level 0.05; with fewer than two seeds nothing is bold.")


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
    """The image section: how FID, KID, precision, recall, bits/dim and sliced W2 are made, per data set."""
    images = [d for d in params.datasets if DATASETS[d] == "image"]
    if not images:
        return []
    cfg = params.evaluate.image
    lines = ["## How the image numbers are made", "",
             f"`fid` (`fid_se`: its delete-a-group jackknife standard error over the generated images, the "
             f"held-out statistics fixed), `kid` (mean ± sd over subsets of {cfg.kid_subset_size}), `precision`, "
             f"`recall`: "
             f"torch-fidelity on uint8 samples against the held-out {cfg.fid_against} images, n as below; "
             f"`nll_bpd`: bits/dim on {cfg.nll_points} test images (the discrete-decoder ELBO for the "
             f"ancestral samplers, the probability-flow ODE with one fixed Hutchinson probe per image on "
             f"uniformly dequantized images otherwise; ± standard error); `sliced_w2`: sliced 2-Wasserstein "
             f"distance in pixel space over {cfg.sliced_w2_projections} random directions (POT). Row "
             f"`data / data` is the real-vs-real floor: the disjoint reference split against the same "
             f"{cfg.fid_against} images, at the same n.", ""]
    for dataset in images:
        n = frame[(frame.dataset == dataset) & (frame.method == "data") & (frame.metric == "fid_n")].value
        size = (f"n = {int(n.iloc[0])} images per set, FID's jackknife in "
                f"{min(cfg.fid_jackknife_groups, int(n.iloc[0]))} blocks; " if len(n) else "")
        lines += [f"- **{dataset}**: {size}FID, KID, precision and recall on {extractor_label(frame, params, dataset)}."
                  + clipping_note(frame, dataset)]
    lines += ["", "Every image sampler at the headline budget and FID against NFE: `grid.md`.", ""]
    return lines


def ranking_lines(frame: pd.DataFrame, params: Params) -> list[str]:
    """Per data set: the ranking of methods at the NFE budgets of params.report.rank_budgets, then its floor."""
    from pipeline.metric_table import ranked

    lines = ["## Which method wins, per data set", ""]
    for dataset in params.datasets:
        table = ranking_table(frame, params, dataset)
        if table.empty:
            continue
        metric = ranked(DATASETS[dataset])
        better = "lower" if metric.lower_is_better else "higher"
        lines += [f"### {dataset}: `{metric.name}` ({better} is better)", "", table.to_markdown(index=False), "",
                  floor_line(frame, params, dataset, metric.name), ""]
        if budget_cap_line(params, dataset):
            lines += [budget_cap_line(params, dataset), ""]
    return lines


def reading_paragraph(params: Params) -> str:
    """How to read the ranking and every table cell (the summary's and index.html's second paragraph)."""
    budgets = ", ".join(budget_label(b) for b in params.report.rank_budgets)
    return (f"**How to read it.** Each data set's table ranks the methods by its quality metric (W2 on 2-D sets, "
            f"FID on images), each method at the sampler and step budget that does best for it within a budget of "
            f"{budgets} (network evaluations per sample), in the order of the `{budget_label(ranking_column(params))}` "
            f"column. A cell reads: mean over training seeds ± the half-width of the 95% Student-t interval over "
            f"them, then the winning sampler and (its NFE); the line under the table gives the data floor and the "
            f"evaluation's own error at its sample size (on 2-D sets the floor's spread, the same for every "
            f"cell; on images FID's jackknife standard error, per run, so its range). A **bold** cell beats the "
            f"runner-up of its column by a one-sided paired t-test over seeds, "
            f"Holm-corrected within the table; the pick is made on the same seeds, so a best cell is slightly "
            f"optimistic; the at-a-glance table says in words whether each first place is ahead of the second "
            f"by that test. The data floor is the metric between two real samples of the same size: a model at "
            f"the floor is as good as the metric can tell at that size (a little below it is the evaluation's "
            f"noise, not a model better than the data). Then: has each model learned its data (modes, coverage), the figures, and the "
            f"details; every method x sampler x NFE is in `grid.md`, every number in `results.csv` and how it was "
            f"made in `protocol.csv`.")


def summary_parts(frame: pd.DataFrame, params: Params, figures: list[tuple[str, str]],
                  oracle: pd.DataFrame | None = None,
                  convergence: tuple[pd.DataFrame, str] | None = None) -> tuple[str, str]:
    """reports/summary.md in two parts: the opening (title, how to read it, the rankings and floors) and the
    rest (the papers' claims tested, the learned and mode checks, the floor check, convergence, images,
    figures, glossary); index.html draws the opening its own way and renders the rest."""
    opening = ["# Benchmark summary", "",
               f"Methods: {', '.join(params.evaluated_methods())}. Data sets: {', '.join(params.datasets)}. "
               f"Seeds: {', '.join(map(str, params.seeds))}. {_trained_steps_line(params)}", "",
               reading_paragraph(params), ""]
    overview = overview_table(frame, params)
    if not overview.empty:
        opening += ["## At a glance", "", overview.to_markdown(index=False), ""]
    opening += ranking_lines(frame, params)
    opening += ["![quality against NFE](figures/quality_vs_nfe.png)", ""]
    rest = claim_lines(frame, params)
    rest += learned_lines(frame, params, None if convergence is None else convergence[0])
    rest += mode_lines(frame, params)
    rest += floor_check_lines(frame, params, oracle)
    if convergence is not None:
        section = convergence_lines(convergence[0], convergence[1])
        rest += section[:2] + [_trained_steps_line(params), ""] + section[2:] if section else []
    rest += image_summary(frame, params)
    rest += ["## Figures", "", "Each as PNG and SVG under `figures/`.", ""]
    shown = "\n".join(opening + rest)
    for name, caption in figures:  # each once: the quality figure opens the summary, convergence has its section
        if f"](figures/{name}.png)" not in shown:
            rest += [f"**{name}**: {caption}.", "", f"![{name}](figures/{name}.png)", ""]
    rest += metric_glossary(frame, params)
    return "\n".join(opening), "\n".join(rest)


def summary_markdown(frame: pd.DataFrame, params: Params, figures: list[tuple[str, str]],
                     oracle: pd.DataFrame | None = None, convergence: tuple[pd.DataFrame, str] | None = None) -> str:
    """reports/summary.md: the rankings and floors first, then the checks, images, figures and glossary."""
    opening, rest = summary_parts(frame, params, figures, oracle, convergence)
    return opening + "\n" + rest


def grid_markdown(frame: pd.DataFrame, params: Params) -> str:
    """reports/grid.md: every method x sampler at the headline budget, each metric against NFE, straightness."""
    lines = ["# Every method x sampler x NFE", "",
             f"The full grid behind `summary.md`. {READING}", "",
             f"## Every sampler at the NFE closest to {params.report.headline_nfe}", "",
             "`w2`: exact 2-Wasserstein distance to held-out data (lower is better); `nll`: negative "
             "log-likelihood in nats per sample on held-out data (the variational bound of the reverse chain "
             "for DDPM's ancestral samplers and `analytic_ddpm`, the probability-flow ODE otherwise). Row "
             "`data / data` is the floor: W2 between disjoint samples of the data set (± sd over reference "
             "chunks), and the true NLL where the density is known.", "",
             headline_table(frame, params).to_markdown(), ""]
    images = [d for d in params.datasets if DATASETS[d] == "image"]
    if images:
        lines += ["## Images: every sampler", "",
                  headline_table(frame, params, IMAGE_HEADLINE_METRICS, kind="image").to_markdown(), ""]
    for metric in dict.fromkeys(m.name for m in select(against_nfe=True)):
        tables = [(dataset, budget_table(frame, dataset, metric)) for dataset in params.datasets]
        if all(table.empty for _, table in tables):
            continue
        lines += [f"## {metric} against the number of function evaluations", ""]
        for dataset, table in tables:
            if not table.empty:
                lines += [f"### {dataset}", "", f"Real-vs-real floor: {floor_text(frame, dataset, metric)}.", "",
                          table.to_markdown(), ""]
    path_tables = [(dataset, path_table(frame, dataset)) for dataset in params.datasets]
    if any(not table.empty for _, table in path_tables):
        lines += ["## Straightness of the flows", "",
                  "`straightness`: int_0^1 E||(Z1 - Z0) - v(Z_t, t)||^2 dt along the RK45 trajectories (0 for "
                  "straight paths); `transport_cost`: E||Z1 - Z0||^2 between the noise and the sample it "
                  "becomes (Liu et al. 2023).", ""]
        for dataset, table in path_tables:
            if not table.empty:
                lines += [f"### {dataset}", "", table.to_markdown(), ""]
    return "\n".join(lines)


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
