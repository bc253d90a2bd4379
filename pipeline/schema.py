"""The section types of params.yaml: pydantic models every module may import (a leaf: it imports no
other module of the pipeline, so methods declare their parameters here without importing the registry).

pipeline.config assembles them into the whole file's schema (Params) and validates each method's
section with the Config class its module declares.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

class Strict(BaseModel):
    """No unknown keys, no silent coercion (true is not 1, "3" is not 3), no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

#: rtol = atol of the RK45 sampler (pipeline.samplers), stated beside its numbers (pipeline.protocol)
RK45_TOLERANCE = 1e-5


class TrainSettings(Strict):
    """One training run (Adam, linear warm-up then cosine decay, EMA of the weights, gradient clipping)."""

    steps: PositiveInt = 4000
    batch_size: PositiveInt = 512
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 50
    #: steps at which the EMA weights are kept beside the final ones, for the convergence study: under a
    #: constant learning rate the weights at step s of this run are those of an s-step run
    snapshots: list[PositiveInt] = []

    @model_validator(mode="after")
    def _snapshots_are_shorter_runs(self):
        check_snapshots(self)
        return self


def check_snapshots(settings: "TrainSettings") -> None:
    """Snapshots stand for shorter runs only when the learning rate does not depend on the run's length."""
    if settings.snapshots and settings.lr_schedule != "constant":
        raise ValueError("train snapshots need lr_schedule: constant (under cosine decay the weights at step s "
                         "are not those of an s-step run)")
    if any(step > settings.steps for step in settings.snapshots):
        raise ValueError(f"train snapshots must be at most train steps ({settings.steps})")


class KindTrainOverrides(Strict):
    """Overrides of one kind's `train` settings (`train.toy` or `train.image`); unset keys keep the shared value."""

    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    lr_schedule: Literal["cosine", "constant"] | None = None
    ema_decay: float | None = Field(None, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: PositiveInt | None = None
    log_every: PositiveInt | None = None
    snapshots: list[PositiveInt] | None = None


class TrainOverrides(KindTrainOverrides):
    """Per-method overrides of the `train` section, for both kinds of data or, under `toy:` / `image:`, one."""

    toy: KindTrainOverrides = KindTrainOverrides()
    image: KindTrainOverrides = KindTrainOverrides()

    def for_kind(self, kind: str) -> dict:
        """The overridden keys for data of this kind; a kind's own value wins over the shared one."""
        shared = self.model_dump(exclude_none=True, exclude={"toy", "image"})
        return shared | getattr(self, kind).model_dump(exclude_none=True)


class TrainSection(Strict):
    toy: TrainSettings = TrainSettings()
    image: TrainSettings = TrainSettings(steps=2000, batch_size=128, lr=2e-4)


class MLPSettings(Strict):
    hidden: PositiveInt = 256
    depth: PositiveInt = 3
    time_embedding: PositiveInt = 64
    #: data standard deviation the affine methods' preconditioning assumes (pipeline.parameterization);
    #: the 2-D sets are standardized to 1
    sigma_data: float = Field(1.0, gt=0)


class UNetSettings(Strict):
    """The image U-Net (pipeline.nets.unet; Ho et al. 2020, app. B). DDPM's CIFAR-10 net is channels 128,
    channel_mult [1, 2, 2, 2], num_res_blocks 2, attention_resolutions [16], dropout 0.1."""

    channels: PositiveInt = 32
    channel_mult: list[PositiveInt] = Field(default_factory=lambda: [1, 2], min_length=1)
    num_res_blocks: PositiveInt = 1
    #: side lengths (in pixels) of the feature maps that get a self-attention block
    attention_resolutions: list[PositiveInt] = Field(default_factory=list)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: GroupNorm groups (the largest divisor of each width up to this number)
    norm_groups: PositiveInt = 8
    #: data standard deviation the affine methods' preconditioning assumes: EDM's 0.5 for images in [-1, 1]
    sigma_data: float = Field(0.5, gt=0)


class NetworkSection(Strict):
    mlp: MLPSettings = MLPSettings()
    unet: UNetSettings = UNetSettings()


class ImageSourceSettings(Strict):
    """Where one image data set comes from and how it is sized (data.images.<name>)."""

    #: torchvision's root folder for mnist / fashion_mnist / cifar10 (relative to the repository root)
    root: str = "data/raw"
    #: let torchvision download a missing set (needs network access)
    download: bool = False
    #: image_folder only: a folder of class sub-folders of images
    folder: str | None = None
    #: image_folder only: 1 (grey) or 3 (RGB)
    channels: Literal[1, 3] = 3
    #: resize to size x size pixels (bilinear, antialiased); null keeps the source's size
    size: PositiveInt | None = None
    #: black pixels added on every side after resizing
    pad: int = Field(0, ge=0)
    #: cap on the training images (null: all that are not held out)
    n_train: PositiveInt | None = None
    #: held-out test and reference images (disjoint; reference vs test is the real-vs-real floor)
    n_test: PositiveInt = 500
    n_reference: PositiveInt = 500


class DataSection(Strict):
    seed: int = Field(0, ge=0)
    n_train: PositiveInt = 20000
    n_test: PositiveInt = 2000
    n_reference: PositiveInt = 6000
    images: dict[str, ImageSourceSettings] = Field(default_factory=dict)

    def image_settings(self, name: str) -> ImageSourceSettings:
        return self.images.get(name, ImageSourceSettings())


class ImageSampleSettings(Strict):
    n_samples: PositiveInt = 500
    batch_size: PositiveInt = 500
    #: step budgets above this are not sampled on images (null: every budget of the method)
    max_budget: PositiveInt | None = None


class SampleSection(Strict):
    n_samples: PositiveInt = 2000
    batch_size: PositiveInt = 10000
    #: sample counts for image data sets
    image: ImageSampleSettings = ImageSampleSettings()


class ClassifierSettings(Strict):
    """The feature classifier trained per image data set by the `features` stage (pipeline.features)."""

    steps: PositiveInt = 1500
    batch_size: PositiveInt = 128
    lr: float = Field(2e-3, gt=0)
    width: PositiveInt = 32
    #: size of the feature layer FID, KID and precision/recall are computed on
    features: PositiveInt = 64


class ImageEvaluateSettings(Strict):
    """Image metrics: FID / KID / precision-recall (torch-fidelity), sliced W2 (POT), bits/dim."""

    #: `classifier`: the data set's own feature classifier; `inception`: torch-fidelity's InceptionV3
    extractor: Literal["classifier", "inception"] = "classifier"
    #: InceptionV3 weights file (weights-inception-2015-12-05-6726825d.pth); required for `inception`
    inception_weights: str | None = None
    #: images per FID / KID / precision-recall / sliced W2 (generated, real and reference alike)
    fid_samples: PositiveInt = 500
    #: the real images every sample set is compared with: the held-out `test` split (its floor: the
    #: disjoint `reference` split against it), or `train` (the papers' CIFAR-10 convention)
    fid_against: Literal["test", "train"] = "test"
    #: blocks of the delete-a-group jackknife of FID's standard error (fid_se), capped at the images scored
    fid_jackknife_groups: int = Field(200, ge=2)
    kid_subset_size: PositiveInt = 100
    prc_neighborhood: PositiveInt = 3
    sliced_w2_projections: PositiveInt = 512
    #: dequantized test images for bits/dim
    nll_points: PositiveInt = 100
    batch_size: PositiveInt = 250
    classifier: ClassifierSettings = ClassifierSettings()

    @model_validator(mode="after")
    def _inception_needs_weights(self) -> "ImageEvaluateSettings":
        if self.extractor == "inception" and not self.inception_weights:
            raise ValueError("inception_weights: required when extractor is inception (torch-fidelity's "
                             "weights-inception-2015-12-05-6726825d.pth; nothing is downloaded)")
        if self.kid_subset_size > self.fid_samples:
            raise ValueError(f"kid_subset_size ({self.kid_subset_size}) must not exceed fid_samples "
                             f"({self.fid_samples})")
        return self


class EvaluateSection(Strict):
    w2_points: PositiveInt = 2000
    floor_repeats: PositiveInt = 3
    nll_points: PositiveInt = 1000
    #: k of the 2-D precision / recall / density / coverage (Naeem et al. 2020 use 5)
    prdc_k: PositiveInt = 5
    ode_rtol: float = Field(1e-5, gt=0, lt=1)
    ode_atol: float = Field(1e-5, gt=0, lt=1)
    #: the budget every sampler runs at on each training snapshot (train.snapshots)
    convergence_budget: PositiveInt = 100
    image: ImageEvaluateSettings = ImageEvaluateSettings()


class ClaimSide(Strict):
    """One side of a claim: a method's rows of results.csv, narrowed to a sampler and an NFE where given (a
    path metric such as straightness has one row per seed and needs neither)."""

    method: str = Field(min_length=1)
    sampler: str | None = Field(None, min_length=1)
    nfe: PositiveInt | None = None


class Claim(Strict):
    """A paper's qualitative claim, tested on the run (pipeline.report.claims): `better` scores better than
    `worse` on `metric` by a one-sided paired t-test over training seeds, Holm-corrected over a data set's
    claims. metric "quality" is the data set's ranked metric (W2 on 2-D sets, FID on images)."""

    paper: str = Field(min_length=1)
    claim: str = Field(min_length=1)
    metric: str = Field("quality", min_length=1)
    better: ClaimSide
    worse: ClaimSide


class ReportSection(Strict):
    headline_nfe: PositiveInt = 100
    #: the summary's ranking: each method at its best sampler within each of these NFE budgets (null: any)
    rank_budgets: list[PositiveInt | None] = Field(default_factory=lambda: [10, 100, None], min_length=1)
    #: the papers' claims the summary tests on this run's seeds (none: no such section)
    claims: list[Claim] = []


class MlflowSection(Strict):
    experiment: str = Field("benchmark", min_length=1)


class MethodConfig(Strict):
    """Keys every method section accepts; a method's Config subclass adds its own."""

    samplers: list[str] | None = Field(None, min_length=1)
    budgets: list[PositiveInt] = Field(default_factory=lambda: [1000, 100, 20, 10], min_length=1)
    train: TrainOverrides = TrainOverrides()

    @field_validator("samplers", "budgets")
    @classmethod
    def _distinct(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError("entries must not repeat")
        return values

    @model_validator(mode="after")
    def _conventional_ranges(self) -> "MethodConfig":
        """Checks every method's keys share by name: <x>_min below <x>_max, DDIM's eta in [0, 1]
        (Song, Meng, Ermon 2021, eq. 16: eta = 0 is DDIM, eta = 1 is DDPM's ancestral variance)."""
        fields = dict(self)
        for name, value in fields.items():
            partner = name[: -len("_min")] + "_max" if name.endswith("_min") else None
            if partner in fields and _is_number(value) and _is_number(fields[partner]) \
                    and value >= fields[partner]:
                raise ValueError(f"{name} ({value}) must be below {partner} ({fields[partner]})")
            if name in ("eta", "etas") or name.endswith(("_eta", "_etas")):
                for eta in value if isinstance(value, (list, tuple)) else [value]:
                    if _is_number(eta) and not 0 <= eta <= 1:
                        raise ValueError(f"{name} must lie in [0, 1], got {eta}")
        return self



class AffineConfig(MethodConfig):
    """Keys of a method on an affine Gaussian path: the DDIM variants it is sampled with (pipeline.samplers)."""

    #: DDIM's eta (0: deterministic; 1: DDPM with the posterior variance); one sampler per eta x skipping
    ddim_etas: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: [0.0, 1.0], min_length=1)
    #: uniform or quadratic steps (pipeline.grids; DDPM's chain takes the DDIM paper's sub-sequences)
    ddim_skips: list[Literal["uniform", "quadratic"]] = Field(default_factory=lambda: ["uniform", "quadratic"],
                                                            min_length=1)

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
