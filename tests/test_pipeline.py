"""The whole DVC pipeline on the 2-D smoke profile, in a temporary copy of the repository (the image
profile's run: tests/test_pipeline_images.py).

Checks the outputs a user reads, MLflow as a view of them, and determinism: `dvc repro --force`
gives a byte-identical results.csv.
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline_runs import check_comparison, check_report_page, repo_with_profile, run_dvc


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    # the thread governor decides (pipeline.threads: two threads on an idle machine, one beside a busy process,
    # changing as the load moves), so the forced rerun on one thread compares counts; two fixed threads here,
    # beside the suite's other pytest process and one more busy process, trained at 3 steps/s and timed out
    return repo_with_profile(tmp_path_factory.mktemp("smoke"), "smoke")


@pytest.mark.slow
def test_smoke_pipeline_writes_the_comparison(smoke_repo):
    check_comparison(smoke_repo)


@pytest.mark.slow
def test_the_report_page_opens_in_a_browser_with_every_table_and_figure(smoke_repo, browser):
    check_report_page(smoke_repo, browser)


@pytest.mark.slow
def test_dvc_shows_the_headline_numbers_and_the_curves(smoke_repo):
    metrics = json.loads(run_dvc(["dvc", "metrics", "show", "--json"], smoke_repo).stdout)
    assert "reports/headline.json" in json.dumps(metrics)
    plots = json.loads(run_dvc(["dvc", "plots", "show", "--json"], smoke_repo).stdout)["data"]
    assert "reports/quality_vs_nfe.csv" in plots and any(key.startswith("metrics/train/") for key in plots)
    spec = json.dumps(plots["reports/quality_vs_nfe.csv"])
    assert '"nfe"' in spec and '"mean"' in spec  # the curve's data points, x and y
    content = plots["reports/quality_vs_nfe.csv"][0]["content"]  # a panel per data set, a line per method
    assert content["facet"]["field"] == "dataset" and content["spec"]["encoding"]["color"]["field"] == "method"
    readme = run_dvc(["pipeline", "report", "--readme"], smoke_repo)
    assert "README.md" in readme.stdout
    from pipeline.report.readme import readme_block, results_block

    assert readme_block((smoke_repo / "README.md").read_text()) == \
        results_block((smoke_repo / "reports" / "summary.md").read_text())


@pytest.mark.slow
def test_mlflow_is_a_complete_view_and_publishing_is_idempotent(smoke_repo):
    import mlflow

    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    uri = f"sqlite:///{smoke_repo / 'mlflow.db'}"
    quick = run_dvc(["pipeline", "publish"], smoke_repo)  # the same state again: the ledger's quick exit
    assert "(already published)" in quick.stdout
    run_dvc(["pipeline", "publish", "--force"], smoke_repo)  # the store itself says so too: nothing new
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
def test_the_convergence_section_comes_from_the_runs_snapshots(smoke_repo):
    convergence = pd.read_csv(smoke_repo / "reports" / "convergence.csv")
    runs = convergence[convergence.method != "data"]
    assert set(runs.method) == {"flow_matching"} and sorted(runs.step.unique()) == [100, 200]
    assert {"w2", "coverage", "nll"} <= set(runs.metric)
    summary = (smoke_repo / "reports" / "summary.md").read_text()
    assert "## Convergence" in summary and "this run's `train.snapshots`" in summary
    assert (smoke_repo / "reports" / "figures" / "convergence.png").exists()


@pytest.mark.slow
def test_forced_rerun_is_byte_identical(smoke_repo):
    """The first run was `dvc repro`, its thread count following the load (pipeline.threads); the rerun is
    `pipeline repro --jobs 2` (two stages at a time, pipeline.repro) on one thread each: this also checks that
    neither the schedule nor the thread count changes a number of the 2-D path (tests/test_threads.py holds
    the MLPs' bits on one and two threads for certain)."""
    before = (smoke_repo / "reports" / "results.csv").read_bytes()
    others = {name: (smoke_repo / "reports" / name).read_bytes() for name in
              ("protocol.csv", "summary.md", "grid.md", "index.html", "headline.json", "quality_vs_nfe.csv")}
    figures = {p.name: p.read_bytes() for p in (smoke_repo / "reports" / "figures").iterdir()}
    convergence_before = (smoke_repo / "reports" / "convergence.csv").read_bytes()
    lock_before = (smoke_repo / "dvc.lock").read_text()
    shutil.rmtree(smoke_repo / "checkpoints")
    run_dvc(["pipeline", "repro", "--jobs", "2", "--force"], smoke_repo, PIPELINE_NUM_THREADS="1")
    assert (smoke_repo / "reports" / "results.csv").read_bytes() == before
    assert all((smoke_repo / "reports" / name).read_bytes() == content for name, content in others.items())
    assert (smoke_repo / "reports" / "convergence.csv").read_bytes() == convergence_before
    assert {p.name: p.read_bytes() for p in (smoke_repo / "reports" / "figures").iterdir()} == figures  # PNG and SVG
    assert (smoke_repo / "dvc.lock").read_text() == lock_before


def _flat(tree, prefix=()):
    """A metrics file's nested sampler -> NFE -> metric values as {(sampler, nfe, metric): value}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {key: value for name, sub in tree.items() for key, value in _flat(sub, (*prefix, name)).items()}


@pytest.mark.slow
def test_the_sample_batch_size_changes_no_number(smoke_repo, tmp_path):
    """Per-sample random streams and per-sample step control (issue 11), end to end through the run stage:
    at `sample.batch_size` 37 (13.5 batches of the 500 samples) every metric of DDPM (its chains, Analytic-DPM,
    the variational bound) and the VP SDE (reverse SDE, predictor-corrector, DDIM and DPM-Solver++ on its
    path, the probability-flow ODE and its likelihood) equals the smoke run's at 10,000 to the 4th significant
    digit. Every other sampler is held to the same by tests/test_streams.py without the pipeline."""
    copy = tmp_path / "copy"
    shutil.copytree(smoke_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["sample"]["batch_size"] = 37
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dataset,) = params["datasets"]
    methods = ("ddpm", "vp_sde")
    run_dvc(["dvc", "repro", "--single-item", *(f"run@{method}-{dataset}-0" for method in methods)], copy)
    for method in methods:
        name = Path("metrics") / method / dataset / "seed0.json"
        before = _flat(json.loads((smoke_repo / name).read_text()))
        after = _flat(json.loads((copy / name).read_text()))
        assert before.keys() == after.keys() and len(before) > 50, method
        differ = {key: (value, after[key]) for key, value in before.items()  # nan only where both are nan
                  if not (math.isnan(value) and math.isnan(after[key]))
                  and not math.isclose(value, after[key], rel_tol=5e-4, abs_tol=1e-12)}
        assert not differ, (method, sorted(differ.items())[:5])


def _stale_stages(repo: Path) -> set[str]:
    """Stages whose recorded dependencies changed (`dvc status`), without the always-run publish."""
    import json

    status = json.loads(run_dvc(["dvc", "status", "--json"], repo).stdout or "{}")
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
    run_dvc(["git", "add", "-A"], source)
    run_dvc(["git", "add", "-f", "metrics", "reports"], source)  # cache: false outputs live in git
    run_dvc(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "smoke run"], source)
    return source


@pytest.mark.slow
def test_a_dvc_remote_restores_the_outputs_in_a_fresh_clone(smoke_repo, tmp_path):
    """The README's team set-up: `dvc push` to a remote, `dvc pull` in a fresh clone, and nothing to reproduce
    there but the always-run publish stage (a view of the outputs); `dvc exp show` on the committed run."""
    source = _committed_clone(smoke_repo, tmp_path)
    # dvc exp show lists the headline numbers of the committed run (issue 15)
    experiments = json.loads(run_dvc(["dvc", "exp", "show", "--json"], source).stdout)
    assert "reports/headline.json" in experiments[0]["data"]["metrics"]
    run_dvc(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], source)
    run_dvc(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qam", "remote"], source)
    run_dvc(["dvc", "push"], source)
    clone = tmp_path / "clone"
    run_dvc(["git", "clone", "-q", str(source), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    run_dvc(["dvc", "pull"], clone)
    assert (clone / "models").exists() and (clone / "samples").exists()
    status = json.loads(run_dvc(["dvc", "status", "--json"], clone).stdout)
    assert set(status) == {"publish"}, status  # always_changed; every other stage is up to date
    dry = run_dvc(["dvc", "repro", "--dry"], clone).stdout
    assert "Running stage 'publish'" in dry and "Running stage 'run@" not in dry, dry


@pytest.mark.slow
def test_an_mlflow_server_on_postgresql_receives_the_runs(smoke_repo, mlflow_postgres_server, tmp_path):
    """The README's team tracking: `mlflow server` on PostgreSQL, selected by MLFLOW_TRACKING_URI; the smoke
    run's runs read back through the client (params, metrics, artifacts, models)."""
    import mlflow

    copy = tmp_path / "copy"
    shutil.copytree(smoke_repo, copy, symlinks=True)
    shutil.rmtree(copy / ".pipeline", ignore_errors=True)
    run_dvc(["pipeline", "publish"], copy, MLFLOW_TRACKING_URI=mlflow_postgres_server)
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
