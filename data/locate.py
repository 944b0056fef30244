"""Find which supported layout a data root holds, or explain in one line what is missing."""

from __future__ import annotations

import os
from dataclasses import dataclass

from data.dataset import CIFAR_URL, DatasetNotFoundError
from data.image_folder import is_image_folder
from data.torchvision_cifar import BASE_FOLDERS, has_torchvision_layout

# Sub-folders of the data root that may hold the image-folder layout, besides the root itself.
IMAGE_FOLDER_NAMES = {
    "cifar10": ("cifar10-jpeg", "cifar10", "cifar-10", "CIFAR10", "CIFAR-10"),
    "cifar100": ("cifar100-jpeg", "cifar100", "cifar-100", "CIFAR100", "CIFAR-100"),
}


@dataclass(frozen=True)
class Layout:
    kind: str  # "torchvision" or "image_folder"
    path: str  # torchvision: the folder holding cifar-10-batches-py; image_folder: the folder holding train/ test/


def resolve_root(root: str | None) -> str:
    """The root argument, else $DNM_DATA_ROOT; expands ~."""
    root = root or os.environ.get("DNM_DATA_ROOT")
    if not root:
        raise DatasetNotFoundError(
            "no dataset folder given: pass root (config data.root) or set DNM_DATA_ROOT to the folder holding CIFAR"
        )
    return os.path.expanduser(str(root))


def find_layout(name: str, root: str) -> Layout | None:
    """torchvision's layout is preferred (original pixels); then root/ or root/<known name>/ as image folders."""
    if has_torchvision_layout(name, root):
        return Layout("torchvision", root)
    if os.path.basename(os.path.normpath(root)) == BASE_FOLDERS[name]:
        return Layout("torchvision", os.path.dirname(os.path.normpath(root)))
    for candidate in (root, *(os.path.join(root, sub) for sub in IMAGE_FOLDER_NAMES[name])):
        if is_image_folder(candidate):
            return Layout("image_folder", candidate)
    return None


def not_found_message(name: str, root: str, download_note: str = "") -> str:
    return (
        f"{name} not found in {root}{download_note}: expected torchvision's {BASE_FOLDERS[name]}/ there, "
        f"or image folders train/<class>/*.{{png,jpg}} + test/<class>/* (in it or in a "
        f"{IMAGE_FOLDER_NAMES[name][0]}/ or {IMAGE_FOLDER_NAMES[name][1]}/ sub-folder); get the files from {CIFAR_URL} "
        f"or point DNM_DATA_ROOT / data.root at them"
    )
