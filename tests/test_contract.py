"""The contract every method x sampler keeps, checked on one untrained 2-D network each: the shape of
its output, finite values, the NFE it reports equal to the network calls it made, and the same samples
from the same seed. A new method or sampler is covered by these tests without a line here.
"""

import pytest
import torch

from pipeline import grids
from pipeline.methods import METHODS
from pipeline.schema import MLPSettings, NetworkSection

N = 7


def _cases():
    """Every method's samplers as its default configuration builds them: the shared ones its capabilities
    allow (pipeline.samplers) and its own."""
    return [(name, sampler) for name, cls in METHODS.items() for sampler in cls(cls.Config(), (2,)).samplers]


class _Counter:
    """A call count that copies of the network share (adaptive samplers run a float64 copy)."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):
        return self


class _CountingNetwork(torch.nn.Module):
    """The method's network, counting the batched forward calls made through it (or a copy of it)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.counter = net, _Counter()

    @property
    def calls(self) -> int:
        return self.counter.calls

    def forward(self, *args, **kwargs):
        self.counter.calls += 1
        return self.net(*args, **kwargs)


def _ready(name: str):
    """A method on 2-D data with an untrained network and what it computes after training."""
    method = METHODS[name](METHODS[name].Config(), (2,))
    torch.manual_seed(0)
    net = method.make_network(NetworkSection(mlp=MLPSettings(hidden=16, depth=2, time_embedding=8))).eval()
    train = method.training_data(torch.randn(512, 2, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        method.load_extras(method.after_training(net, train, torch.Generator().manual_seed(2)))
    return method, net


#: (method, sampler, budget) whose one step costs more than the budget: SMLD's 10 noise levels and final step
TOO_SMALL = {("smld", "annealed_langevin", 6)}


@pytest.mark.parametrize("budget", [6, 1000])  # a small budget, and the default profile's largest
@pytest.mark.parametrize("name, sampler", _cases())
def test_every_sampler_keeps_the_contract(name, sampler, budget):
    method, net = _ready(name)
    if not method.samplers[sampler].uses_budget:
        if budget != 6:
            pytest.skip("an adaptive sampler has no budget")
        budget = None
    counted = _CountingNetwork(net)
    if (name, sampler, budget) in TOO_SMALL:  # one step would cost more than the budget: refused, not overspent
        with pytest.raises(grids.BudgetTooSmall):
            method.sample(counted, sampler, budget, N, torch.Generator().manual_seed(3))
        assert counted.calls == 0
        return
    result = method.sample(counted, sampler, budget, N, torch.Generator().manual_seed(3))
    assert result.x.shape == (N, 2)
    assert torch.isfinite(result.x).all()
    if budget is None:  # adaptive, per-sample steps: the mean NFE per sample, at most the batch's calls
        assert 0 < result.nfe <= counted.calls, f"{name} {sampler}: {result.nfe} NFE, {counted.calls} calls"
    else:
        assert result.nfe == counted.calls > 0, f"{name} {sampler}: reports {result.nfe} NFE, made {counted.calls} calls"
    if budget is not None:  # pipeline.grids.steps_within: never more than the budget
        assert result.nfe <= budget, (name, sampler, result.nfe)
    if budget == 1000:  # and nearly all of it
        assert 0.99 * budget <= result.nfe, (name, sampler, result.nfe)
    again = method.sample(net, sampler, budget, N, torch.Generator().manual_seed(3))
    assert torch.equal(result.x, again.x)
    other = method.sample(net, sampler, budget, N, torch.Generator().manual_seed(4))
    assert not torch.equal(result.x, other.x)

