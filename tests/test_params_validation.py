"""params.yaml validation through the CLI: every mistake is one line naming the key, exit code 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]

#: a small valid params file every malformed case starts from
BASE = {
    "seeds": [0, 1],
    "device": "cpu",
    "datasets": ["moons", "gaussian_mixture"],
    "data": {"seed": 0, "n_train": 2000, "n_test": 500, "n_reference": 1000},
    "train": {"toy": {"steps": 200, "batch_size": 256, "lr": 0.002, "warmup_steps": 10,
                      "lr_schedule": "cosine", "ema_decay": 0.995, "grad_clip": 1.0,
                      "checkpoint_every": 100, "log_every": 20}},
    "network": {"mlp": {"hidden": 32, "depth": 2, "time_embedding": 16}},
    "sample": {"n_samples": 500},
    "evaluate": {"w2_points": 500, "floor_repeats": 2, "nll_points": 200, "ode_rtol": 1e-4, "ode_atol": 1e-4},
    "report": {"headline_nfe": 20},
    "mlflow": {"experiment": "benchmark"},
    "methods": {
        "ddpm": {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "budgets": [20, 5],
                 "samplers": ["ancestral_beta"], "ddim_etas": [0.0, 1.0]},
        "flow_matching": {"sigma_min": 0.0, "budgets": [20, 5], "train": {"steps": 100}},
        "ve_sde": {"sigma_min": 0.01, "sigma_max": 10.0},
    },
}


def _set(path: str, value):
    def mutate(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _drop(path: str):
    def mutate(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


#: (case id, mutation of BASE, the key path the error must name, a word the error must contain)
MALFORMED = [
    ("unknown top-level key", _set("epochs", 3), "epochs", "accepted"),
    ("unknown nested key", _set("train.toy.stepz", 10), "train.toy.stepz", "accepted"),
    ("unknown method key", _set("methods.ddpm.num_step", 10), "methods.ddpm.num_step", "accepted"),
    ("unknown per-method train key", _set("methods.flow_matching.train.epochs", 1),
     "methods.flow_matching.train.epochs", "accepted"),
    ("negative step count", _set("train.toy.steps", -5), "train.toy.steps", "greater than 0"),
    ("zero step count", _set("train.toy.steps", 0), "train.toy.steps", "greater than 0"),
    ("negative per-method steps", _set("methods.flow_matching.train.steps", -1),
     "methods.flow_matching.train.steps", "greater than 0"),
    ("fractional step count", _set("train.toy.steps", 1.5), "train.toy.steps", "integer"),
    ("step count as text", _set("train.toy.steps", "many"), "train.toy.steps", "integer"),
    ("boolean for a number", _set("train.toy.lr", True), "train.toy.lr", "number"),
    ("infinite learning rate", _set("train.toy.lr", float("inf")), "train.toy.lr", "finite"),
    ("nan learning rate", _set("train.toy.lr", float("nan")), "train.toy.lr", "finite"),
    ("negative warm-up", _set("train.toy.warmup_steps", -1), "train.toy.warmup_steps", "greater than or equal"),
    ("ema decay of one", _set("train.toy.ema_decay", 1.0), "train.toy.ema_decay", "less than 1"),
    ("unknown lr schedule", _set("train.toy.lr_schedule", "linear"), "train.toy.lr_schedule", "cosine"),
    ("unknown device", _set("device", "tpu"), "device", "cuda"),
    ("unknown precision", _set("precision", "fp16"), "precision", "bf16"),
    ("empty method list", _set("methods", {}), "methods", "empty"),
    ("methods as a list", _set("methods", ["ddpm"]), "methods", "mapping"),
    ("unknown method", _set("methods.ddim", {}), "methods.ddim", "flow_matching"),
    ("method section as text", _set("methods.ddpm", "default"), "methods.ddpm", "accepted keys"),
    ("unknown data set", _set("datasets", ["moons", "mnsit"]), "datasets", "swiss_roll"),
    ("empty data set list", _set("datasets", []), "datasets", "empty"),
    ("data sets as text", _set("datasets", "moons"), "datasets", "list"),
    ("repeated data set", _set("datasets", ["moons", "moons"]), "datasets", "repeat"),
    ("missing data sets", _drop("datasets"), "datasets", "missing"),
    ("unknown sampler", _set("methods.ddpm.samplers", ["euler"]), "methods.ddpm.samplers", "ancestral_beta"),
    ("empty sampler list", _set("methods.ddpm.samplers", []), "methods.ddpm.samplers", "empty"),
    ("empty budget list", _set("methods.ddpm.budgets", []), "methods.ddpm.budgets", "empty"),
    ("negative budget", _set("methods.ddpm.budgets", [20, -5]), "methods.ddpm.budgets[1]", "greater than 0"),
    ("repeated budget", _set("methods.ddpm.budgets", [20, 20]), "methods.ddpm.budgets", "repeat"),
    ("eta above one", _set("methods.ddpm.ddim_etas", [0.0, 1.5]), "methods.ddpm.ddim_etas[1]", "less than or equal to 1"),
    ("eta below zero", _set("methods.ddpm.ddim_etas", [-0.1]), "methods.ddpm.ddim_etas[0]", "greater than or equal to 0"),
    ("sigma_min above sigma_max", _set("methods.ve_sde.sigma_min", 20.0), "methods.ve_sde", "sigma_max"),
    ("sigma_min equal to sigma_max", _set("methods.ve_sde.sigma_min", 10.0), "methods.ve_sde", "sigma_max"),
    ("flow matching sigma_min of one", _set("methods.flow_matching.sigma_min", 1.0),
     "methods.flow_matching.sigma_min", "less than 1"),
    ("beta above one", _set("methods.ddpm.beta_end", 1.5), "methods.ddpm.beta_end", "less than 1"),
    ("repeated seeds", _set("seeds", [0, 0]), "seeds", "distinct"),
    ("negative seed", _set("seeds", [-1]), "seeds", "non-negative"),
    ("seed as text", _set("seeds", ["zero"]), "seeds[0]", "integer"),
    ("section as a number", _set("network", 3), "network", "accepted keys"),
    ("empty section", _set("data", None), "data", "accepted keys"),
    ("zero hidden units", _set("network.mlp.hidden", 0), "network.mlp.hidden", "greater than 0"),
    ("zero ODE tolerance", _set("evaluate.ode_rtol", 0), "evaluate.ode_rtol", "greater than 0"),
    ("empty experiment name", _set("mlflow.experiment", ""), "mlflow.experiment", "empty"),
]


def _validate(runner: CliRunner, path: Path):
    return runner.invoke(app, ["--params", str(path), "validate"])


def _assert_one_line_error(result, key: str | None = None) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    if key is not None:
        assert f": {key}: " in lines[0], lines[0]
    return lines[0]


def test_base_params_are_valid(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(BASE))
    result = _validate(CliRunner(), path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("params OK: 3 methods x 2 data sets x 2 seeds")


@pytest.mark.parametrize("mutate, key, word", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_params_give_one_line_naming_the_key(tmp_path, mutate, key, word):
    params = copy.deepcopy(BASE)
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    line = _assert_one_line_error(_validate(CliRunner(), path), key)
    assert word in line, line


@pytest.mark.parametrize("text, word", [
    ("seeds: [0\n", "not valid YAML (line 2)"),
    ("- moons\n- ddpm\n", "mapping of sections"),
    ("", "mapping of sections"),
    ("\tseeds: [0]\n", "not valid YAML"),
], ids=["unclosed list", "top-level list", "empty file", "tab indentation"])
def test_unparseable_files_give_one_line(tmp_path, text, word):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert word in _assert_one_line_error(_validate(CliRunner(), path))


def test_missing_and_binary_files_give_one_line(tmp_path):
    runner = CliRunner()
    assert "file not found" in _assert_one_line_error(_validate(runner, tmp_path / "absent.yaml"))
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot be read" in _assert_one_line_error(_validate(runner, binary))


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `lr: 2e-3` as a string; DVC (YAML 1.2) reads a number, and so do we."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(BASE).replace("lr: 0.002", "lr: 2e-3"))
    from pipeline.config import load_params

    assert load_params(path).train.toy.lr == 2e-3


def test_the_installed_command_prints_one_line_not_a_traceback(tmp_path):
    params = copy.deepcopy(BASE)
    params["train"]["toy"]["steps"] = -5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "--params", str(path), "validate"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: {path}: train.toy.steps: must be greater than 0, got -5"]


def test_debug_shows_the_exception(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**BASE, "device": "tpu"}))
    result = CliRunner().invoke(app, ["--params", str(path), "--debug", "validate"])
    from pipeline.config import ParamsError

    assert isinstance(result.exception, ParamsError) and "device" in str(result.exception)


# ------------------------------------------------------------------ random mutations of params.yaml

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=6), SCALARS, max_size=2))


def _locations(node, path=()):
    """Every (container, key) pair of a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _locations(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield node, index
            yield from _locations(value, path + (index,))


@st.composite
def mutated_params(draw) -> str:
    """params.yaml with a few keys dropped, renamed or added, values replaced, or random text spliced in."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for _ in range(draw(st.integers(1, 3))):
        locations = list(_locations(params))
        container, key = draw(st.sampled_from(locations))
        action = draw(st.sampled_from(["drop", "replace", "rename", "add"]))
        if action == "drop":
            del container[key]
        elif action == "replace":
            container[key] = draw(VALUES)
        elif action == "rename" and isinstance(container, dict):
            container[draw(st.text(max_size=10))] = container.pop(key)
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(VALUES)
    text = yaml.safe_dump(params, allow_unicode=True)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(st.text(max_size=8)) + text[position:]
    return text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_params())
def test_random_mutations_never_give_a_traceback(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    result = _validate(CliRunner(), path)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        _assert_one_line_error(result)
    else:
        assert result.stdout.startswith("params OK")


def test_method_train_overrides_apply_per_kind_of_data():
    """methods.<name>.train overrides both kinds; its toy: / image: sub-sections override one, and win."""
    from pipeline.config import Params

    raw = copy.deepcopy(BASE)
    raw["methods"]["flow_matching"]["train"] = {"steps": 100, "lr": 0.01, "toy": {"steps": 150},
                                                "image": {"batch_size": 16}}
    params = Params.model_validate(raw)
    toy, image = params.train_settings("flow_matching", "toy"), params.train_settings("flow_matching", "image")
    assert (toy.steps, toy.lr, toy.batch_size) == (150, 0.01, 256)
    assert (image.steps, image.lr, image.batch_size) == (100, 0.01, 16)
    assert params.train_settings("ddpm", "toy").steps == 200


def test_unknown_per_kind_train_key_is_one_line(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["methods"]["flow_matching"]["train"] = {"toy": {"stepz": 5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["--params", str(tmp_path / "params.yaml"), "validate"])
    assert result.exit_code == 2
    assert "methods.flow_matching.train.toy.stepz" in result.output and "\n" not in result.output.strip()
