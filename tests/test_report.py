"""The summary's check of every 2-D sampler at its largest budget against the data floor."""

import pandas as pd

from pipeline.config import Params
from pipeline.report import COLUMNS, floor_check_lines, floor_ratio_table


def _frame(rows):
    return pd.DataFrame([dict(zip(COLUMNS, row)) for row in rows], columns=COLUMNS)


def test_samplers_above_twice_the_floor_are_listed_worst_first():
    params = Params.model_validate({"datasets": ["moons"], "methods": {"ddpm": {}, "flow_matching": {}}})
    frame = _frame([
        ("moons", "data", "data", 0, 0, "w2", 0.10),
        ("moons", "ddpm", "ddim-eta0.0-uniform", 10, 0, "w2", 5.0),     # small budget: not the checked one
        ("moons", "ddpm", "ddim-eta0.0-uniform", 1000, 0, "w2", 0.35),
        ("moons", "ddpm", "ancestral_beta", 1000, 0, "w2", 0.12),
        ("moons", "flow_matching", "ode_rk45", 120, 0, "w2", 0.15),
        ("moons", "flow_matching", "ode_rk45", 120, 1, "w2", 0.35),   # mean over seeds: 0.25
    ])
    table = floor_ratio_table(frame, params)
    assert list(zip(table.sampler, table.nfe)) == [("ddim-eta0.0-uniform", 1000), ("ode_rk45", 120),
                                                   ("ancestral_beta", 1000)]
    assert abs(table.ratio.iloc[0] - 3.5) < 1e-9 and abs(table.ratio.iloc[1] - 2.5) < 1e-9
    text = "\n".join(floor_check_lines(frame, params))
    assert "Worst: ddpm / ddim-eta0.0-uniform on moons at 1000 NFE, 3.50x" in text
    assert "2 of 3 are above 2x the floor" in text and "ancestral_beta |" not in text

    within = frame[frame.value < 1.0].assign(value=lambda f: f.value.where(f.metric != "w2", 0.11))
    assert "No sampler is above 2x the floor." in "\n".join(floor_check_lines(within, params))


def test_rows_above_the_floor_are_shown_beside_the_exact_score_study():
    params = Params.model_validate({"datasets": ["moons"], "methods": {"ve_sde": {}}})
    frame = _frame([
        ("moons", "data", "data", 0, 0, "w2", 0.10),
        ("moons", "ve_sde", "pc", 1001, 0, "w2", 0.40),
        ("moons", "ve_sde", "ode_euler", 1000, 0, "w2", 0.12),
    ])
    oracle = pd.DataFrame([{"dataset": "moons", "method": "ve_sde", "sampler": "pc", "nfe": 1001, "w2": 0.11,
                            "floor": 0.10}])
    text = "\n".join(floor_check_lines(frame, params, oracle))
    assert "| 0.400 | 0.100   | 4.00    | 0.110            | 1.10 " in text, text
    assert "the excess is the trained network's, not the sampler's" in text

    bad = oracle.assign(w2=0.30)  # a sampler that fails with the exact score too: no such claim
    text = "\n".join(floor_check_lines(frame, params, bad))
    assert "3.00" in text and "not the sampler's" not in text
    assert "not the sampler's" not in "\n".join(floor_check_lines(frame, params))


def test_mode_table_shows_each_sampler_at_its_largest_budget():
    from pipeline.report import mode_lines, mode_table

    params = Params.model_validate({"datasets": ["eight_gaussians"], "methods": {"flow_matching": {}}})
    frame = _frame([
        ("eight_gaussians", "data", "data", 0, 0, "modes", 8.0),
        ("eight_gaussians", "data", "data", 0, 0, "coverage", 0.97),
        ("eight_gaussians", "flow_matching", "ode_euler", 10, 0, "modes", 2.0),
        ("eight_gaussians", "flow_matching", "ode_euler", 100, 0, "modes", 8.0),
        ("eight_gaussians", "flow_matching", "ode_euler", 100, 0, "coverage", 0.80),
        ("eight_gaussians", "flow_matching", "ode_euler", 100, 1, "coverage", 0.90),
    ])
    table = mode_table(frame, params)
    assert list(table.columns) == ["eight_gaussians coverage", "eight_gaussians modes"]
    assert table.loc["flow_matching / ode_euler"].tolist() == ["0.850", "8"]
    assert table.loc["data / data"].tolist() == ["0.970", "8"]
    assert "a ring as eight Gaussians" in "\n".join(mode_lines(frame, params))
