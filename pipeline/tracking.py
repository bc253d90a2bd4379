"""MLflow as a view of the pipeline's outputs (the only module that imports mlflow).

The final DVC stage publishes, from the files the stages wrote, one parent run per pipeline
state (the hash of dvc.lock without this stage's own entry) and one child run per method x data
set x seed, with params, the replayed loss curve, every metric of the metric table
(pipeline.metric_table) by sampler and NFE, each headline score's best value over the samplers as
`best/<metric>` (a column of the MLflow runs table to sort methods by), the data set as the run's input and the
trained model as a logged model (external: its weights stay in DVC's store) carrying those `best/` scores, so
models can be searched by metric; the parent carries the report and figures. The experiment is tagged as
model training, so `mlflow ui` opens on its runs. Publishing is idempotent: a state already published is
skipped. Because it reads only DVC outputs, a stage that DVC skipped or restored from its cache never leaves
a hole.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import metric_table
from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.errors import StageError, TrackingError
from pipeline.layout import convergence_file, data_file, loss_file, model_file
from pipeline.published import pipeline_state, record, tracking_uri

if TYPE_CHECKING:
    import pandas as pd

def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def publish(root: Path, params: Params) -> str:
    """Log the current pipeline state to MLflow; returns the parent run id (existing or new)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    root = Path(root)
    results_path = root / "reports" / "results.csv"
    if not results_path.exists():
        raise StageError(f"{results_path} is missing; run the report stage first (`dvc repro`)")
    uri = tracking_uri(root)
    state = pipeline_state(root)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.set_experiment(params.mlflow.experiment)
        client = MlflowClient(uri)
        # MLflow 3 opens an experiment of unknown kind on its GenAI overview; this one is model training
        client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
        # only a parent whose children were all published counts (a publish that failed half-way is redone)
        existing = client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.pipeline_state = '{state}' and tags.pipeline_role = 'parent'"
                                                    f" and tags.pipeline_complete = 'true'")
    except Exception as error:  # mlflow raises many types for an unreachable or broken store
        raise TrackingError(f"cannot reach the MLflow tracking store {uri} ({type(error).__name__}); check "
                            f"MLFLOW_TRACKING_URI or unset it to use ./mlflow.db") from None
    if existing:
        record(root, uri, params.mlflow.experiment, state, existing[0].info.run_id)
        return existing[0].info.run_id
    _discard_incomplete(client, experiment.experiment_id, state)
    results = pd.read_csv(results_path)
    protocol_path = root / "reports" / "protocol.csv"
    protocol = pd.read_csv(protocol_path, keep_default_na=False) if protocol_path.exists() else None
    commit = git_commit(root)
    common_tags = {"pipeline_state": state, "git_commit": commit, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
    with mlflow.start_run(run_name=f"pipeline-{state[:8]}", tags={**common_tags, "pipeline_role": "parent"}) as parent:
        mlflow.log_params({"datasets": json.dumps(params.datasets), "methods": json.dumps(list(params.methods)),
                           "seeds": json.dumps(params.seeds)})
        mlflow.log_artifact(str(results_path))
        for name in ("summary.md", "grid.md", "index.html", "headline.json"):  # the report, index.html self-contained
            if (root / "reports" / name).exists():
                mlflow.log_artifact(str(root / "reports" / name))
        if protocol is not None:
            mlflow.log_artifact(str(protocol_path))
        figures = root / "reports" / "figures"
        if figures.exists():
            mlflow.log_artifacts(str(figures), "figures")
        for dataset in params.datasets:
            for method in params.evaluated_methods():
                for seed in params.seeds:
                    _publish_child(root, params, results, method, dataset, seed, common_tags, parent.info.run_id,
                                   protocol)
        mlflow.set_tag("pipeline_complete", "true")
    record(root, uri, params.mlflow.experiment, state, parent.info.run_id)
    return parent.info.run_id


def _discard_incomplete(client, experiment_id: str, state: str) -> None:
    """Delete what a publish of this state that failed half-way left (its parent, children and their logged
    models), so that the redo leaves one copy of each run and model."""
    stale = {run.info.run_id for run in client.search_runs([experiment_id],
                                                           filter_string=f"tags.pipeline_state = '{state}'")}
    if not stale:
        return
    token = None
    while True:
        page = client.search_logged_models([experiment_id], max_results=1000, page_token=token)
        for model in page:
            if model.source_run_id in stale:
                client.delete_logged_model(model.model_id)
        token = page.token
        if not token:
            break
    for run_id in sorted(stale):
        client.delete_run(run_id)


def _publish_child(root: Path, params: Params, results: pd.DataFrame, method: str, dataset: str, seed: int,
                   tags: dict, parent_id: str, protocol: pd.DataFrame | None = None) -> None:
    import time

    import mlflow
    import pandas as pd
    from mlflow.entities import Metric

    run_tags = {**tags, "pipeline_role": "child", "method": method, "dataset": dataset, "seed": str(seed)}
    with mlflow.start_run(run_name=f"{method}-{dataset}-{seed}", nested=True, tags=run_tags,
                          parent_run_id=parent_id) as run:
        if params.is_derived(method):
            source = params.source_method(method)
            settings = {"reflow": params.reflow[source].model_dump(), "source": source,
                        "method": params.method_config(source).model_dump()}
        else:
            settings = {"method": params.method_config(method).model_dump(),
                        "train": params.train_settings(method, DATASETS[dataset]).model_dump()}
        flat = _flatten("", settings, {})
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        data_input = _log_data_input(root, dataset)
        model = _log_external_model(root, method, dataset, seed, run.info.run_id, flat)
        if protocol is not None:  # how each number was made (pipeline.protocol), and the library versions
            own = protocol[(protocol.method == method) & (protocol.dataset == dataset) & (protocol.seed == seed)]
            mlflow.log_text(own.to_csv(index=False), "protocol.csv")
            mlflow.set_tags({k: str(v) for k, v in own.iloc[0].items() if k.startswith("version_")} if len(own) else {})
        # one batched write per run: a metric at a time made publishing ~0.3 s per child run on sqlite
        now = int(time.time() * 1000)
        metrics = []
        curve_path = loss_file(root, method, dataset, seed)
        if curve_path.exists():
            curve = pd.read_csv(curve_path)
            metrics += [Metric("train_loss", float(row.loss), now, int(row.step)) for row in curve.itertuples()]
        rows = results[(results.method == method) & (results.dataset == dataset) & (results.seed == seed)]
        metrics += _table_metrics(rows, DATASETS[dataset], now)
        if model is not None:  # the headline scores on the logged model too: models searchable by metric
            metrics += [Metric(m.key, m.value, now, 0, model_id=model, dataset_name=dataset,
                               dataset_digest=data_input) for m in metrics if m.key.startswith("best/")]
        # the convergence study (train.snapshots): each metric's history over training steps
        convergence_path = convergence_file(root, method, dataset, seed)
        if convergence_path.exists():
            convergence = pd.read_csv(convergence_path)
            metrics += [Metric(f"convergence/{row.metric}/{row.sampler}", float(row.value), now, int(row.step))
                        for row in convergence.itertuples() if pd.notna(row.value)]
        for start in range(0, len(metrics), 1000):  # MLflow's largest batch
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=metrics[start:start + 1000])


def _log_data_input(root: Path, dataset: str) -> str | None:
    """The data set as the run's training input (the runs table's Dataset column): its name, the DVC output it
    was read from and that file's sha256 as the digest. Returns the digest (None without the file)."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from pipeline.io import sha256_file

    path = data_file(root, dataset)
    if not path.exists():
        return None
    digest = sha256_file(path)[:16]
    with warnings.catch_warnings():  # a local path is a local artifact source, whichever of its two registrations
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path.relative_to(root)))
    mlflow.log_input(MetaDataset(source, name=dataset, digest=digest), context="training")
    return digest


def _log_external_model(root: Path, method: str, dataset: str, seed: int, run_id: str, flat: dict) -> str | None:
    """The trained model as an MLflow logged model whose weights stay in DVC's store (an external model:
    its path and sha256 as tags), the run's output, with the run's parameters. Returns its id (None
    without the model file)."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    from pipeline.io import sha256_file

    path = model_file(root, method, dataset, seed)
    if not path.exists():
        return None
    digest = sha256_file(path)
    mlflow.set_tag("model_sha256", digest)
    model = mlflow.create_external_model(
        name=f"{method}-{dataset}-seed{seed}", source_run_id=run_id, model_type=method,
        params={k: str(v)[:500] for k, v in flat.items()},
        tags={"model_sha256": digest, "dvc_path": str(path.relative_to(root)), "dataset": dataset, "seed": str(seed)})
    mlflow.MlflowClient().log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    return model.model_id


def _table_metrics(rows: pd.DataFrame, kind: str, now: int) -> list:
    """MLflow metrics of one run's results.csv rows, as the metric table names them: `<metric>/<sampler>` at
    step NFE for every row, and `best/<metric>` for each headline score (its best sampler x NFE, in the
    table's direction). A metric the table does not know is an error, as in the evaluation."""
    import pandas as pd
    from mlflow.entities import Metric

    unknown = sorted({name for name in rows.metric.unique() if not metric_table.known(name, kind)})
    if unknown:
        raise StageError(f"results.csv has metrics the metric table (pipeline/metric_table.py) does not know for "
                         f"{kind} data: {', '.join(unknown)}")
    rows = rows[pd.notna(rows.value)]
    metrics = [Metric(f"{row.metric}/{row.sampler}", float(row.value), now, int(row.nfe)) for row in rows.itertuples()]
    for name, lower_is_better in metric_table.directions(kind, table="headline").items():
        values = rows.value[rows.metric == name]
        if len(values):
            metrics.append(Metric(f"best/{name}", float(values.min() if lower_is_better else values.max()), now, 0))
    return metrics
