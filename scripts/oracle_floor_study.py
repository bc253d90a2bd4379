"""Every sampler of the affine-path methods fed the exact score of each 2-D benchmark, and PFGM's fed the
exact field of the training split, at the default profile's largest budgets: what a sampler reaches when
the network is perfect.

A sampler row of the default run far above the data floor is the sampler's (or the method's) doing only
if its oracle row is too; otherwise it is the trained network's. The exact laws are
pipeline.data.toy.exact_law (mixtures, boxes, curves with jitter), standardized as the data files are;
the networks are pipeline.oracle.OracleNetwork, which return each method's prediction target exactly.
W2 is computed as the evaluate stage does (sample.n_samples draws against the first evaluate.w2_points
test points), the floor is metrics/data/<set>.json.

    python scripts/oracle_floor_study.py [--methods ve_sde,subvp_sde] [--datasets checkerboard] [--samplers pc]

reads data/ and metrics/data/ of a `dvc repro` and updates reports/studies/oracle_floor.csv
(dataset, method, sampler, nfe, w2, floor), which the report shows beside any row above 2x the floor.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import data as datasets  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data.toy import exact_law  # noqa: E402
from pipeline.io import derive_seed, write_text  # noqa: E402
from pipeline.methods import build_method  # noqa: E402
from pipeline.methods.affine import AffineMethod  # noqa: E402
from pipeline.methods.pfgm import PFGM, ExactFieldNetwork  # noqa: E402
from pipeline.metrics import w2_exact  # noqa: E402

OUT = ROOT / "reports" / "studies" / "oracle_floor.csv"


def main(methods: str = typer.Option("", help="comma-separated; default: every affine-path method in params.yaml"),
         datasets_: str = typer.Option("", "--datasets", help="comma-separated; default: every 2-D set in params.yaml"),
         samplers: str = typer.Option("", help="comma-separated; default: every sampler of the method"),
         largest_only: bool = typer.Option(True, help="only each sampler's largest budget")):
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(1)  # the oracle's small batched solves are faster on one thread beside other work
    names = [m for m in (methods.split(",") if methods else params.methods)]
    sets = datasets_.split(",") if datasets_ else [d for d in params.datasets if datasets.DATASETS[d] == "toy"]
    rows = []
    for dataset in sets:
        data = datasets.load(ROOT / "data" / f"{dataset}.npz")
        law = exact_law(dataset, data.meta["mean"], data.meta["std"])
        floor = json.loads((ROOT / "metrics" / "data" / f"{dataset}.json").read_text())["data"]["0"]["w2"]
        n = min(params.evaluate.w2_points, len(data.test))
        train = torch.from_numpy(data.train)
        for name in names:
            method = build_method(name, params.method_config(name), data.shape)
            if isinstance(method, AffineMethod):
                net = law.network(method.path, method.prediction)
            elif isinstance(method, PFGM):  # its exact target: the field of the training split as charges
                net = ExactFieldNetwork(method, train)
            else:
                continue
            generator = torch.Generator().manual_seed(derive_seed(0, "oracle", name, dataset))
            method.load_extras(method.after_training(net, train, generator))
            runs = [(sampler, budget) for sampler, budget in method.sampler_runs()
                    if method.fits_budget(sampler, budget)]  # as the sample stage: never over budget
            if largest_only:
                largest = {}
                for sampler, budget in runs:
                    largest[sampler] = budget if budget is None else max(budget, largest.get(sampler) or 0)
                runs = list(largest.items())
            runs = [(sampler, budget) for sampler, budget in runs if not samplers or sampler in samplers.split(",")]
            for sampler, budget in runs:
                seed = derive_seed(0, "oracle", name, dataset, sampler, budget or 0)
                result = method.sample(net, sampler, budget, params.sample.n_samples,
                                       torch.Generator().manual_seed(seed))
                w2 = w2_exact(result.x.float().numpy(), data.test[:n])
                rows.append({"dataset": dataset, "method": name, "sampler": sampler, "nfe": result.nfe,
                             "w2": round(w2, 4), "floor": round(floor, 4)})
                print(f"{dataset:16s} {name:22s} {sampler:28s} nfe {result.nfe:5d}  w2 {w2:.3f}  "
                      f"({w2 / floor:.2f}x floor)", flush=True)
    if not rows:
        raise typer.BadParameter("nothing to run: no such method, data set or sampler")
    key = ("dataset", "method", "sampler")
    done = {tuple(row[k] for k in key) for row in rows}
    if OUT.exists():  # keep the rows of earlier runs that this one did not redo
        with OUT.open() as handle:
            rows = [row for row in csv.DictReader(handle) if tuple(row[k] for k in key) not in done] + rows
    lines = [",".join(rows[0])] + [",".join(str(row[k]) for k in rows[0]) for row in rows]
    write_text(OUT, "\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    typer.run(main)
