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
