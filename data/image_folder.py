"""The image-folder layout: <root>/train/<class>/*.{png,jpg} and <root>/test/<class>/*."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

from data import decode

SPLITS = ("train", "test")


@dataclass
class ImageFolderListing:
    root: str
    classes: list[str]
    paths: dict[str, list[str]] = field(default_factory=dict)  # split -> files, class-major, sorted
    labels: dict[str, list[int]] = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)


def is_image_folder(root: str) -> bool:
    return all(os.path.isdir(os.path.join(root, split)) for split in SPLITS)


def _class_dirs(split_dir: str) -> list[str]:
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(root: str) -> ImageFolderListing:
    """List every image with its label; classes are the sorted folder names, identical in train and test."""
    train_classes = _class_dirs(os.path.join(root, "train"))
    test_classes = _class_dirs(os.path.join(root, "test"))
    if not train_classes or train_classes != test_classes:
        raise ValueError(
            f"{root}: train/ and test/ must hold the same non-empty set of class folders; "
            f"got train={train_classes[:5]}... ({len(train_classes)}) test={test_classes[:5]}... ({len(test_classes)})"
        )
    listing = ImageFolderListing(root=root, classes=train_classes)
    digest = hashlib.sha256()
    n_files = total_bytes = 0
    for split in SPLITS:
        paths: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(train_classes):
            class_dir = os.path.join(root, split, cls)
            with os.scandir(class_dir) as entries:
                images = [e for e in entries
                          if not e.name.startswith(".") and e.name.lower().endswith(decode.IMAGE_EXTENSIONS)]
            # An image link to nothing is an image missing, not a file to pass over: the split would shrink unsaid.
            broken = [e.path for e in images if e.is_symlink() and not os.path.exists(e.path)]
            if broken:
                raise ValueError(f"{broken[0]} is a link to a file that is not there ({len(broken)} such in "
                                 f"{class_dir}); restore the images or copy the data again")
            files = sorted((e.name, e.stat()) for e in images if e.is_file())
            if not files:
                raise ValueError(f"{class_dir} holds no .png/.jpg/.jpeg images")
            for name, st in files:
                # Size and mtime catch replaced or rewritten files without reading their contents.
                digest.update(f"{split}/{cls}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                total_bytes += st.st_size
            n_files += len(files)
            paths += [os.path.join(class_dir, name) for name, _ in files]
            labels += [label] * len(files)
        listing.paths[split] = paths
        listing.labels[split] = labels
    listing.fingerprint = {"files": n_files, "bytes": total_bytes, "sha256": digest.hexdigest()}
    return listing


def read_image_folder(listing: ImageFolderListing) -> dict[str, torch.Tensor]:
    """Decode every listed image: {train_x, train_y, test_x, test_y}."""
    out = {}
    for split in SPLITS:
        out[f"{split}_x"] = decode.decode_image_files(listing.paths[split])
        out[f"{split}_y"] = torch.tensor(listing.labels[split], dtype=torch.int64)
    return out
