"""`dvc repro` over several processes: DVC's parallel stage execution, scheduled along dvc.yaml's graph.

DVC runs one stage at a time, and a 2-D stage's small tensor ops gain little from a second thread (a
training step of the default MLP: 13.4 ms on two threads, 15.9 ms on one), so two stages side by side on
one thread each finish sooner than one after the other on two. DVC supports this itself ("parallel stage
execution", `dvc repro` docs): separate `dvc repro <stage>` processes on independent stages, each
releasing the repository's lock while its command runs (`--wait-for-lock` waits for it instead of
failing). This module only decides the order: the stages `dvc status` calls changed, and every stage
downstream of them, each started once the stages it depends on have finished; then one plain
`dvc repro` runs what is left (the always-changed publish stage) and checks that nothing is stale.

Each stage's process picks its own thread count (pipeline.threads: one thread beside a busy core), and
no 2-D number depends on it, so the outputs are those of `dvc repro` (tests/test_pipeline.py checks it).
dvc.lock lists newly run stages in the order they finished.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import StageError


class StagesFailed(StageError):
    """A stage's command failed (exit 1, as a failed `dvc repro`; StageError is a user mistake, exit 2)."""


@dataclass
class Plan:
    """The stages to run (dvc.yaml addresses, in DVC's order) and the ones each waits for."""

    stages: list[str]
    waits_for: dict[str, set[str]]
    last: list[str] = field(default_factory=list)  # always-changed stages, left to the closing `dvc repro`


def plan(root: Path, force: bool) -> Plan:
    """What `dvc repro` (--force: every stage) would run in `root`, and the graph between those stages: as
    `dvc repro` without targets, the stages of root's dvc.yaml and those they depend on."""
    import os

    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            pipeline = {stage for stage in graph if os.path.abspath(stage.path) == os.path.abspath(root / "dvc.yaml")}
            graph = graph.subgraph(set().union(pipeline, *(nx.descendants(graph, stage) for stage in pipeline)))
            names = {stage: _name(stage, root) for stage in graph}
            stale = set(repo.status())  # keyed by DVC's addressing, relative to the working directory
            changed = set(graph) if force else {stage for stage in graph if stage.addressing in stale}
            downstream = set(changed)
            for stage in changed:
                downstream |= nx.ancestors(graph, stage)
            waits_for = {names[stage]: {names[dep] for dep in graph.successors(stage) if dep in downstream}
                         for stage in downstream}
            order = [stage for stage in reversed(list(nx.topological_sort(graph))) if stage in downstream]
    except DvcException as error:
        raise StageError(f"dvc could not read the pipeline in {root}: {error}") from error
    last = [names[stage] for stage in order if stage.always_changed]
    return Plan([names[stage] for stage in order if names[stage] not in last], waits_for, last)


def _name(stage, root: Path) -> str:
    """The stage as `dvc repro` takes it in `root`: its name, prefixed by its dvc.yaml's path where that is
    not root's own."""
    import os

    dvcfile = os.path.relpath(stage.path, root)
    name = getattr(stage, "name", None)  # a .dvc file's stage (`dvc add`, `dvc import`) has none: its path
    if not name:
        return dvcfile
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def _launch(root: Path, stage: str, force: bool, logs: Path) -> subprocess.Popen:
    command = ["dvc", "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), stage]
    with _log_path(logs, stage).open("w") as log:  # the child holds its own copy of the file
        # a session of its own: an interrupt reaches the stage through _stop, which waits for it to end
        return subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _log_path(logs: Path, stage: str) -> Path:
    return logs / (stage.replace("@", "_").replace("/", "_").replace(":", "_") + ".log")


def _stop(processes) -> None:
    """Interrupt each stage's process group (DVC and the stage's command) and wait for them to end; DVC then
    records nothing for the stage, so the next run redoes it."""
    import os
    import signal

    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _time_left(stage_minutes: list[float], left: int, jobs: int, began: float) -> str:
    """Elapsed wall time and a rough estimate of what is left: the mean stage so far, `jobs` at a time."""
    elapsed = (time.perf_counter() - began) / 60
    if not left:
        return f"{elapsed:.1f} min in all"
    return f"{elapsed:.1f} min so far, about {sum(stage_minutes) / len(stage_minutes) * left / jobs:.0f} min left"


def run_parallel(root: Path, jobs: int, force: bool, echo) -> int:
    """Run the plan's stages `jobs` at a time, then `dvc repro`; the stages run, or StagesFailed on a failure
    (no stage starts after it, the running ones finish first; the failed stage's log is named) or an interrupt
    (the running stages get it too and are waited for; what finished is in dvc.lock)."""
    work = plan(root, force)
    logs = root / ".dvc" / "tmp" / "pipeline-repro"
    logs.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    pending, failed = list(work.stages), []
    echo(f"{len(pending)} stages to run, {jobs} at a time (logs: {logs})")
    began, stage_minutes = time.perf_counter(), []
    try:
        while pending or running:
            ready = [name for name in pending if work.waits_for[name] <= done]
            while ready and len(running) < jobs and not failed:
                name = ready.pop(0)
                pending.remove(name)
                running[name] = (_launch(root, name, force, logs), time.perf_counter())
            if not running:
                break
            time.sleep(0.2)
            for name, (process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode:
                    failed.append(name)
                    echo(f"failed {name} (exit {process.returncode}; see {_log_path(logs, name)})")
                else:
                    done.add(name)
                    stage_minutes.append((time.perf_counter() - started) / 60)
                    echo(f"[{len(done)}/{len(work.stages)}] {name} in {stage_minutes[-1]:.1f} min; "
                         f"{_time_left(stage_minutes, len(work.stages) - len(done), jobs, began)}")
    except KeyboardInterrupt:
        _stop(process for process, _ in running.values())
        raise StagesFailed(f"interrupted; {len(done)} finished stage(s) are in dvc.lock and {len(running)} running "
                           f"one(s) were stopped: running this again resumes") from None
    if failed:
        raise StagesFailed(f"{len(failed)} stage(s) failed: {', '.join(failed)}; the others that ran are committed "
                         f"to dvc.lock, so running this again resumes from there")
    closing = subprocess.run(["dvc", "--wait-for-lock", "repro"], cwd=root)
    if closing.returncode:
        raise StagesFailed(f"the closing `dvc repro` ended with exit code {closing.returncode} (its errors are above)")
    return len(done)
