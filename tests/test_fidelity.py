"""Image metrics: the feature classifier, FID / KID through torch-fidelity, bits/dim and the discrete decoder."""

import math

import numpy as np
import pytest
import torch

from pipeline.schema import ClassifierSettings, ImageEvaluateSettings
from pipeline.data.images import dequantize, load_digits_pool, split_pool, to_model_space
from pipeline.features import classifier_record, load_classifier, train_classifier
from pipeline.fidelity import (CLASSIFIER_EXTRACTOR, INCEPTION_EXTRACTOR, Extractor, FidelityError, PixelImages,
                               fid_jackknife_se, fidelity_metrics, frechet_distance, psd_sqrt, replicates_by_covariance,
                               replicates_by_rows, resolve_extractor)
from pipeline.io import save_torch
from pipeline.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, ode_log_likelihood, pixel_grid

#: the accuracy the digits feature classifier must reach after a brief training (200 steps)
DIGITS_ACCURACY = 0.95


@pytest.fixture(scope="module")
def digits_splits():
    return split_pool(load_digits_pool(), None, 300, 300, np.random.default_rng(0))


@pytest.fixture(scope="module")
def digits_classifier(digits_splits, tmp_path_factory):
    torch.set_num_threads(1)
    (train, train_labels), (test, test_labels) = digits_splits["train"], digits_splits["test"]
    result = train_classifier(torch.from_numpy(to_model_space(train)), torch.from_numpy(train_labels),
                              torch.from_numpy(to_model_space(test)), torch.from_numpy(test_labels),
                              ClassifierSettings(steps=200), seed=0)
    path = tmp_path_factory.mktemp("features") / "digits.pt"
    save_torch(path, classifier_record(result, "sha", [1, 8, 8]))
    return result, Extractor(CLASSIFIER_EXTRACTOR, path, "digits classifier")


def test_feature_classifier_reaches_its_stated_accuracy_on_digits(digits_classifier):
    result, extractor = digits_classifier
    assert result.test_accuracy >= DIGITS_ACCURACY
    reloaded = load_classifier(extractor.weights_path)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(reloaded(x)[1], result.classifier(x)[1])


def _brighter(pixels: np.ndarray, shift: int) -> np.ndarray:
    return np.clip(pixels.astype(np.int64) + shift, 0, 255).astype(np.uint8)


def test_fid_and_kid_are_zero_for_a_set_against_itself_and_grow_with_a_shift(digits_classifier, digits_splits):
    _, extractor = digits_classifier
    test, reference = digits_splits["test"][0], digits_splits["reference"][0]

    def metrics(x):
        return fidelity_metrics(x, test, extractor, kid_subset_size=100, prc_neighborhood=3, seed=0)

    itself = metrics(test)
    assert abs(itself["fid"]) < 1e-6
    assert abs(itself["kid"]) < 2 * itself["kid_sd"]
    assert itself["precision"] == itself["recall"] == 1.0
    floor = metrics(reference)  # real vs real: held-out images the classifier never saw
    shifted = [metrics(_brighter(test, shift)) for shift in (20, 60, 120)]
    fids = [m["fid"] for m in shifted]
    kids = [m["kid"] for m in shifted]
    assert fids == sorted(fids) and fids[-1] > 5 * floor["fid"] > 0
    assert kids == sorted(kids) and kids[-1] > itself["kid"] + 3 * shifted[-1]["kid_sd"]


def test_fidelity_metrics_are_torch_fidelitys_calculate_metrics(digits_classifier, digits_splits):
    """Taken apart to keep the features for fid_se, the metrics must still be the library's, bit for bit."""
    import torch_fidelity

    _, extractor = digits_classifier
    generated, real = _brighter(digits_splits["reference"][0], 10)[:150], digits_splits["test"][0][:150]
    ours = fidelity_metrics(generated, real, extractor, kid_subset_size=50, prc_neighborhood=3, seed=7)
    library = torch_fidelity.calculate_metrics(
        input1=PixelImages(generated, False), input2=PixelImages(real, False), fid=True, kid=True, prc=True,
        feature_extractor=extractor.name, feature_extractor_weights_path=str(extractor.weights_path),
        kid_subset_size=50, prc_neighborhood=3, rng_seed=7, batch_size=250, cuda=False, save_cpu_ram=True,
        cache=False, verbose=False)
    assert ours["fid"] == library["frechet_inception_distance"]
    assert ours["kid"] == library["kernel_inception_distance_mean"]
    assert ours["kid_sd"] == library["kernel_inception_distance_std"]
    assert (ours["precision"], ours["recall"]) == (library["precision"], library["recall"])
    assert 0 < ours["fid_se"] < ours["fid"]


def _correlated_gaussian(rng, n, dim, shift):
    mixing = np.linspace(0.3, 1.5, dim)[:, None] * np.eye(dim) + 0.2
    return rng.normal(size=(n, dim)) @ mixing + shift


def test_frechet_distance_is_torch_fidelitys_formula_rearranged():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(0)
    # more samples than dimensions, and fewer: a singular covariance, where the library's eigenvalues of
    # sigma1 sigma2 (a non-symmetric product) carry rounding that the singular values here do not
    for dim, n, tolerance in ((16, 100, 1e-9), (150, 60, 1e-5)):
        x, y = _correlated_gaussian(rng, n, dim, 0.2), _correlated_gaussian(rng, n, dim, 0.0)
        stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (x, y)]
        library = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
        ours = frechet_distance(x, stats[1]["mu"], psd_sqrt(stats[1]["sigma"]))
        assert ours == pytest.approx(library, rel=tolerance)


def test_fid_jackknife_se_matches_the_spread_of_fid_over_independent_generated_sets():
    """Gaussian features of the classifier's width, the reference fixed: the sd of FID over 300 independent
    sets of n against the root mean square of the jackknife's estimate over 40 single sets, per block count:
    1.0-1.4x near the floor (a jackknife variance is conservative), within 5% far from it, over rng seeds 0-3.
    A variance for an sd, or (g - 1) / g turned into 1 / g, falls far outside the band."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    rng = np.random.default_rng(1)
    dim, n = 64, 200
    reference = fid_features_to_statistics(torch.from_numpy(_correlated_gaussian(rng, n, dim, 0.0)))
    root = psd_sqrt(reference["sigma"])
    ratios = {}
    for shift in (0.0, 0.3, 1.0):
        fids = [frechet_distance(_correlated_gaussian(rng, n, dim, shift), reference["mu"], root) for _ in range(300)]
        for groups in (200, 20):
            estimates = [fid_jackknife_se(_correlated_gaussian(rng, n, dim, shift), reference["mu"],
                                          reference["sigma"], groups) for _ in range(40)]
            ratios[shift, groups] = math.sqrt(np.mean(np.square(estimates))) / np.std(fids, ddof=1)
    assert all(0.9 < ratio < 1.5 for ratio in ratios.values()), ratios
    assert all(0.9 < ratios[1.0, groups] < 1.1 for groups in (200, 20)), ratios


def test_fid_jackknife_se_combines_its_replicates_as_the_jackknife_does():
    """With two blocks, se^2 = (2 - 1) / 2 * sum (FID_-b - mean)^2 = (FID_-1 - FID_-0)^2 / 4, exactly; with
    too few images for a replicate's covariance, or a non-finite feature, no estimate."""
    rng = np.random.default_rng(3)
    features, reference = _correlated_gaussian(rng, 50, 6, 0.4), _correlated_gaussian(rng, 50, 6, 0.0)
    mean, cov = reference.mean(0), np.cov(reference, rowvar=False)
    root = psd_sqrt(cov)
    without_first, without_second = frechet_distance(features[25:], mean, root), frechet_distance(features[:25], mean, root)
    assert fid_jackknife_se(features, mean, cov, 2) == pytest.approx(abs(without_second - without_first) / 2, rel=1e-10)
    assert math.isnan(fid_jackknife_se(features[:3], mean, cov, 2))  # a replicate of one image
    assert math.isnan(fid_jackknife_se(np.ones((1, 6)), mean, cov, 200))
    broken = features.copy()
    broken[7, 2] = np.nan
    assert math.isnan(fid_jackknife_se(broken, mean, cov, 200))


def test_the_two_ways_of_leaving_a_block_out_give_the_same_fids():
    """By the kept rows (fewer samples than features) and by the whole set's sums less the block's (more,
    as with 50,000 Inception features): the same replicates on the same features."""
    rng = np.random.default_rng(2)
    features, reference = _correlated_gaussian(rng, 120, 10, 0.5) + 3.0, _correlated_gaussian(rng, 120, 10, 0.0)
    mean, root = reference.mean(0), psd_sqrt(np.cov(reference, rowvar=False))
    blocks = np.array_split(np.arange(120), 7)
    by_rows = replicates_by_rows(features, mean, root, blocks)
    np.testing.assert_allclose(replicates_by_covariance(features, mean, root, blocks), by_rows, rtol=1e-9)
    assert by_rows[0] == pytest.approx(frechet_distance(features[blocks[1][0]:], mean, root), rel=1e-12)


def test_inception_needs_its_weights_file_and_never_falls_back(tmp_path):
    settings = ImageEvaluateSettings(extractor="inception", inception_weights="weights/inception.pth")
    with pytest.raises(FidelityError) as error:
        resolve_extractor(settings, tmp_path / "features.pt", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "inception_weights" in message and "nothing is downloaded" in message
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "inception.pth").write_bytes(b"")
    extractor = resolve_extractor(settings, tmp_path / "features.pt", tmp_path)
    assert extractor.name == INCEPTION_EXTRACTOR and extractor.weights_path == tmp_path / "weights" / "inception.pth"
    assert PixelImages(np.zeros((2, 1, 8, 8), np.uint8), rgb=extractor.needs_rgb)[0].shape == (3, 8, 8)
    with pytest.raises(FidelityError, match="prepare stage"):
        resolve_extractor(ImageEvaluateSettings(), tmp_path / "features.pt", tmp_path)


def _random_field(dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    linear = 0.6 * torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    return linear, mixing


def _standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def _dequantized_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, *shape), generator=generator)
    return dequantize(pixels.double() * 2 / 255 - 1, generator)


def test_hutchinson_bits_per_dim_agree_with_the_exact_divergence_within_their_standard_error():
    """A fixed random velocity field on 1 x 4 x 4 images: exact trace (16 backward passes) against one
    fixed Rademacher probe per image; the linear part alone is checked against its closed form
    log p_0(x) = log N(expm(A) x; 0, I) + tr(A)."""
    shape, dim, n = (1, 4, 4), 16, 200
    linear, mixing = _random_field(dim, seed=3)
    x = _dequantized_images(n, shape, seed=4)

    def linear_field(y, t):
        return (y.flatten(1) @ linear.T).view_as(y)

    def nonlinear_field(y, t):
        flat = y.flatten(1)
        return (flat @ linear.T + 0.5 * (1 + t[:, None]) * torch.tanh(flat @ mixing.T)).view_as(y)

    closed_form = _standard_normal_log_prob(x.flatten(1) @ torch.linalg.matrix_exp(linear).T) + torch.trace(linear)
    exact_linear = ode_log_likelihood(linear_field, x, _standard_normal_log_prob, 0.0, 1.0, "exact",
                                      rtol=1e-7, atol=1e-7).log_prob
    torch.testing.assert_close(exact_linear, closed_form, rtol=1e-5, atol=1e-5)

    for field in (linear_field, nonlinear_field):
        exact = ode_log_likelihood(field, x, _standard_normal_log_prob, 0.0, 1.0, "exact", rtol=1e-6, atol=1e-6)
        hutchinson = ode_log_likelihood(field, x, _standard_normal_log_prob, 0.0, 1.0, "hutchinson",
                                        generator=torch.Generator().manual_seed(5), rtol=1e-6, atol=1e-6)
        bpd_exact = bits_per_dim(-exact.log_prob, dim)
        bpd_hutchinson = bits_per_dim(-hutchinson.log_prob, dim)
        error = bpd_hutchinson - bpd_exact
        standard_error = error.std() / math.sqrt(n)
        assert standard_error > 1e-4  # the probes do vary the estimate
        assert abs(error.mean()) < 3 * standard_error
        reported = bpd_hutchinson.std() / math.sqrt(n)  # what evaluate reports as nll_bpd_se
        assert abs(bpd_hutchinson.mean() - bpd_exact.mean()) < 3 * reported


def test_bits_per_dim_of_uniform_pixels_is_eight():
    """Uniform density on [-1, 1]^d (log p = -d log 2) is exactly 8 bits per 8-bit pixel (methods.md 2.12C)."""
    d = 64
    assert float(bits_per_dim(torch.tensor(d * math.log(2.0)), d)) == pytest.approx(8.0)


def test_discretized_decoder_is_a_distribution_over_the_256_levels():
    levels = (torch.arange(256, dtype=torch.float64) * 2 / 255 - 1)[:, None]
    for mean, std in ((0.3, 0.05), (-0.99, 0.01), (1.2, 0.3), (0.0, 1e-4)):
        probabilities = discretized_gaussian_log_likelihood(levels, torch.full((256, 1), mean), std).exp()
        assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-9)
    # interior bins of width 2/255, much narrower than std: P(k) ~ density x width
    x = torch.tensor([[0.2], [-0.4]], dtype=torch.float64)
    x = pixel_grid(x)
    log_p = discretized_gaussian_log_likelihood(x, torch.zeros_like(x), 0.2)
    density = torch.distributions.Normal(0.0, 0.2).log_prob(x).sum(1) + math.log(2 / 255)
    torch.testing.assert_close(log_p, density, rtol=0, atol=1e-3)
    # dequantized inputs are scored as the pixel they came from
    dequantized = dequantize(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(discretized_gaussian_log_likelihood(dequantized, torch.zeros_like(x), 0.2), log_p)
