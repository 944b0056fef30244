"""The in-memory dataset record shared by every data source, and the dataset constants."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Per-channel statistics of the CIFAR-100 training set, in [0, 1] units.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where they were looked for (and could not be downloaded)."""


@dataclass
class ImageDataset:
    """A whole image-classification dataset held as uint8 NCHW tensors (CPU)."""

    train_x: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M, 3, 32, 32]; the validation images when load_dataset(val_split=...)
    test_y: torch.Tensor  # int64 [M]
    classes: list[str]
    mean: tuple[float, float, float]  # normalisation constants in [0, 1] units
    std: tuple[float, float, float]
    name: str

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"{split}_x must be uint8 [N, 3, H, W]; got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{split}_y must be int64 [{x.shape[0]}]; got {y.dtype} {tuple(y.shape)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, classes={self.num_classes})"
        )
