"""params.yaml's `precision`: bf16 autocast of the networks' products in training and fixed-step sampling;
weights, optimizer and EMA stay fp32 and adaptive solves keep their float64 network."""

import torch

from pipeline.config import Params
from pipeline.methods import METHODS
from pipeline.schema import TrainSettings
from pipeline.stages import draw_samples, precision_entry
from pipeline.training import train


def _method_and_net():
    cls = METHODS["flow_matching"]
    method = cls(cls.Config(), (2,))
    torch.manual_seed(0)
    net = method.make_network(Params.model_validate({"datasets": ["moons"], "methods": {"flow_matching": {}},
                                                     "network": {"mlp": {"hidden": 32, "depth": 2}}}).network)
    return method, net


def test_bf16_training_keeps_fp32_weights_and_moves_them_otherwise_than_fp32(tmp_path):
    data = torch.randn(512, 2)
    settings = TrainSettings(steps=20, batch_size=64, lr=1e-3, warmup_steps=2, checkpoint_every=100, log_every=10)
    results = {}
    for precision in ("fp32", "bf16"):
        method, net = _method_and_net()
        result = train(net, method.loss, data, settings, 0, tmp_path / f"{precision}.pt", precision, progress=False,
                       precision=precision)
        results[precision] = result
        assert all(v.dtype == torch.float32 for v in result.ema_state.values())
        assert all(torch.isfinite(torch.tensor(loss)) for _, loss, _ in result.loss_history)
    fp32, bf16 = results["fp32"].ema_state, results["bf16"].ema_state
    difference = max(float((fp32[k] - bf16[k]).abs().max()) for k in fp32)
    assert 0 < difference < 1e-2  # the products were rounded to bf16, and only that


def test_bf16_sampling_rounds_fixed_steps_and_leaves_the_adaptive_solver_alone():
    method, net = _method_and_net()
    cpu = torch.device("cpu")
    euler32, _ = draw_samples(method, net, "ode_euler", 20, 200, 200, 5, cpu)
    euler16, _ = draw_samples(method, net, "ode_euler", 20, 200, 200, 5, cpu, "bf16")
    assert 0 < abs(euler32 - euler16).max() < 0.1
    rk32, nfe32 = draw_samples(method, net, "ode_rk45", None, 50, 50, 5, cpu)
    rk16, nfe16 = draw_samples(method, net, "ode_rk45", None, 50, 50, 5, cpu, "bf16")
    assert (rk32 == rk16).all() and nfe32 == nfe16  # its float64 network is not autocast


def test_the_precision_is_part_of_a_models_identity_only_where_it_is_not_the_default():
    base = {"datasets": ["moons"], "methods": {"flow_matching": {}}}
    assert precision_entry(Params.model_validate(base)) == {}
    assert precision_entry(Params.model_validate(base | {"precision": "bf16"})) == {"precision": "bf16"}


def test_the_gpu_check_runs_at_toy_sizes_on_any_device(tmp_path):
    """scripts/gpu_check.py (issue 14) is run on a lent GPU only; here it runs at toy sizes so it cannot rot."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    subprocess.run([sys.executable, str(script), "--tiny", "--skip-smoke", "--steps", "2", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {(r["method"], r["precision"]) for r in report["training"]} == {
        (m, p) for m in ("ddpm", "flow_matching") for p in ("fp32", "bf16")}
    assert all(r["step_ms"] > 0 and r["sampled_images_per_s"] > 0 for r in report["training"])
    assert "| ddpm | bf16 |" in (tmp_path / "gpu_check.md").read_text()
