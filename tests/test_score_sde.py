"""VP, sub-VP and VE SDEs (Song et al. 2021) against the analytic oracle, apart from training."""

import pytest
import torch

from pipeline.schema import NetworkSection
from pipeline.methods import METHODS
from pipeline.methods.base import EvalContext
from pipeline.metrics import w2_exact
from pipeline.nets import build_network

SDE_METHODS = ["vp_sde", "subvp_sde", "ve_sde"]
SAMPLERS = ["euler_maruyama", "pc", "ode_euler", "ode_heun", "ode_rk45"]
BUDGET = 200
# pipeline.grids.steps_within: 2 NFE a step and the final denoising step within the budget
EXPECTED_NFE = {"euler_maruyama": BUDGET, "ode_euler": BUDGET, "pc": 2 * ((BUDGET - 1) // 2) + 1,
                "ode_heun": 2 * ((BUDGET - 1) // 2) + 1}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The oracle's batched 2 x 2 solves run ~10x faster on one thread when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **settings):
    method_cls = METHODS[name]
    return method_cls(method_cls.Config(**settings), (2,))


@pytest.mark.parametrize("name", SDE_METHODS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_fed_the_oracle_reproduces_the_mixture(mixture, mixture_reference, name, sampler):
    method = build(name)
    net = mixture.network(method.path, method.prediction)
    seed = 10 * SDE_METHODS.index(name) + SAMPLERS.index(sampler)
    budget = None if sampler == "ode_rk45" else BUDGET
    result = method.sample(net, sampler, budget, 1500, torch.Generator().manual_seed(seed))
    reference, floor = mixture_reference
    w2 = w2_exact(result.x.numpy(), reference)
    assert w2 < 1.5 * floor, (w2, floor)
    if sampler in EXPECTED_NFE:
        assert result.nfe == EXPECTED_NFE[sampler]


def test_too_few_steps_is_measurably_worse(mixture, mixture_reference):
    """The test above can fail: 4 Euler-Maruyama steps of the VE SDE (g^2 h >> sigma^2) overshoot."""
    method = build("ve_sde")
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "euler_maruyama", 5, 1500, torch.Generator().manual_seed(0))
    reference, floor = mixture_reference
    assert w2_exact(result.x.numpy(), reference) > 1.5 * floor


@pytest.mark.parametrize("name", SDE_METHODS)
def test_probability_flow_nll_with_the_oracle_is_the_true_nll(mixture, name):
    method = build(name)
    net = mixture.network(method.path, method.prediction)
    x = mixture.sample(300, torch.Generator().manual_seed(3))
    [record] = method.log_likelihood(net, x, torch.Generator().manual_seed(4), EvalContext())
    model_nll = -record.log_prob.mean()
    true_nll = -mixture.log_prob(x).mean()
    assert abs(model_nll - true_nll) < 0.01 * abs(true_nll), (float(model_nll), float(true_nll))
    assert record.estimator == "ode_exact" and record.nfe > 0


def test_vp_reverse_diffusion_steps_are_the_discrete_chain():
    """With N grid steps the VP kernel's G^2 = 1 - a^2 is the chain's beta_i = beta(t_i) / N (Song et al. 2021,
    app. B) up to O(beta_i^2), and VE's G^2 is sigma_i^2 - sigma_{i-1}^2."""
    vp, ve = build("vp_sde"), build("ve_sde")
    n = 1000
    for i in (1, 500, 999):
        t, t_prev = i / n, (i - 1) / n
        a, g_squared = vp.transition(t, t_prev)
        beta_i = float(vp.path.beta(torch.tensor((t + t_prev) / 2))) / n
        assert g_squared == pytest.approx(1 - a**2, rel=1e-9)
        assert g_squared == pytest.approx(beta_i, rel=0.015)
        a, g_squared = ve.transition(t, t_prev)
        sigmas = ve.path(torch.tensor([t, t_prev], dtype=torch.float64)).sigma
        assert a == 1.0 and g_squared == pytest.approx(float(sigmas[0] ** 2 - sigmas[1] ** 2), rel=1e-9)


@pytest.mark.parametrize("name", SDE_METHODS)
def test_loss_is_a_finite_per_sample_vector_that_trains_the_network(name):
    method = build(name)
    net = build_network((2,), NetworkSection())
    batch = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    loss = method.loss(net, batch, torch.Generator().manual_seed(1))
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_config_rejects_reversed_ranges():
    with pytest.raises(ValueError):
        METHODS["vp_sde"].Config(beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError):
        METHODS["ve_sde"].Config(sigma_min=10.0, sigma_max=0.01)
