"""FID, KID and precision/recall through torch-fidelity (the only module that imports it).

Two feature extractors, chosen by params.yaml's evaluate.image.extractor and never swapped silently:
  `inception`   torch-fidelity's InceptionV3 (pool3, 2048 features; Heusel et al. 2017) from a local
                weights file (evaluate.image.inception_weights): nothing is downloaded;
  `classifier`  the data set's own feature classifier (pipeline.features), trained by the
                `features` stage and registered with torch-fidelity as a feature extractor.
Metric definitions are torch-fidelity's: FID (Heusel et al. 2017), KID (Binkowski et al. 2018,
polynomial kernel, mean and sd over random subsets), precision and recall (Kynkaanniemi et al. 2019,
k-nearest-neighbour manifolds).
"""

from __future__ import annotations

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
                     batch_size: int = 250) -> dict[str, float]:
    """fid, kid (mean) and kid_sd, precision and recall of uint8 images `generated` against `reference`."""
    import torch_fidelity

    if generated.dtype != np.uint8 or reference.dtype != np.uint8:
        raise FidelityError("fidelity metrics take uint8 pixels; convert with pipeline.data.images.to_uint8")
    if extractor.name == CLASSIFIER_EXTRACTOR:
        _register_classifier_extractor()
    n = min(len(generated), len(reference))
    try:
        result = torch_fidelity.calculate_metrics(
            input1=PixelImages(generated, extractor.needs_rgb), input2=PixelImages(reference, extractor.needs_rgb),
            fid=True, kid=True, prc=True, feature_extractor=extractor.name,
            feature_extractor_weights_path=str(extractor.weights_path), kid_subset_size=min(kid_subset_size, n),
            prc_neighborhood=min(prc_neighborhood, n - 1), rng_seed=seed % 2**32, batch_size=batch_size,
            cuda=torch.device(device).type == "cuda", save_cpu_ram=True, cache=False, verbose=False)
    except ValueError as error:
        raise FidelityError(f"torch-fidelity: {error}") from None
    return {"fid": result["frechet_inception_distance"], "kid": result["kernel_inception_distance_mean"],
            "kid_sd": result["kernel_inception_distance_std"], "precision": result["precision"],
            "recall": result["recall"]}
