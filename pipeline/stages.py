"""What each DVC stage does, as functions over paths and validated params (no CLI, no DVC).

Outputs (all written atomically):
    data/<dataset>.npz                                   prepare
    models/<method>/<dataset>/seed<k>.pt                 train (EMA weights + what made them)
    metrics/train/<method>/<dataset>/seed<k>.csv         train (loss curve)
    metrics/convergence/<method>/<dataset>/seed<k>.csv   convergence (scores of the train.snapshots weights)
    samples/<method>/<dataset>/seed<k>.npz               sample (every sampler x budget)
    metrics/<method>/<dataset>/seed<k>.json              evaluate
    metrics/data/<dataset>.json                          baseline (the data floor)
    models/features/<dataset>.pt                         features (image sets: the FID classifier)
    metrics/features/<dataset>.json                      features (its accuracy)
    reflow/<method>/<dataset>/seed<k>.npz                reflow (coupled pairs of a derived method)
Resumable training state lives in checkpoints/ (not a DVC output, so DVC never deletes it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from pipeline import data as datasets
from pipeline.config import Params
from pipeline.data.images import dequantize
from pipeline.io import derive_seed, hash_config, save_torch, sha256_file, write_json, write_npz, write_text
from pipeline.methods import DERIVED_METHODS, build_method
from pipeline.methods.base import EvalContext, Method
from pipeline.metrics import prdc_scores, structure_scores, w2_exact
from pipeline.training import CheckpointError, train

MODEL_FORMAT = 2  # 2: affine methods' networks are preconditioned (weights under `inner.`)


class StageError(Exception):
    """A user-fixable problem in a stage's inputs; the message says what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("device: cuda was asked for but no CUDA device is available; set device: auto or cpu")
    return torch.device(name)


def data_file(root: Path, dataset: str) -> Path:
    return root / "data" / f"{dataset}.npz"


def model_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "models" / method / dataset / f"seed{seed}.pt"


def loss_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / "train" / method / dataset / f"seed{seed}.csv"


def samples_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "samples" / method / dataset / f"seed{seed}.npz"


def metrics_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / method / dataset / f"seed{seed}.json"


def baseline_file(root: Path, dataset: str) -> Path:
    return root / "metrics" / "data" / f"{dataset}.json"


def reflow_pairs_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "reflow" / method / dataset / f"seed{seed}.npz"


def evaluated_methods(params: Params) -> list[str]:
    """Every method with a model: params.yaml's methods, each followed by those `reflow` derives from it."""
    names: list[str] = []
    for name in params.methods:
        names += [name, *(derived for derived in params.reflow if DERIVED_METHODS[derived] == name)]
    return names


def method_section(params: Params, method_name: str):
    """The params.yaml section of a method (a derived method shares its source's)."""
    return params.method_config(DERIVED_METHODS.get(method_name, method_name))


def run_key(sampler: str, budget: int | None) -> str:
    return f"{sampler}@{budget if budget is not None else 'adaptive'}"


# ---------------------------------------------------------------- prepare


def run_prepare(root: Path, params: Params, dataset: str) -> Path:
    seed = derive_seed(params.data.seed, "prepare", dataset)
    return datasets.prepare(dataset, data_file(root, dataset), params.data, seed, root)


# ---------------------------------------------------------------- features


def features_file(root: Path, dataset: str) -> Path:
    return root / "models" / "features" / f"{dataset}.pt"


def features_metrics_file(root: Path, dataset: str) -> Path:
    return root / "metrics" / "features" / f"{dataset}.json"


def run_features(root: Path, params: Params, dataset: str) -> Path:
    """Train the feature classifier of an image data set (pipeline.features) and record its accuracy.

    2-D data sets get a marker file and an empty metrics file instead, so that this step can run over
    every data set and the run stages can depend on its output uniformly.
    """
    from pipeline.features import CLASSIFIER_FORMAT, classifier_record, train_classifier

    data = datasets.load(data_file(root, dataset))
    if data.kind != "image":
        save_torch(features_file(root, dataset), {"format": CLASSIFIER_FORMAT, "kind": data.kind,
                                                  "note": "no feature classifier: FID is for image data"})
        write_json(features_metrics_file(root, dataset), {})
        return features_file(root, dataset)
    if "train" not in data.labels or "test" not in data.labels:
        raise StageError(f"{data_file(root, dataset)} has no class labels; run `dvc repro prepare@{dataset}` again")
    device = resolve_device(params.device)
    result = train_classifier(torch.from_numpy(data.train), torch.from_numpy(data.labels["train"]),
                              torch.from_numpy(data.test), torch.from_numpy(data.labels["test"]),
                              params.evaluate.image.classifier, derive_seed(params.data.seed, "features", dataset),
                              device)
    save_torch(features_file(root, dataset),
               classifier_record(result, sha256_file(data_file(root, dataset)), list(data.shape)))
    table: dict = {}
    _record(table, "classifier", 0, "test_accuracy", result.test_accuracy)
    _record(table, "classifier", 0, "train_accuracy", result.train_accuracy)
    write_json(features_metrics_file(root, dataset), table)
    return features_file(root, dataset)


# ---------------------------------------------------------------- train


def run_train(root: Path, params: Params, method_name: str, dataset: str, seed: int,
              progress: bool = True) -> Path:
    data = datasets.load(data_file(root, dataset))
    config = params.method_config(method_name)
    method = build_method(method_name, config, data.shape)
    settings = params.train_settings(method_name, data.kind)
    data_hash = sha256_file(data_file(root, dataset))
    recipe = {"method": method_name, "dataset": dataset, "seed": seed, "method_config": config.model_dump(),
              "train": settings.model_dump(), "network": params.network.model_dump(), "data_sha256": data_hash}
    identity = hash_config(recipe)
    device = resolve_device(params.device)
    stage_seed = derive_seed(seed, "train", method_name, dataset)
    torch.manual_seed(stage_seed)
    net = method.make_network(params.network)  # initialisation drawn from the stage's seed
    train_data = method.training_data(torch.from_numpy(data.train))
    checkpoint = root / "checkpoints" / method_name / dataset / f"seed{seed}-{identity}.pt"
    try:
        result = train(net, method.loss, train_data, settings, stage_seed, checkpoint, identity, device, progress)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    net.load_state_dict(result.ema_state)  # what the method computes once from the trained (EMA) network
    extras = _after_training(method, net.eval(), train_data.to(device), stage_seed, device)
    save_torch(model_file(root, method_name, dataset, seed), {
        "format": MODEL_FORMAT, "recipe": recipe, "identity": identity, "data_shape": list(data.shape),
        "state_dict": result.ema_state, "time_convention": "t in [0, 1], t = 0 data, t = 1 noise",
        "extras": extras, "snapshots": result.snapshots,
    })
    rows = ["step,loss,lr"] + [f"{step},{loss:.8g},{lr:.6g}" for step, loss, lr in result.loss_history]
    write_text(loss_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return model_file(root, method_name, dataset, seed)


def _after_training(method: Method, net: torch.nn.Module, train_data: torch.Tensor, stage_seed: int,
                    device: torch.device) -> dict:
    """What the method computes once from trained weights (e.g. Analytic-DPM's table), from the train
    stage's seed: for the final weights in run_train and for each snapshot in run_convergence."""
    generator = torch.Generator(device=device).manual_seed(derive_seed(stage_seed, "after_training"))
    return method.after_training(net, train_data, generator)


def load_model(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               device: torch.device) -> tuple[Method, torch.nn.Module]:
    """Rebuild the method and its EMA network; refuse a model made by other parameters."""
    path = model_file(root, method_name, dataset, seed)
    if not path.exists():
        stage = f"{'reflow' if method_name in DERIVED_METHODS else 'run'}@{method_name}-{dataset}-{seed}"
        raise StageError(f"{path} is missing; run `dvc repro {stage}` first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise StageError(f"{path} is unreadable ({type(error).__name__}); run `dvc repro` to retrain") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise StageError(f"{path} is not a model file of this pipeline; run `dvc repro` to retrain")
    recipe = saved["recipe"]
    config = method_section(params, method_name)
    source = DERIVED_METHODS.get(method_name, method_name)
    if recipe["method"] != method_name or recipe["method_config"] != config.model_dump():
        raise StageError(f"{path} was trained as {recipe['method']!r} with other parameters than params.yaml's "
                         f"methods.{source}; run `dvc repro` to retrain")
    if method_name in DERIVED_METHODS and recipe.get("reflow") != _reflow_settings(params, method_name).model_dump():
        raise StageError(f"{path} was made with other settings than params.yaml's reflow.{method_name}; "
                         f"run `dvc repro` to remake it")
    method = build_method(method_name, config, tuple(saved["data_shape"]))
    net = method.make_network(_network_from_dict(recipe["network"]))
    net.load_state_dict(saved["state_dict"])
    net.to(device).eval()
    method.load_extras(saved.get("extras", {}))
    return method, net


def _reflow_settings(params: Params, method_name: str):
    if method_name not in params.reflow:
        raise StageError(f"{method_name} is not in params.yaml's reflow section "
                         f"({', '.join(params.reflow) or 'empty'})")
    return params.reflow[method_name]


def _network_from_dict(section: dict):
    from pipeline.config import NetworkSection

    return NetworkSection.model_validate(section)


# ---------------------------------------------------------------- reflow


def run_reflow(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               progress: bool = True) -> Path:
    """Reflow (Liu et al. 2023, Alg. 1): coupled pairs (Z0, ODE(Z0)) of the source flow, then the derived
    flow trained on them by the one training loop, starting from the source's EMA weights."""
    if method_name not in DERIVED_METHODS:
        raise StageError(f"--method {method_name!r} is not a derived method ({', '.join(DERIVED_METHODS)})")
    source = DERIVED_METHODS[method_name]
    reflow = _reflow_settings(params, method_name)
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
              "method_config": method_section(params, method_name).model_dump(), "reflow": reflow.model_dump(),
              "train": settings.model_dump(), "network": source_recipe["network"],
              "source_sha256": sha256_file(source_path),
              "pairs_sha256": sha256_file(pairs_path)}
    identity = hash_config(recipe)
    stage_seed = derive_seed(seed, "train", method_name, dataset)
    net = source_net.train().requires_grad_(True)
    pairs = torch.stack([noise, coupled], dim=1).float().cpu()
    checkpoint = root / "checkpoints" / method_name / dataset / f"seed{seed}-{identity}.pt"
    try:
        result = train(net, method.pair_loss, pairs, settings, stage_seed, checkpoint, identity, device, progress)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    save_torch(model_file(root, method_name, dataset, seed), {
        "format": MODEL_FORMAT, "recipe": recipe, "identity": identity, "data_shape": list(method.data_shape),
        "state_dict": result.ema_state, "time_convention": "t in [0, 1], t = 0 data, t = 1 noise",
    })
    rows = ["step,loss,lr"] + [f"{step},{loss:.8g},{lr:.6g}" for step, loss, lr in result.loss_history]
    write_text(loss_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return model_file(root, method_name, dataset, seed)


# ---------------------------------------------------------------- sample


def run_sample(root: Path, params: Params, method_name: str, dataset: str, seed: int,
               progress: bool = True) -> Path:
    device = resolve_device(params.device)
    method, net = load_model(root, params, method_name, dataset, seed, device)
    runs = method.sampler_runs()
    cap = params.sample.image.max_budget
    if len(method.data_shape) == 3 and cap is not None:
        runs = [(sampler, budget) for sampler, budget in runs if budget is None or budget <= cap]
    arrays, index = {}, []
    iterator = runs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(runs, desc=f"sample {method_name}/{dataset}", unit="run", mininterval=1.0)
    n, batch = params.sample.n_samples, params.sample.batch_size
    if len(method.data_shape) == 3:
        n, batch = params.sample.image.n_samples, params.sample.image.batch_size
    for sampler, budget in iterator:
        generator = torch.Generator(device=device).manual_seed(
            derive_seed(seed, "sample", method_name, dataset, sampler, budget))
        key = run_key(sampler, budget)
        arrays[key], nfe = draw_samples(method, net, sampler, budget, n, batch, generator, device)
        index.append({"key": key, "sampler": sampler, "budget": budget, "nfe": nfe})
    arrays["index"] = np.array(json.dumps(index))
    write_npz(samples_file(root, method_name, dataset, seed), **arrays)
    return samples_file(root, method_name, dataset, seed)


def draw_samples(method: Method, net: torch.nn.Module, sampler: str, budget: int | None, n: int, batch: int,
                 generator: torch.Generator, device: torch.device) -> tuple[np.ndarray, int]:
    """n samples of one sampler in batches of at most `batch`, and the most NFE a batch used."""
    chunks, nfe = [], 0
    for offset in range(0, n, batch):
        result = method.sample(net, sampler, budget, min(batch, n - offset), generator, device)
        chunks.append(result.x.float().cpu())
        nfe = max(nfe, result.nfe)
    return torch.cat(chunks).numpy(), nfe


def load_samples(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    if not path.exists():
        raise StageError(f"{path} is missing; run the sample stage first (`dvc repro`)")
    with np.load(path) as archive:
        index = json.loads(str(archive["index"]))
        return index, {row["key"]: archive[row["key"]] for row in index}


# ---------------------------------------------------------------- evaluate


def _record(table: dict, sampler: str, nfe: int, metric: str, value: float) -> None:
    table.setdefault(sampler, {}).setdefault(str(nfe), {})[metric] = _clean(value)


def _clean(value: float) -> float | None:
    value = float(value)
    return round(value, 10) if math.isfinite(value) else None


def run_evaluate(root: Path, params: Params, method_name: str, dataset: str, seed: int) -> Path:
    """W2 of every sampler x budget against the test split, and the method's likelihoods."""
    device = resolve_device(params.device)
    data = datasets.load(data_file(root, dataset))
    method, net = load_model(root, params, method_name, dataset, seed, device)
    index, samples = load_samples(samples_file(root, method_name, dataset, seed))
    scorer = _SampleScorer(root, params, dataset, data, device)
    table: dict = {}
    for row in index:
        metric_seed = derive_seed(seed, "evaluate", method_name, dataset, row["key"])
        for metric, value in scorer(samples[row["key"]], metric_seed).items():
            _record(table, row["sampler"], row["nfe"], metric, value)
    generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "evaluate", method_name, dataset))
    for sampler, nfe, metric, value in _likelihood_rows(params, method, net, data, generator, device):
        _record(table, sampler, nfe, metric, value)
    # flows that define them report path metrics (straightness, transport cost) from evaluate.w2_points draws
    context = EvalContext(rtol=params.evaluate.ode_rtol, atol=params.evaluate.ode_atol)
    for sampler, nfe, metric, value in method.trajectory_metrics(net, scorer.n, generator, context):
        _record(table, sampler, nfe, metric, value)
    # the settings each number was made with (e.g. DDPM's x0 clipping on images), beside every number
    for sampler, by_nfe in table.items():
        for nfe in by_nfe:
            for metric, value in method.protocol(sampler).items():
                _record(table, sampler, int(nfe), metric, value)
    write_json(metrics_file(root, method_name, dataset, seed), table)
    return metrics_file(root, method_name, dataset, seed)


class _SampleScorer:
    """The metrics of one set of generated samples against held-out data: W2 and the mode metrics on
    2-D sets, FID / KID / precision / recall / sliced W2 on images (the first `n` samples)."""

    def __init__(self, root: Path, params: Params, dataset: str, data, device: torch.device):
        self.params, self.dataset, self.data, self.device = params, dataset, data, device
        self.image = data.kind == "image"
        if self.image:
            self.extractor = _extractor(root, params, dataset)  # fails before any work when weights are missing
            self.against = _fid_against(params, data)
            self.n = min(params.evaluate.image.fid_samples, len(self.against))
        else:
            self.n = min(params.evaluate.w2_points, len(data.test))

    def __call__(self, samples: np.ndarray, metric_seed: int) -> dict[str, float]:
        x = samples[:self.n]
        if self.image:
            return _image_metrics(self.params, x, self.against[:len(x)], self.extractor, metric_seed, self.device)
        real = self.data.test[:self.n]
        return ({"w2": w2_exact(x, real), "w2_n": len(x)}
                | _mode_metrics(self.params, self.dataset, self.data, x, real))


def _likelihood_rows(params: Params, method: Method, net: torch.nn.Module, data, generator: torch.Generator,
                     device: torch.device) -> list[tuple[str, int, str, float]]:
    """(sampler, nfe, metric, value) of the method's likelihoods on the test split: nats, their standard
    error and count; on images also bits/dim of the dequantized test images."""
    cfg = params.evaluate
    image = data.kind == "image"
    x_test = torch.from_numpy(data.test[: cfg.image.nll_points if image else cfg.nll_points]).to(device)
    if image:
        x_test = dequantize(x_test, generator)  # the same dequantized images for every method
    context = EvalContext(rtol=cfg.ode_rtol, atol=cfg.ode_atol)
    rows = []
    for record in method.log_likelihood(net, x_test, generator, context):
        nll = -record.log_prob.double().cpu()
        rows += [(record.sampler, record.nfe, "nll", nll.mean()),
                 (record.sampler, record.nfe, "nll_se", nll.std() / math.sqrt(len(nll))),
                 (record.sampler, record.nfe, "nll_n", len(nll))]
        if image:
            bpd = _bits_per_dim(nll, record.estimator, method.dim)
            rows += [(record.sampler, record.nfe, "nll_bpd", bpd.mean()),
                     (record.sampler, record.nfe, "nll_bpd_se", bpd.std() / math.sqrt(len(bpd)))]
            if record.estimator == "ode_hutchinson":
                rows.append((record.sampler, record.nfe, "nll_probes", 1))
    return rows


# ---------------------------------------------------------------- convergence


def _convergence_row(step: int, sampler: str, nfe: int, metric: str, value: float) -> str:
    value = _clean(value)
    return f"{int(step)},{sampler},{nfe},{metric},{'nan' if value is None else repr(value)}"


def convergence_file(root: Path, method: str, dataset: str, seed: int) -> Path:
    return root / "metrics" / "convergence" / method / dataset / f"seed{seed}.csv"


CONVERGENCE_COLUMNS = ["step", "sampler", "nfe", "metric", "value"]


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
        scorer = _SampleScorer(root, params, dataset, data, device)
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
                generator = torch.Generator(device=device).manual_seed(
                    derive_seed(seed, "convergence", method_name, dataset, sampler))
                x, nfe = draw_samples(method, net, sampler, run_budget, n, batch, generator, device)
                metric_seed = derive_seed(seed, "convergence", method_name, dataset, sampler, "metrics")
                rows += [_convergence_row(step, sampler, nfe, metric, value)
                         for metric, value in scorer(x, metric_seed).items()]
            generator = torch.Generator(device=device).manual_seed(
                derive_seed(seed, "convergence", method_name, dataset, "likelihood"))
            for sampler, nfe, metric, value in _likelihood_rows(params, method, net, data, generator, device):
                rows.append(_convergence_row(step, sampler, nfe, metric, value))
    write_text(convergence_file(root, method_name, dataset, seed), "\n".join(rows) + "\n")
    return convergence_file(root, method_name, dataset, seed)


def _mode_metrics(params: Params, dataset: str, data, x: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """The 2-D metrics that see modes: precision, recall, density, coverage against `real`, and the data
    set's structure score where its law is known (pipeline.metrics)."""
    scores = prdc_scores(real, x, params.evaluate.prdc_k)
    law = datasets.exact_law(dataset, data.meta["mean"], data.meta["std"])
    return scores | structure_scores(law, np.asarray(x, np.float64))


def _extractor(root: Path, params: Params, dataset: str):
    from pipeline.fidelity import FidelityError, resolve_extractor

    try:
        return resolve_extractor(params.evaluate.image, features_file(root, dataset), root)
    except FidelityError as error:
        raise StageError(str(error)) from None


def _fid_against(params: Params, data) -> np.ndarray:
    """The real images FID, KID, precision/recall and sliced W2 compare with (evaluate.image.fid_against)."""
    return data.train if params.evaluate.image.fid_against == "train" else data.test


def _image_metrics(params: Params, x: np.ndarray, real: np.ndarray, extractor, seed: int,
                   device: torch.device) -> dict[str, float]:
    """fid, kid, kid_sd, precision, recall (torch-fidelity) and sliced_w2 (POT) of images x against real.

    Both sets are quantized to uint8 first (pipeline.data.images.to_uint8), as FID protocols ask;
    any non-finite sample makes every metric of the run NaN.
    """
    from pipeline.data.images import to_model_space, to_uint8
    from pipeline.fidelity import FidelityError, fidelity_metrics
    from pipeline.metrics import sliced_w2

    cfg = params.evaluate.image
    metrics = {"fid": math.nan, "kid": math.nan, "kid_sd": math.nan, "precision": math.nan, "recall": math.nan,
               "sliced_w2": math.nan}
    if np.isfinite(x).all():
        pixels, real_pixels = to_uint8(x), to_uint8(real)
        try:
            metrics = fidelity_metrics(pixels, real_pixels, extractor, cfg.kid_subset_size, cfg.prc_neighborhood,
                                       seed, device, cfg.batch_size)
        except FidelityError as error:
            raise StageError(str(error)) from None
        metrics["sliced_w2"] = sliced_w2(to_model_space(pixels), to_model_space(real_pixels),
                                         cfg.sliced_w2_projections, seed % 2**32)
    return metrics | {"fid_n": len(x), "sliced_w2_projections": cfg.sliced_w2_projections}


def _bits_per_dim(nll: torch.Tensor, estimator: str, dim: int) -> torch.Tensor:
    """Bits/dim: a discrete ELBO needs no offset (methods.md 2.12A); a density of dequantized images
    in [-1, 1] is converted by pipeline.likelihood.bits_per_dim (+7 offset, methods.md 2.12C)."""
    from pipeline.likelihood import bits_per_dim

    return nll / (dim * math.log(2.0)) if estimator == "elbo" else bits_per_dim(nll, dim)


def _image_baseline(root: Path, params: Params, dataset: str, data) -> dict:
    """Real-vs-real floor: the reference split against the images FID compares with, at the same n."""
    device = resolve_device(params.device)
    extractor = _extractor(root, params, dataset)
    against = _fid_against(params, data)
    n = min(params.evaluate.image.fid_samples, len(against), len(data.reference))
    table: dict = {}
    metrics = _image_metrics(params, data.reference[:n], against[:n], extractor,
                             derive_seed(params.data.seed, "baseline", dataset), device)
    for metric, value in metrics.items():
        _record(table, "data", 0, metric, value)
    return table


def run_baseline(root: Path, params: Params, dataset: str) -> Path:
    """The data floor: W2 between disjoint reference chunks and the test split (mean and sd over chunks);
    for images, FID / KID / precision-recall / sliced W2 of the reference split against the test split."""
    data = datasets.load(data_file(root, dataset))
    if data.kind == "image":
        write_json(baseline_file(root, dataset), _image_baseline(root, params, dataset, data))
        return baseline_file(root, dataset)
    cfg = params.evaluate
    n = min(cfg.w2_points, len(data.test))
    chunks = [data.reference[k * n:(k + 1) * n] for k in range(cfg.floor_repeats) if (k + 1) * n <= len(data.reference)]
    if not chunks:
        raise StageError(f"data.n_reference must be at least evaluate.w2_points ({n}) to compute the data floor")
    values = [w2_exact(chunk, data.test[:n]) for chunk in chunks]
    table: dict = {}
    _record(table, "data", 0, "w2", float(np.mean(values)))
    _record(table, "data", 0, "w2_sd", float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))
    _record(table, "data", 0, "w2_n", n)
    modes = [_mode_metrics(params, dataset, data, chunk, data.test[:n]) for chunk in chunks]
    for metric in modes[0]:
        scores = [m[metric] for m in modes]
        _record(table, "data", 0, metric, float(np.mean(scores)))
        _record(table, "data", 0, f"{metric}_sd", float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan"))
    if dataset in datasets.TOY_DATASETS:  # the true NLL of the held-out points: every 2-D law is known
        law = datasets.exact_law(dataset, data.meta["mean"], data.meta["std"])
        nll = -law.log_prob(torch.from_numpy(data.test[: cfg.nll_points]).double())
        _record(table, "data", 0, "nll", nll.mean())
        _record(table, "data", 0, "nll_se", nll.std() / math.sqrt(len(nll)))
        _record(table, "data", 0, "nll_n", len(nll))
    write_json(baseline_file(root, dataset), table)
    return baseline_file(root, dataset)
