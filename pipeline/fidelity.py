"""FID, KID and precision/recall through torch-fidelity (the only module that imports it).

Two feature extractors, chosen by params.yaml's evaluate.image.extractor and never swapped silently:
  `inception`   torch-fidelity's InceptionV3 (pool3, 2048 features; Heusel et al. 2017) from a local
                weights file (evaluate.image.inception_weights): nothing is downloaded;
  `classifier`  the data set's own feature classifier (pipeline.features), trained by the
                `features` stage and registered with torch-fidelity as a feature extractor.
Metric definitions are torch-fidelity's: FID (Heusel et al. 2017), KID (Binkowski et al. 2018,
polynomial kernel, mean and sd over random subsets), precision and recall (Kynkaanniemi et al. 2019,
k-nearest-neighbour manifolds). FID's own sampling error is a delete-a-group jackknife over the generated
images (fid_jackknife_se); torch-fidelity has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.images import to_model_space

CLASSIFIER_EXTRACTOR = "pipeline-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"


class FidelityError(Exception):
    """A missing feature extractor or unusable input; the message says what to do."""


@dataclass(frozen=True)
class Extractor:
    """A torch-fidelity feature extractor and the weights file it loads."""

    name: str
    weights_path: Path
    label: str  # how the report names it

    @property
    def needs_rgb(self) -> bool:
        return self.name == INCEPTION_EXTRACTOR


def resolve_extractor(settings, classifier_path: Path, root: Path = Path(".")) -> Extractor:
    """The extractor evaluate.image asks for; a one-line FidelityError when its weights are missing."""
    if settings.extractor == "inception":
        path = Path(settings.inception_weights).expanduser()
        path = path if path.is_absolute() else Path(root) / path
        if not path.is_file():
            raise FidelityError(f"evaluate.image.inception_weights: {path} not found; place torch-fidelity's "
                                f"weights-inception-2015-12-05-6726825d.pth there (nothing is downloaded) or set "
                                f"evaluate.image.extractor: classifier")
        return Extractor(INCEPTION_EXTRACTOR, path, "InceptionV3 (torch-fidelity, pool3)")
    if not Path(classifier_path).is_file():
        raise FidelityError(f"{classifier_path} is missing; the prepare stage writes it (`dvc repro prepare`)")
    return Extractor(CLASSIFIER_EXTRACTOR, Path(classifier_path), "feature classifier")


def _register_classifier_extractor() -> None:
    """Register pipeline.features' classifier with torch-fidelity (once per process)."""
    from torch_fidelity import FeatureExtractorBase, register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if CLASSIFIER_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return

    class ClassifierExtractor(FeatureExtractorBase):
        """uint8 [B, C, H, W] -> the classifier's (features, logits)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from pipeline.features import load_classifier

            self.classifier = load_classifier(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            features, logits = self.classifier(to_model_space(x))
            provided = {"features": features.double(), "logits": logits.double()}
            return tuple(provided[name] for name in self.features_list)

    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierExtractor)


class PixelImages(torch.utils.data.Dataset):
    """uint8 images [N, C, H, W] as torch-fidelity reads them (grey repeated to RGB when asked)."""

    def __init__(self, pixels: np.ndarray, rgb: bool):
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        self.rgb = rgb and self.pixels.shape[1] == 1

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.pixels[i]
        return image.expand(3, -1, -1).contiguous() if self.rgb else image


def fidelity_metrics(generated: np.ndarray, reference: np.ndarray, extractor: Extractor, kid_subset_size: int,
                     prc_neighborhood: int, seed: int, device: torch.device | str = "cpu",
                     batch_size: int = 250, jackknife_groups: int = 200) -> dict[str, float]:
    """fid and its jackknife standard error fid_se, kid (mean) and kid_sd, precision and recall of uint8
    images `generated` against `reference`: torch-fidelity's calculate_metrics taken apart (the same
    functions, in its order, on the same arguments) so the generated images' features are at hand for fid_se."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric
    from torch_fidelity.utils import (create_feature_extractor, extract_featuresdict_from_input_id,
                                      resolve_feature_layer_for_metric)

    if generated.dtype != np.uint8 or reference.dtype != np.uint8:
        raise FidelityError("fidelity metrics take uint8 pixels; convert with pipeline.data.images.to_uint8")
    if extractor.name == CLASSIFIER_EXTRACTOR:
        _register_classifier_extractor()
    n = min(len(generated), len(reference))
    kwargs = dict(input1=PixelImages(generated, extractor.needs_rgb),
                  input2=PixelImages(reference, extractor.needs_rgb),
                  fid=True, kid=True, prc=True, feature_extractor=extractor.name,
                  feature_extractor_weights_path=str(extractor.weights_path), kid_subset_size=min(kid_subset_size, n),
                  prc_neighborhood=min(prc_neighborhood, n - 1), rng_seed=seed % 2**32, batch_size=batch_size,
                  cuda=torch.device(device).type == "cuda", save_cpu_ram=True, cache=False, verbose=False)
    try:
        layers = {metric: resolve_feature_layer_for_metric(metric, **kwargs) for metric in ("fid", "kid", "prc")}
        feature_extractor = create_feature_extractor(extractor.name, list(dict.fromkeys(layers.values())), **kwargs)
        features = [extract_featuresdict_from_input_id(i, feature_extractor, **kwargs) for i in (1, 2)]
        statistics = [fid_featuresdict_to_statistics(f, layers["fid"]) for f in features]
        result = fid_statistics_to_metric(*statistics, verbose=False)
        result |= kid_featuresdict_to_metric(*features, layers["kid"], **kwargs)
        result |= prc_featuresdict_to_metric(*features, layers["prc"], **kwargs)
    except ValueError as error:
        raise FidelityError(f"torch-fidelity: {error}") from None
    fid_se = fid_jackknife_se(features[0][layers["fid"]].numpy(), statistics[1]["mu"], statistics[1]["sigma"],
                              jackknife_groups)
    return {"fid": result["frechet_inception_distance"], "fid_se": fid_se,
            "kid": result["kernel_inception_distance_mean"], "kid_sd": result["kernel_inception_distance_std"],
            "precision": result["precision"], "recall": result["recall"]}


def frechet_distance(features: np.ndarray, reference_mean: np.ndarray, reference_sqrt_cov: np.ndarray,
                     projected: np.ndarray | None = None) -> float:
    """FID (Heusel et al. 2017) of features X [k, d] against N(mu2, S2), given S2^(1/2):
    ||m1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S2^(1/2) S1 S2^(1/2))^(1/2), torch-fidelity's formula rearranged:
    with Y = (X - m1) S2^(1/2) / sqrt(k - 1) the last trace is the sum of Y's singular values, so no d x d
    square root is taken per call. `projected`: X S2^(1/2) when the caller has it (centring commutes with it)."""
    features = np.asarray(features, np.float64)
    projected = features @ reference_sqrt_cov if projected is None else projected
    centred = features - features.mean(0)
    scale = 1.0 / (len(features) - 1)
    nuclear = np.linalg.svd(projected - projected.mean(0), compute_uv=False).sum() * math.sqrt(scale)
    return _frechet_terms(features.mean(0), scale * np.sum(centred * centred), nuclear, reference_mean,
                          reference_sqrt_cov)


def _frechet_terms(mean: np.ndarray, trace_cov: float, nuclear: float, reference_mean: np.ndarray,
                   reference_sqrt_cov: np.ndarray) -> float:
    """FID from its terms: ||m1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S2^(1/2) S1 S2^(1/2))^(1/2), given
    m1, tr S1 and the last trace (the one place both ways of computing a replicate assemble it)."""
    difference = mean - reference_mean
    return float(difference @ difference + trace_cov + np.sum(reference_sqrt_cov * reference_sqrt_cov) - 2 * nuclear)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (eigenvalues below zero, rounding, set to 0)."""
    values, vectors = np.linalg.eigh(np.asarray(matrix, np.float64))
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def fid_jackknife_se(features: np.ndarray, reference_mean: np.ndarray, reference_cov: np.ndarray,
                     groups: int) -> float:
    """Delete-a-group jackknife standard error of FID over the generated features [n, d], the reference
    statistics held fixed (they are common to every row a FID is compared with): the n features in `groups`
    contiguous blocks (n at most), FID without each block, se^2 = (g - 1) / g * sum (FID_-b - mean)^2
    (Efron & Stein 1981; Shao & Tu 1995, ch. 2). One estimate is itself noisy (about +-25% at n = 200);
    on Gaussian features its root mean square over many sets is 0.95-1.4x the spread of FID over
    independent generated sets: conservative near the floor, as a jackknife variance is in expectation
    (Efron & Stein 1981), within 5% far from it (tests/test_fidelity.py)."""
    features = np.asarray(features, np.float64)
    n, dim = features.shape
    groups = min(groups, n)
    if groups < 2 or not np.isfinite(features).all():
        return math.nan
    blocks = np.array_split(np.arange(n), groups)
    if n - len(blocks[0]) < 2:  # a replicate needs two images for its covariance
        return math.nan
    leave_out = replicates_by_rows if n - len(blocks[0]) <= dim else replicates_by_covariance
    replicates = leave_out(features, reference_mean, psd_sqrt(reference_cov), blocks)
    return float(math.sqrt((groups - 1) / groups * np.sum((replicates - replicates.mean()) ** 2)))


def replicates_by_rows(features: np.ndarray, reference_mean: np.ndarray, reference_sqrt_cov: np.ndarray,
                       blocks: list[np.ndarray]) -> np.ndarray:
    """FID without each block, from the kept rows (no more rows than features: k x d singular values)."""
    projected = features @ reference_sqrt_cov
    return np.array([frechet_distance(np.delete(features, block, axis=0), reference_mean, reference_sqrt_cov,
                                      np.delete(projected, block, axis=0)) for block in blocks])


def replicates_by_covariance(features: np.ndarray, reference_mean: np.ndarray, reference_sqrt_cov: np.ndarray,
                             blocks: list[np.ndarray]) -> np.ndarray:
    """FID without each block, from the whole set's sums less the block's (more rows than features, e.g.
    50,000 Inception features: a d x d eigenproblem per block, no copy of the kept rows). The same terms as
    frechet_distance: tr (S2^(1/2) S1 S2^(1/2))^(1/2) = sum of the square roots of its eigenvalues."""
    centre = features.mean(0)  # centred first, so the sums below do not cancel
    x = features - centre
    z = x @ reference_sqrt_cov
    x_sum, z_sum, x_squares, z_gram = x.sum(0), z.sum(0), np.sum(x * x), z.T @ z
    replicates = []
    for block in blocks:
        kept = len(x) - len(block)
        x_mean, z_mean = (x_sum - x[block].sum(0)) / kept, (z_sum - z[block].sum(0)) / kept
        trace_cov = (x_squares - np.sum(x[block] ** 2) - kept * x_mean @ x_mean) / (kept - 1)
        product = (z_gram - z[block].T @ z[block] - kept * np.outer(z_mean, z_mean)) / (kept - 1)
        nuclear = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0, None)).sum()
        replicates.append(_frechet_terms(centre + x_mean, trace_cov, nuclear, reference_mean, reference_sqrt_cov))
    return np.array(replicates)
