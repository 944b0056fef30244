"""load_dataset: CIFAR-10/100 from disk (via the decode cache) or synthetic data, with optional subsets."""

from __future__ import annotations

import torch

from data import cache, image_folder, torchvision_cifar
from data.dataset import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetNotFoundError,
    ImageDataset,
)
from data.locate import Layout, find_layout, not_found_message, resolve_root
from data.seeding import make_generator
from data.subsets import balanced_indices, complement, resolve_count
from data.synthetic import make_synthetic

DATASETS = ("cifar10", "cifar100", "synthetic")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


def _check_classes(name: str, classes: list[str], source: str) -> None:
    if name == "cifar10" and tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"{source}: expected the CIFAR-10 class folders {', '.join(CIFAR10_CLASSES)}; found {classes}")
    if len(classes) != _NUM_CLASSES[name]:
        raise ValueError(f"{source}: {name} needs {_NUM_CLASSES[name]} class folders; found {len(classes)}")


def _read_source(name: str, layout: Layout, cache_dir: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Decoded tensors and class names, from the decode cache when it matches the files on disk."""
    if layout.kind == "image_folder":
        listing = image_folder.scan_image_folder(layout.path)
        _check_classes(name, listing.classes, layout.path)
        fingerprint = {"layout": layout.kind, **listing.fingerprint}
    else:
        fingerprint = {"layout": layout.kind, **torchvision_cifar.fingerprint(name, layout.path)}
    path = cache.cache_path(cache_dir, name, layout.kind, layout.path)
    record = cache.load_cache(path, fingerprint)
    if record is not None:
        return record, list(record["classes"])
    if layout.kind == "image_folder":
        tensors, classes = image_folder.read_image_folder(listing), listing.classes
    else:
        tensors, classes = torchvision_cifar.read_torchvision_cifar(name, layout.path)
        _check_classes(name, classes, layout.path)
    cache.save_cache(path, fingerprint, tensors, classes)
    return tensors, classes


def _load_cifar(name: str, root: str | None, download: bool, cache_dir: str | None) -> ImageDataset:
    root = resolve_root(root)
    layout = find_layout(name, root)
    if layout is None and download:
        failure = torchvision_cifar.try_download(name, root)
        layout = find_layout(name, root) if failure is None else None
        if layout is None:
            raise DatasetNotFoundError(not_found_message(name, root, f" and the download failed ({failure})"))
    if layout is None:
        raise DatasetNotFoundError(not_found_message(name, root))
    tensors, classes = _read_source(name, layout, cache.resolve_cache_dir(cache_dir))
    mean, std = _STATS[name]
    return ImageDataset(
        train_x=tensors["train_x"], train_y=tensors["train_y"], test_x=tensors["test_x"], test_y=tensors["test_y"],
        classes=classes, mean=mean, std=std, name=name,
    )


def _select(ds: ImageDataset, subset, test_subset, val_split, seed: int) -> ImageDataset:
    train_x, train_y, test_x, test_y = ds.train_x, ds.train_y, ds.test_x, ds.test_y
    c = ds.num_classes
    if val_split is not None:
        n_val = resolve_count(val_split, train_y.numel(), "val_split")
        if n_val == train_y.numel():
            raise ValueError(f"val_split={val_split!r} would leave no training images")
        val = balanced_indices(train_y, n_val, c, make_generator(seed, "val"), "val_split")
        keep = complement(val, train_y.numel())
        test_x, test_y = train_x[val], train_y[val]
        train_x, train_y = train_x[keep], train_y[keep]
    if subset is not None:
        idx = balanced_indices(train_y, resolve_count(subset, train_y.numel(), "subset"), c,
                               make_generator(seed, "train"), "subset")
        train_x, train_y = train_x[idx], train_y[idx]
    if test_subset is not None:
        idx = balanced_indices(test_y, resolve_count(test_subset, test_y.numel(), "test_subset"), c,
                               make_generator(seed, "test"), "test_subset")
        test_x, test_y = test_x[idx], test_y[idx]
    return ImageDataset(
        train_x=train_x.contiguous(), train_y=train_y.contiguous(), test_x=test_x.contiguous(),
        test_y=test_y.contiguous(), classes=list(ds.classes), mean=ds.mean, std=ds.std, name=ds.name,
    )


def load_dataset(
    name: str,
    root: str | None,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    val_split: int | float | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    download: bool = True,
    synthetic_size: tuple[int, int] = (2048, 512),
) -> ImageDataset:
    """Load a whole dataset as uint8 tensors.

    name: "cifar10", "cifar100" or "synthetic". root: a folder holding torchvision's
    cifar-10-batches-py / cifar-100-python, or image folders train/<class>/* + test/<class>/* (the
    root itself or a sub-folder such as cifar10-jpeg/); None means $DNM_DATA_ROOT. Decoded images are
    cached under cache_dir (else $DNM_CACHE_DIR, else ~/.cache/decay-no-more), never inside root.

    Selection (all class-balanced and deterministic in `seed`; a count that is not a multiple of the
    number of classes gives the leftover images one each to randomly drawn classes):
    - val_split (int count or fraction of the training set): carved out of the full training set
      first; the returned test_x/test_y are then these validation images and train excludes them.
    - subset: number of training images kept (after removing the validation images).
    - test_subset: number of test (or validation) images kept.
    synthetic_size: (n_train, n_test) for name="synthetic" (generated from `seed`, root ignored).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        n_train, n_test = synthetic_size
        ds = make_synthetic(int(n_train), int(n_test), num_classes=10, seed=seed)
    else:
        ds = _load_cifar(name, root, download, cache_dir)
    if subset is None and test_subset is None and val_split is None:
        return ds
    return _select(ds, subset, test_subset, val_split, seed)
