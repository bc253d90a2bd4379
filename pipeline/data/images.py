"""Image data sets: every source becomes uint8 arrays [N, C, H, W], then the project's own splits.

Sources: scikit-learn's bundled 8x8 `digits` (no download), `mnist`, `fashion_mnist` and `cifar10`
through torchvision's own dataset classes (their on-disk layout under `root`), and
`image_folder`, any folder of class sub-folders (torchvision's ImageFolder).

Pixel transforms live here and nowhere else (methods.md 2.12C; Ho et al. 2020, sec. 3.3):
    model space      x = 2 k / 255 - 1                  (k in {0..255}, x in [-1, 1])
    back to pixels   k = round((x + 1) 255 / 2), clipped to {0..255}
    dequantized      x = 2 (k + u) / 256 - 1,  u ~ U[0, 1)^d   (for continuous likelihoods)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import rng

#: image data set names accepted in params.yaml
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "image_folder")

#: torchvision class and the folder (under `root`) its files live in
TORCHVISION_SOURCES = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
}


class ImageSourceError(Exception):
    """A missing or unreadable image source; the message says how to get it."""


@dataclass(frozen=True)
class ImagePool:
    """Images of one source before splitting: uint8 [N, C, H, W] and integer class labels [N].

    `held_out` is the source's official test split (None when the source has none).
    """

    train: np.ndarray
    train_labels: np.ndarray
    held_out: np.ndarray | None
    held_out_labels: np.ndarray | None
    classes: list[str]


# ---------------------------------------------------------------- pixel transforms


def to_model_space(pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 pixels k -> float32 x = 2k/255 - 1 in [-1, 1] (numpy in, numpy out; torch in, torch out)."""
    if isinstance(pixels, torch.Tensor):
        return pixels.float() * (2.0 / 255.0) - 1.0
    return (pixels.astype(np.float32) * (2.0 / 255.0) - 1.0).astype(np.float32)


def to_uint8(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The inverse of to_model_space: round to the nearest pixel level, clip to {0..255} (NaN -> 0)."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    levels = np.nan_to_num((x.astype(np.float64) + 1.0) * 127.5, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8)


def dequantize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantization of grid images: k -> 2 (k + u) / 256 - 1 with u ~ U[0, 1) (methods.md 2.12C)."""
    pixels = torch.from_numpy(to_uint8(x)).to(device=x.device, dtype=torch.float64)
    u = rng.uniform(tuple(pixels.shape), generator, x.device, torch.float64)
    return 2.0 * (pixels + u) / 256.0 - 1.0


# ---------------------------------------------------------------- sources


def load_digits_pool() -> ImagePool:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImagePool(images, bunch.target.astype(np.int64), None, None, [str(c) for c in range(10)])


def load_torchvision_pool(name: str, root: Path, download: bool) -> ImagePool:
    """Official train and test splits of MNIST, Fashion-MNIST or CIFAR-10 through torchvision."""
    import torchvision.datasets as tvd

    class_name, layout = TORCHVISION_SOURCES[name]
    cls = getattr(tvd, class_name)
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as error:
        if "not found" not in str(error).lower() and "corrupted" not in str(error).lower():
            raise
        raise ImageSourceError(
            f"{name}: not found under {root} (expected {layout}); set data.images.{name}.download: true "
            f"on a machine with network access, or copy torchvision's files there") from None
    except OSError as error:
        raise ImageSourceError(f"{name}: cannot download or read it under {root} ({error}); copy torchvision's "
                               f"files there ({layout}) and keep download: false") from None
    arrays = []
    for split in splits:
        data = np.asarray(split.data, dtype=np.uint8)
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # CIFAR-10 is stored HWC
        arrays.append((np.ascontiguousarray(data), np.asarray(split.targets, dtype=np.int64)))
    (train, train_labels), (test, test_labels) = arrays
    return ImagePool(train, train_labels, test, test_labels, list(splits[0].classes))


def load_image_folder_pool(folder: Path, size: int, channels: int) -> ImagePool:
    """Every image of folder/<class>/* (torchvision's ImageFolder), resized to size x size."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise ImageSourceError(f"image_folder: {folder} is not a folder; set data.images.image_folder.folder "
                               f"to a folder of class sub-folders of images")
    try:
        source = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as error:
        raise ImageSourceError(f"image_folder: {error}") from None
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path, _ in source.samples:
        with Image.open(path) as image:
            image = image.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    labels = np.asarray(source.targets, dtype=np.int64)
    return ImagePool(np.stack(images), labels, None, None, list(source.classes))


def load_pool(name: str, settings, root: Path) -> ImagePool:
    """The images of one source, as params.yaml's data.images.<name> describes it."""
    if name == "digits":
        return load_digits_pool()
    if name in TORCHVISION_SOURCES:
        return load_torchvision_pool(name, _resolve(root, settings.root), settings.download)
    if name == "image_folder":
        return load_image_folder_pool(_resolve(root, settings.folder), settings.size, settings.channels)
    raise ImageSourceError(f"unknown image data set {name!r}; accepted: {', '.join(IMAGE_DATASETS)}")


def _resolve(root: Path, path: str) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root) / path


# ---------------------------------------------------------------- resizing and splits


def resize(images: np.ndarray, size: int | None, pad: int) -> np.ndarray:
    """Bilinear (antialiased) resize to size x size, then `pad` black pixels on every side."""
    if size is not None and images.shape[-2:] != (size, size):
        x = torch.from_numpy(images).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
        images = x.round().clamp(0, 255).to(torch.uint8).numpy()
    if pad:
        images = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return images


def split_pool(pool: ImagePool, n_train: int | None, n_test: int, n_reference: int,
               rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train / test / reference as disjoint seeded draws; test and reference come from the held-out split.

    Sources without an official test split hold test and reference out of their one pool.
    """
    held_out, held_labels = pool.held_out, pool.held_out_labels
    train, train_labels = pool.train, pool.train_labels
    if held_out is None:
        order = rng.permutation(len(train))
        held, kept = order[: n_test + n_reference], order[n_test + n_reference:]
        held_out, held_labels = train[held], train_labels[held]
        train, train_labels = train[kept], train_labels[kept]
    if n_test + n_reference > len(held_out):
        raise ImageSourceError(f"n_test + n_reference = {n_test + n_reference} exceed the {len(held_out)} held-out "
                               f"images of this source; lower them in data.images")
    if len(train) == 0:
        raise ImageSourceError("no training images left after holding out n_test + n_reference; lower them")
    order = rng.permutation(len(held_out))
    test, reference = order[:n_test], order[n_test:n_test + n_reference]
    keep = rng.permutation(len(train))[: n_train or len(train)]
    return {"train": (train[keep], train_labels[keep]), "test": (held_out[test], held_labels[test]),
            "reference": (held_out[reference], held_labels[reference])}


def prepare_image(name: str, settings, seed: int, root: Path) -> dict[str, np.ndarray]:
    """Arrays of data/<name>.npz: float32 splits in [-1, 1], their labels, and the meta record."""
    pool = load_pool(name, settings, root)
    rng = np.random.default_rng(seed)
    splits = split_pool(pool, settings.n_train, settings.n_test, settings.n_reference, rng)
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in splits.items():
        arrays[split] = to_model_space(resize(images, settings.size, settings.pad))
        arrays[f"{split}_labels"] = labels
    shape = list(arrays["train"].shape[1:])
    meta = {"name": name, "kind": "image", "shape": shape, "seed": seed, "classes": pool.classes,
            "transform": "x = 2 k / 255 - 1 (pipeline.data.images.to_model_space)",
            "source_shape": list(pool.train.shape[1:]), "size": settings.size, "pad": settings.pad}
    return arrays | {"meta": meta}
