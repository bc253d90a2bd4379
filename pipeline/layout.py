"""Where each stage's files live (paths under the repository root), read by the stages, the report and
the tracking view alike; and the device a stage runs on.

Outputs (all written atomically):
    data/<dataset>.npz                                   prepare
    models/features/<dataset>.pt                         prepare (image sets: the FID classifier)
    metrics/features/<dataset>.json                      prepare (its accuracy)
    metrics/data/<dataset>.json                          prepare (the data floor)
    models/<method>/<dataset>/seed<k>.pt                 run: train (EMA weights + what made them)
    metrics/train/<method>/<dataset>/seed<k>.csv         run: train (loss curve)
    metrics/convergence/<method>/<dataset>/seed<k>.csv   run: convergence (scores of the train.snapshots weights)
    samples/<method>/<dataset>/seed<k>.npz               run: sample (every sampler x budget)
    metrics/<method>/<dataset>/seed<k>.json              run: evaluate
    reflow/<method>/<dataset>/seed<k>.npz                reflow (coupled pairs of a derived method)
Resumable training state lives in checkpoints/ (not a DVC output, so DVC never deletes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.errors import StageError

def resolve_device(name: str) -> torch.device:
    """params.yaml's device; on CUDA, with the settings that make its kernels repeatable (deterministic_cuda),
    and under torchrun the GPU of the process's LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("device: cuda was asked for but no CUDA device is available; set device: auto or cpu")
    if name == "cuda":
        deterministic_cuda()
        if distributed.launched():  # one GPU per process under torchrun
            return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def deterministic_cuda() -> None:
    """CUDA's repeatable mode: cuDNN's deterministic convolutions without autotuning (benchmark mode picks
    algorithms by timing, so two runs could differ), no TF32 products, and torch's deterministic algorithms
    (warning, not failing, where an op has none: index_add_ and scatter_add_ sum in the order their atomic
    adds land). cuBLAS needs CUBLAS_WORKSPACE_CONFIG, set by pipeline/__init__.py before CUDA starts. What
    is left: a GPU run should repeat itself on the same GPU, driver and library versions; across GPUs or
    versions, and against the CPU, numbers agree to rounding, not to the bit (no GPU has run this code yet:
    scripts/gpu_check.py is the check to run on one)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def data_file(root: Path, dataset: str) -> Path:
    return root / "data" / f"{dataset}.npz"


def model_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "models" / method / dataset / f"seed{seed}.pt"


def loss_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / "train" / method / dataset / f"seed{seed}.csv"


def samples_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "samples" / method / dataset / f"seed{seed}.npz"


def metrics_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / method / dataset / f"seed{seed}.json"


def baseline_file(root: Path, dataset: str) -> Path:
    return root / "metrics" / "data" / f"{dataset}.json"


def reflow_pairs_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "reflow" / method / dataset / f"seed{seed}.npz"


def features_file(root: Path, dataset: str) -> Path:
    return root / "models" / "features" / f"{dataset}.pt"


def features_metrics_file(root: Path, dataset: str) -> Path:
    return root / "metrics" / "features" / f"{dataset}.json"


def convergence_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / "convergence" / method / dataset / f"seed{seed}.csv"


#: the columns of a convergence file, one row per (step, sampler, nfe, metric)
CONVERGENCE_COLUMNS = ["step", "sampler", "nfe", "metric", "value"]


def run_key(sampler: str, budget: int | None) -> str:
    return f"{sampler}@{budget if budget is not None else 'adaptive'}"


#: the samples file's array of sampling-ODE paths (pipeline.stages.draw_trajectories), where the method has one
TRAJECTORY_KEY = "trajectory"


def load_trajectory(path: Path) -> np.ndarray | None:
    """The paths [steps + 1, n, d] a samples file holds, or None."""
    if not path.exists():
        return None
    with np.load(path) as archive:
        return archive[TRAJECTORY_KEY] if TRAJECTORY_KEY in archive.files else None


def load_samples(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    if not path.exists():
        raise StageError(f"{path} is missing; run the sample stage first (`dvc repro`)")
    with np.load(path) as archive:
        index = json.loads(str(archive["index"]))
        return index, {row["key"]: archive[row["key"]] for row in index}
