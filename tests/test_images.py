"""Image data: every loader on tiny files in its real on-disk format, the pixel transforms, the image
params, and the whole image path (prepare -> features -> train -> sample -> evaluate -> baseline ->
report) on digits and on the CIFAR-10 profile at tiny sizes, on the CPU."""

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import data as datasets
from pipeline import layout, prepare, stages
from pipeline.config import ParamsError, load_params
from pipeline.schema import ImageSourceSettings
from pipeline.data import DataError
from pipeline.data.images import dequantize, prepare_image, to_model_space, to_uint8
from pipeline.likelihood import pixel_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pixel_transforms_invert_each_other_and_dequantization_stays_in_its_bin():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = to_model_space(pixels)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(to_uint8(x), pixels)
    assert np.array_equal(to_uint8(np.array([np.nan, -3.0, 3.0])), np.array([0, 0, 255], np.uint8))
    assert torch.equal(to_model_space(torch.from_numpy(pixels)), torch.from_numpy(x))
    noisy = dequantize(torch.from_numpy(x).double(), torch.Generator().manual_seed(0))
    assert noisy.min() >= -1.0 and noisy.max() < 1.0
    assert torch.equal(torch.floor(128 * (noisy + 1)).long(), torch.from_numpy(pixels).long())
    torch.testing.assert_close(pixel_grid(noisy), torch.from_numpy(x).double())


# ---------------------------------------------------------------- loaders on their real formats


def test_digits_are_split_without_loss_and_resized_or_padded_as_asked(tmp_path):
    arrays = prepare_image("digits", ImageSourceSettings(n_test=100, n_reference=150), seed=1, root=tmp_path)
    assert arrays["train"].shape == (1797 - 250, 1, 8, 8)
    assert arrays["test"].shape == (100, 1, 8, 8) and arrays["reference"].shape == (150, 1, 8, 8)
    assert arrays["meta"]["kind"] == "image" and arrays["meta"]["shape"] == [1, 8, 8]
    assert set(np.unique(arrays["train_labels"])) == set(range(10))
    from sklearn.datasets import load_digits

    original = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    ours = to_uint8(np.concatenate([arrays[s] for s in ("train", "test", "reference")])).reshape(1797, -1)
    assert sorted(row.tobytes() for row in ours) == sorted(row.tobytes() for row in original)
    again = prepare_image("digits", ImageSourceSettings(n_test=100, n_reference=150), seed=1, root=tmp_path)
    assert np.array_equal(again["test"], arrays["test"])
    assert prepare_image("digits", ImageSourceSettings(size=16), 1, tmp_path)["train"].shape[1:] == (1, 16, 16)
    padded = prepare_image("digits", ImageSourceSettings(pad=4), 1, tmp_path)["train"]
    assert padded.shape[1:] == (1, 16, 16) and np.all(padded[:, :, :4] == -1.0)


def _write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_sets_load_from_idx_files(tmp_path, name, folder):
    train = np.stack([np.full((28, 28), 10 + i, np.uint8) for i in range(12)])
    test = np.stack([np.full((28, 28), 200 + i, np.uint8) for i in range(8)])
    _write_idx(tmp_path / "raw_data" / folder / "raw", "train", train, np.arange(12, dtype=np.uint8) % 10)
    _write_idx(tmp_path / "raw_data" / folder / "raw", "t10k", test, np.arange(8, dtype=np.uint8))
    settings = ImageSourceSettings(root="raw_data", n_test=3, n_reference=4, pad=2)
    arrays = prepare_image(name, settings, seed=0, root=tmp_path)
    assert arrays["train"].shape == (12, 1, 32, 32) and arrays["test"].shape == (3, 1, 32, 32)
    held_out = to_uint8(np.concatenate([arrays["test"], arrays["reference"]]))[:, 0, 16, 16]
    assert len(set(held_out)) == 7 and set(held_out) <= set(range(200, 208))  # the official test split only
    assert sorted(to_uint8(arrays["train"])[:, 0, 16, 16]) == list(range(10, 22))
    assert np.all(arrays["train"][:, :, :2] == -1.0)  # black padding


def test_cifar10_loads_from_its_pickles(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # the fakes fail the md5 check
    folder = tmp_path / "data" / "raw" / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int, offset: int) -> dict:
        images = np.zeros((n, 3, 32, 32), np.uint8)
        images[:, 0], images[:, 1] = 200, 100
        images[:, 2] = (offset + np.arange(n))[:, None, None]
        return {"data": images.reshape(n, 3072), "labels": [(offset + i) % 10 for i in range(n)]}

    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch(4, 4 * k)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(6, 100)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    arrays = prepare_image("cifar10", ImageSourceSettings(n_test=3, n_reference=3), seed=0, root=tmp_path)
    pixels = to_uint8(arrays["train"])
    assert pixels.shape == (20, 3, 32, 32)
    assert np.all(pixels[:, 0] == 200) and np.all(pixels[:, 1] == 100)  # channels first, not HWC
    assert sorted(pixels[:, 2, 5, 7]) == list(range(4, 24))
    assert arrays["meta"]["classes"][3] == "class3"


def test_image_folder_reads_class_folders_of_pngs_at_the_size_asked(tmp_path):
    from PIL import Image

    for label, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / "pictures" / label).mkdir(parents=True)
        for i, size in enumerate(((20, 12), (9, 9), (16, 30))):
            Image.new("RGB", size, color).save(tmp_path / "pictures" / label / f"{i}.png")
    settings = ImageSourceSettings(folder="pictures", size=8, n_test=1, n_reference=1)
    arrays = prepare_image("image_folder", settings, seed=0, root=tmp_path)
    assert arrays["train"].shape == (4, 3, 8, 8) and arrays["meta"]["classes"] == ["cat", "dog"]
    images = to_uint8(np.concatenate([arrays[s] for s in ("train", "test", "reference")]))
    labels = np.concatenate([arrays[f"{s}_labels"] for s in ("train", "test", "reference")])
    assert np.all(images[labels == 0, 0] == 255) and np.all(images[labels == 1, 2] == 255)
    grey = prepare_image("image_folder", settings.model_copy(update={"channels": 1}), 0, tmp_path)
    assert grey["train"].shape == (4, 1, 8, 8)


@pytest.mark.parametrize("name, settings, expected", [
    ("mnist", ImageSourceSettings(root="nowhere"), "data.images.mnist.download: true"),
    ("cifar10", ImageSourceSettings(root="nowhere"), "data.images.cifar10.download: true"),
    ("image_folder", ImageSourceSettings(folder="nowhere", size=8), "not a folder"),
    ("digits", ImageSourceSettings(n_test=1000, n_reference=1000), "exceed the 1797 held-out"),
])
def test_missing_or_short_sources_give_one_line_errors(tmp_path, name, settings, expected):
    class Section:
        @staticmethod
        def image_settings(_):
            return settings

    with pytest.raises(DataError) as error:
        datasets.prepare(name, tmp_path / f"{name}.npz", Section(), seed=0, root=tmp_path)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / f"{name}.npz").exists()


# ---------------------------------------------------------------- params


def _write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize("change, expected", [
    ({"datasets": ["image_folder"]}, "data.images.image_folder.folder: required"),
    ({"data": {"images": {"svhn": {}}}}, "unknown image data set 'svhn'"),
    ({"evaluate": {"image": {"extractor": "inception"}}}, "inception_weights: required"),
    ({"evaluate": {"image": {"fid_samples": 1000}}}, "must not exceed sample.image.n_samples"),
    ({"evaluate": {"image": {"kid_subset_size": 600}}}, "kid_subset_size (600) must not exceed fid_samples"),
])
def test_image_params_mistakes_are_one_line_errors(tmp_path, change, expected):
    params = {"datasets": ["digits"], "methods": {"flow_matching": {"budgets": [5]}}} | change
    with pytest.raises(ParamsError) as error:
        load_params(_write_params(tmp_path, params))
    assert expected in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- the image path on the CPU


def _run_image_path(root: Path, params, dataset: str) -> None:
    prepare.run_prepare(root, params, dataset)
    prepare.run_features(root, params, dataset)
    for method in params.methods:
        stages.run_train(root, params, method, dataset, 0, progress=False)
        stages.run_sample(root, params, method, dataset, 0, progress=False)
        stages.run_evaluate(root, params, method, dataset, 0)
    prepare.run_baseline(root, params, dataset)


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


FIDELITY = ("fid", "fid_se", "kid", "kid_sd", "precision", "recall", "sliced_w2")


def test_every_stage_runs_on_digits_with_a_tiny_unet(tmp_path):
    from pipeline.report import run_report

    params = load_params(_write_params(tmp_path, {
        "seeds": [0], "device": "cpu", "datasets": ["digits"],
        "data": {"images": {"digits": {"n_train": 200, "n_test": 40, "n_reference": 40}}},
        "train": {"image": {"steps": 10, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 100,
                            "log_every": 5}},
        "network": {"unet": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "norm_groups": 4}},
        "sample": {"image": {"n_samples": 40, "batch_size": 40, "max_budget": 5}},
        "evaluate": {"ode_rtol": 1e-3, "ode_atol": 1e-3,
                     "image": {"fid_samples": 40, "kid_subset_size": 20, "nll_points": 6, "sliced_w2_projections": 32,
                               "classifier": {"steps": 30, "width": 8, "features": 16}}},
        "report": {"headline_nfe": 5},
        "methods": {"ddpm": {"num_steps": 50, "budgets": [50, 5], "samplers": ["ancestral_beta"]},
                    "flow_matching": {"budgets": [5], "samplers": ["ode_euler", "ode_rk45"]}},
    }))
    _run_image_path(tmp_path, params, "digits")

    flow = _metrics(layout.metrics_file(tmp_path, "flow_matching", "digits", 0))
    for metric in FIDELITY:
        assert np.isfinite(flow["ode_euler"]["5"][metric])
    assert flow["ode_euler"]["5"]["fid_n"] == 40 and flow["ode_euler"]["5"]["fid"] > 0
    (likelihood,) = [row for row in flow["ode_rk45"].values() if "nll_bpd" in row]
    assert likelihood["nll_probes"] == 1 and likelihood["nll_bpd_se"] > 0 and likelihood["nll_n"] == 6

    ddpm = _metrics(layout.metrics_file(tmp_path, "ddpm", "digits", 0))
    assert "fid" in ddpm["ancestral_beta"]["5"] and "fid" not in ddpm["ancestral_beta"]["50"]  # max_budget
    for budget in ("5", "50"):  # the discrete-decoder ELBO: a bound on an 8-bit NLL, never below 0 bits
        assert ddpm["ancestral_beta"][budget]["nll_bpd"] > 0
        assert ddpm["ancestral_beta"][budget]["clip_x0"] == 1  # the papers' x0 clipping, recorded beside it

    floor = _metrics(layout.baseline_file(tmp_path, "digits"))["data"]["0"]
    assert 0 <= floor["fid"] < flow["ode_euler"]["5"]["fid"] and floor["fid_n"] == 40
    accuracy = _metrics(layout.features_metrics_file(tmp_path, "digits"))["classifier"]["0"]["test_accuracy"]
    assert 0 < accuracy <= 1

    run_report(tmp_path, params)
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert "the digits feature classifier" in summary and f"test accuracy {accuracy:.3f}" in summary
    assert "### digits: `fid` (lower is better)" in summary and "Data floor (real vs real" in summary
    fid_se = flow["ode_euler"]["5"]["fid_se"]  # FID's own sampling error, in brackets beside the cell
    assert 0 < fid_se < flow["ode_euler"]["5"]["fid"] and floor["fid_se"] > 0
    assert f"[{fid_se:.3f}]" in (tmp_path / "reports" / "grid.md").read_text()
    assert f"the floor's {floor['fid_se']:.3f}" in summary  # under the ranking: the range over runs, the floor's
    grid = (tmp_path / "reports" / "grid.md").read_text()
    assert "Real-vs-real floor" in grid and "| data / data" in grid
    assert (tmp_path / "reports" / "figures" / "samples_digits.png").stat().st_size > 1000


def test_cifar10_profile_is_valid_and_runs_at_tiny_sizes(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    profile = load_params(REPO / "profiles" / "cifar10.yaml")
    assert profile.datasets == ["cifar10"] and profile.device == "cuda"
    assert profile.evaluate.image.extractor == "inception" and profile.evaluate.image.fid_samples == 50000
    assert profile.sample.image.n_samples == 50000 and profile.train.image.steps == 800000
    assert profile.network.unet.channels == 128 and profile.network.unet.channel_mult == [1, 2, 2, 2]

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "data" / "raw" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{k}", 6) for k in range(1, 6)), ("test_batch", 10)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))

    tiny = yaml.safe_load((REPO / "profiles" / "cifar10.yaml").read_text())
    tiny["device"] = "cpu"
    tiny["data"]["images"]["cifar10"].update(n_test=5, n_reference=5)
    tiny["train"]["image"].update(steps=3, warmup_steps=1, checkpoint_every=100, log_every=1)
    tiny["network"]["unet"].update(channels=8, channel_mult=[1, 2], num_res_blocks=1, norm_groups=4)
    tiny["sample"]["image"].update(n_samples=5, batch_size=5)
    tiny["evaluate"]["image"].update(fid_samples=5, kid_subset_size=5, nll_points=3, sliced_w2_projections=16,
                                     classifier={"steps": 5, "width": 8, "features": 16})
    tiny["evaluate"].update(ode_rtol=1e-2, ode_atol=1e-2)
    tiny["methods"] = {"flow_matching": {"budgets": [3], "samplers": ["ode_euler"]}}
    tiny["reflow"] = {}
    params = load_params(_write_params(tmp_path, tiny))

    prepare.run_prepare(tmp_path, params, "cifar10")
    prepare.run_features(tmp_path, params, "cifar10")
    with pytest.raises(layout.StageError) as error:  # the profile's Inception FID: the weights are not here
        prepare.run_baseline(tmp_path, params, "cifar10")
    assert "inception_weights" in str(error.value) and "\n" not in str(error.value)

    tiny["evaluate"]["image"].update(extractor="classifier", inception_weights=None)
    params = load_params(_write_params(tmp_path, tiny))
    _run_image_path(tmp_path, params, "cifar10")
    assert datasets.load(layout.data_file(tmp_path, "cifar10")).shape == (3, 32, 32)
    flow = _metrics(layout.metrics_file(tmp_path, "flow_matching", "cifar10", 0))
    assert all(np.isfinite(flow["ode_euler"]["3"][metric]) for metric in FIDELITY)
    assert flow["ode_euler"]["3"]["fid_n"] == 5  # against 5 training images (fid_against: train)
