"""What tests/test_distributed.py runs in each process under torchrun (gloo on the CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py train OUT STEPS [METHOD [KILL]]
    ... sample OUT

`train`: every method of distributed_cases.METHOD_CASES (or METHOD) trains STEPS steps from the same seed
(checkpoints under OUT, resumed where present), rank 0 saves its weights to OUT/<method>.pt; KILL: rank 1
kills itself (SIGKILL) after that step. `sample`: every sampler of every method draws from an untrained
network; rank 0 saves the samples and NFEs to OUT/samples.pt. `errors`: a failed write and a disagreement,
which every process must raise.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from distributed_cases import SAMPLE_BATCH, SAMPLE_N, ready_method, sampler_cases, train_case  # noqa: E402

from pipeline import distributed  # noqa: E402
from pipeline.io import save_torch  # noqa: E402
from pipeline.stages import draw_samples  # noqa: E402


def _killer(step: int):
    def on_step(done: int) -> None:
        if done == step and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return on_step


def _errors(out: Path) -> None:
    """A write rank 0 cannot make, and a decision the processes disagree on: every process must raise."""
    from pipeline.errors import StageError
    from pipeline.io import write_text

    (out / "file").write_text("")
    for attempt, expected in ((lambda: write_text(out / "file" / "below", "x"), OSError),
                              (lambda: distributed.agree(distributed.rank(), "the rank"), StageError)):
        try:
            attempt()
        except expected as error:
            print(f"<rank {distributed.rank()} raised {expected.__name__}: {type(error).__name__}>", flush=True)


def main(task: str, out: Path, steps: int = 0, only: str | None = None, kill: int | None = None) -> None:
    distributed.start(torch.device("cpu"))
    try:
        if task == "errors":
            _errors(out)
        elif task == "train":
            from distributed_cases import METHOD_CASES

            for name in [only] if only else METHOD_CASES:
                on_step = _killer(kill) if kill else None
                save_torch(out / f"{name}.pt", train_case(name, steps, out / "checkpoints", on_step))
        else:
            results = {}
            for name, sampler, budget in sampler_cases():
                method, net = ready_method(name)
                results[(name, sampler)] = draw_samples(method, net, sampler, budget, SAMPLE_N, SAMPLE_BATCH, 11,
                                                        torch.device("cpu"))
            save_torch(out / "samples.pt", results)
    finally:
        distributed.stop()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[0], Path(arguments[1]), int(arguments[2]) if len(arguments) > 2 else 0,
         arguments[3] if len(arguments) > 3 else None, int(arguments[4]) if len(arguments) > 4 else None)
