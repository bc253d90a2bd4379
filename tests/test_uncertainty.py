"""Intervals over seeds, the evaluation's own error and the paired, Holm-corrected best marks (issue 11)."""

import math

import pandas as pd
import pytest
from scipy import stats

from pipeline.config import Params
from pipeline.report.results import COLUMNS
from pipeline.report.tables import budget_table, headline_table
from pipeline.uncertainty import holm_significant, paired_p_value, seed_interval


def test_the_seed_interval_is_students_t():
    mean, half = seed_interval([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * pd.Series([1.0, 2.0, 4.0]).std() / math.sqrt(3))
    assert seed_interval([3.0])[0] == 3.0 and math.isnan(seed_interval([3.0])[1])
    assert all(math.isnan(v) for v in seed_interval([1.0, None, 2.0]))  # a missing seed is not dropped silently


def test_the_paired_test_uses_the_pairing_and_the_direction():
    best, other = [1.0, 2.0, 3.0], [1.1, 2.1, 3.15]  # unpaired these overlap; paired, other is always worse
    assert paired_p_value(best, other, lower_is_better=True) < 0.01
    assert stats.ttest_ind(best, other).pvalue > 0.5
    assert paired_p_value(best, other, lower_is_better=False) > 0.99
    assert math.isnan(paired_p_value([1.0], [2.0], True))


def test_holm_steps_down_and_stops_at_the_first_failure():
    assert holm_significant([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 < 0.05/3; 0.03 > 0.05/2
    assert holm_significant([0.001, 0.02, 0.04]) == [True, True, True]
    assert holm_significant([float("nan"), 0.01]) == [False, True]


def _frame(rows):
    return pd.DataFrame([dict(zip(COLUMNS, row)) for row in rows], columns=COLUMNS)


def _two_methods(gap: float, seeds=(0, 1, 2)):
    rows = [("moons", "data", "data", 0, 0, "w2", 0.05), ("moons", "data", "data", 0, 0, "w2_sd", 0.004)]
    for seed in seeds:
        base = 0.1 + 0.05 * seed  # the seeds differ a lot; within a seed the two methods differ by `gap`
        rows += [("moons", "ddpm", "ancestral_beta", 100, seed, "w2", base),
                 ("moons", "flow_matching", "ode_euler", 100, seed, "w2", base + gap + 0.001 * seed),
                 ("moons", "ddpm", "ancestral_beta", 100, seed, "nll", 1.0 + seed),
                 ("moons", "ddpm", "ancestral_beta", 100, seed, "nll_se", 0.02)]
    return _frame(rows)


def test_a_cell_shows_the_seed_interval_the_evaluation_error_and_the_nfe():
    params = Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {}, "flow_matching": {}},
                                    "seeds": [0, 1, 2]})
    table = headline_table(_two_methods(0.02), params)
    mean, half = seed_interval([0.1, 0.15, 0.2])
    assert table.loc["ddpm / ancestral_beta", "moons w2"] == f"**{mean:.3f} ± {half:.3f} [0.004] (100)**"
    assert table.loc["ddpm / ancestral_beta", "moons nll"].startswith("2.000 ± ") and "[0.020]" in \
        table.loc["ddpm / ancestral_beta", "moons nll"]
    assert table.loc["data / data", "moons w2"] == "0.050 ± 0.004"  # the floor keeps its spread over chunks
    cell = budget_table(_two_methods(0.02), "moons", "w2").loc["ddpm / ancestral_beta", 100]
    assert cell == f"{mean:.3f} ± {half:.3f}"
    failed = _two_methods(0.02).assign(value=lambda f: f.value.mask((f.seed == 2) & (f.metric == "w2")))
    assert budget_table(failed, "moons", "w2").loc["ddpm / ancestral_beta", 100].endswith("(2 of 3 seeds)")


def test_the_best_is_marked_only_where_the_paired_test_holds():
    params = Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {}, "flow_matching": {}},
                                    "seeds": [0, 1, 2]})
    assert "**" in headline_table(_two_methods(0.02), params).loc["ddpm / ancestral_beta", "moons w2"]
    noisy = _two_methods(0.0).assign(value=lambda f: f.value + f.seed.map({0: 0.01, 1: -0.01, 2: 0.0})
                                     * (f.method == "flow_matching"))
    assert "**" not in headline_table(noisy, params).to_string()
    one_seed = Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {}, "flow_matching": {}}})
    assert "**" not in headline_table(_two_methods(0.02, seeds=(0,)), one_seed).to_string()


def test_an_adaptive_sampler_is_one_entry_over_seeds_whatever_its_nfe():
    """RK45 uses a different NFE on each seed: the cell and the NFE table pool the seeds, with the NFE range."""
    params = Params.model_validate({"datasets": ["moons"], "methods": {"flow_matching": {}}, "seeds": [0, 1, 2]})
    frame = _frame([("moons", "data", "data", 0, 0, "w2", 0.05)] +
                   [("moons", "flow_matching", "ode_rk45", 120 + 10 * seed, seed, "w2", 0.1 + 0.01 * seed)
                    for seed in range(3)] +
                   [("moons", "flow_matching", "ode_euler", nfe, seed, "w2", 0.2) for seed in range(3)
                    for nfe in (10, 100)])
    mean, half = seed_interval([0.1, 0.11, 0.12])
    cell = headline_table(frame, params).loc["flow_matching / ode_rk45", "moons w2"].strip("*")
    assert cell.startswith(f"{mean:.3f} ± {half:.3f}") and cell.endswith("(120-140)")
    table = budget_table(frame, "moons", "w2")
    assert list(table.columns) == [10, 100, "adaptive"]
    assert table.loc["flow_matching / ode_rk45", "adaptive"] == f"{mean:.3f} ± {half:.3f} (NFE 120-140)"
    assert table.loc["flow_matching / ode_euler", 10] == "0.200 ± 0.000"
