"""The oracle's laws beyond one Gaussian mixture: uniform boxes, diagonal mixtures, and every 2-D benchmark's
exact law (pipeline.data.toy.exact_law), which feeds samplers the exact score and gives each set its NLL floor."""

import json
import math

import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.data import TOY_DATASETS, exact_law, prepare_toy
from pipeline.data.toy import _moons_law, _swiss_roll_law, swiss_roll, two_moons
from pipeline.methods.sde import VESDEConfig
from pipeline.methods.ve_sde import VESDE
from pipeline.metrics import w2_exact
from pipeline.oracle import GaussianMixture, UniformBoxes


def test_diagonal_mixture_marginals_equal_the_general_solve():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(5, 2, generator=generator)
    variances = torch.rand(5, 2, generator=generator) + 0.05
    diagonal = GaussianMixture(torch.rand(5, generator=generator), means, torch.diag_embed(variances))
    general = GaussianMixture(diagonal.weights, means, torch.diag_embed(variances))
    general.variances = None
    x = torch.randn(64, 2, generator=generator).double()
    alpha, sigma = torch.rand(64, generator=generator).double(), torch.rand(64, generator=generator).double()
    assert diagonal.variances is not None
    for fast, slow in zip(diagonal._posterior(x, alpha, sigma), general._posterior(x, alpha, sigma)):
        torch.testing.assert_close(fast, slow)


def test_box_marginal_score_and_posterior_mean_match_quadrature():
    """p_t(x) = E_y N(x; alpha y, sigma^2 I), y uniform on the boxes, by a fine midpoint grid over the boxes."""
    boxes = UniformBoxes(torch.tensor([1.0, 2.0]), torch.tensor([[-1.0, -1.0], [0.5, 0.0]]),
                         torch.tensor([[0.0, 1.0], [1.5, 0.5]]))
    grid = 400
    cells = []
    for k in range(2):
        u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        lower, upper = boxes.lower[k], boxes.upper[k]
        ys = torch.cartesian_prod(lower[0] + u * (upper[0] - lower[0]), lower[1] + u * (upper[1] - lower[1]))
        cells.append((ys, torch.full((len(ys),), float(boxes.weights[k]) / len(ys), dtype=torch.float64)))
    ys = torch.cat([c[0] for c in cells])
    mass = torch.cat([c[1] for c in cells])
    x = torch.tensor([[0.3, 0.2], [-2.0, 1.5], [1.0, 0.25], [3.0, -2.0]], dtype=torch.float64)
    alpha, sigma = torch.full((4,), 0.8, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    kernel = torch.exp(-((x[:, None] - 0.8 * ys[None]) ** 2).sum(-1) / (2 * 0.09)) / (2 * math.pi * 0.09)
    density = (kernel * mass).sum(1)
    log_prob, score, x0 = boxes._posterior(x, alpha, sigma)
    torch.testing.assert_close(log_prob, density.log(), rtol=1e-4, atol=1e-4)
    posterior_mean = (kernel * mass)[..., None].mul(ys[None]).sum(1) / density[:, None]
    torch.testing.assert_close(x0, posterior_mean, rtol=1e-3, atol=1e-3)
    step = 1e-5
    for i in range(2):
        shift = torch.zeros_like(x)
        shift[:, i] = step
        numeric = (boxes._posterior(x + shift, alpha, sigma)[0] - boxes._posterior(x - shift, alpha, sigma)[0]) / (2 * step)
        torch.testing.assert_close(score[:, i], numeric, rtol=1e-5, atol=1e-6)


def test_box_marginal_is_finite_far_outside_at_small_noise():
    boxes = UniformBoxes(torch.ones(1), torch.zeros(1, 2), torch.ones(1, 2))
    x = torch.tensor([[5.0, 0.5], [-3.0, -4.0], [0.5, 0.5]], dtype=torch.float64)
    small = torch.full((3,), 0.01, dtype=torch.float64)
    log_prob, score, _ = boxes._posterior(x, torch.ones(3, dtype=torch.float64), small)
    assert torch.isfinite(log_prob).all() and torch.isfinite(score).all()
    assert float(score[0, 0]) < 0 and float(score[1, 0]) > 0 and float(score[1, 1]) > 0  # back towards the box


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_every_benchmark_law_is_its_generator_s_law(name):
    """The law integrates to one, and the generator's samples score as high under it as the law's own (the
    cross-entropy equals the entropy only for the same law, up to what log p cannot see)."""
    arrays = prepare_toy(name, n_train=10000, n_test=10000, n_reference=1, seed=0)
    meta = json.loads(str(arrays["meta"]))
    law = exact_law(name, meta["mean"], meta["std"])
    cells = torch.linspace(-4, 4, 161, dtype=torch.float64)  # smooth laws integrate to 1 within 3e-6 on it
    grid = torch.cartesian_prod(cells, cells)
    area = float(cells[1] - cells[0]) ** 2
    total = sum(float(law.log_prob(chunk).exp().sum()) for chunk in grid.split(2048)) * area
    assert abs(total - 1) < 1e-2  # the boxes' edges fall between grid points: an O(spacing) error
    own = law.log_prob(law.sample(10000, torch.Generator().manual_seed(1)))
    theirs = law.log_prob(torch.from_numpy(arrays["test"]).double())
    standard_error = math.sqrt(own.var() / len(own) + theirs.var() / len(theirs))
    assert abs(float(own.mean() - theirs.mean())) < 4 * standard_error + 1e-9


@pytest.mark.parametrize("name, law, generate", [("moons", _moons_law, two_moons), ("swiss_roll", _swiss_roll_law, swiss_roll)])
def test_curve_quadrature_is_exact_to_float_precision(name, law, generate):
    """The curves' Gauss-Legendre rule against one four times finer, on the data and around it (ends included)."""
    x = torch.from_numpy(generate(2000, np.random.default_rng(3))).double()
    torch.testing.assert_close(law().log_prob(x), law(refine=4.0).log_prob(x), rtol=0, atol=1e-9)


def test_sampler_fed_the_exact_checkerboard_score_reproduces_it():
    arrays = prepare_toy("checkerboard", n_train=10, n_test=1000, n_reference=1000, seed=0)
    meta = json.loads(str(arrays["meta"]))
    method = VESDE(VESDEConfig(sigma_max=10.0), (2,))
    net = exact_law("checkerboard", meta["mean"], meta["std"]).network(method.path, method.prediction)
    samples = method.sample(net, "euler_maruyama", 300, 1000, torch.Generator().manual_seed(0)).x
    floor = w2_exact(arrays["reference"], arrays["test"])
    assert w2_exact(samples.float().numpy(), arrays["test"]) < 1.5 * floor


def test_baseline_records_the_true_nll_of_every_two_d_set(tmp_path):
    from pipeline import data as datasets
    from pipeline.layout import baseline_file, data_file
    from pipeline.prepare import run_baseline

    params = Params.model_validate({"datasets": ["moons"], "methods": {"flow_matching": {}},
                                    "data": {"n_train": 2000, "n_test": 1000, "n_reference": 1000},
                                    "evaluate": {"w2_points": 500, "floor_repeats": 2, "nll_points": 400}})
    datasets.prepare("moons", data_file(tmp_path, "moons"), params.data, params.data.seed)
    table = json.loads(run_baseline(tmp_path, params, "moons").read_text())
    data = datasets.load(data_file(tmp_path, "moons"))
    expected = -exact_law("moons", data.meta["mean"], data.meta["std"]).log_prob(
        torch.from_numpy(data.test[:400]).double())
    assert abs(table["data"]["0"]["nll"] - float(expected.mean())) < 1e-9
    assert table["data"]["0"]["nll_n"] == 400 and baseline_file(tmp_path, "moons").exists()


def _standardized(name):
    arrays = prepare_toy(name, n_train=20000, n_test=1000, n_reference=1000, seed=0)
    meta = json.loads(str(arrays["meta"]))
    return arrays, exact_law(name, meta["mean"], meta["std"])


def test_a_ring_is_not_eight_gaussians():
    """The report's mode score tells the ring a blurred model draws from the eight modes; W2 hardly does."""
    from pipeline.metrics import prdc_scores, structure_scores

    arrays, law = _standardized("eight_gaussians")
    assert structure_scores(law, arrays["reference"]) == {"modes": 8.0}
    angle = np.random.default_rng(0).uniform(0, 2 * math.pi, 1000)
    radius = np.linalg.norm(arrays["reference"], axis=1).mean()
    ring = radius * np.stack([np.cos(angle), np.sin(angle)], 1)
    assert structure_scores(law, ring) == {"modes": 0.0}
    three = arrays["reference"][np.isin(np.round(np.arctan2(*arrays["reference"].T[::-1]) / (math.pi / 4)) % 8,
                                        [0, 1, 2])]
    assert structure_scores(law, three) == {"modes": 3.0}
    real, fake = prdc_scores(arrays["test"], arrays["reference"], 5), prdc_scores(arrays["test"], ring, 5)
    assert real["coverage"] > 0.9 and fake["coverage"] < 0.6 and fake["precision"] < real["precision"]


def test_checkerboard_support_share():
    from pipeline.metrics import structure_scores

    arrays, law = _standardized("checkerboard")
    assert structure_scores(law, arrays["reference"]) == {"on_support": 1.0}
    blur = np.random.default_rng(0).uniform(-1.7, 1.7, (4000, 2))
    assert abs(structure_scores(law, blur)["on_support"] - 0.5) < 0.05
    _, moons = _standardized("moons")
    assert structure_scores(moons, arrays["reference"]) == {}  # no structure score for a curve
