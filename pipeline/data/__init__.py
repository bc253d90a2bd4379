"""Data sets: each source is converted once by `prepare` into the project's own array file.

data/<name>.npz holds float32 arrays `train`, `test` and `reference` (a held-out split used for
the data floor of the metrics) and a JSON `meta` record (kind, shape, transform); image sets add
`<split>_labels` (class indices, for the feature classifier). Later stages read only these
files, never a loader's on-disk format. Image sources and pixel transforms: pipeline.data.images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.data.images import IMAGE_DATASETS, ImageSourceError, prepare_image
from pipeline.data.toy import STANDARDIZED, TOY_DATASETS, exact_law
from pipeline.io import write_npz

#: every data set name accepted in params.yaml -> its kind ("toy" or "image")
DATASETS: dict[str, str] = {name: "toy" for name in TOY_DATASETS} | {name: "image" for name in IMAGE_DATASETS}



@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str
    train: np.ndarray
    test: np.ndarray
    reference: np.ndarray
    meta: dict
    #: class labels per split (image sets only)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def dataset_path(root: str | Path, name: str) -> Path:
    return Path(root) / f"{name}.npz"


def prepare_toy(name: str, n_train: int, n_test: int, n_reference: int, seed: int) -> dict[str, np.ndarray]:
    """Draw the three splits from one seeded generator; standardize with the training split's moments."""
    rng = np.random.default_rng(seed)
    generate = TOY_DATASETS[name]
    splits = {split: generate(n, rng) for split, n in
              (("train", n_train), ("test", n_test), ("reference", n_reference))}
    if name in STANDARDIZED:
        mean, std = splits["train"].mean(0), splits["train"].std(0)
    else:
        mean, std = np.zeros(2), np.ones(2)
    arrays = {split: ((x - mean) / std).astype(np.float32) for split, x in splits.items()}
    meta = {"name": name, "kind": "toy", "shape": [2], "mean": mean.tolist(), "std": std.tolist(), "seed": seed}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def prepare(name: str, out_path: str | Path, data_section, seed: int, root: str | Path = ".") -> Path:
    """Write data/<name>.npz for one data set (relative image source paths are taken from `root`)."""
    if DATASETS.get(name) == "toy":
        arrays = prepare_toy(name, data_section.n_train, data_section.n_test, data_section.n_reference, seed)
    elif DATASETS.get(name) == "image":
        try:
            arrays = prepare_image(name, data_section.image_settings(name), seed, Path(root))
        except ImageSourceError as error:
            raise DataError(str(error)) from None
        arrays["meta"] = np.array(json.dumps(arrays["meta"], sort_keys=True))
    else:
        raise DataError(f"unknown data set {name!r}")
    write_npz(out_path, **arrays)
    return Path(out_path)


def load(path: str | Path) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing; run `dvc repro prepare` (or `pipeline prepare --dataset "
                        f"{path.stem}`) first")
    try:
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            labels = {split: archive[f"{split}_labels"] for split in ("train", "test", "reference")
                      if f"{split}_labels" in archive.files}
            return Dataset(meta["name"], meta["kind"], archive["train"], archive["test"], archive["reference"], meta,
                           labels)
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is unreadable ({error}); delete it and run `dvc repro` again") from None
