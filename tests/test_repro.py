"""`pipeline repro --jobs N` (pipeline.repro) on a toy DVC pipeline: every stale stage runs once, after the
stages it depends on, independent ones side by side, and dvc.lock ends as after `dvc repro`. The smoke
profile's forced rerun in tests/test_pipeline.py runs through it too and must give the same bytes."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.repro import plan

REPO = Path(__file__).resolve().parents[1]

# a stage reads its inputs, then writes its start and end (wall clock) to its output; -1 seconds: it fails
STAGE = textwrap.dedent("""\
    import sys, time
    out, seconds, *inputs = sys.argv[1:]
    for name in inputs:
        open(name).read()
    if seconds == "-1":
        sys.exit(3)
    start = time.time()
    time.sleep(float(seconds))
    open(out, "w").write(f"{start} {time.time()}")
""")


def _stage(out: str, seconds: float, *inputs: str) -> dict:
    return {"cmd": " ".join([sys.executable, "stage.py", out, str(seconds), *inputs]),
            "deps": ["stage.py", *inputs], "outs": [out]}


def _toy(root: Path, slow: float = 1.5, fail: bool = False) -> Path:
    """a -> (b, c) -> d, and e on its own; d fails when `fail`."""
    (root / "stage.py").write_text(STAGE)
    shutil.copy(REPO / "profiles" / "smoke.yaml", root / "params.yaml")  # `pipeline` validates it first
    stages = {"a": _stage("a.txt", 0.2), "b": _stage("b.txt", slow, "a.txt"), "c": _stage("c.txt", slow, "a.txt"),
              "d": _stage("d.txt", -1 if fail else 0.2, "b.txt", "c.txt"), "e": _stage("e.txt", slow)}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


def _times(root: Path, name: str) -> tuple[float, float]:
    start, end = (root / f"{name}.txt").read_text().split()
    return float(start), float(end)


def _repro(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "repro", *args], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def test_the_plan_is_the_stale_stages_and_what_they_wait_for(tmp_path):
    root = _toy(tmp_path)
    work = plan(root, force=False)
    assert sorted(work.stages) == ["a", "b", "c", "d", "e"]
    assert work.stages.index("a") < min(work.stages.index("b"), work.stages.index("c"))
    assert work.waits_for == {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}


def test_stages_run_after_their_inputs_and_side_by_side(tmp_path):
    root = _toy(tmp_path)
    result = _repro(root, "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    a, b, c, d, e = (_times(root, name) for name in "abcde")
    assert a[1] <= min(b[0], c[0]) and max(b[1], c[1]) <= d[0]
    overlapping = sum(1 for x, y in ((b, c), (b, e), (c, e)) if x[0] < y[1] and y[0] < x[1])
    assert overlapping >= 1  # two at a time: some pair of the three slow stages ran together
    status = subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == set("abcde")


def test_only_stale_stages_and_those_below_them_run_again(tmp_path):
    root = _toy(tmp_path, slow=0.2)
    assert _repro(root, "--jobs", "2").returncode == 0
    before = {name: _times(root, name) for name in "abcde"}
    assert plan(root, force=False).stages == []
    stages = yaml.safe_load((root / "dvc.yaml").read_text())
    stages["stages"]["c"]["cmd"] = stages["stages"]["c"]["cmd"].replace(" 0.2 ", " 0.3 ")
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages))
    work = plan(root, force=False)
    assert sorted(work.stages) == ["c", "d"] and work.waits_for == {"c": set(), "d": {"c"}}
    assert _repro(root, "--jobs", "2").returncode == 0
    after = {name: _times(root, name) for name in "abcde"}
    assert [name for name in "abcde" if after[name] != before[name]] == ["c", "d"]
    assert sorted(plan(root, force=True).stages) == ["a", "b", "c", "d", "e"]


def test_a_failed_stage_is_one_line_and_stops_what_depends_on_it(tmp_path):
    root = _toy(tmp_path, slow=0.2, fail=True)
    result = _repro(root, "--jobs", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 stage(s) failed: d;")
    assert "Traceback" not in result.stderr
    assert not (root / "d.txt").exists()
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == set("abce")


def test_a_pipeline_dvc_cannot_read_is_one_line(tmp_path):
    root = _toy(tmp_path)
    (root / "dvc.yaml").write_text("stages:\n  a:\n    cmd: [unclosed\n")
    result = _repro(root, "--jobs", "2")
    assert result.returncode == 2 and result.stderr.startswith("error: dvc could not read the pipeline")


@pytest.mark.parametrize("jobs", ["0", "x"])
def test_bad_job_counts_are_refused(tmp_path, jobs):
    result = _repro(_toy(tmp_path), "--jobs", jobs)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_each_finished_stage_says_how_long_is_left(tmp_path):
    root = _toy(tmp_path, slow=0.2)
    result = _repro(root, "--jobs", "2")
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 5 and "min left" in progress[0] and progress[-1].endswith("min in all")


def test_the_plan_is_that_of_dvc_repro_beside_dvc_files_and_other_pipelines(tmp_path):
    """A `dvc add`-ed file (a stage without a name) and a stale stage of another folder's dvc.yaml: plain
    `dvc repro` leaves the latter alone, and so does the plan."""
    root = _toy(tmp_path)
    (root / "raw.txt").write_text("raw")
    subprocess.run(["dvc", "add", "-q", "raw.txt"], cwd=root, check=True, capture_output=True)
    (root / "sub").mkdir()
    (root / "sub" / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"t": {"cmd": "echo t > t.txt", "outs": ["t.txt"]}}}))
    work = plan(root, force=False)
    assert sorted(work.stages) == ["a", "b", "c", "d", "e"]


def test_an_interrupt_stops_the_running_stages_and_says_how_to_resume(tmp_path):
    import signal
    import time

    root = _toy(tmp_path, slow=30)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "repro", "--jobs", "2"], cwd=root, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    deadline = time.time() + 120
    while not (root / "a.txt").exists() and time.time() < deadline:  # the slow stages start once a is done
        time.sleep(0.2)
    time.sleep(3)
    process.send_signal(signal.SIGINT)  # the parent alone, not the process group as a terminal would
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted;") and "resumes" in stderr
    assert not (root / "b.txt").exists() and not (root / "e.txt").exists()  # stopped, not waited out (30 s)
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"a"}
