"""Training snapshots (train.snapshots) and the convergence scores made from them.

Under a constant learning rate the EMA weights kept at step s of a long run must be, bit for bit,
those of an s-step run (that is what lets one run per seed stand for the whole convergence curve),
also across a resume; under cosine decay they are not, so params.yaml refuses that combination.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import ParamsError, load_params
from pipeline.schema import TrainSettings
from pipeline.layout import CONVERGENCE_COLUMNS, convergence_file
from pipeline.prepare import run_prepare
from pipeline.stages import run_convergence, run_train
from pipeline.training import train


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    data = torch.randn(256, 2)

    def loss_fn(model, batch, generator):
        noise = torch.randn(batch.shape, generator=generator, device=batch.device)
        return ((model(batch + noise) - batch) ** 2).sum(1)

    return net, loss_fn, data


def _settings(**update) -> TrainSettings:
    values = dict(steps=60, batch_size=32, lr=1e-2, warmup_steps=5, lr_schedule="constant", ema_decay=0.9,
                  checkpoint_every=1000, log_every=10)
    return TrainSettings(**(values | update))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_snapshot_under_a_constant_rate_is_the_shorter_run(tmp_path):
    net, loss_fn, data = _toy()
    long = train(net, loss_fn, data, _settings(snapshots=[20, 60]), 3, tmp_path / "long.pt", "long", progress=False)
    net, loss_fn, data = _toy()
    short = train(net, loss_fn, data, _settings(steps=20), 3, tmp_path / "short.pt", "short", progress=False)
    assert sorted(long.snapshots) == [20, 60]
    assert _same(long.snapshots[20], short.ema_state)
    assert _same(long.snapshots[60], long.ema_state)
    assert not _same(long.snapshots[20], long.ema_state)


def test_snapshots_survive_a_resume(tmp_path):
    settings = _settings(snapshots=[20, 60], checkpoint_every=30)
    net, loss_fn, data = _toy()
    whole = train(net, loss_fn, data, settings, 3, tmp_path / "whole.pt", "run", progress=False)

    class Interrupt(Exception):
        pass

    def stop_at(step):
        if step == 40:
            raise Interrupt

    net, loss_fn, data = _toy()
    with pytest.raises(Interrupt):
        train(net, loss_fn, data, settings, 3, tmp_path / "parts.pt", "run", progress=False, on_step=stop_at)
    net, loss_fn, data = _toy()
    resumed = train(net, loss_fn, data, settings, 3, tmp_path / "parts.pt", "run", progress=False)
    assert sorted(resumed.snapshots) == [20, 60]
    assert all(_same(whole.snapshots[s], resumed.snapshots[s]) for s in (20, 60))


def _params_file(tmp_path: Path, toy: dict) -> Path:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles" / "smoke.yaml").read_text())
    params["train"]["toy"].update(toy)
    params["methods"]["flow_matching"].pop("train", None)  # the smoke profile's own snapshots
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(("toy", "says"), [
    ({"lr_schedule": "cosine", "snapshots": [100]}, "lr_schedule: constant"),
    ({"lr_schedule": "constant", "snapshots": [100, 5000]}, "at most train steps"),
])
def test_snapshots_that_are_not_shorter_runs_are_refused(tmp_path, toy, says):
    with pytest.raises(ParamsError) as caught:
        load_params(_params_file(tmp_path, toy))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_method_override_back_to_cosine_is_refused(tmp_path):
    path = _params_file(tmp_path, {"lr_schedule": "constant", "snapshots": [100]})
    params = yaml.safe_load(path.read_text())
    params["methods"]["flow_matching"]["train"] = {"toy": {"lr_schedule": "cosine"}}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="methods.flow_matching.train.toy"):
        load_params(path)


def test_the_convergence_scores_cover_every_sampler_and_likelihood_at_every_snapshot(tmp_path):
    params = load_params(_params_file(tmp_path, {"lr_schedule": "constant", "steps": 60, "snapshots": [30, 60]}))
    run_prepare(tmp_path, params, "gaussian_mixture")
    run_train(tmp_path, params, "flow_matching", "gaussian_mixture", 0, progress=False)
    saved = torch.load(tmp_path / "models" / "flow_matching" / "gaussian_mixture" / "seed0.pt", weights_only=False)
    assert _same(saved["snapshots"][60], saved["state_dict"])  # the last snapshot is the model the stage scores
    path = run_convergence(tmp_path, params, "flow_matching", "gaussian_mixture", 0, progress=False)
    assert path == convergence_file(tmp_path, "flow_matching", "gaussian_mixture", 0)
    frame = pd.read_csv(path)
    assert list(frame.columns) == CONVERGENCE_COLUMNS
    assert sorted(frame.step.unique()) == [30, 60]
    samplers = {"ode_euler", "ode_heun", "ode_rk45"}
    assert samplers <= set(frame.sampler)
    for step, group in frame.groupby("step"):
        scored = group[group.metric == "w2"]
        assert set(scored.sampler) >= samplers
        assert (scored[scored.sampler == "ode_euler"].nfe == params.evaluate.convergence_budget).all()
        assert {"coverage", "modes", "nll", "nll_se"} <= set(group.metric)
    w2 = frame[(frame.metric == "w2") & (frame.sampler == "ode_euler")].set_index("step").value
    assert w2[30] != w2[60]  # two different sets of weights were scored


def test_no_snapshots_writes_the_header_alone(tmp_path):
    params = load_params(_params_file(tmp_path, {"steps": 20}))
    run_prepare(tmp_path, params, "gaussian_mixture")
    run_train(tmp_path, params, "flow_matching", "gaussian_mixture", 0, progress=False)
    path = run_convergence(tmp_path, params, "flow_matching", "gaussian_mixture", 0, progress=False)
    assert path.read_text() == ",".join(CONVERGENCE_COLUMNS) + "\n"


# ---------------------------------------------------------------- the study's reduction and budget rule


def _study_frame(curve_w2: dict[int, list[float]], curve_cov: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for metric, curve in (("w2", curve_w2), ("coverage", curve_cov)):
        for step, values in curve.items():
            for seed, value in enumerate(values):
                rows.append({"dataset": "moons", "method": "flow_matching", "seed": seed, "step": step,
                             "sampler": "ode_euler", "nfe": 100, "metric": metric, "value": value})
                # a worse sampler of the same method, never the one shown
                rows.append({"dataset": "moons", "method": "flow_matching", "seed": seed, "step": step,
                             "sampler": "ode_heun", "nfe": 100, "metric": metric,
                             "value": value + 1.0 if metric == "w2" else value})
    rows.append({"dataset": "moons", "method": "data", "seed": 0, "step": 0, "sampler": "data", "nfe": 0,
                 "metric": "w2", "value": 0.1})
    return pd.DataFrame(rows)


def test_the_rule_takes_the_first_step_from_which_every_later_mean_is_within_the_last_interval():
    from pipeline.convergence import budget_table, chosen_budget

    w2 = {500: [0.9, 1.0, 1.1], 1000: [0.30, 0.31, 0.29], 2000: [0.5, 0.52, 0.48],  # a late bump
          5000: [0.30, 0.29, 0.31], 10000: [0.30, 0.31, 0.29]}
    coverage = {500: [0.2, 0.3, 0.25], 1000: [0.9, 0.91, 0.89], 2000: [0.9, 0.9, 0.9], 5000: [0.95, 0.96, 0.94],
                10000: [0.9, 0.91, 0.89]}  # within at 1000, better than the last at 5000
    table = budget_table(_study_frame(w2, coverage))
    row = table.iloc[0]
    assert row.sampler == "ode_euler"
    assert row.w2 == 5000  # 1000 is within the interval, but 2000 after it is not
    assert row.coverage == 1000
    assert row.converged == 5000 and chosen_budget(_study_frame(w2, coverage)) == 5000


def test_the_convergence_section_and_figure(tmp_path):
    from pipeline.convergence import convergence_figure, convergence_lines

    frame = _study_frame({500: [1.0, 1.1, 0.9], 1000: [0.3, 0.31, 0.29]}, {500: [0.2, 0.3, 0.1], 1000: [0.9] * 3})
    text = "\n".join(convergence_lines(frame, "a test"))
    assert "**1000 steps** on 2-D sets" in text and "Student-t" in text
    assert "moons / flow_matching (ode_euler)" in text and "1.000 ± 0.248" in text
    from pipeline.report.figures import save

    save(convergence_figure(frame), tmp_path, "convergence")
    assert (tmp_path / "convergence.png").stat().st_size > 1000 and (tmp_path / "convergence.svg").exists()
    assert convergence_lines(frame[frame.method == "data"], "a test") == []


def test_the_convergence_figure_has_a_row_per_data_set_and_every_method_in_its_legend():
    """A method studied on one data set only (PFGM's long arm on eight_gaussians) is in the legend too."""
    from pipeline.convergence import convergence_figure

    frame = pd.read_csv(Path(__file__).resolve().parents[1] / "reports" / "studies" / "convergence.csv")
    fig = convergence_figure(frame)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    rows = {ax.get_subplotspec().rowspan.start for ax in shown}
    assert len(rows) == frame.dataset.nunique()
    for ax in shown:  # each row is one data set
        dataset = ax.get_title().split(":")[0]
        assert {other.get_title().split(":")[0] for other in shown
                if other.get_subplotspec().rowspan.start == ax.get_subplotspec().rowspan.start} == {dataset}
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert set(frame.method[frame.method != "data"]) <= set(labels) and labels[-1] == "data floor"


def test_a_longer_arm_s_steps_come_in_order_before_the_floor():
    """One curve studied to 20,000 steps and one to 1,000 (as the long arm of the study): the columns are the
    steps in order, then the floor; the shorter curve's missing step is a dash."""
    from pipeline.convergence import curve_table

    short = _study_frame({500: [1.0, 1.1, 0.9], 1000: [0.3, 0.31, 0.29]}, {})
    long = _study_frame({500: [1.0] * 3, 20000: [0.2] * 3}, {})
    table = curve_table(pd.concat([short, long[long.method != "data"].assign(method="ddpm")]), "w2")
    assert list(table.columns) == ["500", "1000", "20000", "floor"]
    assert table.loc["moons / flow_matching (ode_euler)", "20000"] == "—"
