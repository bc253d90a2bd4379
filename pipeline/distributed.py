"""Several processes of one stage under torchrun (torch.distributed): who this process is, its share of the
work, and the collectives the trainer and the sampler use. One process (the default) calls none of them.

torchrun (`python -m torch.distributed.run`) starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK;
`start()` joins them into one process group (NCCL between GPUs, gloo on the CPU). Data parallelism is
PyTorch's DistributedDataParallel; what is ours is only the bookkeeping that makes the result the same
as one process's:
- training: every process draws the same global batch (one seeded generator, in lock-step), trains on its
  contiguous slice of rows, and DDP averages the gradients (pipeline.training; pipeline.rng.RowShard);
- sampling: the batches of sample indices 0..n-1 are split into contiguous shards, each process draws its
  batches from the per-sample streams, and the shards are gathered in index order
  (pipeline.stages.draw_samples): the samples one process draws, to the bit;
- every process runs the whole stage; rank 0 alone writes files (pipeline.io.write_bytes: the others wait
  for the file), and MLflow is published from those files by the publish stage, as after one process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether torchrun started this process with others (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


#: how long a collective waits for the slowest process before the job is stopped: sampling can keep the
#: others waiting for a whole sampling run (with fewer samples than one batch only one process draws, and
#: a batch of 1,000 images over 1,000 steps can take longer than torch's default 10 minutes on NCCL)
COLLECTIVE_TIMEOUT_HOURS = 4


def start(device: torch.device) -> None:
    """Join torchrun's process group (a no-op in one process or when already joined): NCCL on CUDA, gloo
    on the CPU. On CUDA each process takes the GPU of its LOCAL_RANK."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        return
    timeout = timedelta(hours=COLLECTIVE_TIMEOUT_HOURS)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo", timeout=timeout)


def stop() -> None:
    """Leave the process group (after the last collective)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process works in a group of several (joined by start())."""
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: torch.distributed's, or torchrun's RANK before the group is joined."""
    if not launched():
        return 0
    import torch.distributed as dist

    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if not launched():
        return 1
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes the files and prints (every process computes the whole stage)."""
    return rank() == 0


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def shard(n: int, batch: int = 1, ranks: int | None = None, index: int | None = None) -> tuple[int, int]:
    """Rows start..stop-1 of n for this process: whole batches of `batch` rows (the last may be short), split
    into contiguous runs in rank order whose batch counts differ by at most one. Each process then computes
    exactly the batches one process would, so shards of a sampling run give one process's samples to the bit."""
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    batches = -(-n // batch)
    return min(n, batches * index // ranks * batch), min(n, batches * (index + 1) // ranks * batch)


def _collective_device() -> torch.device:
    """NCCL reduces only CUDA tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(x: Tensor, n: int, batch: int = 1) -> Tensor:
    """This process's shard(n, batch) rows of a tensor, concatenated with every other process's in index order
    (every process gets all n rows, on x's device). One process: x itself."""
    if not active():
        return x
    import torch
    import torch.distributed as dist

    bounds = [shard(n, batch, world_size(), r) for r in range(world_size())]
    largest = max(stop - start for start, stop in bounds)
    where = _collective_device()
    padded = torch.zeros((largest, *x.shape[1:]), dtype=x.dtype, device=where)
    padded[: x.shape[0]] = x.to(where)
    pieces = [torch.empty_like(padded) for _ in bounds]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[: stop - start] for piece, (start, stop) in zip(pieces, bounds)]).to(x.device)


def sum_over_processes(value: float) -> float:
    """The sum of one number over the processes (float64)."""
    if not active():
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64)
    total = total.to(_collective_device())
    dist.all_reduce(total)
    return float(total.cpu()[0])


def mean_over_processes(x: Tensor) -> Tensor:
    """The mean of a tensor over the processes (the mean loss of equal shards is the global batch's)."""
    if not active():
        return x
    import torch
    import torch.distributed as dist

    reduced = x.detach().to(_collective_device(), torch.float64).clone()
    dist.all_reduce(reduced)
    return (reduced / world_size()).to(x.device, x.dtype)


def agree(value, what: str) -> None:
    """Raise on every process unless every process has the same `value` (a decision each made alone)."""
    values = gather_objects(value)
    if any(other != values[0] for other in values):
        from pipeline.errors import StageError

        raise StageError(f"the {len(values)} processes disagree on {what} ({', '.join(map(str, values))}); "
                         f"on several machines every one must see the same files (a shared filesystem)")


def gather_objects(value) -> list:
    """Every process's `value`, in rank order (small picklable things: random generator states)."""
    if not active():
        return [value]
    import torch.distributed as dist

    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def data_parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` under DistributedDataParallel when several processes train (gradients averaged over them in
    backward), else `net` itself."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

