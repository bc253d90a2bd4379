"""The params.yaml schema: one pydantic model per section, validated as a whole before any work.

Each method's own section is validated by the `Config` class its module declares
(pipeline.methods.METHODS), so a new method brings its parameters with it.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator


class ParamsError(Exception):
    """A user mistake in params.yaml: one line naming the key path and what is accepted."""


class Strict(BaseModel):
    """No unknown keys, no silent coercion (true is not 1, "3" is not 3), no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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

    @field_validator("images")
    @classmethod
    def _known_images(cls, images: dict) -> dict:
        from pipeline.data.images import IMAGE_DATASETS

        for name in images:
            if name not in IMAGE_DATASETS:
                raise ValueError(f"unknown image data set {name!r}; accepted: {', '.join(IMAGE_DATASETS)}")
        return images

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


class ReportSection(Strict):
    headline_nfe: PositiveInt = 100


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Params(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    datasets: list[str] = Field(min_length=1)
    methods: dict[str, Any] = Field(min_length=1)
    #: methods a later stage makes from another method's model (pipeline.methods.DERIVED_METHODS), with
    #: their settings; e.g. rectified_flow_2, the reflow of rectified_flow. Empty: no such stages.
    reflow: dict[str, Any] = Field(default_factory=dict)
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    network: NetworkSection = NetworkSection()
    sample: SampleSection = SampleSection()
    evaluate: EvaluateSection = EvaluateSection()
    report: ReportSection = ReportSection()
    mlflow: MlflowSection = MlflowSection()

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, names: list[str]) -> list[str]:
        from pipeline.data import DATASETS

        for name in names:
            if name not in DATASETS:
                raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(sorted(DATASETS))}")
        if len(set(names)) != len(names):
            raise ValueError("data sets must not repeat")
        return names

    @model_validator(mode="after")
    def _image_sample_counts(self) -> "Params":
        from pipeline.data import DATASETS

        fid, n = self.evaluate.image.fid_samples, self.sample.image.n_samples
        if any(DATASETS[name] == "image" for name in self.datasets) and fid > n:
            raise ValueError(f"evaluate.image.fid_samples ({fid}) must not exceed sample.image.n_samples ({n})")
        return self

    @model_validator(mode="after")
    def _image_folder_source(self) -> "Params":
        if "image_folder" in self.datasets:
            settings = self.data.image_settings("image_folder")
            if settings.folder is None or settings.size is None:
                missing = "folder" if settings.folder is None else "size"
                raise ValueError(f"data.images.image_folder.{missing}: required when image_folder is in datasets")
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError("seeds must be distinct non-negative integers")
        return seeds

    @model_validator(mode="after")
    def _validate_methods(self) -> "Params":
        from pipeline.methods import METHODS

        validated = {}
        for name, section in self.methods.items():
            if name not in METHODS:
                raise ValueError(f"methods.{_key(name)}: unknown method; accepted: {', '.join(sorted(METHODS))}")
            method_cls = METHODS[name]
            try:
                config = method_cls.Config.model_validate({} if section is None else section)
            except ValidationError as error:
                raise ValueError(_first_error(error, prefix=f"methods.{name}", model=method_cls.Config)) from None
            try:
                method_cls.selected_samplers(config)
            except ValueError as error:
                raise ValueError(f"methods.{name}.samplers: {error}") from None
            validated[name] = config
        object.__setattr__(self, "methods", validated)
        for name in validated:
            for kind in ("toy", "image"):
                try:
                    check_snapshots(self.train_settings(name, kind))
                except ValueError as error:
                    raise ValueError(f"methods.{name}.train.{kind}: {error}") from None
        return self

    @model_validator(mode="after")
    def _validate_reflow(self) -> "Params":
        from pipeline.methods import DERIVED_METHODS, METHODS

        validated = {}
        for name, section in self.reflow.items():
            if name not in DERIVED_METHODS:
                raise ValueError(f"reflow.{name}: unknown derived method; accepted: {', '.join(DERIVED_METHODS)}")
            source = DERIVED_METHODS[name]
            if source not in self.methods:
                raise ValueError(f"reflow.{name}: needs methods.{source}, the method it is made from")
            settings_cls = METHODS[source].ReflowConfig
            try:
                validated[name] = settings_cls.model_validate({} if section is None else section)
            except ValidationError as error:
                raise ValueError(_first_error(error, prefix=f"reflow.{name}", model=settings_cls)) from None
        object.__setattr__(self, "reflow", validated)
        return self

    def method_config(self, name: str) -> MethodConfig:
        return self.methods[name]

    def train_settings(self, method: str, kind: str) -> TrainSettings:
        base = getattr(self.train, kind)
        return base.model_copy(update=self.methods[method].train.for_kind(kind))


_EXPECTED = {"model_type": "a mapping of keys", "dict_type": "a mapping of keys", "list_type": "a list",
             "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
             "bool_parsing": "true or false", "string_type": "a string", "finite_number": "a finite number"}


def _show(value: Any) -> str:
    """A short one-line rendering of a value a user wrote."""
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, (dict, list)):
        return f"{'a mapping' if isinstance(value, dict) else 'a list'} {text}"
    return "an empty value" if value is None else text


def _resolve(annotation: Any) -> Any:
    """The model, list or dict type inside Annotated[...] and X | None."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _resolve(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _resolve(members[0]) if len(members) == 1 else annotation
    return annotation


def _model_fields(annotation: Any) -> list[str]:
    resolved = _resolve(annotation)
    return list(resolved.model_fields) if isinstance(resolved, type) and issubclass(resolved, BaseModel) else []


def _key(part: Any) -> str:
    """A key as it reads in a dotted path; quoted when it is empty or not a plain name."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_\-]+", text) else _show(part)


def _locate(model: type[BaseModel] | None, loc: tuple) -> tuple[str, list[str], list[str]]:
    """The dotted key path of a pydantic error location (union-member tags dropped), the keys accepted
    by the section holding the last key, and the keys accepted at the location itself."""
    path: list[str] = []
    current: Any = model
    holder: list[str] = []
    for part in loc:
        current = _resolve(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            holder = list(current.model_fields)
            path.append(_key(part))
            field = current.model_fields.get(part) if isinstance(part, str) else None
            current = field.annotation if field else None
        elif get_origin(current) in (list, tuple) and isinstance(part, int):
            path[-1] = f"{path[-1]}[{part}]" if path else f"[{part}]"
            current = get_args(current)[0] if get_args(current) else None
        elif get_origin(current) is dict and part != "[key]":
            path.append(_key(part))
            current = get_args(current)[1] if get_args(current) else None
        elif (current is None or current is Any) and part != "[key]":
            path.append(_key(part))
    return ".".join(path), holder, _model_fields(current)


def _first_error(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the first mistake: `key.path: what is wrong; what is accepted`."""
    first = error.errors()[0]
    kind, value, context = first["type"], first.get("input"), first.get("ctx") or {}
    location, holder_keys, keys_here = _locate(model, first["loc"])
    key = ".".join(p for p in (prefix, location) if p)
    if kind == "extra_forbidden":
        message = f"unknown key; accepted: {', '.join(holder_keys)}" if holder_keys else "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif first["loc"] and first["loc"][-1] == "[key]":
        message = f"keys must be names (strings), got {_show(value)}"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {_show(value)}"
        message += f"; accepted keys: {', '.join(keys_here)}" if keys_here else ""
    elif kind == "literal_error":
        message = f"got {_show(value)}; accepted: {context.get('expected')}"
    elif kind in ("too_short", "string_too_short") and context.get("min_length") == 1:
        message = "must not be empty"
    elif kind == "value_error":
        message = str(context.get("error", first["msg"])) or first["msg"]
    else:
        message = first["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        message += f", got {_show(value)}" if not isinstance(value, dict) else ""
    line = f"{key}: {message}" if key else message
    return " ".join(line.split())


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3 as the number DVC's YAML 1.2 reader sees (YAML 1.1 reads a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError with one line on any mistake."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot be read as text ({type(error).__name__})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (seeds, datasets, methods, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{path}: {_first_error(error, model=Params)}") from None
