"""The papers' claims tested on a run (pipeline.report.claims): the verdicts, Holm's correction over a data
set's claims, entries a run lacks, and the one-line errors of a claim params.yaml gets wrong."""

from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from pipeline.config import Params, load_params
from pipeline.errors import ParamsError, StageError
from pipeline.report.claims import claim_lines, claim_results
from pipeline.report.results import COLUMNS
from pipeline.uncertainty import holm_significant

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SEEDS = [0, 1, 2]


def _claim(claim, better, worse, metric="quality"):
    return {"paper": "a paper", "claim": claim, "metric": metric, "better": better, "worse": worse}


def _params(claims, datasets=("moons",), seeds=SEEDS):
    return Params.model_validate({"datasets": list(datasets), "seeds": list(seeds),
                                  "methods": {"ddpm": {}, "rectified_flow": {}}, "reflow": {"rectified_flow": {}},
                                  "report": {"claims": claims}})


def _rows(dataset, method, sampler, nfe, metric, values):
    return [(dataset, method, sampler, nfe, seed, metric, value) for seed, value in zip(SEEDS, values)]


def _frame(*groups):
    return pd.DataFrame([dict(zip(COLUMNS, row)) for group in groups for row in group], columns=COLUMNS)


ETA0 = {"method": "ddpm", "sampler": "ddim-eta0.0-uniform", "nfe": 10}
ETA1 = {"method": "ddpm", "sampler": "ddim-eta1.0-uniform", "nfe": 10}


def test_a_claim_is_supported_reversed_or_within_the_noise():
    frame = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 10, "w2", [0.20, 0.22, 0.21]),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 10, "w2", [0.30, 0.33, 0.31]),
                   _rows("moons", "ddpm", "ddim-eta0.0-uniform", 100, "w2", [0.20, 0.25, 0.15]),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 100, "w2", [0.21, 0.22, 0.19]),
                   _rows("moons", "rectified_flow_2", "ode_rk45", 30, "straightness", [0.5, 0.6, 0.55]),
                   _rows("moons", "rectified_flow", "ode_rk45", 40, "straightness", [0.1, 0.12, 0.11]))
    params = _params([_claim("eta 0 at 10", ETA0, ETA1),
                      _claim("eta 0 at 100", ETA0 | {"nfe": 100}, ETA1 | {"nfe": 100}),
                      _claim("reflow straightens", {"method": "rectified_flow_2"}, {"method": "rectified_flow"},
                             "straightness")])
    results = claim_results(frame, params)
    assert results.verdict.tolist() == ["yes", "not shown", "opposite"]
    assert results.metric.tolist() == ["w2", "w2", "straightness"]  # quality is W2 on a 2-D set
    assert results.better.iloc[0] == pytest.approx(0.21) and results.worse.iloc[0] == pytest.approx(0.94 / 3)
    expected = stats.ttest_rel([0.20, 0.22, 0.21], [0.30, 0.33, 0.31], alternative="less").pvalue
    assert results.p.iloc[0] == pytest.approx(expected)
    text = "\n".join(claim_lines(frame, params))
    assert "| a paper | eta 0 at 10 " in text and "**yes**: 0.21 vs 0.3133 (p < 0.001)" in text
    assert "*opposite*: 0.55 vs 0.11 (p = 0.001)" in text and "no: 0.2 vs 0.2067 (p = " in text


def test_holms_correction_runs_over_a_data_sets_claims():
    """Both one-sided tests of every claim on a data set are one family: a p of about 0.018 holds for one claim
    (two tests: the smallest p against 0.025), not beside a second claim (four: against 0.0125)."""
    better, worse = [0.1, 0.2, 0.15], [0.0, 0.0, 0.0]  # differences 0.1, 0.2, 0.15: t = 5.2 on 2 df
    alone = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 10, "w2", worse),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 10, "w2", better))
    p = stats.ttest_rel(worse, better, alternative="less").pvalue
    assert 0.0125 < p < 0.025 and holm_significant([p, 1 - p]) == [True, False]
    assert holm_significant([p, 1 - p, 0.5, 0.5]) == [False] * 4
    one = _params([_claim("eta 0 at 10", ETA0, ETA1)])
    assert claim_results(alone, one).verdict.tolist() == ["yes"]
    second = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 100, "w2", [0.2, 0.3, 0.1]),
                    _rows("moons", "ddpm", "ddim-eta1.0-uniform", 100, "w2", [0.2, 0.2, 0.2]))
    two = _params([_claim("eta 0 at 10", ETA0, ETA1), _claim("eta 0 at 100", ETA0 | {"nfe": 100}, ETA1 | {"nfe": 100})])
    assert claim_results(pd.concat([alone, second]), two).verdict.tolist() == ["not shown", "not shown"]
    # each data set is its own family: the same claim on a second set does not dilute the first
    moons_and_roll = pd.concat([alone, alone.assign(dataset="swiss_roll")])
    both = claim_results(moons_and_roll, _params([_claim("eta 0 at 10", ETA0, ETA1)], ("moons", "swiss_roll")))
    assert both.verdict.tolist() == ["yes", "yes"]


def test_entries_the_run_lacks_show_a_dash_and_one_seed_is_untested():
    frame = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 10, "w2", [0.20, 0.22, 0.21]),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 10, "w2", [0.30, 0.33, 0.31]))
    params = _params([_claim("eta 0 at 10", ETA0, ETA1),
                      _claim("at 20 steps", ETA0 | {"nfe": 20}, ETA1 | {"nfe": 20}),
                      _claim("not on 2-D data", ETA0, ETA1, "nll_bpd")])
    results = claim_results(frame, params)
    assert results.claim.tolist() == [0]
    lines = [line for line in "\n".join(claim_lines(frame, params)).splitlines() if line.startswith("| a paper")]
    assert len(lines) == 3 and all(line.rstrip(" |").endswith("—") for line in lines[1:])
    one_seed = frame[frame.seed == 0]
    single = claim_results(one_seed, _params([_claim("eta 0 at 10", ETA0, ETA1)], seeds=[0]))
    assert single.verdict.tolist() == ["untested (one seed)"]
    assert "untested (one seed): 0.2 vs 0.3" in "\n".join(claim_lines(one_seed, _params(
        [_claim("eta 0 at 10", ETA0, ETA1)], seeds=[0])))
    assert claim_lines(frame, _params([])) == []


def test_a_diverged_seed_is_left_out_and_said_so():
    """A nan (a diverged model) neither enters the means nor counts as a tested seed."""
    frame = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 10, "w2", [0.20, float("nan"), 0.21]),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 10, "w2", [0.30, 0.33, 0.34]))
    params = _params([_claim("eta 0 at 10", ETA0, ETA1)])
    row = claim_results(frame, params).iloc[0]
    assert (row.seeds, row.of_seeds) == (2, 3) and row.better == pytest.approx(0.205) and row.worse == pytest.approx(0.32)
    assert "0.205 vs 0.32, 2 of 3 seeds (p = " in "\n".join(claim_lines(frame, params))
    two = frame[frame.seed < 2]
    single = claim_results(two, _params([_claim("eta 0 at 10", ETA0, ETA1)], seeds=[0, 1])).iloc[0]
    assert single.verdict == "untested (one seed)" and single.seeds == 1


def test_a_claim_side_matching_several_rows_per_seed_is_a_one_line_error():
    frame = _frame(_rows("moons", "ddpm", "ddim-eta0.0-uniform", 10, "w2", [0.2, 0.2, 0.2]),
                   _rows("moons", "ddpm", "ddim-eta0.0-uniform", 100, "w2", [0.2, 0.2, 0.2]),
                   _rows("moons", "ddpm", "ddim-eta1.0-uniform", 10, "w2", [0.3, 0.3, 0.3]))
    params = _params([_claim("no nfe", {"method": "ddpm", "sampler": "ddim-eta0.0-uniform"}, ETA1)])
    with pytest.raises(StageError, match=r"report.claims\[0\] \(no nfe\): ddpm has several w2 rows per seed"):
        claim_results(frame, params)


def test_an_unknown_claim_metric_is_a_params_error(tmp_path):
    import yaml

    raw = yaml.safe_load(PARAMS.read_text())
    raw["report"]["claims"][0]["metric"] = "w3"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"report.claims\[0\].metric: unknown metric 'w3'; accepted: quality, "):
        load_params(path)
    raw["report"]["claims"][0]["metric"] = "w2_n"  # a count has no direction to claim
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="unknown metric 'w2_n'"):
        load_params(path)


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/smoke.yaml", "profiles/cifar10.yaml"])
def test_the_claims_of_a_profile_name_entries_its_run_makes(profile):
    """Every side of a profile's claims is a method of the run with a sampler it offers and one of its budgets,
    so no claim reads — for a typo or a budget the run lacks."""
    from pipeline.data import DATASETS
    from pipeline.methods import build_method

    params = load_params(PARAMS.parent / profile)
    assert params.report.claims
    shape = (1, 8, 8) if all(DATASETS[d] == "image" for d in params.datasets) else (2,)
    for claim in params.report.claims:
        for side in (claim.better, claim.worse):
            assert side.method in params.evaluated_methods(), claim.claim
            source = params.source_method(side.method)
            method = build_method(source, params.method_config(source), shape, reflowed=params.is_derived(side.method))
            if side.sampler is not None:
                assert side.sampler in method.samplers, (claim.claim, side.sampler)
            if side.nfe is not None:
                assert side.nfe in params.method_config(side.method).budgets, (claim.claim, side.nfe)
