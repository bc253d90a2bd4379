"""SMLD / NCSN (Song & Ermon 2019) against the analytic oracle, apart from training."""

import math

import pytest
import torch

from pipeline.schema import NetworkSection
from pipeline.likelihood import ode_log_likelihood
from pipeline.methods.base import EvalContext
from pipeline.methods.smld import SMLD, SMLDConfig
from pipeline.metrics import w2_exact
from pipeline.nets import build_network


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The oracle's batched 2 x 2 solves run ~10x faster on one thread when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_levels_are_geometric_on_the_ve_path():
    method = SMLD(SMLDConfig(), (2,))
    sigmas = method.level_sigmas()
    assert len(sigmas) == 10
    assert float(sigmas[0]) == pytest.approx(10.0) and float(sigmas[-1]) == pytest.approx(0.01)
    ratios = sigmas[:-1] / sigmas[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, 1000 ** (1 / 9)))
    drawn = method.sample_time(500, torch.Generator().manual_seed(0), "cpu").double()
    assert set(drawn.unique().tolist()) <= set(method.level_times.float().double().tolist())
    assert len(drawn.unique()) == 10


def test_signal_to_noise_ratio_of_the_default_step():
    """sqrt(eps / 2) / sigma_L in the 0.1-0.2 range suggested for 2-D data (methods.md 2.3)."""
    config = SMLDConfig()
    assert 0.1 <= math.sqrt(config.step_size / 2) / config.sigma_min <= 0.2


def test_annealed_langevin_fed_the_oracle_reproduces_the_mixture(mixture, mixture_reference):
    """T = 100 steps per level, NCSN's setting (Song & Ermon 2019, sec. 5): 10 x 100 + the denoising step."""
    method = SMLD(SMLDConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "annealed_langevin", 1001, 1500, torch.Generator().manual_seed(5))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)
    assert result.nfe == 10 * 100 + 1


def test_one_langevin_step_per_level_is_measurably_worse(mixture, mixture_reference):
    """The test above can fail: with T = 1 the chain cannot relax from sigma_1 = 10 down to the data."""
    method = SMLD(SMLDConfig(final_denoise=False), (2,))
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "annealed_langevin", 10, 1500, torch.Generator().manual_seed(5))
    reference, floor = mixture_reference
    assert result.nfe == 10
    assert w2_exact(result.x.numpy(), reference) > 1.5 * floor


def test_noise_levels_probability_flow_nll_is_the_true_nll(mixture):
    """SMLD defines no likelihood, but the PF-ODE of its VE path (sigma_L..sigma_1) gives the mixture's NLL."""
    method = SMLD(SMLDConfig(), (2,))
    net = mixture.network(method.path, method.prediction)
    x = mixture.sample(300, torch.Generator().manual_seed(3))
    assert method.log_likelihood(net, x, torch.Generator().manual_seed(4), EvalContext()) == []
    result = ode_log_likelihood(method.velocity_fn(net), x, method.path.prior_log_prob, 1e-5)
    model_nll = -result.log_prob.mean()
    true_nll = -mixture.log_prob(x).mean()
    assert abs(model_nll - true_nll) < 0.01 * abs(true_nll), (float(model_nll), float(true_nll))


def test_loss_is_a_finite_per_sample_vector_that_trains_the_network():
    method = SMLD(SMLDConfig(), (2,))
    net = build_network((2,), NetworkSection())
    batch = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    loss = method.loss(net, batch, torch.Generator().manual_seed(1))
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
