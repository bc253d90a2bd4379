"""The summary's check of every 2-D sampler at its largest budget against the data floor."""

from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.report.results import COLUMNS
from pipeline.report.summary import floor_check_lines
from pipeline.report.tables import floor_ratio_table


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
    from pipeline.report.summary import mode_lines
    from pipeline.report.tables import mode_table

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


def test_the_learned_check_asks_for_every_mode_and_coverage_within_ten_percent_of_the_floor():
    from pipeline.report.summary import learned_lines
    from pipeline.report.tables import learned_table

    params = Params.model_validate({"datasets": ["eight_gaussians", "moons"],
                                    "methods": {"flow_matching": {}, "ddpm": {}}})
    frame = _frame([
        ("eight_gaussians", "data", "data", 0, 0, "modes", 8.0),
        ("eight_gaussians", "data", "data", 0, 0, "coverage", 0.97),
        ("moons", "data", "data", 0, 0, "coverage", 0.95),
        # flow_matching: its best sampler at its largest budget passes; the smaller budget is not looked at
        ("eight_gaussians", "flow_matching", "ode_euler", 10, 0, "coverage", 0.20),
        ("eight_gaussians", "flow_matching", "ode_euler", 100, 0, "coverage", 0.90),
        ("eight_gaussians", "flow_matching", "ode_euler", 100, 0, "modes", 8.0),
        ("eight_gaussians", "flow_matching", "ode_heun", 50, 0, "coverage", 0.50),
        ("eight_gaussians", "flow_matching", "ode_heun", 50, 0, "modes", 3.0),
        ("moons", "flow_matching", "ode_euler", 100, 0, "coverage", 0.85),  # 0.895 of the floor: misses
        # ddpm: coverage within 10% but a mode short
        ("eight_gaussians", "ddpm", "ancestral_beta", 100, 0, "coverage", 0.95),
        ("eight_gaussians", "ddpm", "ancestral_beta", 100, 0, "modes", 7.0),
        ("moons", "ddpm", "ancestral_beta", 100, 0, "coverage", 0.90),
    ])
    table = learned_table(frame, params).set_index(["dataset", "method"])
    assert table.learned.to_dict() == {("eight_gaussians", "flow_matching"): "yes", ("eight_gaussians", "ddpm"): "no",
                                       ("moons", "flow_matching"): "no", ("moons", "ddpm"): "yes"}
    assert table.loc[("eight_gaussians", "flow_matching"), "best sampler"] == "ode_euler"
    convergence = pd.DataFrame([
        {"dataset": "eight_gaussians", "method": "ddpm", "seed": seed, "step": step, "sampler": "ancestral_beta",
         "nfe": 100, "metric": metric, "value": value}
        for seed in (0, 1) for step, metric, value in
        [(500, "w2", 0.5), (5000, "w2", 0.2), (500, "coverage", 0.5), (5000, "coverage", 0.96),
         (500, "modes", 3.0), (5000, "modes", 8.0)]])
    text = "\n".join(learned_lines(frame, params, convergence))
    assert "2 of 4 pass" in text and "ddpm on eight_gaussians (coverage 0.950 against 0.970, 7 of 8 modes)" in text
    assert "at 5000 steps the convergence study reaches coverage 0.960 and 8 modes, so more training gets there" in text


def test_the_sample_figure_shows_each_methods_best_sampler_at_its_largest_budget():
    """Not the first sampler of the table (which drew a ring for eight_gaussians while another had the modes)."""
    from pipeline.report.figures import best_at_largest_budget

    frame = _frame([
        ("moons", "ddpm", "ancestral_beta", 1000, 0, "coverage", 0.80),
        ("moons", "ddpm", "ddim-eta0.0-uniform", 1000, 0, "coverage", 0.95),
        ("moons", "ddpm", "ddim-eta0.0-uniform", 10, 0, "coverage", 0.99),   # not its largest budget
        ("moons", "ddpm", "dpm_solver_pp_2m", 1000, 0, "coverage", 0.90),
        ("moons", "ddpm", "dpm_solver_pp_2m", 1000, 1, "coverage", 0.99),     # another seed
    ])
    index = [{"key": f"{s}-{n}", "sampler": s, "nfe": n} for s, n in
             [("ancestral_beta", 1000), ("ddim-eta0.0-uniform", 1000), ("ddim-eta0.0-uniform", 10),
              ("dpm_solver_pp_2m", 1000)]]
    assert best_at_largest_budget(frame, index, "ddpm", "moons", 0)["key"] == "ddim-eta0.0-uniform-1000"
    assert best_at_largest_budget(frame, index, "ddpm", "moons", 1)["key"] == "dpm_solver_pp_2m-1000"


def _ranking_frame():
    """moons, three seeds: flow_matching best within 100 NFE, ddpm best only at 1000, vp_sde adaptive 90-120."""
    rows = [("moons", "data", "data", 0, 0, "w2", 0.10), ("moons", "data", "data", 0, 0, "w2_sd", 0.01)]
    for seed, jitter in enumerate([0.0, 0.01, -0.01]):
        rows += [
            ("moons", "ddpm", "ancestral_beta", 10, seed, "w2", 0.90 + jitter),
            ("moons", "ddpm", "ancestral_beta", 100, seed, "w2", 0.50 + jitter),
            ("moons", "ddpm", "ancestral_beta", 1000, seed, "w2", 0.11 + jitter / 10),
            ("moons", "ddpm", "ddim-eta0.0-uniform", 100, seed, "w2", 0.40 + jitter),
            ("moons", "flow_matching", "ode_euler", 10, seed, "w2", 0.30 + jitter),
            ("moons", "flow_matching", "ode_euler", 100, seed, "w2", 0.20 + jitter),
            ("moons", "flow_matching", "ode_euler", 1000, seed, "w2", 0.19 + jitter),
            ("moons", "vp_sde", "ode_rk45", [90, 100, 120][seed], seed, "w2", 0.12 + jitter / 10),
            ("moons", "vp_sde", "euler_maruyama", 100, seed, "w2", 0.60 + jitter),
        ]
    return _frame(rows)


def test_the_ranking_takes_each_method_at_its_best_sampler_within_each_budget():
    from pipeline.report.tables import ranking_table

    params = Params.model_validate({"datasets": ["moons"], "seeds": [0, 1, 2],
                                    "methods": {"ddpm": {}, "flow_matching": {}, "vp_sde": {}}})
    table = ranking_table(_ranking_frame(), params, "moons").set_index("method")
    assert list(table.columns) == ["rank", "≤ 10 NFE", "≤ 100 NFE", "any NFE"]
    assert list(table.index) == ["flow_matching", "ddpm", "vp_sde"]  # ordered by the headline budget, <= 100
    assert table.loc["ddpm", "≤ 100 NFE"].startswith("0.400 ±")  # DDIM beats the chain at 100 steps
    assert "ddim-eta0.0-uniform (100)" in table.loc["ddpm", "≤ 100 NFE"]
    assert "ancestral_beta (1000)" in table.loc["ddpm", "any NFE"]
    # the adaptive sampler used 120 NFE on one seed: not within 100, within any budget
    assert "euler_maruyama (100)" in table.loc["vp_sde", "≤ 100 NFE"]
    assert "ode_rk45 (90-120)" in table.loc["vp_sde", "any NFE"]
    assert table.loc["vp_sde", "≤ 10 NFE"] == "—" and table.loc["vp_sde", "rank"] == "3"
    # flow matching beats DDIM by 0.2 on every seed: significant; at any NFE ddpm's 0.11 vs vp's 0.12 is
    # also consistent over seeds, ode_rk45's seeds shift the same way as ddpm's
    assert table.loc["flow_matching", "≤ 100 NFE"].startswith("**0.200 ± ")
    from pipeline.report.tables import floor_line

    # the evaluation's own error, the same for every cell: the floor's spread, under the table
    assert "0.100 ± 0.010" in floor_line(_ranking_frame(), params, "moons", "w2") and "is 0.010" in floor_line(
        _ranking_frame(), params, "moons", "w2")


def test_under_an_image_ranking_fids_own_error_spans_the_runs_behind_its_cells():
    """FID's jackknife se is per run: the line gives its range over the runs the cells show (each seed of
    an adaptive sampler at its own NFE), not over runs no cell shows (a 1-step run with a large se)."""
    from pipeline.report.tables import floor_line

    rows = [("digits", "data", "data", 0, 0, "fid", 2.0), ("digits", "data", "data", 0, 0, "fid_se", 0.3)]
    for seed in (0, 1, 2):
        rows += [("digits", "ddpm", "ddim-eta0.0-uniform", 1, seed, "fid", 250.0 + seed),
                 ("digits", "ddpm", "ddim-eta0.0-uniform", 1, seed, "fid_se", 40.0),
                 ("digits", "ddpm", "ddim-eta0.0-uniform", 10, seed, "fid", 9.0 + seed),
                 ("digits", "ddpm", "ddim-eta0.0-uniform", 10, seed, "fid_se", 0.5 + seed / 10),
                 ("digits", "flow_matching", "ode_rk45", 30 + seed, seed, "fid", 5.0),
                 ("digits", "flow_matching", "ode_rk45", 30 + seed, seed, "fid_se", 0.7)]
    params = Params.model_validate({"datasets": ["digits"], "seeds": [0, 1, 2],
                                    "methods": {"ddpm": {}, "flow_matching": {}}})
    line = floor_line(_frame(rows), params, "digits", "fid")
    assert "is 0.500-0.700 over the runs behind the cells, the floor's 0.300." in line and "40.000" not in line


def test_an_image_ranking_says_its_budgets_stop_at_the_image_cap():
    from pipeline.report.tables import budget_cap_line

    params = Params.model_validate({"datasets": ["moons", "digits"], "seeds": [0],
                                    "sample": {"image": {"max_budget": 20}}, "methods": {"ddpm": {}}})
    assert budget_cap_line(params, "moons") == ""
    assert "`sample.image.max_budget` = 20 NFE" in budget_cap_line(params, "digits")
    uncapped = params.model_copy(update={"sample": params.sample.model_copy(
        update={"image": params.sample.image.model_copy(update={"max_budget": None})})})
    assert budget_cap_line(uncapped, "digits") == ""


def test_a_best_entry_within_the_seeds_noise_is_not_bold():
    from pipeline.report.tables import ranking_table

    params = Params.model_validate({"datasets": ["moons"], "seeds": [0, 1, 2],
                                    "methods": {"ddpm": {}, "flow_matching": {}}})
    frame = _frame([("moons", m, "ode_euler", 100, seed, "w2", value) for m, values in
                    [("ddpm", [0.30, 0.10, 0.21]), ("flow_matching", [0.10, 0.31, 0.19])]
                    for seed, value in enumerate(values)])
    table = ranking_table(frame, params, "moons")
    assert not table.map(lambda cell: "**" in str(cell)).any().any()


def test_the_quality_curve_is_the_best_within_each_nfe():
    from pipeline.report.tables import quality_curve

    curve = quality_curve(_ranking_frame(), "moons", "ddpm", "w2", True)
    assert curve.nfe.tolist() == [10, 100, 1000]
    assert curve.sampler.tolist() == ["ancestral_beta", "ddim-eta0.0-uniform", "ancestral_beta"]
    assert abs(curve["mean"].iloc[1] - 0.40) < 1e-9 and (curve.low < curve["mean"]).all()
    adaptive = quality_curve(_ranking_frame(), "moons", "vp_sde", "w2", True)
    # euler_maruyama within 100 NFE; rk45 only from 120, its largest over seeds (as the ranking's budgets)
    assert adaptive.nfe.tolist() == [100.0, 120.0]
    assert adaptive.sampler.tolist() == ["euler_maruyama", "ode_rk45"] and adaptive.nfe_label.tolist() == ["100", "90-120"]
    assert (adaptive["mean"].diff().dropna() <= 0).all()  # never worse with more budget


def test_the_overview_gives_each_data_sets_podium():
    from pipeline.report.tables import overview_table

    params = Params.model_validate({"datasets": ["moons"], "seeds": [0, 1, 2],
                                    "methods": {"ddpm": {}, "flow_matching": {}, "vp_sde": {}}})
    table = overview_table(_ranking_frame(), params)
    row = table.iloc[0]
    assert row["data set"] == "moons" and row["metric"] == "w2 (lower is better), ≤ 100 NFE"
    assert row["#1"].startswith("**flow_matching: 0.200 ± ") and row["#1"].endswith("ode_euler (100)**")
    assert row["#2"].startswith("ddpm: 0.400") and row["#3"].startswith("vp_sde: 0.600")
    assert row["data floor"] == "0.100 ± 0.010"
    assert row["#1 ahead of #2"] == "yes (paired test)"
    one_seed = overview_table(_ranking_frame(), params.model_copy(update={"seeds": [0]}))
    assert one_seed.iloc[0]["#1 ahead of #2"] == "untested (one seed)"
    close = _ranking_frame()  # ddpm's DDIM at 100 NFE beside flow matching's 0.20, 0.21, 0.19: no sign of a lead
    ddim = (close.method == "ddpm") & (close.sampler == "ddim-eta0.0-uniform")
    close.loc[ddim, "value"] = close.loc[ddim, "seed"].map({0: 0.21, 1: 0.195, 2: 0.205}).to_numpy()
    tied = overview_table(close, params).iloc[0]
    assert tied["#1"].startswith("flow_matching") and not tied["#1"].startswith("**")
    assert tied["#1 ahead of #2"] == "no (within the seeds' noise)"


def test_a_diverged_entry_neither_wins_nor_hides_the_best():
    """nan means broke sorted(): the bold mark went to 0.3 while 0.1 was best (found in review)."""
    from pipeline.report.tables import best_entries

    entries = {key: pd.Series(values, index=[0, 1, 2]) for key, values in
               {("a", "x"): [0.3, 0.31, 0.29], ("b", "y"): [0.5, 0.52, 0.49], ("c", "z"): [float("nan")] * 3,
                ("d", "w"): [0.1, 0.11, 0.09]}.items()}
    assert best_entries({"col": entries}, {"col": True}) == {"col": ("d", "w")}


def test_the_likelihood_figure_survives_a_diverged_ode_solve(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from pipeline.report.figures import likelihood_figure

    params = Params.model_validate({"datasets": ["moons"], "seeds": [0, 1], "methods": {"ddpm": {}}})
    frame = _frame([("moons", "data", "data", 0, 0, "nll", 1.0),
                    ("moons", "ddpm", "ode_rk45", 300, 0, "nll", float("nan")),
                    ("moons", "ddpm", "ode_rk45", 310, 1, "nll", float("nan")),
                    ("moons", "ddpm", "ancestral_beta", 100, 0, "nll", 1.4),
                    ("moons", "ddpm", "ancestral_beta", 100, 1, "nll", 1.5)])
    assert likelihood_figure(frame, params, tmp_path)
    assert (tmp_path / "nll_bound_vs_ode.png").exists()


def test_dvc_plots_draw_the_quality_curves_a_panel_per_data_set_and_a_line_per_method():
    """dvc.yaml's plot of reports/quality_vs_nfe.csv names the project's template, which dvc-render (DVC's
    renderer) fills: the rows of every data set and method would otherwise be one zigzag line."""
    import yaml
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    repo = Path(__file__).resolve().parents[1]
    report = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["report"]
    (properties,) = [entry["reports/quality_vs_nfe.csv"] for entry in report["plots"]
                     if "reports/quality_vs_nfe.csv" in entry]
    template = get_template(properties["template"], str(repo / ".dvc" / "plots"))
    rows = [{"dataset": d, "method": m, "metric": "w2", "nfe": n, "sampler": "ode_euler", "nfe_label": str(n),
             "mean": 0.2, "low": 0.1, "high": 0.3} for d in ("moons", "digits") for m in ("ddpm", "pfgm") for n in (10, 100)]
    spec = VegaRenderer(rows, "reports/quality_vs_nfe.csv", template=template, x=properties["x"],
                        y=properties["y"]).get_filled_template()
    assert spec["facet"]["field"] == "dataset" and spec["spec"]["encoding"]["color"]["field"] == "method"
    assert (spec["spec"]["encoding"]["x"]["field"], spec["spec"]["encoding"]["y"]["field"]) == ("nfe", "mean")
    assert len(spec["data"]["values"]) == len(rows)
