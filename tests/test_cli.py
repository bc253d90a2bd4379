"""The `pipeline` command: help, listing, and the stage commands on a tiny params file."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["validate", "prepare", "train", "sample", "evaluate", "run", "report", "publish", "bench", "list"]


@pytest.fixture()
def tiny_params(tmp_path):
    params = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    params["datasets"] = ["moons"]
    params["methods"] = {"flow_matching": {"budgets": [4], "samplers": ["ode_euler"]}}
    params["reflow"] = {}  # its round of rectified_flow needs methods.rectified_flow
    params["train"]["toy"].update(steps=30, checkpoint_every=10, log_every=10)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_list_prints_datasets_methods_and_samplers():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("moons", "checkerboard", "gaussian_mixture", "ddpm", "flow_matching", "ancestral_beta", "ode_heun"):
        assert name in result.output


def test_stage_commands_write_their_outputs(tiny_params):
    runner = CliRunner()
    root = tiny_params.parent
    args = ["--params", str(tiny_params)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    for written in ("data/moons.npz", "models/features/moons.pt", "metrics/features/moons.json",
                    "metrics/data/moons.json"):  # the prepare stage: splits, feature marker, data floor
        assert (root / written).exists(), written
    with np.load(root / "data" / "moons.npz") as archive:
        assert archive["train"].shape[1] == 2 and abs(archive["train"].mean()) < 0.05
    first = (root / "data" / "moons.npz").read_bytes()
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    assert (root / "data" / "moons.npz").read_bytes() == first, "prepare must be deterministic"
    for command in (["train", "-m", "flow_matching", "-d", "moons", "--no-progress"],
                    ["sample", "-m", "flow_matching", "-d", "moons", "--no-progress"],
                    ["evaluate", "-m", "flow_matching", "-d", "moons"],
                    ["evaluate", "-d", "moons"],
                    ["report"]):
        result = runner.invoke(app, [*args, *command])
        assert result.exit_code == 0, (command, result.output)
    assert (root / "models" / "flow_matching" / "moons" / "seed0.pt").exists()
    assert (root / "reports" / "figures" / "samples_moons.png").exists() and (root / "reports" / "index.html").exists()
    header = (root / "reports" / "results.csv").read_text().splitlines()[0]
    assert header == "dataset,method,sampler,nfe,seed,metric,value"


def test_the_run_stage_trains_samples_and_scores_and_reuses_a_finished_training(tiny_params):
    """`pipeline run` (the DVC stage) writes model, samples and metrics; when only an evaluation parameter
    changed, DVC re-runs it and the training resumes from its finished checkpoint: same model bytes, no retraining."""
    runner = CliRunner()
    root = tiny_params.parent
    args = ["--params", str(tiny_params)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    run = [*args, "run", "-m", "flow_matching", "-d", "moons", "--no-progress"]
    result = runner.invoke(app, run)
    assert result.exit_code == 0, result.output
    model = root / "models" / "flow_matching" / "moons" / "seed0.pt"
    metrics = root / "metrics" / "flow_matching" / "moons" / "seed0.json"
    assert model.exists() and metrics.exists()
    assert (root / "samples" / "flow_matching" / "moons" / "seed0.npz").exists()
    checkpoint, = (root / "checkpoints" / "flow_matching" / "moons").iterdir()
    first_model, first_checkpoint = model.read_bytes(), checkpoint.stat().st_mtime_ns
    first_w2 = metrics.read_text()
    params = yaml.safe_load(tiny_params.read_text())
    params["evaluate"]["w2_points"] = params["evaluate"]["w2_points"] // 2
    tiny_params.write_text(yaml.safe_dump(params))
    model.unlink()  # as DVC removes a stage's outputs before it re-runs
    result = runner.invoke(app, run)
    assert result.exit_code == 0, result.output
    assert model.read_bytes() == first_model
    assert checkpoint.stat().st_mtime_ns == first_checkpoint, "a finished training must not be redone"
    assert metrics.read_text() != first_w2


def test_a_metric_missing_from_the_metric_table_stops_the_evaluation(tiny_params, monkeypatch):
    """Caught where it is made, in one line, not by the publish stage after the whole sweep."""
    from pipeline.methods.flow_matching import FlowMatching

    runner = CliRunner()
    args = ["--params", str(tiny_params)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    for command in (["train", "-m", "flow_matching", "-d", "moons", "--no-progress"],
                    ["sample", "-m", "flow_matching", "-d", "moons", "--no-progress"]):
        assert runner.invoke(app, [*args, *command]).exit_code == 0
    monkeypatch.setattr(FlowMatching, "trajectory_metrics", lambda *a: [("ode_rk45", 10, "curvature", 1.0)])
    result = runner.invoke(app, [*args, "evaluate", "-m", "flow_matching", "-d", "moons"])
    error = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and error.startswith("error: ") and "curvature" in error, result.output
    assert not (tiny_params.parent / "metrics" / "flow_matching" / "moons" / "seed0.json").exists()


def test_every_method_is_evaluated_on_the_same_random_numbers(tiny_params, monkeypatch):
    """Common random numbers (issue 11): the path metrics' prior draws and the likelihood estimators' draws
    depend on the seed and the data set, not on the method."""
    from pipeline.methods.affine import AffineMethod
    from pipeline.methods.flow_matching import FlowMatching

    seen = {}

    def record(kind):
        def method(self, net, *args):
            generator = next(a for a in args if isinstance(a, torch.Generator))
            seen.setdefault(type(self).__name__, {})[kind] = torch.rand(4, generator=generator)
            return []
        return method

    from pipeline.methods.rectified_flow import RectifiedFlow

    for cls in (AffineMethod, RectifiedFlow):
        monkeypatch.setattr(cls, "trajectory_metrics", record("paths"))
    monkeypatch.setattr(AffineMethod, "log_likelihood", record("likelihood"))
    params = yaml.safe_load(tiny_params.read_text())
    params["methods"]["rectified_flow"] = {"budgets": [4], "samplers": ["ode_euler"]}
    tiny_params.write_text(yaml.safe_dump(params))
    runner = CliRunner()
    args = ["--params", str(tiny_params)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    for name in ("flow_matching", "rectified_flow"):
        for command in (["train", "-m", name, "-d", "moons", "--no-progress"],
                        ["sample", "-m", name, "-d", "moons", "--no-progress"], ["evaluate", "-m", name, "-d", "moons"]):
            result = runner.invoke(app, [*args, *command])
            assert result.exit_code == 0, result.output
    assert set(seen) == {"FlowMatching", "RectifiedFlow"}
    for kind in ("paths", "likelihood"):
        torch.testing.assert_close(seen["FlowMatching"][kind], seen["RectifiedFlow"][kind], rtol=0, atol=0)
    assert not torch.equal(seen["FlowMatching"]["paths"], seen["FlowMatching"]["likelihood"])


def test_ddpms_ode_likelihood_draws_what_every_other_methods_draws():
    """DDPM's bounds use the likelihood generator first; its ODE likelihood starts from the generator as it
    came in, as every other method's does, so their Hutchinson probes are common random numbers."""
    from pipeline.methods.affine import AffineMethod
    from pipeline.methods.base import EvalContext
    from pipeline.methods.ddpm import DDPM, DDPMConfig
    from pipeline.nets.mlp import MLP

    seen = []

    def record(self, net, x, generator, context):
        seen.append(torch.rand(4, generator=generator))
        return []

    method = DDPM(DDPMConfig(num_steps=20, budgets=[5]), (2,))
    original = AffineMethod.log_likelihood
    try:
        AffineMethod.log_likelihood = record
        records = method.log_likelihood(MLP(2, hidden=8, depth=1, time_embedding=8), torch.randn(6, 2),
                                        torch.Generator().manual_seed(5), EvalContext())
    finally:
        AffineMethod.log_likelihood = original
    assert records and seen  # the bounds drew first
    torch.testing.assert_close(seen[0], torch.rand(4, generator=torch.Generator().manual_seed(5)), rtol=0, atol=0)


def test_a_budget_that_cannot_pay_for_one_step_is_left_out_or_refused(tiny_params):
    """SMLD's ten levels and final step need 11 NFE: its run at 10 is skipped (said in a line), not overspent;
    a sampler with no budget that fits is a one-line error."""
    runner = CliRunner()
    params = yaml.safe_load(tiny_params.read_text())
    params["methods"] = {"smld": {"budgets": [12, 10]}}
    tiny_params.write_text(yaml.safe_dump(params))
    args = ["--params", str(tiny_params)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    assert runner.invoke(app, [*args, "train", "-m", "smld", "-d", "moons", "--no-progress"]).exit_code == 0
    result = runner.invoke(app, [*args, "sample", "-m", "smld", "-d", "moons"])
    assert result.exit_code == 0, result.output
    assert "skipped annealed_langevin at 10 NFE" in result.output
    with np.load(tiny_params.parent / "samples" / "smld" / "moons" / "seed0.npz") as archive:
        index = json.loads(str(archive["index"]))
    assert [(row["budget"], row["nfe"]) for row in index] == [(12, 11)]
    params["methods"]["smld"]["budgets"] = [10, 5]
    other = tiny_params.parent / "other" / "params.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump(params))
    args = ["--params", str(other)]
    assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
    assert runner.invoke(app, [*args, "train", "-m", "smld", "-d", "moons", "--no-progress"]).exit_code == 0
    result = runner.invoke(app, [*args, "sample", "-m", "smld", "-d", "moons", "--no-progress"])
    error = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and error.startswith("error: ") and "annealed_langevin" in error, result.output


def test_a_name_missing_from_params_is_one_line_and_exit_2(tiny_params):
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "train", "-m", "ddpm", "-d", "moons"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "ddpm" in result.output


def test_a_missing_data_file_says_what_to_run(tiny_params):
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "train", "-m", "flow_matching", "-d", "moons"])
    assert result.exit_code == 2 and "dvc repro" in result.output


def test_bench_writes_every_kind_of_figure(tiny_params, tmp_path):
    """`pipeline bench` at tiny sizes (no `dvc repro`: the slow test runs that on the smoke profile)."""
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "bench", "--repeats", "1", "--train-steps", "3",
                                      "--n-points", "50", "--n-images", "4", "--budget", "4", "--profile", "none",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "benchmarks.csv")
    assert set(table.section) >= {"sampler overhead (2-D, 50 samples)", "sampler overhead (image, 4 samples)",
                                  "trainer (2-D)", "evaluation"}
    overhead = table[table.section.str.startswith("sampler overhead (2-D")]
    assert list(overhead.item) == ["flow_matching ode_euler"] and overhead.value.iloc[0] > 0
    assert set(table.holds.dropna()) <= {"yes", "no"}
    text = (tmp_path / "benchmarks.md").read_text()
    assert "## trainer (2-D)" in text and "cores" in text


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_thread_count_is_one_line_and_exit_2(tiny_params, monkeypatch, value):
    monkeypatch.setenv("PIPELINE_NUM_THREADS", value)
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "validate"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "PIPELINE_NUM_THREADS" in result.output
