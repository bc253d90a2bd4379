"""The GPU check (issue 14): run it once on a machine with a GPU and record what it prints.

1. The smoke profile end to end under `dvc repro` on the GPU (`device: auto` picks it), twice with
   `--force`, and whether the two results.csv are byte-identical (pipeline.layout.deterministic_cuda).
2. A few hundred training steps of DDPM and flow matching with profiles/cifar10.yaml's U-Net on
   CIFAR-10-sized inputs (random images: speed does not depend on their content), in fp32 and bf16:
   step time, training samples/s, peak GPU memory; then DDIM sampling throughput at 100 steps.

It prints a Markdown table and writes gpu_check.json beside it (--out). `--tiny` runs both parts at toy
sizes on whatever device there is (the tests run it so that it cannot rot).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.benchmark import copy_repository  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.layout import resolve_device  # noqa: E402
from pipeline.methods import build_method  # noqa: E402
from pipeline import rng  # noqa: E402
from pipeline.stages import draw_samples  # noqa: E402
from pipeline.training import train  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def smoke_runs(out: Path, tiny: bool) -> dict:
    """The smoke profile (the image one with --tiny) from scratch, then forced: wall times and byte identity."""
    profile = REPO / "profiles" / ("smoke_images.yaml" if tiny else "smoke.yaml")
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        copy_repository(root, profile)
        times = []
        results = []
        for command in (["dvc", "repro"], ["dvc", "repro", "--force"]):
            start = time.perf_counter()
            done = subprocess.run(command, cwd=root, capture_output=True, text=True)
            if done.returncode:  # the GPU's minutes are scarce: show why at once
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            times.append(time.perf_counter() - start)
            results.append((root / "reports" / "results.csv").read_bytes())
        shutil.copy(root / "reports" / "summary.md", out / "gpu_check_summary.md")
        return {"profile": profile.name, "repro_s": round(times[0], 1), "forced_repro_s": round(times[1], 1),
                "results_byte_identical": results[0] == results[1]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def training_runs(device: torch.device, steps: int, tiny: bool) -> list[dict]:
    """Each method x precision: training step time and samples/s, peak memory, DDIM sampling throughput."""
    params = load_params(REPO / "profiles" / ("smoke_images.yaml" if tiny else "cifar10.yaml"))
    shape, batch, sample_batch, budget = ((1, 8, 8), 4, 8, 2) if tiny else ((3, 32, 32), 128, 256, 100)
    data = rng.uniform((batch * 8, *shape), torch.Generator().manual_seed(0), "cpu") * 2 - 1  # train() moves it
    rows = []
    for name in ("ddpm", "flow_matching"):
        config = params.method_config(name)
        for precision in ("fp32", "bf16"):
            method = build_method(name, config, shape)
            torch.manual_seed(0)
            net = method.make_network(params.network).to(device)
            settings = params.train_settings(name, "image").model_copy(
                update={"steps": steps, "batch_size": batch, "checkpoint_every": 10 * steps, "warmup_steps": 1})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with tempfile.TemporaryDirectory() as folder:
                warm = settings.model_copy(update={"steps": max(1, steps // 10)})
                train(net, method.loss, data, warm, 0, Path(folder) / "warm.pt", "warm", device, False,
                      precision=precision)
                synchronize(device)
                start = time.perf_counter()
                train(net, method.loss, data, settings, 1, Path(folder) / "run.pt", "run", device, False,
                      precision=precision)
                synchronize(device)
                elapsed = time.perf_counter() - start
            net.eval()
            # the sample stage's own entry point (its per-sample streams and autocast), warmed up first
            draw_samples(method, net, "ddim-eta0.0-uniform", 2, sample_batch, sample_batch, 0, device, precision)
            synchronize(device)
            start = time.perf_counter()
            draw_samples(method, net, "ddim-eta0.0-uniform", budget, sample_batch, sample_batch, 0, device, precision)
            synchronize(device)
            sampling = time.perf_counter() - start
            rows.append({"method": name, "precision": precision, "steps": steps, "batch": batch,
                         "step_ms": round(1000 * elapsed / steps, 2),
                         "train_samples_per_s": round(batch * steps / elapsed, 1),
                         "peak_memory_mib": round(peak_memory_mib(device), 1),
                         "ddim_steps": budget, "sampled_images_per_s": round(sample_batch / sampling, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for gpu_check.json and .md")
    parser.add_argument("--steps", type=int, default=300, help="training steps per method and precision")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any device (the tests' check)")
    parser.add_argument("--skip-smoke", action="store_true", help="only the training and sampling part")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": args.tiny}
    print(json.dumps(report), flush=True)
    report["training"] = training_runs(device, args.steps, args.tiny)
    if not args.skip_smoke:
        report["smoke"] = smoke_runs(args.out, args.tiny)
        print(json.dumps(report["smoke"]), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# GPU check: {report['device']} (torch {report['torch']}, CUDA {report['cuda']})", "",
             "| method | precision | step ms | train samples/s | peak MiB | DDIM images/s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['method']} | {r['precision']} | {r['step_ms']} | {r['train_samples_per_s']} | "
              f"{r['peak_memory_mib']} | {r['sampled_images_per_s']} |" for r in report["training"]]
    if "smoke" in report:
        smoke = report["smoke"]
        lines += ["", f"{smoke['profile']}: dvc repro {smoke['repro_s']} s, forced rerun {smoke['forced_repro_s']} s, "
                      f"results.csv byte-identical: {smoke['results_byte_identical']}"]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
