"""Several processes under torchrun (gloo on the CPU, 2 processes): data-parallel training equals one process
with the same global batch and seed, a killed run resumes, and sampling split over processes gives one
process's samples to the bit, for every sampler. The workers are tests/distributed_worker.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from distributed_cases import METHOD_CASES, SAMPLE_BATCH, SAMPLE_N, ready_method, sampler_cases, train_case
from pipeline import distributed, rng
from pipeline.cli import app
from pipeline.methods import METHODS
from pipeline.stages import draw_samples

HERE = Path(__file__).parent
REPO = HERE.parent
STEPS = 12


def _torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(HERE / "distributed_worker.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def two_process_training(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = _torchrun("train", str(out), str(STEPS))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", METHOD_CASES)
def test_two_processes_train_the_weights_one_process_trains(name, two_process_training, tmp_path):
    """Weights, EMA and logged loss after 12 steps (3 checkpoints) of batch 64 as 2 x 32 rows. A loss that couples
    its batch's rows (OT-FM's plan, PFGM's field) couples each process's 32 rows, so it matches only in law."""
    one = train_case(name, STEPS, tmp_path)
    two = torch.load(two_process_training / f"{name}.pt", weights_only=False)
    steps = [row[0] for row in one["history"]]
    assert steps == [row[0] for row in two["history"]] == [4, 8, 12]
    if METHODS[name].couples_batch_rows:  # only bounded here: other couplings, the same training otherwise
        assert 1e-4 < _largest_difference(one["net"], two["net"]) < 0.1
        assert np.allclose([row[1] for row in one["history"]], [row[1] for row in two["history"]], rtol=0.2)
        return
    assert _largest_difference(one["net"], two["net"]) < 1e-4  # Adam's first steps magnify rounding (~1e-7)
    assert _largest_difference(one["ema"], two["ema"]) < 1e-6
    assert np.allclose([row[1] for row in one["history"]], [row[1] for row in two["history"]], rtol=1e-5)


def test_a_killed_two_process_run_resumes_from_its_checkpoint(two_process_training, tmp_path):
    """Rank 1 is SIGKILLed after step 10 (torchrun then stops rank 0); the rerun resumes at the step-8 checkpoint
    and ends with the uninterrupted run's weights, to the bit."""
    killed = _torchrun("train", str(tmp_path), str(STEPS), "ddpm", "10")
    assert killed.returncode != 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "ddpm.pt", weights_only=False)
    assert checkpoint["step"] == 8 and len(checkpoint["process_rng"]) == 2
    assert not (tmp_path / "ddpm.pt").exists()
    resumed = _torchrun("train", str(tmp_path), str(STEPS), "ddpm")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = torch.load(two_process_training / "ddpm.pt", weights_only=False)
    again = torch.load(tmp_path / "ddpm.pt", weights_only=False)
    assert _largest_difference(uninterrupted["net"], again["net"]) == 0
    assert uninterrupted["history"] == again["history"]


def test_two_processes_draw_one_process_samples_for_every_sampler(tmp_path):
    """26 samples in batches of 6: one process draws batches 0-1, the other 2-4; gathered in index order."""
    result = _torchrun("sample", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(tmp_path / "samples.pt", weights_only=False)
    cases = sampler_cases()
    assert set(two) == {(name, sampler) for name, sampler, _ in cases}
    for name, sampler, budget in cases:
        method, net = ready_method(name)
        samples, nfe = draw_samples(method, net, sampler, budget, SAMPLE_N, SAMPLE_BATCH, 11, torch.device("cpu"))
        assert np.array_equal(samples, two[(name, sampler)][0]), (name, sampler)
        assert nfe == two[(name, sampler)][1], (name, sampler)


def test_a_failed_write_and_a_disagreement_raise_on_every_process(tmp_path):
    """Rank 0 cannot write (the parent is a file) and the ranks disagree: no process is left waiting."""
    result = _torchrun("errors", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    raised = sorted(re.findall(r"<rank (\d) raised (\w+): (\w+)>", result.stdout))
    assert raised == [("0", "OSError", "FileExistsError"), ("0", "StageError", "StageError"),
                      ("1", "OSError", "FileExistsError"), ("1", "StageError", "StageError")], result.stdout


def test_shards_are_whole_batches_in_rank_order():
    assert [distributed.shard(50, 12, 2, r) for r in range(2)] == [(0, 24), (24, 50)]
    assert [distributed.shard(10, 1, 3, r) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [distributed.shard(5, 10, 2, r) for r in range(2)] == [(0, 0), (0, 5)]


def test_a_row_shard_draws_its_rows_of_the_global_draw_and_keeps_the_generator_in_step():
    whole, part = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    shard = rng.RowShard(part, rows=8, start=2, stop=6)
    assert torch.equal(rng.normal((4, 3), shard, "cpu"), rng.normal((8, 3), whole, "cpu")[2:6])
    assert torch.equal(rng.integers(0, 9, (4,), shard, "cpu"), rng.integers(0, 9, (8,), whole, "cpu")[2:6])
    # a draw that is not per row is made whole, also where its length happens to be the shard's rows
    assert torch.equal(rng.uniform((4,), shard, "cpu", per_row=False), rng.uniform((4,), whole, "cpu"))
    assert torch.equal(rng.permutation(7, shard, "cpu"), rng.permutation(7, whole, "cpu"))
    assert torch.equal(rng.normal((4, 3), shard, "cpu"), rng.normal((8, 3), whole, "cpu")[2:6])  # still in step
    with pytest.raises(ValueError, match=r"a per-row draw of shape \(5,\) from a shard of 4 rows"):
        rng.uniform((5,), shard, "cpu")  # neither the rows nor marked per_row=False: say which it is


def test_an_uneven_batch_over_processes_is_one_line(monkeypatch):
    from pipeline.errors import StageError
    from pipeline.training import global_batch
    from distributed_cases import settings

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(StageError, match="multiple of the process count"):
        global_batch(settings(4), 512)


@pytest.fixture()
def run_params(tmp_path):
    params = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    params["datasets"] = ["moons"]
    params["methods"] = {"ddpm": {"num_steps": 50, "budgets": [5], "ddim_etas": [0.0], "ddim_skips": ["uniform"]}}
    params["reflow"] = {}
    params["train"]["toy"].update(steps=20, checkpoint_every=10, log_every=10, batch_size=64)
    params["evaluate"]["w2_points"] = 200
    params["sample"]["n_samples"] = 200
    params["sample"]["batch_size"] = 50
    for root in ("one", "two"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "params.yaml").write_text(yaml.safe_dump({**params, "nproc_per_node": 1 + (root == "two")}))
    return tmp_path


def test_the_run_stage_under_nproc_per_node_2_relaunches_itself_under_torchrun(run_params):
    """`pipeline run` with nproc_per_node: 2 starts 2 processes by torchrun; its model equals one process's to
    rounding, and its outputs are written once, by rank 0."""
    runner = CliRunner()
    outputs = {}
    for root in ("one", "two"):
        args = ["--params", str(run_params / root / "params.yaml")]
        assert runner.invoke(app, [*args, "prepare", "-d", "moons"]).exit_code == 0
        result = runner.invoke(app, [*args, "run", "-m", "ddpm", "-d", "moons", "--no-progress"])
        assert result.exit_code == 0, result.output
        outputs[root] = torch.load(run_params / root / "models" / "ddpm" / "moons" / "seed0.pt", weights_only=False)
    assert _largest_difference(outputs["one"]["state_dict"], outputs["two"]["state_dict"]) < 1e-4
    for root in ("one", "two"):
        written = sorted(p.relative_to(run_params / root).as_posix() for p in (run_params / root).rglob("*")
                         if p.is_file() and p.name.startswith("."))
        assert written == [], written  # no temporary left by a second writer
    with np.load(run_params / "two" / "samples" / "ddpm" / "moons" / "seed0.npz") as archive:
        assert archive["ddim-eta0.0-uniform@5"].shape == (200, 2)
