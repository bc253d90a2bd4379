"""The `pipeline` command: thin typer commands over pipeline.stages; dvc.yaml calls only these.

Every command validates the whole params.yaml first. A user mistake ends in one line on stderr
and exit code 2 (1 for a failed run); --debug shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline import threads as thread_policy

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark of diffusion, score-based and flow generative models.")

_state = {"debug": False, "params": Path("params.yaml"), "root": Path(".")}

DatasetOpt = typer.Option(..., "--dataset", "-d", help="Data set name (see `pipeline list`).")
MethodOpt = typer.Option(..., "--method", "-m", help="Method name (see `pipeline list`).")
SeedOpt = typer.Option(0, "--seed", "-s", help="Seed from params.yaml's `seeds`.")


@app.callback()
def main(params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
         debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    _state["params"] = params
    _state["debug"] = debug
    _limit_threads()
    _state["root"] = Path(os.environ.get("DVC_ROOT", ".")) if params == Path("params.yaml") else params.parent


#: no usage telemetry (nothing leaves the machine unless a remote tracking URI asks for it), and an
#: unreachable server reported within seconds instead of after MLflow's 7 retries of up to 2 minutes each
_MLFLOW_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _limit_threads() -> None:
    """Torch's thread count follows the free cores (pipeline.threads) unless PIPELINE_NUM_THREADS fixes it."""
    threads = os.environ.get("PIPELINE_NUM_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            _fail(f"PIPELINE_NUM_THREADS must be a positive integer, got {threads!r}", 2)
        thread_policy.start(int(threads))
    else:
        thread_policy.start()


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(action):
    """Validate params, run the action, and turn known errors into one line."""
    from pipeline.config import load_params
    from pipeline.errors import CheckpointError, DataError, ParamsError, StageError, TrackingError, TrainingDiverged

    if _state["debug"]:
        return action(load_params(_state["params"]))
    try:
        params = load_params(_state["params"])
    except ParamsError as error:
        _fail(str(error), 2)
    try:
        return action(params)
    except (DataError, StageError, CheckpointError, TrackingError) as error:
        _fail(str(error), 2)
    except TrainingDiverged as error:
        _fail(str(error), 1)
    except OSError as error:  # a full disk, a read-only folder, a path that is a directory
        where = f"{error.filename}: " if error.filename else ""
        _fail(f"{where}{error.strerror or error}; check the path, its permissions and the free disk space "
              f"(--debug shows where)", 1)
    except KeyboardInterrupt:
        _fail("interrupted; outputs were left untouched and training resumes from its last checkpoint", 130)


def _check_names(params, method: str | None = None, dataset: str | None = None, seed: int | None = None,
                 derived: bool = False) -> None:
    """Exit 2 with one line on a name params.yaml lacks, and set the data set's thread policy (pipeline.threads:
    image stages hold one thread). derived: also accept the methods params.yaml's `reflow` section makes."""
    accepted = params.evaluated_methods() if derived else list(params.methods)
    if method is not None and method not in accepted:
        _fail(f"--method {method!r} is not in params.yaml's methods ({', '.join(accepted)})", 2)
    if dataset is not None and dataset not in params.datasets:
        _fail(f"--dataset {dataset!r} is not in params.yaml's datasets ({', '.join(params.datasets)})", 2)
    if dataset is not None:
        from pipeline.data import DATASETS

        thread_policy.start_for(DATASETS[dataset])
    if seed is not None and seed not in params.seeds:
        _fail(f"--seed {seed} is not in params.yaml's seeds ({', '.join(map(str, params.seeds))})", 2)


def _in_processes(params, command: list[str], steps) -> None:
    """Run each step(show) -> the path it wrote, in order, in params.yaml's nproc_per_node processes; `show` is
    true on the one that prints (progress bars, and a "wrote <path>" line per step).

    Started by torchrun already (WORLD_SIZE set): join its process group and work here, whatever
    nproc_per_node says, so a stage runs unchanged under `torchrun --nproc_per_node=N -m pipeline ...`.
    Asked for more than one process otherwise: run `command` (this command's arguments) under torchrun
    (torch.distributed.run --standalone: one machine, a free port) and wait for it."""
    from pipeline import distributed

    if params.nproc_per_node > 1 and not distributed.launched():
        import subprocess

        from pipeline.layout import resolve_device

        if resolve_device(params.device).type == "cuda":
            import torch

            if params.nproc_per_node > torch.cuda.device_count():
                _fail(f"nproc_per_node: {params.nproc_per_node} processes asked for, but {torch.cuda.device_count()} "
                      f"GPUs are visible (one process per GPU)", 2)

        options = ["--params", str(_state["params"])] + (["--debug"] if _state["debug"] else [])
        code = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={params.nproc_per_node}", "-m", "pipeline", *options, *command])
        if code:
            _fail(f"{params.nproc_per_node} processes under torchrun ended with exit code {code} (their errors are "
                  f"above)", code)
        return
    from pipeline.layout import resolve_device

    distributed.start(resolve_device(params.device))
    try:
        show = distributed.is_main()
        for step in steps:
            path = step(show)
            if show:
                typer.echo(f"wrote {path}")
    finally:
        distributed.stop()


def _identify(method: str, dataset: str, seed: int, progress: bool) -> list[str]:
    return ["--method", method, "--dataset", dataset, "--seed", str(seed), "--progress" if progress else "--no-progress"]


@app.command()
def validate() -> None:
    """Check params.yaml as a whole and exit 2 with one line on the first mistake."""

    def action(params):
        typer.echo(f"params OK: {len(params.methods)} methods x {len(params.datasets)} data sets x "
                   f"{len(params.seeds)} seeds")

    _run(action)


@app.command()
def prepare(dataset: str = DatasetOpt) -> None:
    """Write a data set and what its evaluation compares against: the splits (data/<dataset>.npz), the
    FID feature classifier of an image set (a marker for a 2-D set) and the data floor (metrics/data/).

    The DVC stage of a data set. Every later stage depends on `evaluate` anyway, so the three steps
    share one process; `features` and `evaluate --dataset` run the last two alone.
    """
    from pipeline.prepare import run_baseline, run_features, run_prepare

    def action(params):
        _check_names(params, dataset=dataset)
        root = _state["root"]
        typer.echo(f"wrote {run_prepare(root, params, dataset)}")
        typer.echo(f"wrote {run_features(root, params, dataset)}")
        typer.echo(f"wrote {run_baseline(root, params, dataset)}")

    _run(action)


@app.command()
def features(dataset: str = DatasetOpt) -> None:
    """Train an image data set's feature classifier for FID (a marker file for 2-D data sets)."""
    from pipeline.prepare import run_features

    def action(params):
        _check_names(params, dataset=dataset)
        typer.echo(f"wrote {run_features(_state['root'], params, dataset)}")

    _run(action)


@app.command()
def train(method: str = MethodOpt, dataset: str = DatasetOpt, seed: int = SeedOpt,
          progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Train one method on one data set (resumes from its last checkpoint)."""
    from pipeline.stages import run_train

    def action(params):
        _check_names(params, method, dataset, seed)
        _in_processes(params, ["train", *_identify(method, dataset, seed, progress)],
                      [lambda show: run_train(_state["root"], params, method, dataset, seed, progress and show)])

    _run(action)


@app.command("run")
def run_command(method: str = MethodOpt, dataset: str = DatasetOpt, seed: int = SeedOpt,
                progress: bool = typer.Option(True, help="Show progress bars.")) -> None:
    """Train one method on one data set (a method of `reflow`: make it by reflow), sample with every
    sampler and budget, and score the samples.

    The DVC stage of a method x data set x seed: the steps of `train` (or `reflow`) and `evaluate`
    share one process, since a 2-D model trains and samples in seconds while a process start costs
    two or three (torch, and torch.optim's import of torch._dynamo). When only sampling or evaluation
    parameters changed, training resumes from its finished checkpoint and costs nothing.
    """
    from pipeline.stages import run_convergence, run_evaluate, run_reflow, run_sample, run_train

    def action(params):
        _check_names(params, method, dataset, seed, derived=True)
        root = _state["root"]
        make = run_reflow if params.is_derived(method) else run_train
        _in_processes(params, ["run", *_identify(method, dataset, seed, progress)],
                      [lambda show: make(root, params, method, dataset, seed, progress and show),
                       lambda show: run_sample(root, params, method, dataset, seed, progress and show),
                       lambda show: run_evaluate(root, params, method, dataset, seed),
                       lambda show: run_convergence(root, params, method, dataset, seed, progress and show)])

    _run(action)


@app.command()
def reflow(method: str = typer.Option(..., "--method", "-m", help="A method params.yaml's `reflow` makes."),
           dataset: str = DatasetOpt, seed: int = SeedOpt,
           progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Make a derived flow by reflow: coupled pairs from its source flow's ODE, then training on them."""
    from pipeline.stages import run_reflow

    def action(params):
        if not params.is_derived(method):
            derived = [name for name in params.evaluated_methods() if params.is_derived(name)]
            _fail(f"--method {method!r} is not made by params.yaml's reflow ({', '.join(derived) or 'empty'})", 2)
        _check_names(params, dataset=dataset, seed=seed)
        _in_processes(params, ["reflow", *_identify(method, dataset, seed, progress)],
                      [lambda show: run_reflow(_state["root"], params, method, dataset, seed, progress and show)])

    _run(action)


@app.command()
def sample(method: str = MethodOpt, dataset: str = DatasetOpt, seed: int = SeedOpt,
           progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Draw samples with every sampler and step budget of the method."""
    from pipeline.stages import run_sample

    def action(params):
        _check_names(params, method, dataset, seed, derived=True)
        _in_processes(params, ["sample", *_identify(method, dataset, seed, progress)],
                      [lambda show: run_sample(_state["root"], params, method, dataset, seed, progress and show)])

    _run(action)


@app.command()
def evaluate(method: Optional[str] = typer.Option(None, "--method", "-m", help="Method (omit for the data floor)."),
             dataset: str = DatasetOpt, seed: int = SeedOpt,
             draw: bool = typer.Option(True, "--sample/--reuse-samples",
                                       help="Draw the samples first, as the DVC stage does, or score the saved ones."),
             progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Sample with every sampler and budget of a trained method and score the samples, or the data floor without --method.

    The DVC stages `run` and `prepare` take these steps after training and after the data set.
    """
    from pipeline.prepare import run_baseline
    from pipeline.stages import run_evaluate, run_sample

    def action(params):
        _check_names(params, method, dataset, seed if method else None, derived=True)
        if method and draw:
            typer.echo(f"wrote {run_sample(_state['root'], params, method, dataset, seed, progress)}")
        path = run_evaluate(_state["root"], params, method, dataset, seed) if method else \
            run_baseline(_state["root"], params, dataset)
        typer.echo(f"wrote {path}")

    _run(action)


@app.command()
def report(readme: bool = typer.Option(False, "--readme", help="Also copy the summary's rankings into README.md's "
                                       "Results, between its markers.")) -> None:
    """Write reports/results.csv, protocol.csv, summary.md, grid.md, index.html, headline.json and figures/."""
    from pipeline.report import run_report

    def action(params):
        summary = run_report(_state["root"], params)
        typer.echo(f"wrote {summary}, {summary.parent / 'index.html'}")
        if readme:
            from pipeline.report.readme import write_readme

            typer.echo(f"wrote {write_readme(_state['root'] / 'README.md', summary)}")

    _run(action)


@app.command()
def publish(force: bool = typer.Option(False, "--force", help="Ask the tracking store itself whether this "
                                        "state is there, not the local ledger of published states.")) -> None:
    """Publish the pipeline's outputs to MLflow (skipped when this state was already published)."""
    from pipeline.published import experiment_name, pipeline_state, published_run, tracking_uri

    root = _state["root"]
    experiment = experiment_name(_state["params"])
    known = None if force or experiment is None or not (root / "dvc.lock").exists() else \
        published_run(root, tracking_uri(root), experiment, pipeline_state(root))
    if known:  # the ledger's quick exit: no MLflow, no torch (pipeline.published)
        typer.echo(f"MLflow run {known} at {tracking_uri(root)} (already published)")
        return
    from pipeline.tracking import publish as publish_runs

    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)

    def action(params):
        run_id = publish_runs(_state["root"], params)
        typer.echo(f"MLflow run {run_id} at {tracking_uri(_state['root'])}")

    _run(action)


@app.command()
def repro(jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Stages at a time (default: the "
                                             "CPU cores; 1 on a GPU or with nproc_per_node above 1)."),
          force: bool = typer.Option(False, "--force", "-f", help="Run every stage, as `dvc repro --force`.")) -> None:
    """`dvc repro` with several independent stages at a time (DVC's parallel stage execution, pipeline.repro):
    the same outputs, sooner on a CPU whose stages each gain little from a second thread."""

    def action(params):
        from pipeline.layout import resolve_device
        from pipeline.repro import StagesFailed, run_parallel

        on_gpu = resolve_device(params.device).type == "cuda" or params.nproc_per_node > 1
        count = jobs or (1 if on_gpu else thread_policy.usable_cores())
        if count == 1:
            import subprocess

            code = subprocess.call(["dvc", "repro", *(["--force"] if force else [])], cwd=_state["root"])
            if code:
                raise typer.Exit(code)
            return
        try:
            ran = run_parallel(_state["root"], count, force, typer.echo)
        except StagesFailed as error:
            _fail(str(error), 1)
        typer.echo(f"ran {ran} stages, {count} at a time")

    _run(action)


@app.command("bench")
def bench_command(repeats: int = typer.Option(3, help="Timed runs per figure (after a warm-up); the median is kept."),
                  train_steps: int = typer.Option(100, help="Training steps per method, timed and before sampling."),
                  n_points: int = typer.Option(1000, help="2-D points per sampler run."),
                  n_images: int = typer.Option(200, help="Images per sampler run."),
                  budget: int = typer.Option(100, help="Step budget (each method's closest; images at most 10)."),
                  profile: str = typer.Option("smoke", help="Profile whose `dvc repro` is timed in a copy of the "
                                              "repository (default = params.yaml; none to skip)."),
                  out: Path = typer.Option(Path("reports"), help="Folder for benchmarks.md and benchmarks.csv.")) -> None:
    """Measure samplers, the trainer, the evaluation and `dvc repro` against their targets (not part of `dvc repro`)."""
    from pipeline.benchmark import run_bench

    def action(params):
        path = run_bench(params, out, repeats, train_steps, n_points, n_images, budget,
                         None if profile == "none" else profile, lambda message: typer.echo(f"bench: {message}", err=True))
        typer.echo(f"wrote {path}")

    _run(action)


@app.command("list")
def list_names() -> None:
    """Print the known data sets, methods and samplers."""
    from pipeline.data import DATASETS
    from pipeline.methods import METHODS

    typer.echo("data sets:")
    for name, kind in DATASETS.items():
        typer.echo(f"  {name} ({kind})")
    from pipeline.methods import build_method, reflowed_name

    typer.echo("methods and samplers (with each method's default settings):")
    for name, cls in METHODS.items():
        typer.echo(f"  {name}: {', '.join(build_method(name, cls.Config(), (2,)).samplers)}")
        if cls.ReflowConfig is not None:
            reflowed = build_method(name, cls.Config(), (2,), reflowed=True)
            typer.echo(f"  {reflowed_name(name)}: made from {name} by `reflow` (params.yaml section reflow.{name}): "
                       f"{', '.join(reflowed.samplers)}")


def entry() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
