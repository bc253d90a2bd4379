"""Rectified flow: reflow pairs follow the first flow's ODE, reflow straightens, path metrics are exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline.nets import float64_copy

from pipeline.config import Params
from pipeline.schema import TrainSettings
from pipeline.data.toy import two_moons
from pipeline.methods.base import EvalContext
from pipeline.methods.affine import flow_path_metrics
from pipeline.methods.rectified_flow import RectifiedFlow, RectifiedFlowConfig
from pipeline.nets.mlp import MLP
from pipeline.oracle import GaussianMixture
from pipeline.parameterization import Prediction
from pipeline.solvers import ode_rk45
from pipeline.training import train


def _straightness(metrics) -> float:
    return next(value for _, _, name, value in metrics if name == "straightness")


def _transport(metrics) -> float:
    return next(value for _, _, name, value in metrics if name == "transport_cost")


def test_path_metrics_of_an_exact_gaussian_flow():
    """Data N(mu, I) under the independent coupling: Z_tau = r(tau) Z0 + tau mu with r = sqrt(tau^2 + (1 - tau)^2),
    so Z1 - Z0 = mu, the transport cost is ||mu||^2 and S = d int_0^1 r'(tau)^2 dtau."""
    mu = torch.tensor([1.5, -0.5])
    mixture = GaussianMixture(torch.ones(1), mu[None], torch.eye(2)[None])
    method = RectifiedFlow(RectifiedFlowConfig(), (2,))
    oracle = mixture.network(method.path, Prediction.VELOCITY)
    metrics = flow_path_metrics(method, oracle, 4000, torch.Generator().manual_seed(0),
                                EvalContext(rtol=1e-7, atol=1e-7), grid_points=129)
    tau = np.linspace(0, 1, 200001)
    r_dot = (2 * tau - 1) / np.sqrt(tau**2 + (1 - tau) ** 2)
    expected = 2 * np.trapezoid(r_dot**2, tau)
    assert _transport(metrics) == pytest.approx(float(mu.pow(2).sum()), rel=1e-4)
    # the sample mean of ||Z0||^2 / d over 4000 draws carries a ~2% error
    assert _straightness(metrics) == pytest.approx(expected, rel=0.05)


def test_coupled_pairs_are_the_first_flows_ode_solution():
    torch.manual_seed(0)
    method = RectifiedFlow(RectifiedFlowConfig(), (2,))
    net = MLP(2, hidden=32, depth=2, time_embedding=16).eval()
    noise, coupled = method.coupled_pairs(net, 300, torch.Generator().manual_seed(5), solve_batch=128)
    again = method.prior_sample(300, torch.Generator().manual_seed(5), "cpu")
    torch.testing.assert_close(noise, again)
    with torch.no_grad():
        velocity = method.velocity_fn(float64_copy(net))  # the pairs are solved in float64
        direct = torch.cat([ode_rk45(velocity, chunk.double(), 1.0, 0.0).x.float() for chunk in noise.split(128)])
    torch.testing.assert_close(coupled, direct)
    assert (coupled - noise).abs().max() > 0.01  # the flow moved the points


def test_pair_loss_regresses_the_pairs_velocity():
    """A network that outputs the pairs' straight velocity exactly has zero pair loss."""
    method = RectifiedFlow(RectifiedFlowConfig(), (2,))
    z0 = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    z1 = torch.tensor([[2.0, -1.0]])

    class StraightLine(torch.nn.Module):
        def forward(self, x, t):  # unified velocity d x_t / dt = z0 - z1
            return (z0 - z1).expand_as(x)

    loss = method.pair_loss(StraightLine(), torch.stack([z0, z1], 1).expand(16, 2, 2), torch.Generator())
    assert loss.shape == (16,) and float(loss.abs().max()) < 1e-12


def _fit(net, loss_fn, data, steps, seed, tmp_path):
    settings = TrainSettings(steps=steps, batch_size=256, lr=3e-3, warmup_steps=20, ema_decay=0.98,
                             checkpoint_every=10_000, log_every=50)
    result = train(net, loss_fn, data, settings, seed, tmp_path / f"ckpt-{seed}.pt", f"id{seed}", progress=False)
    net.load_state_dict(result.ema_state)
    return net.eval()


def test_reflow_straightens_the_flow_on_moons(tmp_path):
    """2-rectified flow, trained on (Z0, ODE_1(Z0)) pairs, is straighter than 1-rectified flow (Liu et al. 2023)."""
    torch.manual_seed(0)
    moons = two_moons(4000, np.random.default_rng(0))
    data = torch.from_numpy(((moons - moons.mean(0)) / moons.std(0)).astype(np.float32))
    method = RectifiedFlow(RectifiedFlowConfig(), (2,))
    first = _fit(MLP(2, hidden=64, depth=2, time_embedding=16), method.loss, data, 500, 1, tmp_path)
    context = EvalContext(rtol=1e-4, atol=1e-4)
    before = flow_path_metrics(method, first, 1000, torch.Generator().manual_seed(2), context, grid_points=33)
    noise, coupled = method.coupled_pairs(first, 4000, torch.Generator().manual_seed(3), 4000, 1e-4, 1e-4)
    pairs = torch.stack([noise, coupled], 1)
    second = _fit(copy.deepcopy(first).train(), method.pair_loss, pairs, 400, 4, tmp_path)
    after = flow_path_metrics(method, second, 1000, torch.Generator().manual_seed(2), context, grid_points=33)
    assert _straightness(after) < 0.25 * _straightness(before)
    # reflow does not increase a convex transport cost (Liu et al. 2023, thm 3.5), up to training error
    assert _transport(after) < 1.1 * _transport(before)


def test_reflow_stage_writes_pairs_of_the_first_model(tmp_path):
    """run_reflow: the pairs file holds (Z0, ODE_1(Z0)) of models/rectified_flow; rectified_flow_2 loads and
    is refused once its reflow settings change."""
    from pipeline import layout, prepare, stages

    raw = {"datasets": ["moons"], "device": "cpu",
           "data": {"n_train": 600, "n_test": 200, "n_reference": 200},
           "train": {"toy": {"steps": 30, "batch_size": 128, "warmup_steps": 5, "checkpoint_every": 100,
                             "log_every": 10}},
           "network": {"mlp": {"hidden": 16, "depth": 1, "time_embedding": 8}},
           "methods": {"rectified_flow": {"budgets": [2]}},
           "reflow": {"rectified_flow": {"n_pairs": 300, "solve_batch": 128, "train": {"steps": 20}}}}
    params = Params.model_validate(raw)
    prepare.run_prepare(tmp_path, params, "moons")
    stages.run_train(tmp_path, params, "rectified_flow", "moons", 0, progress=False)
    stages.run_reflow(tmp_path, params, "rectified_flow_2", "moons", 0, progress=False)
    method, first = stages.load_model(tmp_path, params, "rectified_flow", "moons", 0, torch.device("cpu"))
    with np.load(layout.reflow_pairs_file(tmp_path, "rectified_flow_2", "moons", 0)) as pairs:
        noise, coupled = torch.from_numpy(pairs["noise"]), torch.from_numpy(pairs["data"])
    assert noise.shape == coupled.shape == (300, 2)
    with torch.no_grad():
        velocity = method.velocity_fn(float64_copy(first))
        direct = torch.cat([ode_rk45(velocity, chunk.double(), 1.0, 0.0).x.float() for chunk in noise.split(128)])
    torch.testing.assert_close(coupled, direct, rtol=1e-4, atol=1e-4)
    _, second = stages.load_model(tmp_path, params, "rectified_flow_2", "moons", 0, torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert params.evaluated_methods() == ["rectified_flow", "rectified_flow_2"]
    raw["reflow"]["rectified_flow"]["n_pairs"] = 200
    with pytest.raises(stages.StageError, match="reflow.rectified_flow"):
        stages.load_model(tmp_path, Params.model_validate(raw), "rectified_flow_2", "moons", 0, torch.device("cpu"))


def test_reflow_section_is_validated():
    base = {"datasets": ["moons"], "methods": {"flow_matching": {}}}
    with pytest.raises(ValueError, match="needs methods.rectified_flow"):
        Params.model_validate({**base, "reflow": {"rectified_flow": {}}})
    with pytest.raises(ValueError, match="not a method with a reflow round; accepted: rectified_flow"):
        Params.model_validate({**base, "reflow": {"flow_matching": {}}})
    params = Params.model_validate({"datasets": ["moons"], "methods": {"rectified_flow": {}},
                                    "reflow": {"rectified_flow": {}}})
    assert params.evaluated_methods() == ["rectified_flow", "rectified_flow_2"]
    assert params.source_method("rectified_flow_2") == "rectified_flow" and params.is_derived("rectified_flow_2")
    with pytest.raises(ValueError, match="unknown method"):
        Params.model_validate({"datasets": ["moons"], "methods": {"rectified_flow_2": {}}})


def test_reflow_pair_counts_follow_the_data_kind():
    """Image data sets take reflow.<name>.image's pair counts: every pair is an ODE solve through the U-Net."""
    from pipeline.methods.rectified_flow import ReflowSettings

    settings = ReflowSettings.model_validate({"n_pairs": 300, "solve_batch": 100, "image": {"n_pairs": 40}})
    assert settings.pair_counts("toy") == (300, 100)
    assert settings.pair_counts("image") == (40, 500)
