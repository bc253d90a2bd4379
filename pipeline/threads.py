"""How many threads torch uses: the cores other processes leave free, re-measured as a stage runs.

A stage's small tensor ops each split their work over torch's threads and wait for the slowest one, so a
thread that shares its core with another busy process stalls every op: on this project's 2-core machine,
a training step of the 2-D MLP took 1.8 ms on two threads idle, 10.5 ms on two threads beside one busy
process, and 3.1-3.4 ms on one thread either way. The governor reads the machine's busy time
(/proc/stat) less this process's own (os.times) at most once per `interval` seconds, when a loop calls
`poll()`, and sets torch's thread count to the cores the other processes left free.

Changing the count must not change a number. On the 2-D path nothing does: MKL's strict reproducible
mode (set in pipeline/__init__.py) gives the MLP's matrix products the same bits on any count (without it
a Linear of 5-7 or 9-11 rows did not), and pipeline.nets.mlp.LayerNorm avoids the one kernel whose
backward was not (tests/test_threads.py checks the MLPs of the default and smoke profiles;
test_pipeline.py's forced rerun on one thread checks every 2-D stage output). The image path cannot
promise it: oneDNN's convolutions (every weight gradient; a batch of one through a strided one) and MKL's
products with 4 or 16 outputs at a few small batch sizes, even in strict mode, give other bits on another
count, so image stages run on one thread (`start_for`).
PIPELINE_NUM_THREADS=n fixes the count for every stage (the governor is then off).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_PROC_STAT = Path("/proc/stat")


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _machine_busy_seconds() -> float | None:
    """Seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal), or None off Linux."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def free_cores(others_busy: float, cores: int) -> int:
    """Threads to use when other processes keep `others_busy` cores busy: a core counts as free when at
    most a quarter of it is taken (a thread on a core a quarter busy stalls less than one thread loses)."""
    return max(1, min(cores, int(cores - others_busy + 0.25)))


class ThreadGovernor:
    """Sets torch's thread count from the load of other processes, measured over each `interval`."""

    def __init__(self, interval: float = 1.0, cores: int | None = None):
        self.interval = interval
        self.cores = cores or usable_cores()
        self.enabled = _machine_busy_seconds() is not None
        self.last_busy: float | None = None
        self._last = self._reading()

    def _reading(self) -> tuple[float, float, float]:
        return time.monotonic(), _machine_busy_seconds() or 0.0, _own_seconds()

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last measurement, or None before `interval` passed."""
        now = self._reading()
        wall = now[0] - self._last[0]
        if wall < self.interval:
            return None
        busy = (now[1] - self._last[1]) - (now[2] - self._last[2])
        self._last = now
        self.last_busy = max(0.0, busy / wall)
        return self.last_busy

    def poll(self) -> None:
        """Cheap unless `interval` has passed: then re-measure and set the thread count."""
        if not self.enabled or time.monotonic() - self._last[0] < self.interval:
            return
        others = self.others_busy()
        if others is not None:
            import torch

            threads = free_cores(others, self.cores)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)


_governor: ThreadGovernor | None = None


def start(fixed: int | None = None) -> None:
    """Called once by the CLI: a fixed count (PIPELINE_NUM_THREADS), or the governor (torch is imported
    only when a loop first polls, so commands that never touch torch do not pay for its import)."""
    global _governor
    if fixed is not None:
        import torch

        torch.set_num_threads(fixed)
        _governor = None
        return
    _governor = ThreadGovernor()


def poll() -> None:
    """Loops call this every step; a no-op outside the CLI or with a fixed count."""
    if _governor is not None:
        _governor.poll()


def start_for(kind: str) -> None:
    """A stage's policy once its data set is known: image stages run on one thread (see above)."""
    if kind == "image" and _governor is not None:
        start(1)
