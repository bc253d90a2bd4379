"""Reliability: kill-and-resume is bit-identical, writes are atomic, divergence is caught, bad
artifacts fail with one line, and nothing touches the network."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import pipeline.io as pio
from pipeline.cli import app
from pipeline.config import load_params
from pipeline.schema import TrainSettings
from pipeline.layout import model_file
from pipeline.prepare import run_prepare
from pipeline.training import CheckpointError, TrainingDiverged, load_checkpoint, train

#: a run small enough for seconds on one core: 200 steps of a 2x32 MLP, a checkpoint every 7 steps
TINY = {
    "seeds": [0],
    "device": "cpu",
    "datasets": ["moons"],
    "data": {"seed": 0, "n_train": 512, "n_test": 200, "n_reference": 400},
    "train": {"toy": {"steps": 200, "batch_size": 64, "lr": 0.002, "warmup_steps": 10, "ema_decay": 0.99,
                      "checkpoint_every": 7, "log_every": 10}},
    "network": {"mlp": {"hidden": 32, "depth": 2, "time_embedding": 8}},
    "sample": {"n_samples": 100},
    "evaluate": {"w2_points": 100, "floor_repeats": 2, "nll_points": 8, "ode_rtol": 1e-3, "ode_atol": 1e-3},
    "methods": {"flow_matching": {"budgets": [4], "samplers": ["ode_euler"]}},
}

#: runs the real train stage, printing each finished step and going on only when told to
DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import pipeline.stages as stages
    from pipeline.config import load_params

    root = Path(sys.argv[1])
    train = stages.train

    def report(step):
        print(step, flush=True)
        sys.stdin.readline()

    stages.train = lambda *args, **kwargs: train(*args, on_step=report, **kwargs)
    stages.run_train(root, load_params(root / "params.yaml"), "flow_matching", "moons", 0, progress=False)
    print("done", flush=True)
""")


def make_root(path: Path, params: dict = TINY) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def invoke(root: Path, *args: str):
    return CliRunner().invoke(app, ["--params", str(root / "params.yaml"), *args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*") if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and a busy 2-core machine makes more threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    """prepare, train, sample and evaluate the tiny run through the CLI with every socket refused."""
    root = make_root(tmp_path_factory.mktemp("trained"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["toy"]["steps"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    attempts: list = []
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch, attempts)
        for command in (["prepare", "-d", "moons"], ["train", "-m", "flow_matching", "-d", "moons", "--no-progress"],
                        ["sample", "-m", "flow_matching", "-d", "moons", "--no-progress"],
                        ["evaluate", "-m", "flow_matching", "-d", "moons", "--reuse-samples"],
                        ["evaluate", "-d", "moons"]):
            result = invoke(root, *command)
            assert result.exit_code == 0, (command, result.output, result.exception)
    return root, attempts


def refuse_network(patch: pytest.MonkeyPatch, attempts: list) -> None:
    """Make every internet connection or name lookup fail, recording who tried."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(original):
        def call(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                attempts.append(address)
                raise OSError(errno.ENETUNREACH, "network access refused by the test")
            return original(self, address, *args)
        return call

    def lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("name lookup refused by the test")

    patch.setattr(socket.socket, "connect", guarded(connect))
    patch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    patch.setattr(socket, "getaddrinfo", lookup)


# ------------------------------------------------------------------ kill and resume


def run_and_kill(root: Path, kill_after: int, rng: random.Random) -> tuple[int, int]:
    """Run the train stage in a subprocess and SIGKILL it a random instant (0-3 ms) after letting it
    go on from step `kill_after`: somewhere in the next step's compute or checkpoint write.
    Returns (exit code, last step reported)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    driver = root.parent / "driver.py"
    driver.write_text(DRIVER)
    errors = (root.parent / "driver.err").open("w")
    process = subprocess.Popen([sys.executable, str(driver), str(root)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    last = 0
    try:
        for line in process.stdout:
            if not line.strip().isdigit():
                continue
            last = int(line)
            process.stdin.write("go\n")
            process.stdin.flush()
            if last >= kill_after:
                time.sleep(rng.uniform(0, 0.003))
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        errors.close()
    return process.returncode, last


def run_to_the_end(root: Path) -> None:
    """The same stage in this process, on one thread like the driver (same kernels, same bits)."""
    from pipeline.stages import run_train

    assert torch.get_num_threads() == 1
    run_train(root, load_params(root / "params.yaml"), "flow_matching", "moons", 0, progress=False)


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    reference, interrupted = make_root(tmp_path / "reference"), make_root(tmp_path / "interrupted")
    params = load_params(reference / "params.yaml")
    run_prepare(reference, params, "moons")
    (interrupted / "data").mkdir()
    (interrupted / "data" / "moons.npz").write_bytes((reference / "data" / "moons.npz").read_bytes())

    steps = TINY["train"]["toy"]["steps"]
    rng = random.Random()
    first = rng.randrange(3, steps // 2)
    second = rng.randrange(first + 8, steps - 3)
    checkpoints = interrupted / "checkpoints" / "flow_matching" / "moons"
    for kill_after in (first, second):
        code, last = run_and_kill(interrupted, kill_after, rng)
        assert code == -signal.SIGKILL, (last, (tmp_path / "driver.err").read_text()[-2000:])
        assert not model_file(interrupted, "flow_matching", "moons", 0).exists()
        if last >= 7:
            [checkpoint] = checkpoints.glob("seed0-*.pt")
            assert 0 < torch.load(checkpoint, weights_only=False)["step"] <= last + 1
    run_to_the_end(interrupted)
    run_to_the_end(reference)

    def saved(root: Path) -> tuple[dict, dict]:
        model = torch.load(model_file(root, "flow_matching", "moons", 0), weights_only=False)["state_dict"]
        [checkpoint] = (root / "checkpoints" / "flow_matching" / "moons").glob("seed0-*.pt")
        state = torch.load(checkpoint, weights_only=False)
        return model, {**{f"net.{k}": v for k, v in state["model"].items()},
                       **{f"adam.{k}": v for k, v in state["optimizer"]["state"][0].items()}}

    (model_a, net_a), (model_b, net_b) = saved(reference), saved(interrupted)
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), f"EMA {name} differs after kills at {first}, {second}"
    for name in net_a:
        assert torch.equal(net_a[name], net_b[name]), f"{name} differs after kills at {first}, {second}"
    curve = Path("metrics/train/flow_matching/moons/seed0.csv")
    assert (reference / curve).read_text() == (interrupted / curve).read_text()
    assert leftovers(interrupted) == []


# ------------------------------------------------------------------ atomic writes


@pytest.fixture
def fault(monkeypatch):
    """Make the next atomic rename fail with the given exception (a stage dying mid-write)."""
    def arm(error: BaseException) -> None:
        def hook(path: Path) -> None:
            raise error
        monkeypatch.setattr(pio, "FAULT_HOOK", hook)
    return arm


def test_failed_write_leaves_the_old_file_or_none(tmp_path, fault):
    target = tmp_path / "out" / "result.json"
    fault(RuntimeError("killed mid-write"))
    with pytest.raises(RuntimeError):
        pio.write_json(target, {"new": 1})
    assert not target.exists() and leftovers(tmp_path) == []
    pio.FAULT_HOOK = None
    pio.write_json(target, {"old": 1})
    fault(RuntimeError("killed mid-write"))
    with pytest.raises(RuntimeError):
        pio.write_json(target, {"new": 1})
    assert target.read_text() == '{\n  "old": 1\n}\n' and leftovers(tmp_path) == []


def test_atomic_writes_get_the_permissions_a_plain_write_would(tmp_path):
    """mkstemp makes 0600 files and mkdtemp 0700 folders: the report was unreadable to other users."""
    import os
    import stat

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    pio.write_text(tmp_path / "atomic.txt", "x")
    with pio.atomic_directory(tmp_path / "figures") as folder:
        (folder / "a.png").write_bytes(b"x")
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(plain)
    assert mode(tmp_path / "figures") == mode(tmp_path / "plain_dir")


def test_failed_directory_write_keeps_the_old_directory(tmp_path, fault):
    target = tmp_path / "figures"
    with pio.atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    fault(RuntimeError("killed mid-write"))
    with pytest.raises(RuntimeError):
        with pio.atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_disk_full_during_a_stage_write_is_one_line_and_keeps_the_old_output(tmp_path, fault):
    root = make_root(tmp_path)
    assert invoke(root, "prepare", "-d", "moons").exit_code == 0
    data = root / "data" / "moons.npz"
    before = data.read_bytes()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    fault(OSError(errno.ENOSPC, "No space left on device", str(data)))
    line = one_line_error(invoke(root, "prepare", "-d", "moons"), code=1)
    assert "No space left on device" in line and "moons.npz" in line
    assert data.read_bytes() == before and leftovers(root) == []


def test_sigkill_during_a_write_leaves_no_partial_output(tmp_path):
    """A process killed at the rename leaves only a hidden temporary, which the next write removes."""
    root = make_root(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import pipeline.io as pio
        from pipeline.config import load_params
        from pipeline.prepare import run_prepare
        pio.FAULT_HOOK = lambda path: os.kill(os.getpid(), signal.SIGKILL)
        root = Path({str(root)!r})
        run_prepare(root, load_params(root / "params.yaml"), "moons")
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    data = root / "data" / "moons.npz"
    assert not data.exists() and len(leftovers(root)) == 1
    assert invoke(root, "prepare", "-d", "moons").exit_code == 0
    assert data.exists() and leftovers(root) == []


# ------------------------------------------------------------------ divergence


def toy_problem(tmp_path: Path, nan_at_call: int, where: str = "loss"):
    """A 2-D regression whose loss (or gradient) becomes NaN on the given call."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    calls = [0]

    def loss_fn(model, batch, generator):
        calls[0] += 1
        loss = (model(batch) - batch).pow(2).sum(1)
        if calls[0] == nan_at_call:
            if where == "loss":
                return loss * float("nan")
            return loss + (model(batch) - model(batch).detach()).pow(2).sum(1).sqrt()  # finite value, NaN gradient
        return loss

    settings = TrainSettings(steps=50, batch_size=32, lr=1e-2, warmup_steps=0, checkpoint_every=10, log_every=5)
    return net, loss_fn, data, settings, tmp_path / "ckpt.pt"


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nan_stops_training_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, where):
    net, loss_fn, data, settings, checkpoint = toy_problem(tmp_path, nan_at_call=27, where=where)
    with pytest.raises(TrainingDiverged) as caught:
        train(net, loss_fn, data, settings, 0, checkpoint, "toy", progress=False)
    message = str(caught.value)
    assert f"non-finite {where} at step 27" in message and "(step 20) is kept" in message
    assert "\n" not in message
    state = load_checkpoint(checkpoint, "toy")
    assert state["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_before_the_first_checkpoint_says_so(tmp_path):
    net, loss_fn, data, settings, checkpoint = toy_problem(tmp_path, nan_at_call=3)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3; no checkpoint had been written yet"):
        train(net, loss_fn, data, settings, 0, checkpoint, "toy", progress=False)
    assert not checkpoint.exists()


def test_nan_through_the_cli_is_one_line_and_exit_1(tmp_path, monkeypatch):
    from pipeline.methods.flow_matching import FlowMatching

    root = make_root(tmp_path)
    assert invoke(root, "prepare", "-d", "moons").exit_code == 0
    calls = [0]
    loss = FlowMatching.loss

    def poisoned(self, net, batch, generator):
        calls[0] += 1
        value = loss(self, net, batch, generator)
        return value * float("nan") if calls[0] == 16 else value

    monkeypatch.setattr(FlowMatching, "loss", poisoned)
    line = one_line_error(invoke(root, "train", "-m", "flow_matching", "-d", "moons", "--no-progress"), code=1)
    assert "non-finite loss at step 16" in line and "(step 14) is kept" in line
    assert not model_file(root, "flow_matching", "moons", 0).exists()


# ------------------------------------------------------------------ artifacts made by other parameters or cut short


def test_resuming_from_a_checkpoint_made_by_other_parameters_is_refused(tmp_path):
    net, loss_fn, data, settings, checkpoint = toy_problem(tmp_path, nan_at_call=0)
    train(net, loss_fn, data, settings, 0, checkpoint, "recipe-a", progress=False)
    with pytest.raises(CheckpointError, match="made by other parameters"):
        train(net, loss_fn, data, settings, 0, checkpoint, "recipe-b", progress=False)


def _checkpoint(root: Path) -> Path:
    [path] = (root / "checkpoints" / "flow_matching" / "moons").glob("seed0-*.pt")
    return path


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "is unreadable"),
    ("identity", "was made by other parameters"),
    ("weights", "is corrupt"),
])
def test_damaged_checkpoint_fails_with_one_line(trained_root, tmp_path, damage, expected):
    source, _ = trained_root
    root = tmp_path / "copy"
    for relative in ("params.yaml", "data/moons.npz", _checkpoint(source).relative_to(source)):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((source / relative).read_bytes())
    checkpoint = _checkpoint(root)
    if damage == "truncate":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    else:
        state = torch.load(checkpoint, weights_only=False)
        if damage == "identity":
            state["identity"] = "0123456789abcdef"
        else:
            next(iter(state["model"].values())).add_(1.0)
        torch.save(state, checkpoint)
    line = one_line_error(invoke(root, "train", "-m", "flow_matching", "-d", "moons", "--no-progress"))
    assert expected in line and checkpoint.name in line and "delete it" in line


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "is unreadable"),
    ("other parameters", "with other parameters"),
    ("missing", "is missing"),
])
def test_damaged_or_foreign_model_fails_with_one_line(trained_root, tmp_path, damage, expected):
    source, _ = trained_root
    root = tmp_path / "copy"
    model = model_file(root, "flow_matching", "moons", 0)
    params = yaml.safe_load((source / "params.yaml").read_text())
    for relative in ("data/moons.npz", model.relative_to(root)):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((source / relative).read_bytes())
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "other parameters":
        params["methods"]["flow_matching"]["sigma_min"] = 0.1
    else:
        model.unlink()
    make_root(root, params)
    line = one_line_error(invoke(root, "sample", "-m", "flow_matching", "-d", "moons", "--no-progress"))
    assert expected in line and "seed0.pt" in line


def test_missing_data_file_fails_with_one_line(tmp_path):
    root = make_root(tmp_path)
    line = one_line_error(invoke(root, "train", "-m", "flow_matching", "-d", "moons", "--no-progress"))
    assert "moons.npz is missing" in line and "prepare" in line


def test_names_outside_params_fail_with_one_line(tmp_path):
    root = make_root(tmp_path)
    assert "--method 'ddpm'" in one_line_error(invoke(root, "train", "-m", "ddpm", "-d", "moons"))
    assert "--dataset 'swiss_roll'" in one_line_error(invoke(root, "prepare", "-d", "swiss_roll"))


# ------------------------------------------------------------------ no network unless asked for


def test_stages_and_publish_never_touch_the_network(trained_root, monkeypatch):
    root, attempts = trained_root
    assert attempts == [], f"a stage tried to reach the network: {attempts}"
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "results.csv").write_text("method,dataset,seed,sampler,nfe,metric,value\n")
    (root / "reports" / "summary.md").write_text("# summary\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    refuse_network(monkeypatch, attempts)
    result = invoke(root, "publish")
    assert result.exit_code == 0, (result.output, result.exception)
    assert (root / "mlflow.db").exists() and attempts == []


def test_unreachable_tracking_server_is_one_line(trained_root, tmp_path, monkeypatch):
    root, _ = trained_root
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "results.csv").write_text("method,dataset,seed,sampler,nfe,metric,value\n")
    (root / "reports" / "summary.md").write_text("# summary\n")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    line = one_line_error(invoke(root, "publish"))
    assert f"cannot reach the MLflow tracking store http://127.0.0.1:{port}" in line and "MLFLOW_TRACKING_URI" in line


def test_pot_loads_without_its_optional_extras_and_leaves_them_importable():
    """pipeline.metrics.import_pot hides scikit-learn / networkx while POT loads (a fresh interpreter, as a
    stage is), then removes the hiding: POT's exact OT still works and scikit-learn still imports."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from pipeline.metrics import import_pot, w2_exact
        ot = import_pot()
        assert "sklearn" not in sys.modules and "networkx" not in sys.modules
        assert sys.modules.get("sklearn", "absent") == "absent"
        x = np.array([[0.0, 0.0], [1.0, 0.0]])
        assert abs(w2_exact(x, x + [0.0, 2.0]) - 2.0) < 1e-12
        import sklearn.cluster
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
