"""The one training loop: Adam, warm-up + cosine learning rate, EMA, gradient clipping, resumable.

It knows no method names: it minimises mean(loss_fn(net, batch, generator)) over random batches
of a tensor of training examples. A checkpoint holds the network, its EMA, the optimizer, the
step, the loss history and every random generator's state, so a run killed at any point and
restarted from its last checkpoint ends with bit-identical weights (on the same machine).

Under torchrun with several processes (pipeline.distributed) the same loop is data-parallel: every process
draws the global batch's indices and random numbers with one generator in lock-step, computes the loss
on its contiguous slice of rows (pipeline.rng.RowShard), and DistributedDataParallel averages the
gradients, so the weights equal one process's with the same batch_size and seed to float rounding (for a
loss whose rows are independent). Rank 0 writes the checkpoints; every process resumes from them.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from pipeline.errors import CheckpointError, StageError, TrainingDiverged
from pipeline import distributed, rng, threads
from pipeline.schema import TrainSettings
from pipeline.io import derive_seed, save_torch, sha256_bytes
from pipeline.nets import autocast

CHECKPOINT_FORMAT = 1


@dataclass
class TrainResult:
    ema_state: dict[str, Tensor]
    loss_history: list[tuple[int, float, float]]  # (step, mean loss over the logging window, lr)
    snapshots: dict[int, dict[str, Tensor]]  # step -> EMA weights then (settings.snapshots)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to lr, then constant or cosine decay to zero."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    if settings.lr_schedule == "constant":
        return settings.lr
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def weights_digest(*state_dicts: dict[str, Tensor]) -> str:
    """sha256 of the tensors' bytes in key order: the content hash a checkpoint records and is checked against."""
    parts = []
    for state in state_dicts:
        for key in sorted(state):
            value = state[key]
            data = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() \
                if isinstance(value, Tensor) else repr(value).encode()
            parts.append(key.encode() + b"\0" + sha256_bytes(data).encode())
    return sha256_bytes(b"\n".join(parts))


def load_checkpoint(path: Path, identity: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a truncated file
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline; delete it to start over")
    if state.get("identity") != identity:
        raise CheckpointError(f"{path} was made by other parameters (identity {state.get('identity')}, "
                              f"expected {identity}); delete it to start over")
    if state.get("weights_sha256") != weights_digest(state["model"], state["ema"]):
        raise CheckpointError(f"{path} is corrupt (its weights do not match their recorded sha256); "
                              f"delete it to start over")
    return state


def _process_seed(seed: int) -> int:
    """The global torch generator's seed of this process (dropout masks): the training seed on rank 0 and in
    one process, a seed derived from it on the others, so their masks are not copies of rank 0's."""
    return seed if distributed.is_main() else derive_seed(seed, "process", distributed.rank())


def _global_rng_states(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _restore_global_rng(state: dict, device: torch.device, seed: int) -> None:
    """This process's global torch (and CUDA) generator from a checkpoint: its own state where the checkpoint
    was written by as many processes, else rank 0's state on rank 0 and a fresh derived seed elsewhere."""
    states = state.get("process_rng")
    if states is not None and len(states) == distributed.world_size():
        cpu, cuda = states[distributed.rank()]
    elif distributed.is_main():
        cpu, cuda = state["torch_rng"], state.get("cuda_rng")
    else:
        torch.manual_seed(derive_seed(seed, "process", distributed.rank(), state["step"]))
        return
    torch.set_rng_state(cpu)
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def global_batch(settings: TrainSettings, n: int) -> int:
    """The examples of one step over all processes: train.batch_size, at most the training set, a multiple of
    the process count (one-line error otherwise)."""
    batch = min(settings.batch_size, n)
    if batch % distributed.world_size():
        raise StageError(f"the batch of {batch} examples (train.batch_size, at most the training set) does not "
                         f"split evenly over {distributed.world_size()} processes; make it a multiple of the "
                         f"process count")
    return batch


def train(net: nn.Module, loss_fn: Callable[[nn.Module, Tensor, torch.Generator], Tensor], data: Tensor,
          settings: TrainSettings, seed: int, checkpoint_path: Path, identity: str,
          device: torch.device | str = "cpu", progress: bool = True,
          on_step: Callable[[int], None] | None = None, precision: str = "fp32") -> TrainResult:
    """Train `net` in place and return its EMA weights and loss history.

    checkpoint_path: where the resumable state is written every `checkpoint_every` steps; an
    existing checkpoint with the same `identity` (a hash of everything that made the run) resumes.
    precision: "bf16" runs the loss's forward and backward products under bf16 autocast.
    """
    device = torch.device(device)
    net.to(device)
    data = data.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, fused=True)  # one kernel for all parameters
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(_process_seed(seed))
    history: list[tuple[int, float, float]] = []
    window: list[Tensor] = []
    snapshots: dict[int, dict[str, Tensor]] = {}
    start = 0
    checkpoint_path = Path(checkpoint_path)
    existed = checkpoint_path.exists()
    if existed:
        state = load_checkpoint(checkpoint_path, identity)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        _restore_global_rng(state, device, seed)
        history = [tuple(row) for row in state["history"]]
        window = [torch.tensor(w, device=device) for w in state["window"]]
        snapshots = state.get("snapshots", {})
        start = state["step"]
        if progress and distributed.is_main():
            print(f"resuming from {checkpoint_path} at step {start}", file=sys.stderr)

    distributed.agree(start, f"the step to resume {checkpoint_path} from")  # a collective: every process
    saved_step = [start] if existed else []

    def diverged(what: str, step: int) -> TrainingDiverged:
        kept = (f"the last good checkpoint {checkpoint_path} (step {saved_step[0]}) is kept"
                if saved_step else "no checkpoint had been written yet")
        return TrainingDiverged(f"training diverged: non-finite {what} at step {step + 1}; {kept}; "
                                f"lower the learning rate (train.lr) or check the data, then run again")

    def save(step: int) -> None:
        saved_step[:] = [step]
        if window:  # the losses since the last log, as every process will resume them: averaged over processes
            window[:] = [torch.tensor(float(w), device=device)
                         for w in distributed.mean_over_processes(torch.stack(window))]
        process_rng = distributed.gather_objects(_global_rng_states(device))  # every process saves; rank 0 writes
        save_torch(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "identity": identity, "step": step,
            "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "weights_sha256": weights_digest(net.state_dict(), ema.state_dict()),
            "generator": generator.get_state(), "torch_rng": process_rng[0][0], "cuda_rng": process_rng[0][1],
            **({"process_rng": process_rng} if len(process_rng) > 1 else {}),
            "history": history, "window": [float(w) for w in window], "snapshots": snapshots,
        })

    bar = None
    if progress and distributed.is_main():
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=1.0)
    n = data.shape[0]
    batch = global_batch(settings, n)
    rows = distributed.shard(batch)
    model = distributed.data_parallel(net, device)  # net itself in one process
    parameters = list(net.parameters())  # walking the module tree every step cost ~10% of a small MLP's step
    ema_parameters = list(ema.parameters())
    ema_update = get_ema_multi_avg_fn(settings.ema_decay)  # one foreach lerp over all parameters
    buffer_pairs = list(zip(ema.buffers(), net.buffers()))
    snapshot_steps = set(settings.snapshots)
    for step in range(start, settings.steps):
        threads.poll()
        lr = learning_rate(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = rng.integers(0, n, (batch,), generator, device)
        source = generator if model is net else rng.RowShard(generator, batch, *rows)
        with autocast(device, precision):  # bf16 products where asked; the loss and its gradient are fp32
            loss = loss_fn(model, data[index[rows[0]:rows[1]]], source).float().mean()
        # a process alone must not stop (the others would wait in backward): several check the averaged gradient
        if model is net and not torch.isfinite(loss):
            raise diverged("loss", step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip, foreach=True)
        if not torch.isfinite(grad_norm):
            raise diverged("gradient", step)
        optimizer.step()
        ema_update(ema_parameters, parameters, step)
        with torch.no_grad():
            for b_ema, b in buffer_pairs:
                b_ema.copy_(b)
        window.append(loss.detach())
        done = step + 1
        if done in snapshot_steps:
            snapshots[done] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
        if done % settings.log_every == 0 or done == settings.steps:
            history.append((done, float(distributed.mean_over_processes(torch.stack(window).mean())), lr))
            window = []
            if bar is not None:
                bar.set_postfix(loss=f"{history[-1][1]:.4f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            save(done)
        if on_step is not None:
            on_step(done)
    if bar is not None:
        bar.close()
    if start < settings.steps or not saved_step:
        save(settings.steps)
    return TrainResult({k: v.detach().cpu() for k, v in ema.state_dict().items()}, history, snapshots)
