"""The whole DVC pipeline on the smoke profile, in a temporary copy of the repository.

Checks the outputs a user reads, MLflow as a view of them, and determinism: `dvc repro --force`
gives a byte-identical results.csv.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import open_page
from pipeline.benchmark import copy_repository
from pipeline.data import DATASETS

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, **extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_NUM_THREADS")}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_LOGGING_LEVEL="WARNING", PYTHONUNBUFFERED="1", **extra_env)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _repo_with_profile(root: Path, profile: str, **extra_env) -> Path:
    """A temporary copy of the repository whose params.yaml is `profiles/<profile>.yaml`, after `dvc repro`."""
    copy_repository(root, REPO / "profiles" / f"{profile}.yaml")
    _run(["dvc", "repro"], root, **extra_env)
    return root


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    # two threads for certain, so that the forced rerun on one thread compares two counts (pipeline.threads)
    return _repo_with_profile(tmp_path_factory.mktemp("smoke"), "smoke", PIPELINE_NUM_THREADS="2")


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory):
    return _repo_with_profile(tmp_path_factory.mktemp("smoke_images"), "smoke_images")


@pytest.mark.slow
@pytest.mark.parametrize("repo_fixture", ["smoke_repo", "image_repo"])
def test_smoke_pipeline_writes_the_comparison(repo_fixture, request):
    smoke_repo = request.getfixturevalue(repo_fixture)
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


@pytest.mark.slow
@pytest.mark.parametrize("repo_fixture", ["smoke_repo", "image_repo"])
def test_the_report_page_opens_in_a_browser_with_every_table_and_figure(repo_fixture, request, browser):
    repo = request.getfixturevalue(repo_fixture)
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


@pytest.mark.slow
def test_dvc_shows_the_headline_numbers_and_the_curves(smoke_repo):
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], smoke_repo).stdout)
    assert "reports/headline.json" in json.dumps(metrics)
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], smoke_repo).stdout)["data"]
    assert "reports/quality_vs_nfe.csv" in plots and any(key.startswith("metrics/train/") for key in plots)
    spec = json.dumps(plots["reports/quality_vs_nfe.csv"])
    assert '"nfe"' in spec and '"mean"' in spec  # the curve's data points, x and y
    readme = _run(["pipeline", "report", "--readme"], smoke_repo)
    assert "README.md" in readme.stdout
    from pipeline.report.readme import readme_block, results_block

    assert readme_block((smoke_repo / "README.md").read_text()) == \
        results_block((smoke_repo / "reports" / "summary.md").read_text())


@pytest.mark.slow
def test_mlflow_is_a_complete_view_and_publishing_is_idempotent(smoke_repo):
    import mlflow

    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    uri = f"sqlite:///{smoke_repo / 'mlflow.db'}"
    quick = _run(["pipeline", "publish"], smoke_repo)  # the same state again: the ledger's quick exit
    assert "(already published)" in quick.stdout
    _run(["pipeline", "publish", "--force"], smoke_repo)  # the store itself says so too: nothing new
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("pipeline_role") == "child"]
    assert len(parents) == 1
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.md", "grid.md", "index.html", "results.csv", "figures"} <= artifacts, artifacts
    expected = len(params["datasets"]) * len(params["seeds"]) * (len(params["methods"]) + len(params["reflow"]))
    assert len(children) == expected
    child = next(r for r in children if r.data.tags["method"] == "flow_matching")
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert "git_commit" in child.data.tags and "pipeline_state" in child.data.tags
    assert any(key.startswith("w2/") for key in child.data.metrics)
    # the metric table's headline scores, each at its best sampler x NFE, as sortable columns
    results = pd.read_csv(smoke_repo / "reports" / "results.csv")
    w2 = results[(results.method == "flow_matching") & (results.dataset == child.data.tags["dataset"])
                 & (results.seed == int(child.data.tags["seed"])) & (results.metric == "w2")]
    assert child.data.metrics["best/w2"] == pytest.approx(w2.value.min())
    # as MLflow's UI expects: a training experiment, the data set as input, the model as a logged model
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert [d.dataset.name for d in child.inputs.dataset_inputs] == [child.data.tags["dataset"]]
    (output,) = child.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == child.info.run_id and model.tags["dvc_path"].startswith("models/flow_matching/")
    found = client.search_logged_models(experiment_ids=[experiment.experiment_id],
                                        filter_string=f"metrics.`best/w2` <= {child.data.metrics['best/w2']}")
    assert output.model_id in {m.model_id for m in found}
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert len(history) > 1
    # the convergence rows of the snapshots (profiles/smoke.yaml gives flow_matching two) as step histories
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "convergence/w2/ode_euler")]
    assert sorted(steps) == [100, 200]


@pytest.mark.slow
def test_the_convergence_section_comes_from_the_runs_snapshots_or_the_kept_study(smoke_repo, image_repo):
    convergence = pd.read_csv(smoke_repo / "reports" / "convergence.csv")
    runs = convergence[convergence.method != "data"]
    assert set(runs.method) == {"flow_matching"} and sorted(runs.step.unique()) == [100, 200]
    assert {"w2", "coverage", "nll"} <= set(runs.metric)
    summary = (smoke_repo / "reports" / "summary.md").read_text()
    assert "## Convergence" in summary and "this run's `train.snapshots`" in summary
    assert (smoke_repo / "reports" / "figures" / "convergence.png").exists()
    # a profile without snapshots shows the study kept under reports/studies/
    kept = (REPO / "reports" / "studies" / "convergence.csv").exists()
    assert ("profiles/convergence.yaml" in (image_repo / "reports" / "summary.md").read_text()) == kept


@pytest.mark.slow
def test_forced_rerun_is_byte_identical(smoke_repo):
    """The first run held two threads, the rerun holds one: this also checks that no thread count changes a
    number of the 2-D path, so pipeline.threads may change the count under load."""
    before = (smoke_repo / "reports" / "results.csv").read_bytes()
    others = {name: (smoke_repo / "reports" / name).read_bytes() for name in
              ("protocol.csv", "summary.md", "grid.md", "index.html", "headline.json", "quality_vs_nfe.csv")}
    figures = {p.name: p.read_bytes() for p in (smoke_repo / "reports" / "figures").iterdir()}
    convergence_before = (smoke_repo / "reports" / "convergence.csv").read_bytes()
    lock_before = (smoke_repo / "dvc.lock").read_text()
    shutil.rmtree(smoke_repo / "checkpoints")
    _run(["dvc", "repro", "--force"], smoke_repo, PIPELINE_NUM_THREADS="1")
    assert (smoke_repo / "reports" / "results.csv").read_bytes() == before
    assert all((smoke_repo / "reports" / name).read_bytes() == content for name, content in others.items())
    assert (smoke_repo / "reports" / "convergence.csv").read_bytes() == convergence_before
    assert {p.name: p.read_bytes() for p in (smoke_repo / "reports" / "figures").iterdir()} == figures  # PNG and SVG
    assert (smoke_repo / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_the_sample_batch_size_changes_no_number(smoke_repo, tmp_path):
    """Per-sample random streams and per-sample step control (issue 11): results.csv at `sample.batch_size` 37
    (13.5 batches of the 500 samples) equals the smoke run's at 10,000 to the 4th significant digit."""
    copy = tmp_path / "copy"
    shutil.copytree(smoke_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["sample"]["batch_size"] = 37
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro", "report"], copy)  # (not publish: MLflow is not what this checks)
    keys = ["dataset", "method", "sampler", "nfe", "seed", "metric"]
    before = pd.read_csv(smoke_repo / "reports" / "results.csv").set_index(keys).value
    after = pd.read_csv(copy / "reports" / "results.csv").set_index(keys).value
    assert before.index.equals(after.index)
    relative = ((after - before).abs() / before.abs().clip(lower=1e-12)).fillna(0)
    assert relative.max() < 5e-4, relative.sort_values().tail(5)
    protocol = pd.read_csv(copy / "reports" / "protocol.csv")
    assert list(protocol.columns[:6]) == keys and len(protocol) == len(after)


def _stale_stages(repo: Path) -> set[str]:
    """Stages whose recorded dependencies changed (`dvc status`), without the always-run publish."""
    import json

    status = json.loads(_run(["dvc", "status", "--json"], repo).stdout or "{}")
    return {name for name, changes in status.items() if changes != ["always changed"]}


def _stale_after_edit(repo: Path, edited: str) -> set[str]:
    """The stale stages while `edited` carries one more comment line; the file is restored after."""
    path = repo / edited
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        return _stale_stages(repo)
    finally:
        path.write_bytes(original)


@pytest.mark.slow
@pytest.mark.parametrize("edited, expected", [
    ("pipeline/report/tables.py", {"report"}),
    ("pipeline/training.py", {"run", "reflow"}),
    ("pipeline/evaluation.py", {"prepare", "run", "reflow"}),
    ("pipeline/data/toy.py", {"prepare", "run", "reflow", "report", "publish"}),
])
def test_an_edit_makes_stale_only_the_stages_that_run_the_edited_code(smoke_repo, edited, expected):
    """An edit re-runs only what imports the code (dvc.yaml's deps, kept exact by tests/test_dependencies.py):
    editing the report's code retrains nothing."""
    stages = yaml.safe_load((smoke_repo / "dvc.yaml").read_text())["stages"]
    assert _stale_stages(smoke_repo) == set()
    stale = _stale_after_edit(smoke_repo, edited)
    assert {name.split("@")[0] for name in stale} == expected
    if "run" in expected:  # every run stage of the profile, not some
        params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
        runs = {name for name in stale if name.startswith("run@")}
        assert len(runs) == len(params["methods"]) * len(params["datasets"]) * len(params["seeds"])
    assert "publish" in stages and _stale_stages(smoke_repo) == set()


@pytest.mark.slow
@pytest.mark.parametrize("edited, method, reflowed", [("pipeline/methods/flow_matching.py", "flow_matching", False),
                                                       ("pipeline/methods/rectified_flow.py", "rectified_flow", True)])
def test_editing_one_methods_module_makes_stale_only_its_stages(smoke_repo, edited, method, reflowed):
    """run@<method>-* (and its reflow round's stages, which run its code), then report and publish."""
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    stale = _stale_after_edit(smoke_repo, edited)
    runs = {f"run@{method}-{dataset}-{seed}" for dataset in params["datasets"] for seed in params["seeds"]}
    rounds = {f"reflow@{method}-{dataset}-{seed}" for dataset in params["datasets"] for seed in params["seeds"]}
    assert stale == runs | (rounds if reflowed else set()), sorted(stale)


def _committed_clone(smoke_repo: Path, root: Path) -> Path:
    """A copy of the smoke run as a team would keep it: code, dvc.lock and the uncached outputs (metrics/,
    reports/) committed to git."""
    source = root / "source"
    shutil.copytree(smoke_repo, source, symlinks=True)
    _run(["git", "add", "-A"], source)
    _run(["git", "add", "-f", "metrics", "reports"], source)  # cache: false outputs live in git
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "smoke run"], source)
    return source


@pytest.mark.slow
def test_a_dvc_remote_restores_the_outputs_in_a_fresh_clone(smoke_repo, tmp_path):
    """The README's team set-up: `dvc push` to a remote, `dvc pull` in a fresh clone, and nothing to reproduce
    there but the always-run publish stage (a view of the outputs); `dvc exp show` on the committed run."""
    source = _committed_clone(smoke_repo, tmp_path)
    # dvc exp show lists the headline numbers of the committed run (issue 15)
    experiments = json.loads(_run(["dvc", "exp", "show", "--json"], source).stdout)
    assert "reports/headline.json" in experiments[0]["data"]["metrics"]
    _run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], source)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qam", "remote"], source)
    _run(["dvc", "push"], source)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(source), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    _run(["dvc", "pull"], clone)
    assert (clone / "models").exists() and (clone / "samples").exists()
    status = json.loads(_run(["dvc", "status", "--json"], clone).stdout)
    assert set(status) == {"publish"}, status  # always_changed; every other stage is up to date
    dry = _run(["dvc", "repro", "--dry"], clone).stdout
    assert "Running stage 'publish'" in dry and "Running stage 'run@" not in dry, dry


@pytest.mark.slow
def test_an_mlflow_server_on_postgresql_receives_the_runs(smoke_repo, mlflow_postgres_server, tmp_path):
    """The README's team tracking: `mlflow server` on PostgreSQL, selected by MLFLOW_TRACKING_URI; the smoke
    run's runs read back through the client (params, metrics, artifacts, models)."""
    import mlflow

    copy = tmp_path / "copy"
    shutil.copytree(smoke_repo, copy, symlinks=True)
    shutil.rmtree(copy / ".pipeline", ignore_errors=True)
    _run(["pipeline", "publish"], copy, MLFLOW_TRACKING_URI=mlflow_postgres_server)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    client = mlflow.MlflowClient(mlflow_postgres_server)
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("pipeline_role") == "child"]
    assert len(parents) == 1
    assert len(children) == len(params["datasets"]) * len(params["seeds"]) * (len(params["methods"]) + len(params["reflow"]))
    child = next(r for r in children if r.data.tags["method"] == "flow_matching")
    assert child.data.params["train.steps"] == str(params["train"]["toy"]["steps"])
    assert "best/w2" in child.data.metrics and len(client.get_metric_history(child.info.run_id, "train_loss")) > 1
    assert {"summary.md", "index.html"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    with_figures = client.download_artifacts(parents[0].info.run_id, "index.html", str(tmp_path))
    assert Path(with_figures).read_bytes() == (copy / "reports" / "index.html").read_bytes()
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id], filter_string="metrics.`best/w2` > 0")
    assert len(models) == len(children)
