"""torchvision's CIFAR layout (cifar-10-batches-py / cifar-100-python), read and downloaded via torchvision."""

from __future__ import annotations

import hashlib
import os
import socket

import torch
import torchvision

BASE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_DOWNLOAD_TIMEOUT_S = 30


def _dataset_class(name: str):
    # Looked up at call time so tests can substitute it.
    return torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100


def has_torchvision_layout(name: str, root: str) -> bool:
    return os.path.isdir(os.path.join(root, BASE_FOLDERS[name]))


def fingerprint(name: str, root: str) -> dict:
    folder = os.path.join(root, BASE_FOLDERS[name])
    digest = hashlib.sha256()
    n_files = total_bytes = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n_files += 1
            total_bytes += st.st_size
    return {"files": n_files, "bytes": total_bytes, "sha256": digest.hexdigest()}


def read_torchvision_cifar(name: str, root: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read both splits with torchvision (which verifies the md5 sums) into uint8 NCHW tensors."""
    cls = _dataset_class(name)
    out = {}
    classes: list[str] = []
    for split in ("train", "test"):
        try:
            ds = cls(root, train=split == "train", download=False)
        except RuntimeError as exc:
            folder = os.path.join(root, BASE_FOLDERS[name])
            raise ValueError(f"{folder} is incomplete or corrupted ({exc}); delete it and download again") from None
        out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.int64)
        classes = list(ds.classes)
    return out, classes


def _missing_folders(root: str) -> list[str]:
    """root and those of its parents that do not exist yet, deepest first."""
    missing, folder = [], os.path.abspath(root)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def try_download(name: str, root: str) -> str | None:
    """Download into root with torchvision; return None on success, else a one-line reason."""
    created = _missing_folders(root)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen has no timeout of its own
    try:
        _dataset_class(name)(root, train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - any network/filesystem failure means "not available"
        # torchvision created these; a mistyped root should not leave empty folders behind.
        for folder in created:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    finally:
        socket.setdefaulttimeout(previous)
    return None
