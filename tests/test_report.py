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
