"""README's "Adding a method" example works as written: one module plus one line in METHODS."""

import re
from pathlib import Path

import torch

from pipeline.config import Params
from pipeline.methods import METHODS
from pipeline.metrics import w2_exact

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_method_trains_validates_and_samples(monkeypatch, mixture, mixture_reference):
    code = re.search(r"```python\n(# pipeline/methods/trig_flow.py\n.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "trig_flow.py", "exec"), namespace)
    monkeypatch.setitem(METHODS, "trig_flow", namespace["TrigFlow"])
    params = Params.model_validate({"datasets": ["moons"], "methods": {"trig_flow": {"budgets": [100, 20]}}})
    method = METHODS["trig_flow"](params.method_config("trig_flow"), (2,))
    assert [sampler for sampler, budget in method.sampler_runs() if budget != 20] == [
        "ode_euler", "ode_heun", "ode_rk45", "dpm_solver_pp_2m", "ancestral_beta", "ancestral_posterior",
        "ddim-eta0.0-uniform", "ddim-eta0.0-quadratic", "ddim-eta1.0-uniform", "ddim-eta1.0-quadratic"]
    net = mixture.network(method.path, method.prediction)
    reference, floor = mixture_reference
    for sampler in ("ode_heun", "dpm_solver_pp_2m", "ddim-eta1.0-uniform"):  # shared samplers come with the path
        result = method.sample(net, sampler, 100, 1500, torch.Generator().manual_seed(0))
        assert w2_exact(result.x.numpy(), reference) < 1.5 * floor, sampler
    loss = method.loss(method.make_network(params.network), torch.randn(8, 2), torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()


def _block(header: str) -> str:
    return re.search(r"```python\n(# " + re.escape(header) + r".*?)```", README.read_text(), re.S).group(1)


def test_readme_example_sampler_joins_every_method_with_its_capability(monkeypatch, mixture, mixture_reference):
    from pipeline import samplers

    monkeypatch.setattr(samplers, "SAMPLERS", dict(samplers.SAMPLERS))
    namespace = {name: getattr(samplers, name) for name in ("grids", "CountingFn", "SolverResult", "SamplerSpec",
                                                            "SAMPLERS", "torch")}
    exec(compile(_block("pipeline/samplers.py"), "samplers.py", "exec"), namespace)
    for name, cls in METHODS.items():
        method = cls(cls.Config(), (2,))
        assert ("ode_midpoint" in method.samplers) == ("ode" in cls.capabilities), name
    method = METHODS["vp_sde"](METHODS["vp_sde"].Config(), (2,))
    net = mixture.network(method.path, method.prediction)
    result = method.sample(net, "ode_midpoint", 100, 1500, torch.Generator().manual_seed(0))
    reference, floor = mixture_reference
    assert w2_exact(result.x.numpy(), reference) < 1.5 * floor
    assert result.nfe == 99  # 49 midpoint steps and the denoising step, within the budget


def test_readme_example_metric_is_scored_and_reported(monkeypatch):
    import numpy as np

    from pipeline import evaluation, metric_table
    from pipeline.config import load_params
    from pipeline.metric_table import Metric

    entry = eval(_block("pipeline/metric_table.py"), {"Metric": Metric})
    namespace: dict = {}
    exec(compile(_block("pipeline/evaluation.py"), "evaluation.py", "exec"), namespace)
    monkeypatch.setattr(metric_table, "METRICS", (*metric_table.METRICS, entry))
    monkeypatch.setattr(metric_table, "_BY_KEY", {**metric_table._BY_KEY, ("energy", "toy"): entry})
    monkeypatch.setitem(evaluation.SCORERS, "energy", namespace["_energy"])

    class Data:
        kind, test = "toy", np.random.default_rng(0).normal(size=(300, 2))
        meta = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}

    scorer = evaluation.SampleScorer(None, load_params("profiles/smoke.yaml"), "moons", Data(), "cpu")
    same = scorer(np.random.default_rng(1).normal(size=(300, 2)), 0)["energy"]
    shifted = scorer(np.random.default_rng(1).normal(size=(300, 2)) + 1.0, 0)["energy"]
    assert abs(same) < 0.05 < shifted
    assert metric_table.directions("toy", table="headline")["energy"] is True
