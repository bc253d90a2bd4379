"""DDPM and flow matching against the analytic oracle, apart from training (issue 2, item 9)."""

import pytest
import torch

from pipeline.methods.base import EvalContext
from pipeline import grids
from pipeline.methods.ddpm import DDPM, DDPMConfig
from pipeline.methods.flow_matching import FlowMatching, FlowMatchingConfig
from pipeline.metrics import w2_exact


def _oracle_method(name, budgets=(1000, 100)):
    if name == "ddpm":
        method = DDPM(DDPMConfig(budgets=list(budgets)), (2,))
    else:
        method = FlowMatching(FlowMatchingConfig(budgets=list(budgets)), (2,))
    return method


@pytest.mark.parametrize("method_name, sampler, budget", [
    ("ddpm", "ancestral_beta", 1000),
    ("ddpm", "ancestral_posterior", 1000),
    ("ddpm", "ancestral_posterior", 100),
    ("flow_matching", "ode_euler", 100),
    ("flow_matching", "ode_heun", 100),
    ("flow_matching", "ode_rk45", None),
])
def test_sampler_fed_the_oracle_reproduces_the_mixture(mixture, mixture_reference, method_name, sampler, budget):
    method = _oracle_method(method_name)
    net = mixture.network(method.path, method.prediction)
    generator = torch.Generator().manual_seed(7)
    result = method.sample(net, sampler, budget, 1500, generator)
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)


def test_too_few_steps_is_measurably_worse(mixture, mixture_reference):
    """The test above can fail: two Euler steps of flow matching do not reproduce the mixture."""
    method = _oracle_method("flow_matching")
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "ode_euler", 2, 1500, torch.Generator().manual_seed(7))
    reference, floor = mixture_reference
    assert w2_exact(result.x.numpy(), reference) > 1.5 * floor


@pytest.mark.parametrize("method_name", ["ddpm", "flow_matching"])
def test_probability_flow_nll_with_the_oracle_is_the_true_nll(mixture, method_name):
    method = _oracle_method(method_name)
    net = mixture.network(method.path, method.prediction)
    x = mixture.sample(300, torch.Generator().manual_seed(3))
    from pipeline.likelihood import ode_log_likelihood

    result = ode_log_likelihood(method.velocity_fn(net), x, method.path.prior_log_prob,
                                method.t_start_likelihood if method_name == "flow_matching" else 1e-5)
    model_nll = -result.log_prob.mean()
    true_nll = -mixture.log_prob(x).mean()
    assert abs(model_nll - true_nll) < 0.01 * abs(true_nll), (float(model_nll), float(true_nll))


def test_flow_matching_likelihood_record(mixture):
    method = _oracle_method("flow_matching")
    net = mixture.network(method.path, method.prediction)
    x = mixture.sample(200, torch.Generator().manual_seed(4))
    (record,) = method.log_likelihood(net, x, torch.Generator().manual_seed(0), EvalContext())
    assert record.sampler == "ode_rk45" and record.estimator == "ode_exact" and record.nfe > 10
    assert torch.allclose(-record.log_prob.mean(), -mixture.log_prob(x).mean(), rtol=0.01)


def test_ddpm_bound_with_the_oracle_upper_bounds_the_true_nll(mixture):
    """The variational bound is >= the true NLL for both variance choices and every budget."""
    method = _oracle_method("ddpm", budgets=(100, 10))
    net = mixture.network(method.path, method.prediction)
    x = mixture.sample(300, torch.Generator().manual_seed(5))
    true_nll = float(-mixture.log_prob(x).mean())
    records = {(r.sampler, r.nfe): float(-r.log_prob.mean())
               for r in method.log_likelihood(net, x, torch.Generator().manual_seed(0), EvalContext())}
    (ode,) = [key for key in records if key[0] == "ode_rk45"]
    assert set(records) - {ode} == {("ancestral_beta", 100), ("ancestral_posterior", 100),
                                    ("ancestral_beta", 10), ("ancestral_posterior", 10)}
    # the probability-flow ODE of the chain's continuous view, beside the bound: the true NLL
    assert abs(records.pop(ode) - true_nll) < 0.01 * abs(true_nll)
    for value in records.values():
        assert value > true_nll - 0.05  # a bound, up to Monte Carlo noise
    assert records[("ancestral_posterior", 10)] > records[("ancestral_posterior", 100)]


def test_ddpm_bound_is_tight_for_standard_normal_data():
    """For N(0, I) data the reverse kernels N(mu(x0_hat), beta_{r|s}) are exact, so the bound is the NLL."""
    from pipeline.oracle import GaussianMixture

    normal = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    method = _oracle_method("ddpm", budgets=(100, 10))
    net = normal.network(method.path, method.prediction)
    x = normal.sample(1000, torch.Generator().manual_seed(6))
    true_nll = float(-normal.log_prob(x).mean())
    for record in method.log_likelihood(net, x, torch.Generator().manual_seed(0), EvalContext()):
        if record.sampler == "ancestral_beta":  # (the ODE record is checked above)
            bound = -record.log_prob
            standard_error = float(bound.std()) / len(bound) ** 0.5
            assert abs(float(bound.mean()) - true_nll) < 4 * standard_error, record.nfe
            assert standard_error < 0.1


def test_skipped_timesteps_are_even_and_start_at_one():
    assert grids.chain_uniform(1000, 1000).tolist() == list(range(1, 1001))
    assert grids.chain_uniform(1000, 10).tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]


def test_flow_matching_loss_is_per_sample_and_reaches_every_parameter():
    from pipeline.schema import NetworkSection
    from pipeline.nets import build_network

    for method in (_oracle_method("ddpm"), _oracle_method("flow_matching")):
        net = build_network((2,), NetworkSection())
        loss = method.loss(net, torch.randn(32, 2), torch.Generator().manual_seed(0))
        assert loss.shape == (32,) and torch.isfinite(loss).all()
        loss.mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())

