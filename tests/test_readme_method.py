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
