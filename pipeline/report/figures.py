"""reports/figures/: every figure as PNG and SVG, written without a date or a version in the file so that a
rerun writes the same bytes. Each method keeps one colour and line style in every figure; legends sit
outside the axes; one panel per data set, laid out in a grid that fits a page.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.layout import data_file, load_samples, load_trajectory, loss_file, samples_file
from pipeline.metric_table import ranked
from pipeline.report.tables import quality_curve
from pipeline.uncertainty import seed_interval

#: at most this many panels in a row
COLUMNS = 3
#: the quality axis ends at this multiple of the data floor (lower-is-better metrics); methods above are named
OFF_AXIS = 10
#: (line style, marker) per method after its colour: twenty methods stay distinguishable
LINE_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def method_style(params: Params, method: str) -> dict:
    """The colour, line style and marker of a method, the same in every figure."""
    i = params.evaluated_methods().index(method)
    style, marker = LINE_STYLES[(i // 10) % len(LINE_STYLES)]
    return {"color": f"C{i % 10}", "ls": style, "marker": marker}


def panel_grid(n: int, width: float, height: float, columns: int = COLUMNS):
    """A figure of n panels, `columns` to a row; the unused cells of the last row are hidden."""
    import matplotlib.pyplot as plt

    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def save(fig, out: Path, name: str) -> None:
    """name.png and name.svg, without the software version or a date (byte-identical on a rerun)."""
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": "pipeline", "svg.fonttype": "path"}):
        fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(out / f"{name}.svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)


def dress(ax, xlabel: str, ylabel: str, title: str, title_size: int = 10) -> None:
    """The axes' labels, title and light grid, in the sizes every figure uses."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=title_size)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both", lw=0.5)


def finish(fig, axes, out: Path, name: str) -> None:
    """Lay the panels out, put the legend right of them and save the figure (save)."""
    fig.tight_layout()
    outside_legend(fig, axes)
    save(fig, out, name)


def outside_legend(fig, axes) -> None:
    """One legend for the figure, right of the panels, from the panel with the most entries."""
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    if labels:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def write_figures(root: Path, frame: pd.DataFrame, params: Params, out: Path,
                  convergence: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """Every figure of the report into `out`; returns (name, caption) of each, in reading order."""
    import matplotlib

    matplotlib.use("Agg")
    written = [("quality_vs_nfe", quality_figure(frame, params, out))]
    for dataset in params.datasets:
        written.append((f"samples_{dataset}", samples_figure(root, frame, params, dataset, out)))
    for dataset in (d for d in params.datasets if DATASETS[d] == "toy"):
        caption = trajectory_figure(root, params, dataset, out)
        if caption:
            written.append((f"trajectories_{dataset}", caption))
    caption = likelihood_figure(frame, params, out)
    if caption:
        written.append(("nll_bound_vs_ode", caption))
    written.append(("loss_curves", loss_figure(root, params, out)))
    if convergence is not None:
        from pipeline.convergence import convergence_figure

        save(convergence_figure(convergence), out, "convergence")
        written.append(("convergence", "every metric against training steps (the convergence study)"))
    return written


def quality_panel(ax, frame: pd.DataFrame, params: Params, dataset: str) -> None:
    """One data set's quality against NFE: per method the best sampler within each NFE (pipeline.report.tables
    quality_curve), its 95% band over seeds, and the data floor with its spread."""
    metric = ranked(DATASETS[dataset])
    floor = frame[(frame.dataset == dataset) & (frame.method == "data")]
    value, spread = floor[floor.metric == metric.name].value, floor[floor.metric == f"{metric.name}_sd"].value
    floor_value = float(value.iloc[0]) if len(value) else math.nan
    # a lower-is-better axis ends at OFF_AXIS x the floor, so one failed method does not flatten the others
    top = OFF_AXIS * floor_value if metric.lower_is_better and floor_value > 0 else math.inf
    above, nfes = [], set()
    for method in params.evaluated_methods():
        curve = quality_curve(frame, dataset, method, metric.name, metric.lower_is_better)
        if curve.empty:
            continue
        nfes |= set(curve.nfe.round(1))
        style = method_style(params, method)
        if (curve["mean"] > top).all():
            above.append(f"{method} ({curve['mean'].min():.3g})")
        ax.plot(curve.nfe, curve["mean"], ms=3, lw=1.3, label=method, **style)
        ax.fill_between(curve.nfe, curve.low, curve.high, color=style["color"], alpha=0.08, lw=0)
    if len(value):
        ax.axhline(floor_value, color="k", ls="--", lw=1, label="data floor (real vs real)")
        if len(spread):
            ax.axhspan(floor_value - float(spread.iloc[0]), floor_value + float(spread.iloc[0]), color="0.5",
                       alpha=0.15, lw=0)
    ax.set_xscale("log")
    if ax.lines and all(y > 0 for line in ax.lines for y in np.atleast_1d(line.get_ydata())):
        ax.set_yscale("log")
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines] or [np.empty(0)])
    values = values[np.isfinite(values)]
    if len(values):  # the axis frames the means and the floor; a band wider than that (three seeds) is cut
        lowest, highest = float(values.min()), float(values.max())
        if ax.get_yscale() == "log":
            ax.set_ylim(bottom=lowest / 1.5, top=min(top, highest * 1.2))
        else:
            pad = 0.1 * max(highest - lowest, abs(lowest), 1e-12)
            ax.set_ylim(bottom=lowest - pad, top=min(top, highest + pad))
    plain_log_ticks(ax, sorted(nfes))
    if above:
        ax.text(0.02, 0.98, "above the axis, best: " + ", ".join(above), transform=ax.transAxes, fontsize=6,
                va="top", color="0.3")
    dress(ax, "NFE (network evaluations per sample)",
          f"{metric.name} ({'lower' if metric.lower_is_better else 'higher'} is better)", dataset)


def plain_log_ticks(ax, nfes: list[float]) -> None:
    """Log axes labelled in plain numbers: the NFE axis at the NFEs used (when few), the value axis at 1, 2
    and 5 times its powers of ten."""
    import matplotlib.ticker as ticker

    if 0 < len(nfes) <= 8 and min(nfes) > 0:
        ax.set_xticks(nfes)
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def quality_figure(frame: pd.DataFrame, params: Params, out: Path) -> str:
    """quality_vs_nfe: a panel per data set; also quality_<dataset> alone (index.html's cards)."""
    import matplotlib.pyplot as plt

    fig, axes = panel_grid(len(params.datasets), 4.2, 3.3)
    for ax, dataset in zip(axes, params.datasets):
        quality_panel(ax, frame, params, dataset)
    finish(fig, axes, out, "quality_vs_nfe")
    for dataset in params.datasets:
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        quality_panel(ax, frame, params, dataset)
        finish(fig, [ax], out, f"quality_{dataset}")
    return ("quality against NFE per data set: each method at its best sampler within each NFE, mean and 95% "
            "band over seeds; dashed, the data floor")


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


def samples_figure(root: Path, frame: pd.DataFrame, params: Params, dataset: str, out: Path) -> str:
    """samples_<dataset>: the held-out data, then each method at its best sampler at its largest budget
    (best_at_largest_budget, first seed), on the data's exact density (2-D) or as an image grid."""
    from pipeline import data as datasets

    seed = params.seeds[0]
    data = datasets.load(data_file(root, dataset))
    metric = FIGURE_PICK[data.kind][0]
    panels = [("data (held-out)", data.test, "0.25")]
    for method in params.evaluated_methods():
        index, samples = load_samples(samples_file(root, method, dataset, seed))
        best = best_at_largest_budget(frame, index, method, dataset, seed)
        value = frame[(frame.method == method) & (frame.dataset == dataset) & (frame.seed == seed)
                      & (frame.sampler == best["sampler"]) & (frame.nfe == best["nfe"]) & (frame.metric == metric)]
        shown = f", {metric} {value.value.iloc[0]:.3f}" if len(value) else ""
        panels.append((f"{method}\n{best['sampler']} ({best['nfe']} NFE){shown}", samples[best["key"]],
                       method_style(params, method)["color"]))
    fig, axes = panel_grid(len(panels), 2.6, 2.8, columns=5 if data.kind == "toy" else 4)
    if data.kind == "toy":
        lim = float(np.quantile(np.abs(data.test), 0.995) * 1.3)
        density = _density_image(dataset, data.meta, lim)
        for ax, (title, x, color) in zip(axes, panels):
            ax.imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", vmin=0, vmax=4)
            x = x[np.isfinite(x).all(1)][:2000]
            ax.scatter(x[:, 0], x[:, 1], s=1.2, alpha=0.6, color=color, rasterized=True, lw=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            _titled(ax, title)
        what = "points on the data's exact density (grey)"
    else:
        for ax, (title, x, _) in zip(axes, panels):
            ax.imshow(image_grid(x, 8), cmap="gray", interpolation="nearest")
            _titled(ax, title)
        what = "an 8 x 8 grid of images"
    fig.suptitle(f"{dataset}: samples of each method (seed {seed})", fontsize=10)
    fig.tight_layout()
    save(fig, out, f"samples_{dataset}")
    return (f"{dataset}: the held-out data and each method's samples at its best sampler at its largest budget, "
            f"{what}")


def trajectory_figure(root: Path, params: Params, dataset: str, out: Path) -> str | None:
    """trajectories_<dataset>: per method with a sampling ODE, the paths of the same few prior draws (first
    seed) from noise to sample, on the data's exact density; None when no method has one."""
    from pipeline import data as datasets

    seed = params.seeds[0]
    paths = {method: load_trajectory(samples_file(root, method, dataset, seed)) for method in params.evaluated_methods()}
    paths = {method: path for method, path in paths.items() if path is not None}
    if not paths:
        return None
    data = datasets.load(data_file(root, dataset))
    lim = float(np.quantile(np.abs(data.test), 0.995) * 1.3)
    density = _density_image(dataset, data.meta, lim)
    fig, axes = panel_grid(len(paths), 2.6, 2.8, columns=5)
    for ax, (method, path) in zip(axes, paths.items()):
        color = method_style(params, method)["color"]
        ax.imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", vmin=0, vmax=4)
        for k in range(path.shape[1]):
            ax.plot(path[:, k, 0], path[:, k, 1], color=color, lw=0.7, alpha=0.8)
        ax.scatter(path[0, :, 0], path[0, :, 1], s=6, facecolors="none", edgecolors="0.35", lw=0.5, zorder=3)
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=6, color=color, zorder=4)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        _titled(ax, method)
    fig.suptitle(f"{dataset}: sampling-ODE paths of the same {next(iter(paths.values())).shape[1]} prior draws "
                 f"(open: noise, filled: sample; seed {seed})", fontsize=9)
    fig.tight_layout()
    save(fig, out, f"trajectories_{dataset}")
    return (f"{dataset}: the paths of the sampling ODE from the same prior draws for every method that has one "
            f"(straight for a rectified flow, curved for the diffusion paths; noise outside the panel is clipped)")


def _titled(ax, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def _density_image(dataset: str, meta: dict, lim: float, size: int = 160) -> np.ndarray:
    """The exact density of a 2-D set (pipeline.data.toy.exact_law) on a size x size grid, scaled so its
    99th percentile is 1."""
    import torch

    from pipeline.data.toy import exact_law

    law = exact_law(dataset, meta["mean"], meta["std"])
    axis = torch.linspace(-lim, lim, size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = law.log_prob(grid).exp().reshape(size, size).numpy()
    scale = np.quantile(density, 0.99)
    return density / scale if scale > 0 else density


#: the NLL rows that are a variational bound (DDPM's chains, Analytic-DPM's) rather than the ODE's
ODE_LIKELIHOOD = "ode_rk45"


def likelihood_figure(frame: pd.DataFrame, params: Params, out: Path) -> str | None:
    """nll_bound_vs_ode: for each method with both, its variational bound against the step budget (one line
    per reverse variance) beside its probability-flow ODE likelihood (band: 95% over seeds) and the true NLL
    where the density is known. None when no method has both."""
    panels = []
    for dataset in params.datasets:
        metric = "nll" if DATASETS[dataset] == "toy" else "nll_bpd"
        sub = frame[(frame.dataset == dataset) & (frame.metric == metric)]
        for method in params.evaluated_methods():
            rows = sub[sub.method == method]
            if (rows.sampler == ODE_LIKELIHOOD).any() and (rows.sampler != ODE_LIKELIHOOD).any():
                panels.append((dataset, method, metric, rows, sub[sub.method == "data"].value))
    if not panels:
        return None
    import matplotlib.ticker

    fig, axes = panel_grid(len(panels), 4.0, 3.0)
    for ax, (dataset, method, metric, rows, truth) in zip(axes, panels):
        ode = rows[rows.sampler == ODE_LIKELIHOOD].value.dropna()  # a diverged solve is nan in results.csv
        mean, half = seed_interval(ode.tolist()) if len(ode) else (math.nan, math.nan)
        half = 0.0 if not math.isfinite(half) else half
        bounds = rows[rows.sampler != ODE_LIKELIHOOD]
        for k, (sampler, group) in enumerate(bounds.groupby("sampler", sort=True)):
            curve = group.groupby("nfe").value.mean()
            ax.plot(curve.index, curve.values, marker="o", ms=3, lw=1.2, color=f"C{k}", label=f"bound: {sampler}")
        if math.isfinite(mean):
            ax.axhline(mean, color="C3", lw=1.5, label="probability-flow ODE")
            ax.axhspan(mean - half, mean + half, color="C3", alpha=0.15, lw=0)
        if len(truth):
            ax.axhline(float(truth.iloc[0]), color="k", ls="--", lw=1, label="true NLL (data)")
        # the axis spans the ODE value, the truth and the best bound (a short chain's posterior-variance bound
        # can be 100x larger); bounds wholly above it are named
        best = bounds.groupby("sampler").value.min()
        anchors = [a for a in [mean, *truth.tolist()[:1], float(best.min())] if math.isfinite(a)]
        low, high = (min(anchors), max(anchors)) if anchors else (0.0, 1.0)
        pad = 0.5 * (high - low) + 0.2
        ax.set_ylim(low - pad, high + 2 * pad)
        above = [f"{sampler} (best {value:.3g})" for sampler, value in best.items() if value > high + 2 * pad]
        if above:
            ax.text(0.02, 0.98, "above the axis: " + ", ".join(above), transform=ax.transAxes, fontsize=6,
                    va="top", color="0.3")
        ax.set_xscale("log")
        ax.set_xticks(sorted(bounds.nfe.unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        dress(ax, "steps of the bound (NFE)", f"{metric} (lower is better)", f"{dataset}: {method}", 9)
    finish(fig, axes, out, "nll_bound_vs_ode")
    return ("NLL by the variational bound against its step budget, beside the same network's probability-flow ODE "
            "likelihood (band: 95% over seeds) and the true NLL")


def loss_figure(root: Path, params: Params, out: Path) -> str:
    """loss_curves: per data set, each method's training loss, mean over seeds and their range."""
    fig, axes = panel_grid(len(params.datasets), 4.2, 3.0)
    for ax, dataset in zip(axes, params.datasets):
        for method in params.evaluated_methods():
            curves = [pd.read_csv(path).set_index("step").loss for seed in params.seeds
                      if (path := loss_file(root, method, dataset, seed)).exists()]
            if not curves:
                continue
            table = pd.concat(curves, axis=1)
            style = method_style(params, method)
            ax.plot(table.index, table.mean(axis=1), lw=1.1, color=style["color"], ls=style["ls"], label=method)
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=style["color"], alpha=0.15, lw=0)
        ax.set_yscale("log")
        dress(ax, "training step", "loss (window mean)", dataset)
    finish(fig, axes, out, "loss_curves")
    return ("training loss per method and data set: mean over seeds, band from the lowest to the highest seed (each "
            "method's loss has its own scale)")
