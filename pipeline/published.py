"""Which pipeline state was published to which MLflow store: the publish stage's quick exit.

DVC runs the publish stage on every `dvc repro` (it cannot see the tracking store), and a publish that
imports MLflow and asks the store whether this state is there cost 8-9 s of a no-op run's 11 s on 2
cores. The stage first looks here instead: a ledger (.pipeline/published.json, next to dvc.lock and
ignored by git) of (tracking URI, experiment, state) -> parent run, written after each publish. An entry counts only
while a SQLite store's file still exists; `pipeline publish --force` asks the store itself. This module
imports neither MLflow nor torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from pipeline.io import sha256_bytes, write_json

PUBLISH_STAGE = "publish"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<repo>/mlflow.db (absolute, so `mlflow ui` there sees it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def pipeline_state(root: Path) -> str:
    """Hash of dvc.lock without the publish stage (or of params.yaml when there is no lock yet)."""
    lock = Path(root) / "dvc.lock"
    if lock.exists():
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on a large lock
        content = yaml.load(lock.read_text(), Loader=loader) or {}
        stages = {k: v for k, v in (content.get("stages") or {}).items() if k != PUBLISH_STAGE}
        return sha256_bytes(json.dumps(stages, sort_keys=True).encode())[:16]
    return sha256_bytes((Path(root) / "params.yaml").read_bytes())[:16]


def _ledger(root: Path) -> Path:
    return Path(root) / ".pipeline" / "published.json"


def _read(root: Path) -> dict:
    try:
        entries = json.loads(_ledger(root).read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _key(uri: str, experiment: str, state: str) -> str:
    return f"{state} {experiment} {uri}"


def experiment_name(params_file: Path) -> str | None:
    """params.yaml's mlflow.experiment, read without validating the file (None when it is not there)."""
    try:
        section = (yaml.safe_load(Path(params_file).read_text()) or {}).get("mlflow") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    name = section.get("experiment") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def _store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        return Path(path[2:] if path.startswith("//") else path).exists()
    if "://" not in uri:  # a local folder of runs
        return Path(uri).exists()
    return True  # a server: trust the ledger (publish --force asks it)


def published_run(root: Path, uri: str, experiment: str, state: str) -> str | None:
    """The parent run this ledger says holds `state` in `experiment` of the store at `uri`, or None."""
    run_id = _read(root).get(_key(uri, experiment, state))
    return run_id if isinstance(run_id, str) and _store_exists(uri) else None


def record(root: Path, uri: str, experiment: str, state: str, run_id: str) -> None:
    entries = _read(root)
    entries[_key(uri, experiment, state)] = run_id
    write_json(_ledger(root), entries)
