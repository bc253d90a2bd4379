"""The metric table drives the scorers, the summary's columns and the convergence section."""

import numpy as np
import torch
import pytest

from pipeline import metric_table
from pipeline.convergence import CURVE_METRICS, RULE_METRICS
from pipeline.evaluation import SCORERS, SampleScorer
from pipeline.report.tables import HEADLINE_METRICS, IMAGE_HEADLINE_METRICS, MODE_METRICS


def test_every_entry_is_consistent():
    for m in metric_table.METRICS:
        assert m.kind in ("toy", "image") and m.computed
        assert (m.scorer is not None) == (m.source == "samples"), m
        assert m.scorer is None or m.scorer in SCORERS, m
        assert m.error is None or metric_table.known(m.error, m.kind), m
        assert m.convergence is None or m.lower_is_better is not None, m
    assert len({(m.name, m.kind) for m in metric_table.METRICS}) == len(metric_table.METRICS)


def test_the_report_and_the_convergence_section_read_the_table():
    assert HEADLINE_METRICS == {"w2": True, "nll": True}
    assert list(IMAGE_HEADLINE_METRICS) == ["fid", "kid", "precision", "recall", "nll_bpd", "sliced_w2"]
    assert MODE_METRICS == ["precision", "recall", "density", "coverage", "modes", "on_support"]
    assert set(RULE_METRICS) == {"w2", "coverage", "modes", "on_support", "fid"}
    assert CURVE_METRICS["coverage"] is True and CURVE_METRICS["w2"] is False
    assert [m.name for m in metric_table.select(against_nfe=True)] == ["w2", "nll", "fid"]  # grid.md's NFE tables
    from pipeline.convergence import LIKELIHOODS, SAMPLE_SCORES

    assert SAMPLE_SCORES == ("w2", "fid") and LIKELIHOODS == ("nll", "nll_bpd")


class _Data:
    kind, test = "toy", np.random.default_rng(0).normal(size=(300, 2))
    meta = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}


def test_the_scorer_returns_exactly_the_tables_sample_metrics(monkeypatch):
    from pipeline.config import load_params

    params = load_params("profiles/smoke.yaml")
    scorer = SampleScorer(None, params, "eight_gaussians", _Data(), "cpu")
    scores = scorer(np.random.default_rng(1).normal(size=(300, 2)), 0)
    expected = {m.name for m in metric_table.select("toy", source="samples")} - {"on_support"}  # no boxes here
    assert set(scores) == expected
    monkeypatch.setitem(SCORERS, "w2", lambda *args: {"w3": 1.0})
    with pytest.raises(AssertionError, match="w3"):
        scorer(np.zeros((300, 2)), 0)


class _ZeroNetwork(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("shape,kind", [((2,), "toy"), ((1, 4, 4), "image")])
def test_every_methods_path_metrics_are_in_the_table_for_both_kinds(shape, kind):
    """Reflow and OT flow matching measure their paths on images too: the run stage and the MLflow
    publisher refuse a metric the table does not list (a digits run once failed at the publish stage)."""
    from pipeline.config import load_params
    from pipeline.methods import build_method
    from pipeline.methods.base import EvalContext

    params = load_params("params.yaml")
    reported = set()
    for name, config in params.methods.items():
        method = build_method(name, config, shape)
        for _, _, metric, _ in method.trajectory_metrics(_ZeroNetwork(), 8, torch.Generator().manual_seed(0),
                                                         EvalContext(rtol=1e-3, atol=1e-3)):
            assert metric_table.known(metric, kind), (name, metric, kind)
            reported.add(metric)
    assert reported == {"straightness", "transport_cost"}
