"""Speed of every method of a params file on a 2-D benchmark: training steps and sampler throughput.

Timings are measurements, not results: they are printed (and optionally written to a JSON file),
never part of a DVC output, so `dvc repro` stays byte-identical. Run `pipeline benchmark`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.toy import TOY_DATASETS
from pipeline.methods import build_method
from pipeline.layout import resolve_device
from pipeline.rng import SampleStreams
from pipeline.training import train


def benchmark(params: Params, dataset: str = "moons", steps: int = 200, n_samples: int = 2000,
              budget: int = 100) -> list[dict]:
    """Per method: ms per training step (the real loop, EMA and checkpointing included) and, per sampler,
    seconds and NFE to draw `n_samples` points at `budget` (adaptive samplers use what they need)."""
    device = resolve_device(params.device)
    data = torch.from_numpy(TOY_DATASETS[dataset](20000, np.random.default_rng(0)).astype(np.float32))
    data = (data - data.mean(0)) / data.std(0)
    rows = []
    for name, config in params.methods.items():
        method = build_method(name, config, (2,))
        torch.manual_seed(0)
        net = method.make_network(params.network)
        settings = params.train_settings(name, "toy").model_copy(update={"steps": steps, "checkpoint_every": steps})
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            train(net, method.loss, method.training_data(data), settings, 0, Path(tmp) / "state.pt", "benchmark",
                  device, progress=False)
            train_ms = 1000 * (time.perf_counter() - started) / steps
        net.eval()
        method.load_extras(method.after_training(net, data.to(device), torch.Generator(device=device).manual_seed(0)))
        for sampler, run_budget in method.sampler_runs():
            if run_budget is not None and run_budget != min(method.config.budgets, key=lambda b: abs(b - budget)):
                continue
            started = time.perf_counter()
            streams = SampleStreams(0, torch.arange(n_samples, device=device))
            result = method.sample(net, sampler, run_budget, n_samples, streams, device)
            rows.append({"method": name, "sampler": sampler, "budget": run_budget, "nfe": round(result.nfe),
                         "train_ms_per_step": round(train_ms, 2),
                         "sample_seconds": round(time.perf_counter() - started, 3)})
    return rows
