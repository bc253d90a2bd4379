"""Every random draw goes through pipeline.rng, which takes the device from its tensor (issue 10, item 3).

A draw without `device=` lands on the CPU; with a CUDA generator torch then raises, as the Hutchinson
probe of the image likelihood did. These tests run on the CPU: they check the rule's one place, that no
module of the package draws around it, and that every sampler and likelihood runs through it.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from pipeline import rng
from pipeline.schema import MLPSettings, NetworkSection
from pipeline.likelihood import ode_log_likelihood
from pipeline.methods import METHODS
from pipeline.methods.base import EvalContext

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
DRAWS = ("randn", "rand", "randint", "randperm", "multinomial", "normal", "bernoulli", "poisson")


def test_no_module_draws_around_the_helper():
    pattern = re.compile(r"torch\.(" + "|".join(DRAWS) + r")\(|\.(normal_|uniform_|bernoulli_|random_)\(")
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path.name != "rng.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "\n".join(offenders)


def test_draws_follow_the_tensor_and_repeat_with_the_seed():
    x = torch.zeros(3, 4, dtype=torch.float64)
    first = rng.normal_like(x, torch.Generator().manual_seed(0))
    again = rng.normal_like(x, torch.Generator().manual_seed(0))
    assert first.dtype == torch.float64 and first.device == x.device and torch.equal(first, again)
    probe = rng.rademacher_like(x, torch.Generator().manual_seed(1))
    assert probe.dtype == x.dtype and set(probe.unique().tolist()) <= {-1.0, 1.0}
    assert sorted(rng.permutation(10, torch.Generator().manual_seed(2), "cpu").tolist()) == list(range(10))
    assert rng.integers(3, 5, (100,), torch.Generator().manual_seed(3), "cpu").unique().tolist() == [3, 4]
    u = rng.uniform((1000,), torch.Generator().manual_seed(4), "cpu")
    assert 0 <= float(u.min()) and float(u.max()) < 1
    counts = torch.bincount(rng.categorical(torch.tensor([0.0, 1.0, 3.0]), 4000, torch.Generator().manual_seed(5)))
    assert counts[0] == 0 and abs(float(counts[2]) / 4000 - 0.75) < 0.03


def test_a_generator_of_another_device_is_refused_in_one_line():
    cuda_generator = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match="generator on cuda:0 cannot draw on cpu") as error:
        rng.normal_like(torch.zeros(2), cuda_generator)
    assert "\n" not in str(error.value)


class _DrawsOutsideTheHelper:
    """Replaces torch's draw functions while the block runs, noting every call made from pipeline code
    other than pipeline.rng."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("randn", "rand", "randint", "randperm", "multinomial"):
            original = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._watch(name, original))

    def _watch(self, name, original):
        def watched(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("pipeline") and caller != "pipeline.rng":
                self.calls.append(f"{caller}: torch.{name}")
            return original(*args, **kwargs)

        return watched


def _small_method(name: str):
    method_cls = METHODS[name]
    overrides = {"budgets": [4]}
    if name == "ddpm":
        overrides |= {"num_steps": 20, "analytic_coordinates": 100}
    if name == "pfgm":
        overrides |= {"reference_batch": 64}
    if name == "smld":
        overrides |= {"num_levels": 2}
    if name == "ot_flow_matching":
        overrides |= {"ot_batch": 16}
    return method_cls(method_cls.Config(**overrides), (2,))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_sampler_and_likelihood_draws_through_the_helper(monkeypatch, name):
    """Training loss, after-training tables, every sampler and every likelihood of every method, on the CPU,
    with the stages' kind of generator: no draw bypasses pipeline.rng, and a seed gives the same numbers."""
    watch = _DrawsOutsideTheHelper(monkeypatch)
    torch.manual_seed(0)
    method = _small_method(name)
    net = method.make_network(NetworkSection(mlp=MLPSettings(hidden=16, depth=1, time_embedding=8)))
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    train = method.training_data(data)
    assert torch.isfinite(method.loss(net, data[:32], torch.Generator().manual_seed(1))).all()
    net.eval()
    method.load_extras(method.after_training(net, train, torch.Generator().manual_seed(2)))

    def run_all(seed: int) -> list[torch.Tensor]:
        outputs = []
        for sampler, budget in method.sampler_runs():
            outputs.append(method.sample(net, sampler, budget, 16, torch.Generator().manual_seed(seed)).x)
        for record in method.log_likelihood(net, data[:4].double(), torch.Generator().manual_seed(seed),
                                            EvalContext(1e-3, 1e-3)):
            outputs.append(record.log_prob)
        return outputs

    first, second = run_all(3), run_all(3)
    assert len(first) >= len(method.sampler_runs())
    assert all(torch.isfinite(a).all() and torch.equal(a, b) for a, b in zip(first, second))
    assert not watch.calls, watch.calls


def test_the_hutchinson_probe_draws_on_the_data_device(monkeypatch):
    """The image likelihood's probe comes from the caller's generator through the helper (it was drawn on the
    default device, which a CUDA generator refuses)."""
    watch = _DrawsOutsideTheHelper(monkeypatch)
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def prior_log_prob(z):
        return -0.5 * z.pow(2).sum(1) - 10 * torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype))

    def velocity(z, t):
        return -0.5 * z

    results = [ode_log_likelihood(velocity, x, prior_log_prob, 0.0, 1.0, divergence="hutchinson",
                                  generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(results[0].log_prob, results[1].log_prob) and not watch.calls
    # dx/dt = -x/2 has divergence -d/2 whatever the probe: the estimate is exact here
    exact = prior_log_prob(x * torch.exp(torch.tensor(-0.5, dtype=x.dtype))) - 10.0
    torch.testing.assert_close(results[0].log_prob, exact, rtol=1e-4, atol=1e-4)
