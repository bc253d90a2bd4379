"""What the DVC pipeline tests share (tests/test_pipeline.py on the 2-D smoke profile,
tests/test_pipeline_images.py on the image one, each file in its own pytest process): running DVC in a
temporary copy of the repository and the checks of what a run writes."""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from conftest import open_page
from pipeline.benchmark import copy_repository
from pipeline.data import DATASETS

REPO = Path(__file__).resolve().parents[1]


def run_dvc(args, cwd, **extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_NUM_THREADS")}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_LOGGING_LEVEL="WARNING", PYTHONUNBUFFERED="1", **extra_env)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def repo_with_profile(root: Path, profile: str, **extra_env) -> Path:
    """A temporary copy of the repository whose params.yaml is `profiles/<profile>.yaml`, after `dvc repro`."""
    copy_repository(root, REPO / "profiles" / f"{profile}.yaml")
    run_dvc(["dvc", "repro"], root, **extra_env)
    return root



def check_comparison(smoke_repo: Path) -> None:
    """results.csv, the summary, grid, figures, headline, curves and protocol of a finished run."""
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    results = pd.read_csv(smoke_repo / "reports" / "results.csv")
    assert list(results.columns) == ["dataset", "method", "sampler", "nfe", "seed", "metric", "value"]
    assert set(results.dataset) == set(params["datasets"])
    assert set(params["methods"]) <= set(results.method)
    images = [name for name in params["datasets"] if DATASETS[name] == "image"]
    assert ((results.method == "data") & (results.metric == "w2")).sum() == len(params["datasets"]) - len(images)
    assert ((results.method == "data") & (results.metric == "fid")).sum() == len(images)
    for name in images:  # FID, KID, bits/dim and sliced W2 for every method on every image set
        sub = results[(results.dataset == name) & (results.method.isin(params["methods"]))]
        assert {"fid", "kid", "precision", "recall", "nll_bpd", "sliced_w2"} <= set(sub.metric)
        assert set(params["methods"]) <= set(sub[sub.metric == "fid"].method)
    w2 = results[(results.metric == "w2") & (results.method != "data")]
    assert w2.value.notna().all() and (w2.value > 0).all()
    for source in params.get("reflow") or {}:
        assert f"{source}_2" in set(results.method)
    # the crossed table (issue 12): every sampler each method's table offers is run and scored
    from pipeline.config import load_params
    from pipeline.methods import build_method

    loaded = load_params(smoke_repo / "params.yaml")
    shape = (1, 8, 8) if images else (2,)
    for name, config in loaded.methods.items():
        offered = set(build_method(name, config, shape).samplers)
        scored = set(results[(results.method == name) & results.metric.isin(["w2", "fid"])].sampler)
        assert offered <= scored, (name, offered - scored)
    assert {"dpm_solver_pp_2m", "ddim-eta0.0-uniform"} <= set(results[results.method == "flow_matching"].sampler)
    summary = (smoke_repo / "reports" / "summary.md").read_text()
    grid = (smoke_repo / "reports" / "grid.md").read_text()
    assert "ddpm / ancestral_beta" in grid and "flow_matching / ode_heun" in grid  # every sampler: grid.md
    # the summary opens with a ranking per data set, every evaluated method in it (issue 15)
    assert summary.index("## Which method wins, per data set") < summary.index("## Figures")
    for name in params["datasets"]:
        section = summary[summary.index(f"### {name}: "):]
        section = section[:section.index("Data floor")]
        assert all(f"| {method} " in section for method in loaded.evaluated_methods()), section
    if params["report"].get("claims"):  # the papers' claims tested (one seed: each untested, saying so)
        claims = summary[summary.index("## The papers' claims, tested on this run"):summary.index("## Has each")]
        assert claims.count("| DDIM (Song et al. 2021, Table 1) |") == 1 and "untested (one seed): " in claims
    # every metric comes from the one table, and the summary's glossary lists each one
    from pipeline import metric_table

    unknown = {(m, d) for m, d in zip(results.metric, results.dataset) if not metric_table.known(m, DATASETS[d])}
    assert not unknown, unknown
    glossary = summary[summary.index("## Metrics"):]
    assert all(f"| {m} " in glossary for m in set(results.metric) if not m.endswith("_sd"))
    for figure in ("quality_vs_nfe", "loss_curves", *(f"samples_{name}" for name in params["datasets"]),
                   *(f"quality_{name}" for name in params["datasets"])):
        for suffix in (".png", ".svg"):
            assert (smoke_repo / "reports" / "figures" / f"{figure}{suffix}").stat().st_size > 1000, figure
    # DDPM's bound beside its probability-flow ODE likelihood
    assert (smoke_repo / "reports" / "figures" / "nll_bound_vs_ode.png").exists()
    headline = json.loads((smoke_repo / "reports" / "headline.json").read_text())
    assert set(headline) == set(params["datasets"])
    curves = pd.read_csv(smoke_repo / "reports" / "quality_vs_nfe.csv")
    assert set(curves.method) == set(loaded.evaluated_methods())
    protocol = pd.read_csv(smoke_repo / "reports" / "protocol.csv")  # how each number was made, row for row
    keys = ["dataset", "method", "sampler", "nfe", "seed", "metric"]
    assert list(protocol.columns[:6]) == keys and len(protocol) == len(results)


def check_report_page(repo: Path, browser) -> None:
    """index.html in a real browser: every table and figure, the first screen, nothing failed to load."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    page, problems = open_page(browser, repo / "reports" / "index.html")
    assert problems == []
    figures = sorted(p.name for p in (repo / "reports" / "figures").glob("*.png"))
    shown = sorted(page.evaluate("Array.from(document.images).map(i => i.alt)"))
    assert len(shown) == len(figures), (shown, figures)  # every figure once: the overview, the cards, the rest
    # the first screen: each data set's podium and the quality-vs-NFE panels; then a card per data set
    overview = page.locator("#overview")
    assert overview.locator("tbody tr").count() == len(params["datasets"])
    box = overview.locator("img").bounding_box()
    assert box["y"] + box["height"] <= 1000, box
    for name in params["datasets"]:
        card = page.locator(f"section#{name}")
        assert card.locator("tbody tr").count() >= len(params["methods"]) and card.locator("img").count() == 1
    assert page.locator("#protocol table tbody tr").count() > 0
    page.screenshot(path=str(repo / "reports" / "index_screenshot.png"))
    page.close()
