"""Cost of per-sample random streams and per-sample RK45 step control at the default profile's sizes (issue 11).

Each figure is a ratio measured in one run, the variants interleaved and repeated, the median kept:
- streams: wall time of a sampler drawing from pipeline.rng.SampleStreams over the same sampler drawing from one
  torch.Generator (1,000 2-D points, 200 digits images; untrained default networks);
- rk45: the per-sample float64 dopri5 (pipeline.solvers) over torchdiffeq's batch-shared float32 dopri5, wall
  time and NFE, on the same network and prior draws.
Usage: python scripts/stream_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.config import load_params
from pipeline.methods import build_method
from pipeline.rng import SampleStreams


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _ratio(a, b, repeats: int) -> tuple[float, float, float]:
    """(median a time, median b time, median of the paired ratios a / b)."""
    a_times, b_times = [], []
    a(), b()  # warm-up
    for _ in range(repeats):
        a_times.append(_timed(a))
        b_times.append(_timed(b))
    ratios = [x / y for x, y in zip(a_times, b_times)]
    return statistics.median(a_times), statistics.median(b_times), statistics.median(ratios)


def _ready(params, name: str, shape: tuple[int, ...]):
    method = build_method(name, params.methods[name], shape)
    torch.manual_seed(0)
    net = method.make_network(params.network).eval()
    train = torch.randn(512, *shape).clamp(-1, 1)
    method.load_extras(method.after_training(net, method.training_data(train), torch.Generator().manual_seed(0)))
    return method, net


def main(repeats: int) -> None:
    params = load_params("params.yaml")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = [("vp_sde", (2,), "euler_maruyama", 1000, 1000), ("vp_sde", (2,), "pc", 1000, 1000),
             ("ddpm", (2,), "ancestral_beta", 1000, 1000), ("ddpm", (1, 8, 8), "ancestral_beta", 20, 200),
             ("smld", (2,), "annealed_langevin", 1000, 1000)]
    for name, shape, sampler, budget, n in cases:
        method, net = _ready(params, name, shape)
        streams = lambda: method.sample(net, sampler, budget, n, SampleStreams(1, torch.arange(n)))
        generator = lambda: method.sample(net, sampler, budget, n, torch.Generator().manual_seed(1))
        a, b, ratio = _ratio(streams, generator, repeats)
        print(f"streams  {name:9s} {str(shape):10s} {sampler:18s} {budget:5d} NFE: {a:.3f} s vs {b:.3f} s, "
              f"ratio {ratio:.3f}")
    from torchdiffeq import odeint

    for name in ("flow_matching", "vp_sde"):
        method, net = _ready(params, name, (2,))
        x = method.prior_sample(1000, SampleStreams(1, torch.arange(1000)), "cpu")
        flow = method.probability_flow(net)
        calls = [0]

        def shared():
            def rhs(t, y):
                calls[0] += 1
                return flow.velocity(y, t.expand(y.shape[0]))
            times = torch.tensor([flow.t_start, flow.t_end])
            with torch.no_grad():
                odeint(rhs, x, times, rtol=1e-5, atol=1e-5, method="dopri5", options={"step_t": times})

        per_sample = lambda: method.sample(net, "ode_rk45", None, 1000, SampleStreams(1, torch.arange(1000)))
        a, b, ratio = _ratio(per_sample, shared, repeats)
        nfe = method.sample(net, "ode_rk45", None, 1000, SampleStreams(1, torch.arange(1000))).nfe
        calls[0] = 0
        shared()
        print(f"rk45     {name:9s} per-sample float64 {a:.3f} s (mean NFE {nfe:.1f}) vs batch-shared float32 "
              f"{b:.3f} s ({calls[0]} NFE), ratio {ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    main(parser.parse_args().repeats)
