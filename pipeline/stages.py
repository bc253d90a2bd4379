"""The run and reflow stages: train a method (or derive it by reflow), sample with every sampler x
budget, score the samples and the likelihoods, and score each training snapshot (pipeline.layout
lists the files). Functions over paths and validated params: no CLI, no DVC.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import data as datasets, distributed
from pipeline.config import Params
from pipeline.data.images import dequantize
from pipeline.errors import CheckpointError, StageError
from pipeline.evaluation import SampleScorer, bits_per_dim, clean_value, record_metric
from pipeline.io import derive_seed, hash_config, sha256_file, write_json, write_npz, write_text
from pipeline.layout import (CONVERGENCE_COLUMNS, TRAJECTORY_KEY, convergence_file, data_file, loss_file,
                             metrics_file, model_file, reflow_pairs_file, resolve_device, run_key, load_samples,
                             samples_file)
from pipeline.methods import build_method
from pipeline.methods.base import EvalContext, Method
from pipeline.metric_table import known
from pipeline.nets import autocast
from pipeline.rng import SampleStreams
from pipeline.samplers import flow_trajectory
from pipeline.store import load_model, reflow_settings, save_model, trained_steps
from pipeline.training import global_batch, train


# ---------------------------------------------------------------- train


def run_train(root: Path, params: Params, method_name: str, dataset: str, seed: int,
              progress: bool = True) -> Path:
    data = datasets.load(data_file(root, dataset))
    config = params.method_config(method_name)
    method = build_method(method_name, config, data.shape)
    settings = params.train_settings(method_name, data.kind)
    data_hash = sha256_file(data_file(root, dataset))
    recipe = {"method": method_name, "dataset": dataset, "seed": seed, "method_config": config.model_dump(),
              "train": settings.model_dump(), "network": params.network.model_dump(), "data_sha256": data_hash,
              **precision_entry(params)}
    identity = hash_config(recipe)
    device = resolve_device(params.device)
    stage_seed = derive_seed(seed, "train", method_name, dataset)
    torch.manual_seed(stage_seed)
    net = method.make_network(params.network)  # initialisation drawn from the stage's seed
    train_data = method.training_data(torch.from_numpy(data.train))
    checkpoint = root / "checkpoints" / method_name / dataset / f"seed{seed}-{identity}.pt"
    if method.couples_batch_rows and distributed.world_size() > 1 and distributed.is_main():
        first, last = distributed.shard(global_batch(settings, len(train_data)))
        print(f"note: {method_name}'s loss couples the rows of a batch; each of the {distributed.world_size()} "
              f"processes couples its own {last - first}", file=sys.stderr)
    try:
        result = train(net, method.loss, train_data, settings, stage_seed, checkpoint, identity, device, progress,
                       precision=params.precision)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    net.load_state_dict(result.ema_state)  # what the method computes once from the trained (EMA) network
    extras = _after_training(method, net.eval(), train_data.to(device), stage_seed, device)
    save_model(model_file(root, method_name, dataset, seed), recipe, identity, data.shape, result.ema_state,
               extras, result.snapshots)
    rows = ["step,loss,lr"] + [f"{step},{loss:.8g},{lr:.6g}" for step, loss, lr in result.loss_history]
    write_text(loss_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return model_file(root, method_name, dataset, seed)


def precision_entry(params: Params) -> dict:
    """The training precision in a model's recipe (and so its identity), where it is not the default fp32."""
    return {} if params.precision == "fp32" else {"precision": params.precision}


def _after_training(method: Method, net: torch.nn.Module, train_data: torch.Tensor, stage_seed: int,
                    device: torch.device) -> dict:
    """What the method computes once from trained weights (e.g. Analytic-DPM's table), from the train
    stage's seed: for the final weights in run_train and for each snapshot in run_convergence."""
    generator = torch.Generator(device=device).manual_seed(derive_seed(stage_seed, "after_training"))
    return method.after_training(net, train_data, generator)


# ---------------------------------------------------------------- reflow


def run_reflow(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               progress: bool = True) -> Path:
    """Reflow (Liu et al. 2023, Alg. 1): coupled pairs (Z0, ODE(Z0)) of the source flow, then the derived
    flow trained on them by the one training loop, starting from the source's EMA weights."""
    if not params.is_derived(method_name):
        derived = [name for name in params.evaluated_methods() if params.is_derived(name)]
        raise StageError(f"--method {method_name!r} is not made by params.yaml's reflow section "
                         f"({', '.join(derived) or 'empty'})")
    source = params.source_method(method_name)
    reflow = reflow_settings(params, method_name)
    device = resolve_device(params.device)
    method, source_net = load_model(root, params, source, dataset, seed, device)
    generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "reflow", method_name, dataset))
    n_pairs, solve_batch = reflow.pair_counts(datasets.DATASETS[dataset])
    noise, coupled = method.coupled_pairs(source_net, n_pairs, generator, solve_batch, reflow.rtol, reflow.atol)
    pairs_path = reflow_pairs_file(root, method_name, dataset, seed)
    write_npz(pairs_path, noise=noise.float().cpu().numpy(), data=coupled.float().cpu().numpy())
    source_path = model_file(root, source, dataset, seed)
    source_recipe = torch.load(source_path, map_location="cpu", weights_only=False)["recipe"]
    settings = params.train_settings(source, datasets.DATASETS[dataset]).model_copy(
        update=reflow.train.for_kind(datasets.DATASETS[dataset]))
    recipe = {"method": method_name, "source": source, "dataset": dataset, "seed": seed,
              "method_config": params.method_config(method_name).model_dump(), "reflow": reflow.model_dump(),
              "train": settings.model_dump(), "network": source_recipe["network"],
              "source_sha256": sha256_file(source_path), **precision_entry(params),
              "pairs_sha256": sha256_file(pairs_path)}
    identity = hash_config(recipe)
    stage_seed = derive_seed(seed, "train", method_name, dataset)
    net = source_net.train().requires_grad_(True)
    pairs = torch.stack([noise, coupled], dim=1).float().cpu()
    checkpoint = root / "checkpoints" / method_name / dataset / f"seed{seed}-{identity}.pt"
    try:
        result = train(net, method.pair_loss, pairs, settings, stage_seed, checkpoint, identity, device, progress,
                       precision=params.precision)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    save_model(model_file(root, method_name, dataset, seed), recipe, identity, method.data_shape, result.ema_state)
    rows = ["step,loss,lr"] + [f"{step},{loss:.8g},{lr:.6g}" for step, loss, lr in result.loss_history]
    write_text(loss_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return model_file(root, method_name, dataset, seed)


# ---------------------------------------------------------------- sample


def run_sample(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               progress: bool = True) -> Path:
    device = resolve_device(params.device)
    method, net = load_model(root, params, method_name, dataset, seed, device)
    runs = sampler_runs(method, params, progress, device)
    arrays, index = {}, []
    iterator = runs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(runs, desc=f"sample {method_name}/{dataset}", unit="run", mininterval=1.0)
    n, batch = params.sample.n_samples, params.sample.batch_size
    if len(method.data_shape) == 3:
        n, batch = params.sample.image.n_samples, params.sample.image.batch_size
    noise_seed = sample_noise_seed(seed, dataset)
    for sampler, budget in iterator:
        key = run_key(sampler, budget)
        arrays[key], nfe = draw_samples(method, net, sampler, budget, n, batch, noise_seed, device, params.precision)
        index.append({"key": key, "sampler": sampler, "budget": budget, "nfe": nfe})
    paths = draw_trajectories(method, net, noise_seed, device)
    if paths is not None:
        arrays[TRAJECTORY_KEY] = paths
    arrays["index"] = np.array(json.dumps(index))
    write_npz(samples_file(root, method_name, dataset, seed), **arrays)
    return samples_file(root, method_name, dataset, seed)


def sampler_runs(method: Method, params: Params, progress: bool = False,
                 device: torch.device | str = "cpu") -> list[tuple[str, int | None]]:
    """The (sampler, budget) runs the sample stage draws: the method's, image budgets capped by
    sample.image.max_budget, less the budgets that cannot pay for one step of their sampler (each said in a
    line when `progress`). The method's model extras must be loaded (Analytic-DPM's table). The same list on
    every process, decided before the work is shared out."""
    runs = method.sampler_runs()
    cap = params.sample.image.max_budget
    if len(method.data_shape) == 3 and cap is not None:
        runs = [(sampler, budget) for sampler, budget in runs if budget is None or budget <= cap]
    kept = [(sampler, budget) for sampler, budget in runs if method.fits_budget(sampler, budget, device)]
    for sampler, budget in runs:
        if (sampler, budget) not in kept and progress and distributed.is_main():
            print(f"skipped {sampler} at {budget} NFE: one step of it costs more", file=sys.stderr)
    lost = sorted({sampler for sampler, _ in runs} - {sampler for sampler, _ in kept})
    if lost:
        raise StageError(f"no budget of methods.<name>.budgets pays for one step of {', '.join(lost)}; "
                         f"add a larger budget or leave the sampler out (methods.<name>.samplers)")
    return kept


def sample_noise_seed(seed: int, dataset: str) -> int:
    """The seed of the per-sample random streams: one per training seed and data set, so every method, sampler
    and budget on the data set starts sample i from the same draws (paired comparisons on common noise)."""
    return derive_seed(seed, "sample", dataset)


#: the sampling-ODE paths the report draws, on 2-D data: this many samples (the first of every sampler), Heun steps
TRAJECTORY_SAMPLES, TRAJECTORY_STEPS = 24, 48


def draw_trajectories(method: Method, net: torch.nn.Module, noise_seed: int, device: torch.device) -> np.ndarray | None:
    """Samples 0..TRAJECTORY_SAMPLES-1 along the method's sampling ODE, [steps + 1, n, d], from the same prior
    draws as every sampler's; None for image data and for methods without a sampling ODE."""
    if "ode" not in method.capabilities or len(method.data_shape) != 1:
        return None
    streams = SampleStreams(noise_seed, torch.arange(TRAJECTORY_SAMPLES, device=device))
    x = method.prior_sample(TRAJECTORY_SAMPLES, streams, device)
    return flow_trajectory(method, net, x, TRAJECTORY_STEPS).float().cpu().numpy()


def draw_samples(method: Method, net: torch.nn.Module, sampler: str, budget: int | None, n: int, batch: int,
                 noise_seed: int, device: torch.device, precision: str = "fp32") -> tuple[np.ndarray, int]:
    """Samples 0..n-1 of one sampler in batches of at most `batch`, sample i drawing from its own stream
    (pipeline.rng.SampleStreams), so the samples do not depend on `batch`; and the NFE per sample. Under
    bf16 `precision` the network's products run in bf16 (pipeline.nets.autocast). Under torchrun each
    process draws a contiguous run of the batches and every process gets all n (pipeline.distributed):
    the same batches, so the same samples, as one process."""
    chunks, evaluations = [torch.empty((0, *method.data_shape))], 0.0
    first, last = distributed.shard(n, batch)  # 0, n in one process; under torchrun this process's batches
    for offset in range(first, last, batch):
        index = torch.arange(offset, min(last, offset + batch), device=device)
        with autocast(device, precision):
            result = method.sample(net, sampler, budget, len(index), SampleStreams(noise_seed, index), device)
        chunks.append(result.x.float().cpu())
        evaluations += result.nfe * len(index)
    samples = distributed.gather_rows(torch.cat(chunks), n, batch)  # every process's shard, in index order
    return samples.numpy(), round(distributed.sum_over_processes(evaluations) / n)


def run_evaluate(root: Path, params: Params, method_name: str, dataset: str, seed: int) -> Path:
    """W2 of every sampler x budget against the test split, and the method's likelihoods."""
    device = resolve_device(params.device)
    data = datasets.load(data_file(root, dataset))
    method, net = load_model(root, params, method_name, dataset, seed, device)
    index, samples = load_samples(samples_file(root, method_name, dataset, seed))
    scorer = SampleScorer(root, params, dataset, data, device)
    table: dict = {}
    for row in index:
        metric_seed = derive_seed(seed, "evaluate", dataset)  # the same draws for every sampler and method
        for metric, value in scorer(samples[row["key"]], metric_seed).items():
            record_metric(table, row["sampler"], row["nfe"], metric, value)
    for sampler, nfe, metric, value in _likelihood_rows(params, method, net, data, seed, dataset, device):
        record_metric(table, sampler, nfe, metric, value)
    # flows that define them report path metrics (straightness, transport cost) from evaluate.w2_points draws,
    # the same prior draws for every method with the same prior
    context = EvalContext(rtol=params.evaluate.ode_rtol, atol=params.evaluate.ode_atol)
    paths = common_generator(seed, "paths", dataset, device)
    for sampler, nfe, metric, value in method.trajectory_metrics(net, scorer.n, paths, context):
        record_metric(table, sampler, nfe, metric, value)
    # the settings each number was made with (e.g. DDPM's x0 clipping on images), beside every number
    steps = trained_steps(root, method_name, dataset, seed)
    for sampler, by_nfe in table.items():
        for nfe in by_nfe:
            for metric, value in {**method.protocol(sampler), "checkpoint_step": steps}.items():
                record_metric(table, sampler, int(nfe), metric, value)
    unknown = sorted({metric for by_nfe in table.values() for values in by_nfe.values() for metric in values
                      if not known(metric, data.kind)})
    if unknown:  # caught here, not by the publish stage after the whole sweep
        raise StageError(f"{method_name} on {dataset} reports metrics that pipeline/metric_table.py does not list "
                         f"for {data.kind} data: {', '.join(unknown)}")
    write_json(metrics_file(root, method_name, dataset, seed), table)
    return metrics_file(root, method_name, dataset, seed)


def common_generator(seed: int, purpose: str, dataset: str, device: torch.device) -> torch.Generator:
    """A generator of the evaluation that depends on the training seed, its purpose and the data set, not on
    the method: every method is scored on the same random numbers (common random numbers, so a difference
    between two methods of one seed is not a difference in their draws)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "evaluate", purpose, dataset))


def _likelihood_rows(params: Params, method: Method, net: torch.nn.Module, data, seed: int, dataset: str,
                     device: torch.device) -> list[tuple[str, int, str, float]]:
    """(sampler, nfe, metric, value) of the method's likelihoods on the test split: nats, their standard
    error and count; on images also bits/dim of the dequantized test images. The dequantization and the
    estimators' draws (Hutchinson probes, the bound's times) are the same for every method."""
    cfg = params.evaluate
    image = data.kind == "image"
    x_test = torch.from_numpy(data.test[: cfg.image.nll_points if image else cfg.nll_points]).to(device)
    if image:
        x_test = dequantize(x_test, common_generator(seed, "dequantize", dataset, device))
    context = EvalContext(rtol=cfg.ode_rtol, atol=cfg.ode_atol)
    rows = []
    generator = common_generator(seed, "likelihood", dataset, device)
    for record in method.log_likelihood(net, x_test, generator, context):
        nll = -record.log_prob.double().cpu()
        rows += [(record.sampler, round(record.nfe), "nll", nll.mean()),
                 (record.sampler, round(record.nfe), "nll_se", nll.std() / math.sqrt(len(nll))),
                 (record.sampler, round(record.nfe), "nll_n", len(nll))]
        if image:
            bpd = bits_per_dim(nll, record.estimator, method.dim)
            rows += [(record.sampler, round(record.nfe), "nll_bpd", bpd.mean()),
                     (record.sampler, round(record.nfe), "nll_bpd_se", bpd.std() / math.sqrt(len(bpd)))]
            if record.estimator == "ode_hutchinson":
                rows.append((record.sampler, round(record.nfe), "nll_probes", 1))
    return rows


# ---------------------------------------------------------------- convergence


def _convergence_row(step: int, sampler: str, nfe: int, metric: str, value: float) -> str:
    value = clean_value(value)
    return f"{int(step)},{sampler},{nfe},{metric},{'nan' if value is None else repr(value)}"


def run_convergence(root: Path, params: Params, method_name: str, dataset: str, seed: int,
                    progress: bool = True) -> Path:
    """Every sampler (at evaluate.convergence_budget, adaptive ones as they are) and every likelihood of
    the EMA weights kept at each step of train.snapshots, scored as the evaluate stage scores the final
    model: one row per (step, sampler, nfe, metric). Each sampler starts from the same prior draws at
    every step. No snapshots: the header alone."""
    device = resolve_device(params.device)
    method, net = load_model(root, params, method_name, dataset, seed, device)
    snapshots = torch.load(model_file(root, method_name, dataset, seed), map_location="cpu",
                           weights_only=False).get("snapshots", {})
    rows = [",".join(CONVERGENCE_COLUMNS)]
    if snapshots:
        data = datasets.load(data_file(root, dataset))
        scorer = SampleScorer(root, params, dataset, data, device)
        train_data = method.training_data(torch.from_numpy(data.train)).to(device)
        n, batch = params.sample.n_samples, params.sample.batch_size
        if data.kind == "image":
            n, batch = params.sample.image.n_samples, params.sample.image.batch_size
        caps = [method.max_budget(), params.sample.image.max_budget if data.kind == "image" else None]
        budget = min([params.evaluate.convergence_budget, *[c for c in caps if c is not None]])
        samplers = list(dict.fromkeys(sampler for sampler, _ in method.sampler_runs()))
        stage_seed = derive_seed(seed, "train", method_name, dataset)  # run_train's, so the final step matches
        steps = sorted(snapshots, key=int)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"convergence {method_name}/{dataset}", unit="snapshot", mininterval=1.0)
        for step in steps:
            net.load_state_dict(snapshots[step])
            method.load_extras(_after_training(method, net, train_data, stage_seed, device))
            for sampler in samplers:
                run_budget = budget if method.samplers[sampler].uses_budget else None
                if not method.fits_budget(sampler, run_budget, device):  # the same decision on every process
                    continue
                x, nfe = draw_samples(method, net, sampler, run_budget, n, batch, sample_noise_seed(seed, dataset),
                                      device, params.precision)
                metric_seed = derive_seed(seed, "evaluate", dataset)
                rows += [_convergence_row(step, sampler, nfe, metric, value)
                         for metric, value in scorer(x, metric_seed).items()]
            for sampler, nfe, metric, value in _likelihood_rows(params, method, net, data, seed, dataset, device):
                rows.append(_convergence_row(step, sampler, nfe, metric, value))
    write_text(convergence_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return convergence_file(root, method_name, dataset, seed)
