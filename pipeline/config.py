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
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError
from pipeline.schema import (DataSection, EvaluateSection, MethodConfig, MlflowSection, NetworkSection,
                             ReportSection, SampleSection, Strict, TrainSection, TrainSettings, check_snapshots)


class Params(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: the networks' matrix products in training and fixed-step sampling: fp32, or bf16 autocast (weights,
    #: optimizer and EMA stay fp32; adaptive solvers and likelihoods always run their network in float64)
    precision: Literal["fp32", "bf16"] = "fp32"
    #: processes per stage (one per GPU; gloo processes on the CPU), started by torchrun: data-parallel
    #: training, sampling split by sample index (pipeline.distributed). 1: one process, no torchrun.
    nproc_per_node: int = Field(1, ge=1)
    datasets: list[str] = Field(min_length=1)
    methods: dict[str, Any] = Field(min_length=1)
    #: reflow rounds, keyed by the method they are made from (its class's ReflowConfig), each evaluated as
    #: pipeline.methods.reflowed_name(method), e.g. rectified_flow_2. Empty: no such stages.
    reflow: dict[str, Any] = Field(default_factory=dict)
    #: each derived method's source method, filled by validation
    _reflow_sources: dict[str, str] = PrivateAttr(default_factory=dict)
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
    def _known_images(self) -> "Params":
        from pipeline.data.images import IMAGE_DATASETS

        for name in self.data.images:
            if name not in IMAGE_DATASETS:
                raise ValueError(f"data.images: unknown image data set {name!r}; accepted: "
                                 f"{', '.join(IMAGE_DATASETS)}")
        return self

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
        from pipeline.methods import METHODS, reflowed_name

        reflowable = [name for name, cls in METHODS.items() if cls.ReflowConfig is not None]
        validated = {}
        for name, section in self.reflow.items():
            if name not in reflowable:
                raise ValueError(f"reflow.{name}: not a method with a reflow round; accepted: {', '.join(reflowable)}")
            if name not in self.methods:
                raise ValueError(f"reflow.{name}: needs methods.{name}, the method it is made from")
            self._reflow_sources[reflowed_name(name)] = name
            settings_cls = METHODS[name].ReflowConfig
            try:
                validated[name] = settings_cls.model_validate({} if section is None else section)
            except ValidationError as error:
                raise ValueError(_first_error(error, prefix=f"reflow.{name}", model=settings_cls)) from None
        object.__setattr__(self, "reflow", validated)
        return self

    @model_validator(mode="after")
    def _known_claim_metrics(self) -> "Params":
        """A claim's metric is "quality" or a metric of the table with a direction. A claim whose methods this
        run leaves out is not an error (its cells read —), so a narrowed sweep keeps the default claims."""
        from pipeline.metric_table import METRICS

        names = sorted({metric.name for metric in METRICS if metric.lower_is_better is not None})
        for index, claim in enumerate(self.report.claims):
            if claim.metric != "quality" and claim.metric not in names:
                raise ValueError(f"report.claims[{index}].metric: unknown metric {claim.metric!r}; accepted: "
                                 f"quality, {', '.join(names)}")
        return self

    def method_config(self, name: str) -> MethodConfig:
        """The params.yaml section of a method; a derived method shares its source's."""
        return self.methods[self.source_method(name)]

    def source_method(self, name: str) -> str:
        """The method whose section and class a method uses: itself, or a derived method's source."""
        return self._reflow_sources.get(name, name)

    def is_derived(self, name: str) -> bool:
        return name in self._reflow_sources

    def evaluated_methods(self) -> list[str]:
        """Every method with a model: the methods, each followed by those `reflow` derives from it."""
        names: list[str] = []
        for name in self.methods:
            names += [name, *(derived for derived, source in self._reflow_sources.items() if source == name)]
        return names

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
