"""The model store: one file per trained model (EMA weights, the recipe that made them, what the method
computed from them), written by the run and reflow stages and read back, checked against params.yaml,
by every later step."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.io import save_torch
from pipeline.layout import model_file
from pipeline.methods import build_method
from pipeline.methods.base import Method
from pipeline.schema import NetworkSection

MODEL_FORMAT = 2  # 2: affine methods' networks are preconditioned (weights under `inner.`)
TIME_CONVENTION = "t in [0, 1], t = 0 data, t = 1 noise"


def save_model(path: Path, recipe: dict, identity: str, data_shape, state_dict: dict, extras: dict | None = None,
               snapshots: dict | None = None) -> Path:
    """Write a model file: the EMA weights, the recipe and its hash, and what the method computed from them."""
    save_torch(path, {"format": MODEL_FORMAT, "recipe": recipe, "identity": identity, "data_shape": list(data_shape),
                      "state_dict": state_dict, "time_convention": TIME_CONVENTION, "extras": extras or {},
                      "snapshots": snapshots or {}})
    return path


def load_model(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               device: torch.device) -> tuple[Method, torch.nn.Module]:
    """Rebuild the method and its EMA network; refuse a model made by other parameters."""
    path = model_file(root, method_name, dataset, seed)
    if not path.exists():
        stage = (f"reflow@{params.source_method(method_name)}" if params.is_derived(method_name)
                 else f"run@{method_name}") + f"-{dataset}-{seed}"
        raise StageError(f"{path} is missing; run `dvc repro {stage}` first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise StageError(f"{path} is unreadable ({type(error).__name__}); run `dvc repro` to retrain") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise StageError(f"{path} is not a model file of this pipeline; run `dvc repro` to retrain")
    recipe = saved["recipe"]
    config = params.method_config(method_name)
    source = params.source_method(method_name)
    if recipe["method"] != method_name or recipe["method_config"] != config.model_dump():
        raise StageError(f"{path} was trained as {recipe['method']!r} with other parameters than params.yaml's "
                         f"methods.{source}; run `dvc repro` to retrain")
    if params.is_derived(method_name) and recipe.get("reflow") != reflow_settings(params, method_name).model_dump():
        raise StageError(f"{path} was made with other settings than params.yaml's reflow.{source}; "
                         f"run `dvc repro` to remake it")
    method = build_method(source, config, tuple(saved["data_shape"]), reflowed=params.is_derived(method_name))
    net = method.make_network(network_from_dict(recipe["network"]))
    net.load_state_dict(saved["state_dict"])
    net.to(device).eval()
    method.load_extras(saved.get("extras", {}))
    return method, net


def trained_steps(root: Path, method_name: str, dataset: str, seed: int) -> int:
    """The training steps of the model file's EMA weights (its recipe's `train.steps`)."""
    saved = torch.load(model_file(root, method_name, dataset, seed), map_location="cpu", weights_only=False)
    return int(saved["recipe"]["train"]["steps"])


def reflow_settings(params: Params, method_name: str):
    """The reflow settings of a derived method (params.yaml's reflow.<its source>)."""
    if not params.is_derived(method_name):
        raise StageError(f"{method_name} is not made by params.yaml's reflow section "
                         f"({', '.join(params.reflow) or 'empty'})")
    return params.reflow[params.source_method(method_name)]


def network_from_dict(section: dict):
    return NetworkSection.model_validate(section)
