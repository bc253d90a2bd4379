"""The params.yaml schema: one pydantic model per section, validated as a whole before any work.

Each method's own section is validated by the `Config` class its module declares
(pipeline.methods.METHODS), so a new method brings its parameters with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator


class ParamsError(Exception):
    """A user mistake in params.yaml: one line naming the key path and what is accepted."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TrainOverrides(Strict):
    """Per-method overrides of the `train` section; unset keys keep the shared value."""

    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    lr_schedule: Literal["cosine", "constant"] | None = None
    ema_decay: float | None = Field(None, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: PositiveInt | None = None
    log_every: PositiveInt | None = None


class TrainSection(Strict):
    toy: TrainSettings = TrainSettings()
    image: TrainSettings = TrainSettings(steps=2000, batch_size=128, lr=2e-4)


class MLPSettings(Strict):
    hidden: PositiveInt = 256
    depth: PositiveInt = 3
    time_embedding: PositiveInt = 64


class NetworkSection(Strict):
    mlp: MLPSettings = MLPSettings()


class DataSection(Strict):
    seed: int = Field(0, ge=0)
    n_train: PositiveInt = 20000
    n_test: PositiveInt = 2000
    n_reference: PositiveInt = 6000


class SampleSection(Strict):
    n_samples: PositiveInt = 2000
    batch_size: PositiveInt = 10000


class EvaluateSection(Strict):
    w2_points: PositiveInt = 2000
    floor_repeats: PositiveInt = 3
    nll_points: PositiveInt = 1000
    ode_rtol: float = Field(1e-5, gt=0, lt=1)
    ode_atol: float = Field(1e-5, gt=0, lt=1)


class ReportSection(Strict):
    headline_nfe: PositiveInt = 100


class MlflowSection(Strict):
    experiment: str = "benchmark"


class MethodConfig(Strict):
    """Keys every method section accepts; a method's Config subclass adds its own."""

    samplers: list[str] | None = None
    budgets: list[PositiveInt] = Field(default_factory=lambda: [1000, 100, 20, 10], min_length=1)
    train: TrainOverrides = TrainOverrides()


class Params(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    datasets: list[str] = Field(min_length=1)
    methods: dict[str, Any] = Field(min_length=1)
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
                raise ValueError(f"methods.{name}: unknown method; accepted: {', '.join(sorted(METHODS))}")
            method_cls = METHODS[name]
            try:
                config = method_cls.Config.model_validate(section or {})
            except ValidationError as error:
                raise ValueError(_first_error(error, prefix=f"methods.{name}")) from None
            unknown = set(config.samplers or []) - set(method_cls.samplers)
            if unknown:
                raise ValueError(f"methods.{name}.samplers: unknown sampler {sorted(unknown)[0]!r}; "
                                 f"accepted: {', '.join(method_cls.samplers)}")
            validated[name] = config
        object.__setattr__(self, "methods", validated)
        return self

    def method_config(self, name: str) -> MethodConfig:
        return self.methods[name]

    def train_settings(self, method: str, kind: str) -> TrainSettings:
        base = getattr(self.train, kind)
        overrides = self.methods[method].train.model_dump(exclude_none=True)
        return base.model_copy(update=overrides)


def _first_error(error: ValidationError, prefix: str = "") -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if part not in ("function-after",))
    key = ".".join(p for p in (prefix, location) if p)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    if first["type"] == "missing":
        message = "required key is missing"
    return f"{key}: {message}" if key else message


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError with one line on any mistake."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (seeds, datasets, methods, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{path}: {_first_error(error)}") from None
