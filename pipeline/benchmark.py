"""`pipeline bench`: the project's speed against its limits, written to reports/benchmarks.md and .csv.

Each figure is the median of `repeats` runs after a warm-up, on the machine the command runs on (its
description heads the report). Timings are measurements, not results: they are never a DVC output, so
`dvc repro` stays byte-identical, and the unit tests only run this at tiny sizes (no timed assertions).

- sampler overhead: wall time of a sampler / (its NFE x one network forward at the same batch), the
  forward timed on the sampler's own first call (an adaptive solver's is its float64 copy), each sampler
  run timed back to back with NFE such forwards and the median of the pairs' ratios kept; the limit is 1.
- trainer: steps per second of the bare loop (same net, batch, optimizer; no EMA, clipping or logging)
  over the one training loop's (pipeline.training), per step: a run's one-off costs (the EMA copy, the final
  checkpoint), timed by a 0-step run, are taken off; and a checkpoint's cost per step at checkpoint_every.
- evaluation: exact W2, sliced W2, the FID feature pass and the ODE likelihood at params.yaml's sizes.
- a profile's `dvc repro` in a copy of the repository: from scratch, no-op, peak resident memory per stage
  kind, and the same run from scratch with one CPU-bound process beside it, as a ratio to the idle run.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data import prepare_toy
from pipeline.data.images import load_digits_pool, to_model_space
from pipeline.errors import StageError
from pipeline.io import write_text
from pipeline.layout import resolve_device
from pipeline.methods import METHODS, build_method
from pipeline import rng
from pipeline.rng import SampleStreams
from pipeline.io import save_torch
from pipeline.training import train, weights_digest

#: the targets of the performance issue (README "Run time")
FIXED_STEP_OVERHEAD, ADAPTIVE_OVERHEAD, TRAINER_RATIO, NOOP_SECONDS, BUSY_RATIO = 1.03, 1.10, 0.95, 5.0, 1.5
DEFAULT_PROFILE_MINUTES = 20.0
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Figure:
    section: str
    item: str
    value: float
    unit: str
    target: str = ""
    holds: str = ""
    note: str = ""


def _check(value: float, limit: float, at_most: bool = True) -> str:
    return "yes" if (value <= limit if at_most else value >= limit) else "no"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"cpu": model, "cores": str(cores), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "threads": os.environ.get("PIPELINE_NUM_THREADS", "governed (pipeline.threads)"),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ---------------------------------------------------------------- samplers


class _FirstForward:
    """Captures the first call of a network of the given class (and its inputs) while a sampler runs."""

    def __init__(self, net_type: type):
        self.net_type, self.call = net_type, None

    def __enter__(self):
        def hook(module, args):
            if self.call is None and type(module) is self.net_type:
                self.call = (module, tuple(a.detach().clone() for a in args))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def forwards(self, calls: int) -> Callable[[], None]:
        """`calls` forwards of the captured call, one after the other (as a sampler makes them)."""
        module, args = self.call

        def run() -> None:
            with torch.no_grad():
                for _ in range(calls):
                    module(*args)

        return run

    def forward_seconds(self, repeats: int) -> float:
        return median_seconds(self.forwards(1), max(5, 3 * repeats))


def paired_ratio(numerator: Callable[[], object], denominator: Callable[[], object], repeats: int) -> float:
    """The median over `repeats` pairs of numerator's time over denominator's, the two timed back to back (after
    one warm-up pair), so that a change of the machine's speed within the run (another process, the clock)
    moves both sides of each ratio alike."""
    ratios = []
    for _ in range(repeats + 1):
        ratios.append(median_seconds(numerator, 1, warmup=0) / median_seconds(denominator, 1, warmup=0))
    return statistics.median(ratios[1:])


def _trained(params: Params, name: str, data: torch.Tensor, kind: str, steps: int, device):
    """A method and its network after `steps` steps of the one training loop (kind: "toy" or "image")."""
    method = build_method(name, params.method_config(name), tuple(data.shape[1:]))
    torch.manual_seed(0)
    net = method.make_network(params.network)
    settings = params.train_settings(name, kind).model_copy(
        update={"steps": steps, "checkpoint_every": max(steps, 1), "snapshots": []})
    with tempfile.TemporaryDirectory() as tmp:
        train(net, method.loss, method.training_data(data), settings, 0, Path(tmp) / "state.pt", "bench", device,
              progress=False)
    net.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    method.load_extras(method.after_training(net, method.training_data(data).to(device), generator))
    return method, net


def sampler_overheads(params: Params, data: torch.Tensor, kind: str, n: int, budget: int, train_steps: int,
                      repeats: int, device) -> list[Figure]:
    """Every sampler the sample stage runs, each at its budget closest to `budget`."""
    from pipeline.stages import sampler_runs

    label = "2-D" if kind == "toy" else kind
    figures = []
    for name in params.methods:
        method, net = _trained(params, name, data, kind, train_steps, device)
        runs = sampler_runs(method, params, device=device)  # the stage's runs: capped on images, each within its budget
        for sampler, run_budget in runs:
            if run_budget is not None:
                closest = min((b for s, b in runs if s == sampler), key=lambda b: abs(b - budget))
                if run_budget != closest:
                    continue

            def draw():
                return method.sample(net, sampler, run_budget, n, SampleStreams(0, torch.arange(n, device=device)),
                                     device)

            with _FirstForward(type(net)) as first:
                result = draw()
            nfe = float(result.nfe)
            calls = max(1, round(nfe))  # an adaptive solver's mean NFE per sample is fractional
            overhead = paired_ratio(draw, first.forwards(calls), repeats) * calls / nfe
            forward = first.forward_seconds(repeats)
            adaptive = run_budget is None
            limit = ADAPTIVE_OVERHEAD if adaptive else FIXED_STEP_OVERHEAD
            note = (f"NFE {nfe:.0f} (mean per sample), forward {1e3 * forward:.2f} ms at {n}; finished rows drop out, "
                    f"so below 1 is possible" if adaptive else f"NFE {nfe:.0f}, forward {1e3 * forward:.2f} ms at {n}")
            figures.append(Figure(f"sampler overhead ({label}, {n} samples)", f"{name} {sampler}", overhead, "x",
                                  f"<= {limit}", _check(overhead, limit), note))
    return figures


# ---------------------------------------------------------------- trainer


def checkpoint_seconds(net: torch.nn.Module, repeats: int) -> float:
    """One save of what pipeline.training's checkpoint holds for this net (weights, EMA, Adam's state)."""
    optimizer = torch.optim.Adam(net.parameters())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    ema = copy.deepcopy(net)
    with tempfile.TemporaryDirectory() as tmp:
        return median_seconds(lambda: save_torch(Path(tmp) / "state.pt", {
            "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "weights_sha256": weights_digest(net.state_dict(), ema.state_dict())}), repeats)


def trainer_ratios(params: Params, data: torch.Tensor, steps: int, repeats: int, device) -> list[Figure]:
    figures = []
    for name in params.methods:
        method = build_method(name, params.method_config(name), tuple(data.shape[1:]))
        settings = params.train_settings(name, "toy").model_copy(
            update={"steps": steps, "checkpoint_every": steps, "snapshots": []})
        train_data = method.training_data(data)
        torch.manual_seed(0)
        initial = method.make_network(params.network)

        def loop(run_settings=settings):
            net = copy.deepcopy(initial)
            with tempfile.TemporaryDirectory() as tmp:
                train(net, method.loss, train_data, run_settings, 0, Path(tmp) / "state.pt", "bench", device,
                      progress=False)

        # what a run pays once (the EMA copy, the final checkpoint): a 0-step run, taken off the loop's
        # time, so the ratio is per step, as over a real run's 10,000 steps
        once = median_seconds(lambda: loop(settings.model_copy(update={"steps": 0})), repeats)

        device_data = train_data.to(device)

        def bare():
            net = copy.deepcopy(initial).to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, fused=True)
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in range(steps):
                index = rng.integers(0, device_data.shape[0], (settings.batch_size,), generator, device)
                loss = method.loss(net, device_data[index], generator).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        ratios, loop_times = [], []
        for _ in range(repeats + 1):  # the first pair warms up
            loop_times.append(median_seconds(loop, 1, warmup=0) - once)
            ratios.append(median_seconds(bare, 1, warmup=0) / loop_times[-1])
        ratio, per_step = statistics.median(ratios[1:]), statistics.median(loop_times[1:]) / steps
        figures.append(Figure("trainer (2-D)", f"{name}: bare loop / training loop", ratio, "x",
                              f">= {TRAINER_RATIO}", _check(ratio, TRAINER_RATIO, at_most=False),
                              f"{1e3 * per_step:.2f} ms per step of {settings.batch_size} (a run's one-off "
                              f"{1e3 * once:.0f} ms taken off)"))
        net = copy.deepcopy(initial)
        save = checkpoint_seconds(net, repeats)
        every = params.train_settings(name, "toy").checkpoint_every
        figures.append(Figure("trainer (2-D)", f"{name}: checkpoint cost per step", save / every / per_step, "x",
                              "", "", f"one save {1e3 * save:.1f} ms every {every} steps"))
    return figures


# ---------------------------------------------------------------- evaluation


def evaluation_costs(params: Params, data: np.ndarray, repeats: int, device) -> list[Figure]:
    from pipeline.features import FeatureClassifier, classifier_record, ClassifierResult
    from pipeline.fidelity import CLASSIFIER_EXTRACTOR, Extractor, fidelity_metrics
    from pipeline.methods.base import EvalContext
    from pipeline.metrics import prdc_scores, sliced_w2, w2_exact

    cfg = params.evaluate
    n = cfg.w2_points
    generator = np.random.default_rng(0)
    x, y = data[generator.choice(len(data), n)], data[generator.choice(len(data), n)]
    figures = [Figure("evaluation", f"exact W2, {n} vs {n} points (POT)", median_seconds(lambda: w2_exact(x, y), repeats),
                      "s"),
               Figure("evaluation", f"precision/recall/density/coverage, {n} points, k = {cfg.prdc_k}",
                      median_seconds(lambda: prdc_scores(x, y, cfg.prdc_k), repeats), "s")]
    images = params.evaluate.image
    pixels = generator.random((images.fid_samples, 64), dtype=np.float32) * 2 - 1
    figures.append(Figure("evaluation", f"sliced W2, {images.fid_samples} 8x8 images, {images.sliced_w2_projections} "
                          f"projections", median_seconds(lambda: sliced_w2(pixels, pixels[::-1].copy(),
                                                                           images.sliced_w2_projections, 0), repeats), "s"))
    torch.manual_seed(0)
    classifier = FeatureClassifier(1, 10, images.classifier.width, images.classifier.features).eval()
    uint8 = (generator.random((2, images.fid_samples, 1, 8, 8)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classifier.pt"
        save_torch(path, classifier_record(ClassifierResult(classifier, 0.0, 0.0), "bench", [1, 8, 8]))
        extractor = Extractor(CLASSIFIER_EXTRACTOR, path, "feature classifier")
        seconds = median_seconds(lambda: fidelity_metrics(uint8[0], uint8[1], extractor, images.kid_subset_size,
                                                          images.prc_neighborhood, 0, device,
                                                          jackknife_groups=images.fid_jackknife_groups), repeats)
    figures.append(Figure("evaluation", f"FID and its jackknife se, KID, precision, recall: features of "
                          f"{images.fid_samples} + {images.fid_samples} images (torch-fidelity)", seconds, "s"))
    # the first two of the profile's methods with a probability-flow ODE: their likelihood is an ODE solve
    for name in [m for m in params.methods if "ode" in METHODS[m].capabilities][:2]:
        method, net = _trained(params, name, torch.from_numpy(data), "toy", 200, device)
        points = torch.from_numpy(data[: cfg.nll_points]).to(device)
        context = EvalContext(rtol=cfg.ode_rtol, atol=cfg.ode_atol)
        records = []

        def likelihood():
            records[:] = method.log_likelihood(net, points, torch.Generator(device=device).manual_seed(0), context)

        seconds = median_seconds(likelihood, repeats)
        nfe = statistics.mean(float(r.nfe) for r in records) if records else float("nan")
        figures.append(Figure("evaluation", f"{name}: ODE likelihood of {cfg.nll_points} points, rtol {cfg.ode_rtol:g}",
                              seconds, "s", note=f"mean NFE {nfe:.0f} (after 200 training steps)"))
    return figures


# ---------------------------------------------------------------- dvc repro


def profile_file(profile: str) -> Path:
    """params.yaml for `default`, else profiles/<profile>.yaml; a one-line error when there is none."""
    path = REPO / "params.yaml" if profile == "default" else REPO / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
        raise StageError(f"--profile {profile!r}: no {path.relative_to(REPO)} (profiles: default, {', '.join(names)}, none)")
    return path


def copy_repository(root: Path, params_file: Path) -> Path:
    """A fresh git + DVC repository at `root` with this project's code, dvc.yaml and its plot templates, README
    and kept studies, and
    `params_file` as its params.yaml (the benchmark's and the pipeline tests' scratch copies)."""
    for name in ("pipeline", "profiles", "reports/studies"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "README.md"):
        shutil.copy(REPO / name, root / name)
    shutil.copy(params_file, root / "params.yaml")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots", dirs_exist_ok=True)  # dvc.yaml's plot templates
    return root


def _peak_mib(pid: int) -> float:
    """The process's own high-water resident memory (VmHWM: that of its program after exec, unlike the
    rusage of a child forked from this large process, which starts at the parent's size)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak resident MiB of the command's process, read every 50 ms) of one command."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe a chatty command could fill
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _peak_mib(process.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed in {cwd}: {errors.read().decode()[-2000:]}")
    return wall, peak


def repro_figures(profile: str) -> list[Figure]:
    import yaml

    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        copy_repository(root, profile_file(profile))
        scratch, _ = _timed(["dvc", "repro"], root)
        noop, _ = _timed(["dvc", "repro"], root)
        label = f"{profile} profile"
        target = f"< {DEFAULT_PROFILE_MINUTES:g} min" if profile == "default" else ""
        figures += [Figure("dvc repro", f"{label}: from scratch", scratch / 60, "min", target,
                           _check(scratch / 60, DEFAULT_PROFILE_MINUTES) if target else ""),
                    Figure("dvc repro", f"{label}: no-op", noop, "s", f"< {NOOP_SECONDS:g}", _check(noop, NOOP_SECONDS))]
        params = yaml.safe_load((root / "params.yaml").read_text())
        dataset, method, seed = params["datasets"][0], next(iter(params["methods"])), params["seeds"][0]
        for kind, command in [("prepare", ["pipeline", "prepare", "--dataset", dataset]),
                              ("run", ["pipeline", "run", "--method", method, "--dataset", dataset, "--seed", str(seed),
                                       "--no-progress"]),
                              ("report", ["pipeline", "report"]), ("publish", ["pipeline", "publish", "--force"])]:
            if kind == "run":
                shutil.rmtree(root / "checkpoints", ignore_errors=True)  # the stage trains, as from scratch
            wall, rss = _timed(command, root)
            figures.append(Figure("peak resident memory", f"{kind} stage ({' '.join(command[1:4])})", rss, "MiB",
                                  note=f"{wall:.1f} s"))
        shutil.rmtree(root / "checkpoints", ignore_errors=True)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded, _ = _timed(["dvc", "repro", "--force"], root)
        finally:
            busy.kill()
            busy.wait()
        ratio = loaded / scratch
        figures.append(Figure("dvc repro", f"{label}: from scratch beside one CPU-bound process / idle", ratio, "x",
                              f"<= {BUSY_RATIO}", _check(ratio, BUSY_RATIO), f"{loaded / 60:.2f} min"))
    return figures


# ---------------------------------------------------------------- the report


def run_bench(params: Params, out_dir: Path, repeats: int = 3, train_steps: int = 100, n_points: int = 1000,
              n_images: int = 200, budget: int = 100, profile: str | None = "smoke",
              progress: Callable[[str], None] = lambda message: None) -> Path:
    device = resolve_device(params.device)
    toy = prepare_toy("moons", 20000, 1, 1, seed=0)["train"]  # the prepare stage's standardized moons
    digits = to_model_space(torch.from_numpy(load_digits_pool().train))  # and its digits in [-1, 1]
    if profile:
        profile_file(profile)  # a wrong name fails before the long measurements
    figures: list[Figure] = []
    progress("samplers, 2-D")
    figures += sampler_overheads(params, torch.from_numpy(toy), "toy", n_points, budget, train_steps, repeats, device)
    progress("samplers, images")
    figures += sampler_overheads(params, digits, "image", n_images, min(budget, 10), max(1, train_steps // 10),
                                 repeats, device)
    progress("trainer")
    figures += trainer_ratios(params, torch.from_numpy(toy), train_steps, repeats, device)
    progress("evaluation")
    figures += evaluation_costs(params, toy, repeats, device)
    if profile:
        progress(f"dvc repro ({profile})")
        figures += repro_figures(profile)
    return write_bench(figures, machine(), out_dir)


def write_bench(figures: list[Figure], described: dict[str, str], out_dir: Path) -> Path:
    import pandas as pd

    out_dir = Path(out_dir)
    table = pd.DataFrame([vars(f) for f in figures])
    write_text(out_dir / "benchmarks.csv", table.to_csv(index=False, float_format="%.4g"))
    lines = ["# Benchmarks", "", "Measured by `pipeline bench` (pipeline.benchmark explains each figure); medians of "
             "several runs after a warm-up. Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in described.items()]
    targeted = table[table.holds != ""]
    lines += ["", "| section | figures with a target | missed |", "| --- | ---: | ---: |"]
    lines += [f"| {section} | {len(rows)} | {int((rows.holds == 'no').sum())} |"
              for section, rows in targeted.groupby("section", sort=False)]
    lines.append("")
    for section, rows in table.groupby("section", sort=False):
        lines += [f"## {section}", "", "| item | value | target | holds | note |", "| --- | ---: | --- | --- | --- |"]
        lines += [f"| {r.item} | {r.value:.3g} {r.unit} | {r.target} | {r.holds} | {r.note} |" for r in rows.itertuples()]
        lines.append("")
    write_text(out_dir / "benchmarks.md", "\n".join(lines))
    return out_dir / "benchmarks.md"
