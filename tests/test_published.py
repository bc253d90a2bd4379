"""The publish stage's ledger (pipeline.published): a state published to a store is skipped without MLflow,
and only that state, experiment and store."""

import yaml
from typer.testing import CliRunner

from pipeline import published
from pipeline.cli import app

URI = "http://tracking.example:5000"


def test_the_ledger_knows_only_what_was_recorded(tmp_path):
    assert published.published_run(tmp_path, URI, "benchmark", "abc") is None
    published.record(tmp_path, URI, "benchmark", "abc", "run1")
    assert published.published_run(tmp_path, URI, "benchmark", "abc") == "run1"
    assert published.published_run(tmp_path, URI, "other", "abc") is None
    assert published.published_run(tmp_path, URI, "benchmark", "abd") is None
    assert published.published_run(tmp_path, "http://elsewhere:5000", "benchmark", "abc") is None


def test_an_entry_for_a_sqlite_store_counts_only_while_its_file_exists(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    published.record(tmp_path, uri, "benchmark", "abc", "run1")
    assert published.published_run(tmp_path, uri, "benchmark", "abc") is None
    db.write_bytes(b"")
    assert published.published_run(tmp_path, uri, "benchmark", "abc") == "run1"


def test_a_corrupt_ledger_is_an_empty_one(tmp_path):
    (tmp_path / ".pipeline").mkdir()
    (tmp_path / ".pipeline" / "published.json").write_text("{not json")
    assert published.published_run(tmp_path, URI, "benchmark", "abc") is None
    published.record(tmp_path, URI, "benchmark", "abc", "run1")
    assert published.published_run(tmp_path, URI, "benchmark", "abc") == "run1"


def test_publish_takes_the_quick_exit_only_for_the_recorded_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"mlflow": {"experiment": "benchmark"}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"report": {"cmd": "x"}}}))
    published.record(tmp_path, URI, "benchmark", published.pipeline_state(tmp_path), "run1")
    result = CliRunner().invoke(app, ["--params", str(params), "publish"])
    assert result.exit_code == 0 and "run1" in result.output and "(already published)" in result.output
    params.write_text(yaml.safe_dump({"mlflow": {"experiment": "renamed"}}))
    result = CliRunner().invoke(app, ["--params", str(params), "publish"])
    assert "(already published)" not in result.output and result.exit_code != 0  # the real publish ran


def test_a_publish_that_failed_half_way_is_done_again(tmp_path, monkeypatch):
    """A parent run whose children did not all reach the store is not a published state (it was, before)."""
    import mlflow
    import pandas as pd
    import pytest

    from pipeline import tracking
    from pipeline.config import Params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = Params.model_validate({"datasets": ["moons"], "seeds": [0], "methods": {"flow_matching": {}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"datasets": ["moons"]}))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "summary.md").write_text("# summary\n")
    pd.DataFrame([{"dataset": "moons", "method": "flow_matching", "sampler": "ode_euler", "nfe": 10, "seed": 0,
                   "metric": "w2", "value": 0.5}]).to_csv(tmp_path / "reports" / "results.csv", index=False)

    def broken(*args, **kwargs):
        raise RuntimeError("the store went away")

    monkeypatch.setattr(tracking, "_publish_child", broken)
    with pytest.raises(RuntimeError):
        tracking.publish(tmp_path, params)
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracking.publish(tmp_path, params)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.pipeline_role = 'parent'")
    assert [r.info.run_id for r in parents] == [parent]  # the failed one's runs were deleted, not kept beside it
    assert parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], filter_string="tags.pipeline_role = 'child'")
    assert [c.data.tags["mlflow.parentRunId"] for c in children] == [parent]
    assert tracking.publish(tmp_path, params) == parent  # complete now: published once
