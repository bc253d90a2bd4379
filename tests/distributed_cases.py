"""The cases tests/test_distributed.py runs in one process and under torchrun (tests/distributed_worker.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.methods import METHODS
from pipeline.schema import MLPSettings, NetworkSection, TrainSettings, UNetSettings
from pipeline.training import train

#: every method trains; those whose loss couples a batch's rows train too, but match one process only in law
METHOD_CASES = list(METHODS)
SAMPLE_N, SAMPLE_BATCH = 26, 6   # five batches: two processes draw batches 0-1 and 2-4
NETWORK = NetworkSection(mlp=MLPSettings(hidden=16, depth=2, time_embedding=8),
                         unet=UNetSettings(channels=8, channel_mult=[1], num_res_blocks=1, norm_groups=4))


def settings(steps: int) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=64, lr=1e-3, warmup_steps=2, checkpoint_every=4, log_every=4)


def train_data() -> torch.Tensor:
    return torch.randn(512, 2, generator=torch.Generator().manual_seed(1))


def train_case(name: str, steps: int, checkpoints: Path, on_step=None) -> dict:
    """`name` trained `steps` steps from seed 0 on train_data(): its weights, EMA and loss history."""
    method = METHODS[name](METHODS[name].Config(), (2,))
    torch.manual_seed(0)
    net = method.make_network(NETWORK)
    result = train(net, method.loss, method.training_data(train_data()), settings(steps), 0,
                   checkpoints / f"{name}.pt", name, progress=False, on_step=on_step)
    return {"net": {k: v.detach().clone() for k, v in net.state_dict().items()}, "ema": result.ema_state,
            "history": result.loss_history}


def ready_method(name: str):
    """An untrained method and network (seeded), with what after_training computes."""
    method = METHODS[name](METHODS[name].Config(), (2,))
    torch.manual_seed(0)
    net = method.make_network(NETWORK).eval()
    with torch.no_grad():
        method.load_extras(method.after_training(net, method.training_data(train_data()).clamp(-1, 1),
                                                 torch.Generator().manual_seed(2)))
    return method, net


def sampler_cases() -> list[tuple[str, str, int | None]]:
    """(method, sampler, budget) for every sampler of every method."""
    cases = []
    for name, cls in METHODS.items():
        for sampler, spec in cls(cls.Config(), (2,)).samplers.items():
            cases.append((name, sampler, 12 if spec.uses_budget else None))  # SMLD's 10 levels + 1 fit in 12
    return cases
