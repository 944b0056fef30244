"""Tests for data/: dataset loading, decode cache, subsets, synthetic data and the device loader."""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image

import data.decode
import data.torchvision_cifar
from data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CacheWarning,
    DatasetNotFoundError,
    DeviceLoader,
    ImageDecodeError,
    load_dataset,
    make_synthetic,
)
from data.augment import crop_flip, pad_images
from data.decode import decode_image_files, torchvision_decoder_available

REAL_CIFAR10 = os.environ.get("DNM_CIFAR10_ROOT", "/work/shared/datasets/cifar10-jpeg")
BACKENDS = ["pil"] + (["torchvision"] if torchvision_decoder_available() else [])


# ---------------------------------------------------------------- fixtures

def _random_image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def write_image_folder(root, n_train=3, n_test=2, seed=0) -> dict[str, np.ndarray]:
    """10 CIFAR-10 class folders; the first image of each class is a JPEG, the rest PNG. Returns PNG pixels (HWC)."""
    rng = np.random.default_rng(seed)
    pngs = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CIFAR10_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = _random_image(rng)
                if i == 0:
                    Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
                else:
                    Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                    pngs[f"{split}/{cls}/{i:04d}.png"] = pixels
    return pngs


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "cifar10-jpeg"
    pngs = write_image_folder(root)
    return root, pngs


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def torchvision_folder(tmp_path, monkeypatch):
    """A tiny cifar-10-batches-py (5 train batches of 2 images, 1 test batch of 3) with matching md5 lists."""
    rng = np.random.default_rng(1)
    root = tmp_path / "tvroot"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    train_list, labels_all = [], {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        flat = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, "labels": labels}, f)
        arrays[name], labels_all[name] = flat, labels
        if name != "test_batch":
            train_list.append([name, _md5(folder / name)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})
    train_x = np.concatenate([arrays[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    train_y = sum((labels_all[f"data_batch_{i}"] for i in range(1, 6)), [])
    expected = {
        "train_x": torch.from_numpy(train_x), "train_y": torch.tensor(train_y),
        "test_x": torch.from_numpy(arrays["test_batch"].reshape(-1, 3, 32, 32)),
        "test_y": torch.tensor(labels_all["test_batch"]),
    }
    return root, expected


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    """One decode cache for the whole session: $DNM_CACHE_DIR if set, else a temporary folder."""
    return os.environ.get("DNM_CACHE_DIR") or str(tmp_path_factory.mktemp("dnm-cache"))


def _forbid_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("images were decoded although the cache should have been used")

    monkeypatch.setattr(data.decode, "decode_image_files", boom)
    monkeypatch.setattr(data.torchvision_cifar, "read_torchvision_cifar", boom)


def _cache_files(cache_dir) -> list[str]:
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".pt"))


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("point_at", ["image_root", "parent"])
def test_image_folder_layout_is_detected_and_decoded(image_folder, tmp_path, point_at):
    root, pngs = image_folder
    ds = load_dataset("cifar10", str(root if point_at == "image_root" else root.parent),
                      cache_dir=str(tmp_path / "cache"), download=False)
    assert ds.classes == list(CIFAR10_CLASSES) and ds.name == "cifar10"
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.train_x.dtype == torch.uint8 and ds.train_x.is_contiguous()
    assert ds.test_x.shape == (20, 3, 32, 32) and ds.test_y.dtype == torch.int64
    assert ds.train_y.tolist() == [c for c in range(10) for _ in range(3)]
    # Class-major, file-name order: index 1 of class "bird" (label 2) is train/bird/0001.png.
    assert torch.equal(ds.train_x[2 * 3 + 1], torch.from_numpy(pngs["train/bird/0001.png"]).permute(2, 0, 1))
    assert torch.equal(ds.test_x[9 * 2 + 1], torch.from_numpy(pngs["test/truck/0001.png"]).permute(2, 0, 1))


def test_torchvision_layout_is_read_through_torchvision(torchvision_folder, tmp_path):
    root, expected = torchvision_folder
    ds = load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)
    assert ds.classes == list(CIFAR10_CLASSES)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(ds, key), expected[key]), key
    assert ds.train_x.is_contiguous()
    # The batches folder itself is accepted as root too.
    again = load_dataset("cifar10", str(root / "cifar-10-batches-py"), cache_dir=str(tmp_path / "c2"), download=False)
    assert torch.equal(again.train_x, expected["train_x"])


def test_torchvision_layout_with_bad_checksum_is_reported(torchvision_folder, tmp_path):
    root, _ = torchvision_folder
    with open(root / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="data_batch|corrupted"):
        load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)


def test_wrong_class_folders_are_rejected(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    (root / "train" / "truck").rename(root / "train" / "lorry")
    (root / "test" / "truck").rename(root / "test" / "lorry")
    with pytest.raises(ValueError, match="airplane.*lorry"):
        load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)


def test_corrupt_image_file_is_named_in_one_line_error(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    bad = root / "train" / "cat" / "0002.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageDecodeError) as info:
        load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "cache") or not _cache_files(tmp_path / "cache")


def test_an_image_linked_to_nothing_is_missing_data_not_a_smaller_split(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    whole = load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)
    image = root / "train" / "cat" / "0002.png"
    moved = tmp_path / "elsewhere.png"
    image.rename(moved)
    image.symlink_to(moved)  # a folder of links (a shared copy) reads as the files themselves
    linked = load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache2"), download=False)
    assert torch.equal(linked.train_x, whole.train_x)
    moved.unlink()
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache3"), download=False)
    assert str(info.value).startswith(f"{image} is a link to a file that is not there (1 such in ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoders_name_the_bad_file(tmp_path, backend):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(_random_image(rng)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated nonsense")
    with pytest.raises(ImageDecodeError, match="bad.jpg") as info:
        decode_image_files([str(good), str(bad)], backend=backend)
    assert "\n" not in str(info.value)
    small = tmp_path / "small.png"
    Image.fromarray(_random_image(rng)[:16]).save(small)
    with pytest.raises(ImageDecodeError, match="small.png.*32x32"):
        decode_image_files([str(small)], backend=backend)


def test_decoder_backends_agree(tmp_path):
    if len(BACKENDS) < 2:
        pytest.skip("torchvision was built without its image extension; only PIL is available")
    rng = np.random.default_rng(0)
    paths, pixels = [], []
    for i in range(6):
        p = tmp_path / (f"{i}.png" if i % 2 else f"{i}.jpg")
        pixels.append(_random_image(rng))
        Image.fromarray(pixels[-1]).convert("L" if i == 3 else "RGB").save(p)
        paths.append(str(p))
    a = decode_image_files(paths, backend="pil")
    b = decode_image_files(paths, backend="torchvision")
    pngs = [1, 5]  # lossless RGB files decode exactly
    assert torch.equal(a[pngs], b[pngs])
    assert torch.equal(a[1], torch.from_numpy(pixels[1]).permute(2, 0, 1))
    assert torch.equal(a[3], b[3]) and torch.equal(a[3, 0], a[3, 1])  # greyscale PNG expanded to RGB
    assert (a.int() - b.int()).abs().max() <= 8  # JPEG decoders may round the IDCT differently


# ---------------------------------------------------------------- missing data

def test_missing_data_error_is_one_line_and_names_folder(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", str(empty), cache_dir=str(tmp_path / "cache"), download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message and str(empty) in message
    for part in ("cifar-10-batches-py", "train/<class>", "https://www.cs.toronto.edu/~kriz/cifar.html", "DNM_DATA_ROOT"):
        assert part in message
    assert os.listdir(empty) == []


def test_failed_download_gives_the_same_one_line_error(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, root, train=True, download=False):
            os.makedirs(root, exist_ok=True)  # as torchvision does before fetching
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DatasetNotFoundError, match="download failed.*URLError") as info:
        load_dataset("cifar10", str(tmp_path), cache_dir=str(tmp_path / "cache"), download=True)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    # A root that did not exist before is not left behind as an empty folder.
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", str(tmp_path / "typo" / "cifar"), cache_dir=str(tmp_path / "cache"), download=True)
    assert not (tmp_path / "typo").exists()


def test_root_defaults_to_env_var(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    monkeypatch.delenv("DNM_DATA_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError, match="DNM_DATA_ROOT"):
        load_dataset("cifar10", None, cache_dir=str(tmp_path / "cache"), download=False)
    monkeypatch.setenv("DNM_DATA_ROOT", str(root))
    assert load_dataset("cifar10", None, cache_dir=str(tmp_path / "cache"), download=False).train_x.shape[0] == 30


def test_unknown_dataset_name_lists_choices():
    with pytest.raises(ValueError, match="cifar10, cifar100, synthetic"):
        load_dataset("mnist", None)


# ---------------------------------------------------------------- decode cache

def test_second_load_comes_from_cache_and_root_is_untouched(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    cache_dir = tmp_path / "cache"
    before = sorted(str(p) for p in root.rglob("*"))
    first = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    assert len(_cache_files(cache_dir)) == 1
    assert sorted(str(p) for p in root.rglob("*")) == before
    _forbid_decoding(monkeypatch)
    second = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.classes == first.classes


def test_torchvision_layout_is_cached_too(torchvision_folder, tmp_path, monkeypatch):
    root, expected = torchvision_folder
    load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)
    _forbid_decoding(monkeypatch)
    ds = load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "cache"), download=False)
    assert torch.equal(ds.test_x, expected["test_x"])


def test_cache_dir_defaults_to_env_var(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    monkeypatch.setenv("DNM_CACHE_DIR", str(tmp_path / "env-cache"))
    load_dataset("cifar10", str(root), download=False)
    assert len(_cache_files(tmp_path / "env-cache")) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_format", "bytes flipped"])
def test_corrupt_cache_is_rebuilt(image_folder, tmp_path, monkeypatch, damage):
    root, _ = image_folder
    cache_dir = tmp_path / "cache"
    good = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    (cache_file,) = [cache_dir / f for f in _cache_files(cache_dir)]
    content = cache_file.read_bytes()
    if damage == "truncate":
        cache_file.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        cache_file.write_bytes(b"\x00" * 100)
    elif damage == "bytes flipped":  # inside the images' bytes: torch.load alone would load other pixels
        middle = len(content) // 2
        cache_file.write_bytes(content[:middle] + bytes(255 - b for b in content[middle:middle + 64])
                               + content[middle + 64:])
        assert not torch.equal(torch.load(cache_file, weights_only=True)["train_x"], good.train_x)
    else:
        torch.save({"something": torch.zeros(1)}, cache_file)
    with pytest.warns(CacheWarning, match="rebuilding") as record:
        rebuilt = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert torch.equal(rebuilt.train_x, good.train_x)
    # The rebuilt cache is valid again.
    _forbid_decoding(monkeypatch)
    assert torch.equal(load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False).test_x, good.test_x)


def test_stale_cache_is_rebuilt_when_files_change(image_folder, tmp_path):
    root, _ = image_folder
    cache_dir = tmp_path / "cache"
    load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    new_pixels = np.full((32, 32, 3), 7, dtype=np.uint8)
    target = root / "train" / "dog" / "0001.png"
    Image.fromarray(new_pixels).save(target)
    os.utime(target, ns=(1, 1))  # a new mtime even on coarse-grained filesystems
    with pytest.warns(CacheWarning, match="stale"):
        ds = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    assert (ds.train_x[5 * 3 + 1] == 7).all()
    # Adding a file is also noticed.
    Image.fromarray(new_pixels).save(root / "test" / "cat" / "0009.png")
    with pytest.warns(CacheWarning, match="stale"):
        ds = load_dataset("cifar10", str(root), cache_dir=str(cache_dir), download=False)
    assert ds.test_x.shape[0] == 21
    assert len(_cache_files(cache_dir)) == 1


def test_unwritable_cache_dir_only_warns(image_folder, tmp_path):
    root, _ = image_folder
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(CacheWarning, match="cannot write"):
        ds = load_dataset("cifar10", str(root), cache_dir=str(blocker / "cache"), download=False)
    assert ds.train_x.shape[0] == 30


# ---------------------------------------------------------------- subsets and validation split

def _counts(labels: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def test_class_balanced_subsets():
    ds = load_dataset("synthetic", None, subset=200, test_subset=50, synthetic_size=(1000, 300))
    assert _counts(ds.train_y) == [20] * 10 and _counts(ds.test_y) == [5] * 10
    odd = load_dataset("synthetic", None, subset=203, synthetic_size=(1000, 300))
    counts = _counts(odd.train_y)
    assert sum(counts) == 203 and sorted(counts) == [20] * 7 + [21] * 3
    assert odd.test_x.shape[0] == 300


def test_subsets_are_deterministic_in_seed_and_drawn_from_the_data():
    full = load_dataset("synthetic", None, synthetic_size=(500, 100), seed=3)
    a = load_dataset("synthetic", None, subset=50, synthetic_size=(500, 100), seed=3)
    b = load_dataset("synthetic", None, subset=50, synthetic_size=(500, 100), seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    full_rows = {bytes(x.numpy()) for x in full.train_x}
    assert all(bytes(x.numpy()) in full_rows for x in a.train_x)
    assert len({bytes(x.numpy()) for x in a.train_x}) == 50  # no duplicates


def test_subset_choice_depends_on_seed(image_folder, tmp_path):
    root, _ = image_folder
    picks = {
        bytes(load_dataset("cifar10", str(root), subset=10, seed=s, cache_dir=str(tmp_path / "c"),
                           download=False).train_x.numpy())
        for s in range(4)
    }
    assert len(picks) > 1


@pytest.mark.parametrize("bad", [0, 2001, -5, 1.5, 0.0, True, "10"])
def test_invalid_subset_sizes_raise(bad):
    with pytest.raises(ValueError, match="subset"):
        load_dataset("synthetic", None, subset=bad, synthetic_size=(2000, 100))


def test_subset_larger_than_a_class_raises(image_folder, tmp_path):
    root, _ = image_folder
    for name in ("0001.png", "0002.png"):
        (root / "train" / "cat" / name).unlink()  # cat keeps 1 image, the other classes 3
    kw = dict(cache_dir=str(tmp_path / "c"), download=False)
    assert _counts(load_dataset("cifar10", str(root), subset=10, **kw).train_y) == [1] * 10
    with pytest.raises(ValueError, match="class-balanced.*2 of class 3.*at most 10"):
        load_dataset("cifar10", str(root), subset=20, **kw)


@pytest.mark.parametrize("val_split,n_val", [(100, 100), (0.25, 250)])
def test_validation_split_is_disjoint_balanced_and_replaces_test(val_split, n_val):
    full = load_dataset("synthetic", None, synthetic_size=(1000, 300))
    ds = load_dataset("synthetic", None, val_split=val_split, synthetic_size=(1000, 300))
    assert ds.test_x.shape[0] == n_val and ds.train_x.shape[0] == 1000 - n_val
    assert _counts(ds.test_y) == [n_val // 10] * 10
    train_rows = {bytes(x.numpy()) for x in ds.train_x}
    val_rows = {bytes(x.numpy()) for x in ds.test_x}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {bytes(x.numpy()) for x in full.train_x}
    test_rows = {bytes(x.numpy()) for x in full.test_x}
    assert not val_rows & test_rows


def test_validation_split_is_independent_of_training_subset():
    a = load_dataset("synthetic", None, val_split=100, synthetic_size=(1000, 300))
    b = load_dataset("synthetic", None, val_split=100, subset=300, test_subset=50, synthetic_size=(1000, 300))
    val_rows = {bytes(x.numpy()) for x in a.test_x}
    assert {bytes(x.numpy()) for x in b.test_x} <= val_rows
    assert not {bytes(x.numpy()) for x in b.train_x} & val_rows
    assert _counts(b.train_y) == [30] * 10


def test_validation_split_that_takes_everything_raises():
    with pytest.raises(ValueError, match="val_split"):
        load_dataset("synthetic", None, val_split=1000, synthetic_size=(1000, 300))


# ---------------------------------------------------------------- normalisation constants and synthetic data

def test_cifar10_normalisation_constants(image_folder, tmp_path):
    root, _ = image_folder
    ds = load_dataset("cifar10", str(root), cache_dir=str(tmp_path / "c"), download=False)
    assert ds.mean == CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert ds.std == CIFAR10_STD == (0.2470, 0.2435, 0.2616)


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = make_synthetic(256, 64, seed=5), make_synthetic(256, 64, seed=5)
    c = make_synthetic(256, 64, seed=6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y) and a.mean == b.mean
    assert not torch.equal(a.train_x, c.train_x)
    assert a.name == "synthetic" and a.train_x.dtype == torch.uint8 and a.train_x.shape == (256, 3, 32, 32)
    assert _counts(a.train_y) == [26] * 6 + [25] * 4 and _counts(a.test_y) == [7] * 4 + [6] * 6
    as_unit = a.train_x.double() / 255
    assert a.mean == pytest.approx(as_unit.mean(dim=(0, 2, 3)).tolist())
    assert a.std == pytest.approx(as_unit.std(dim=(0, 2, 3)).tolist())
    assert load_dataset("synthetic", "/ignored", synthetic_size=(256, 64), seed=5).train_x.equal(a.train_x)


def test_synthetic_is_learnable_by_a_small_cnn_in_one_epoch():
    torch.manual_seed(0)
    ds = make_synthetic(2048, 512, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=2, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(256, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = DeviceLoader(ds.train_x, ds.train_y, batch_size=64, train=True, mean=ds.mean, std=ds.std, device="cpu")
    for x, y in train:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    test = DeviceLoader(ds.test_x, ds.test_y, batch_size=256, train=False, mean=ds.mean, std=ds.std, device="cpu")
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    assert correct / 512 > 0.6  # chance is 0.1


# ---------------------------------------------------------------- device loader

@pytest.fixture
def small_data():
    ds = make_synthetic(100, 40, seed=1)
    return ds


def _loader(ds, **kw):
    args = dict(batch_size=16, train=True, mean=ds.mean, std=ds.std, device="cpu", seed=0)
    args.update(kw)
    return DeviceLoader(ds.train_x, ds.train_y, **args)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_is_reproducible_per_seed_and_epoch(small_data):
    a, b = _loader(small_data), _loader(small_data)
    for (xa, ya), (xb, yb) in zip(_epoch(a, 3), _epoch(b, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e3, e4 = _epoch(a, 3), _epoch(a, 4)
    assert not torch.equal(e3[0][0], e4[0][0])
    assert not torch.equal(torch.cat([y for _, y in e3]), torch.cat([y for _, y in e4]))
    other_seed = _epoch(_loader(small_data, seed=1), 3)
    assert not torch.equal(e3[0][0], other_seed[0][0])


def test_loader_advances_epoch_by_itself(small_data):
    auto = _loader(small_data)
    first, second = list(auto), list(auto)
    explicit = _loader(small_data)
    for (x1, _), (x2, _) in zip(first, _epoch(explicit, 0), strict=True):
        assert torch.equal(x1, x2)
    for (x1, _), (x2, _) in zip(second, _epoch(explicit, 1), strict=True):
        assert torch.equal(x1, x2)


def test_training_batches_match_torchvision_crop_and_flip(small_data):
    loader = _loader(small_data, batch_size=32)
    plan = loader.epoch_plan(2)
    batches = _epoch(loader, 2)
    assert len(batches) == 3 and all(x.shape == (32, 3, 32, 32) for x, _ in batches)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    order = plan["order"][:96]
    assert sorted(plan["order"].tolist()) == list(range(100))
    assert torch.equal(ys, small_data.train_y[order])
    for k, i in enumerate(order.tolist()):
        img = TF.pad(small_data.train_x[i], [4], fill=0)
        img = TF.crop(img, int(plan["top"][k]), int(plan["left"][k]), 32, 32)
        if plan["flip"][k]:
            img = TF.horizontal_flip(img)
        expected = TF.normalize(TF.to_dtype(img, torch.float32, scale=True), list(small_data.mean), list(small_data.std))
        assert torch.equal(xs[k], expected), k


def test_augmentation_offsets_cover_0_to_8_and_both_flips(small_data):
    plan = _loader(small_data).epoch_plan(0)
    big = DeviceLoader(torch.zeros(5000, 3, 32, 32, dtype=torch.uint8), torch.zeros(5000, dtype=torch.int64),
                       batch_size=100, train=True, mean=(0.5,) * 3, std=(0.5,) * 3, device="cpu").epoch_plan(0)
    for key in ("top", "left"):
        assert plan[key].min() >= 0 and plan[key].max() <= 8
        assert sorted(big[key].unique().tolist()) == list(range(9))
    assert 0.4 < big["flip"].float().mean() < 0.6


def test_crop_flip_matches_torchvision_for_every_offset():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8))
    padded = pad_images(images)
    for top in range(9):
        for left in range(9):
            for flip in (False, True):
                index = torch.tensor([top % 4])
                got = crop_flip(padded, index, torch.tensor([top]), torch.tensor([left]), torch.tensor([flip]))[0]
                want = TF.crop(TF.pad(images[top % 4], [4]), top, left, 32, 32)
                want = TF.horizontal_flip(want) if flip else want
                assert torch.equal(got, want), (top, left, flip)


def test_without_augmentation_output_is_plain_normalisation(small_data):
    ds = small_data
    expected = TF.normalize(TF.to_dtype(ds.test_x, torch.float32, scale=True), list(ds.mean), list(ds.std))
    loader = DeviceLoader(ds.test_x, ds.test_y, batch_size=16, train=False, mean=ds.mean, std=ds.std, device="cpu")
    assert not loader.augment and not loader.drop_last and len(loader) == 3
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [16, 16, 8]
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_y)
    # Shuffled training order without augmentation: a permutation of the same normalised images.
    shuffled = _loader(ds, augment=False, drop_last=False)
    plan = shuffled.epoch_plan(0)
    xs = torch.cat([x for x, _ in _epoch(shuffled, 0)])
    full = TF.normalize(TF.to_dtype(ds.train_x, torch.float32, scale=True), list(ds.mean), list(ds.std))
    assert torch.equal(xs, full[plan["order"]])


def test_loader_length_and_drop_last(small_data):
    assert len(_loader(small_data)) == 100 // 16
    assert len(_loader(small_data, drop_last=False)) == 7
    assert sum(y.numel() for _, y in _loader(small_data, drop_last=False)) == 100
    with pytest.raises(ValueError, match="batch_size"):
        _loader(small_data, batch_size=101)


def test_loader_channels_last_and_dtype(small_data):
    loader = _loader(small_data, channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = _loader(small_data)
    torch.testing.assert_close(x.float(), next(iter(plain))[0], rtol=1e-2, atol=2e-2)


def test_loader_rejects_bad_inputs(small_data):
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(small_data.train_x.float(), small_data.train_y, batch_size=4, train=True,
                     mean=small_data.mean, std=small_data.std, device="cpu")
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(small_data.train_x, small_data.train_y[:5], batch_size=4, train=True,
                     mean=small_data.mean, std=small_data.std, device="cpu")


# ---------------------------------------------------------------- real CIFAR-10 (JPEG copy)

def test_real_cifar10_jpeg_subset(shared_cache_dir):
    if not os.path.isdir(REAL_CIFAR10):
        if os.environ.get("DNM_ALLOW_NO_CIFAR") == "1":
            pytest.skip(f"{REAL_CIFAR10} missing and DNM_ALLOW_NO_CIFAR=1")
        pytest.fail(f"real CIFAR-10 not found at {REAL_CIFAR10}; set DNM_CIFAR10_ROOT, or DNM_ALLOW_NO_CIFAR=1 to skip")
    ds = load_dataset("cifar10", REAL_CIFAR10, subset=200, test_subset=100, cache_dir=shared_cache_dir, download=False)
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.train_x.shape == (200, 3, 32, 32) and ds.test_x.shape == (100, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert _counts(ds.train_y) == [20] * 10 and _counts(ds.test_y) == [10] * 10
    # Natural images: per-channel means near the published CIFAR-10 statistics.
    mean = (ds.train_x.double() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), atol=0.05)
    # Second load: from the cache, identical.
    again = load_dataset("cifar10", REAL_CIFAR10, subset=200, test_subset=100, cache_dir=shared_cache_dir,
                         download=False)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
