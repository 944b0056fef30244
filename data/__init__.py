"""Datasets as whole uint8 tensors, and a device-resident loader with batched augmentation."""

from data.cache import CacheWarning
from data.dataset import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetNotFoundError,
    ImageDataset,
)
from data.decode import ImageDecodeError
from data.device_loader import DeviceLoader
from data.registry import DATASETS, load_dataset
from data.synthetic import make_synthetic

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "CacheWarning",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "ImageDecodeError",
    "load_dataset",
    "make_synthetic",
]
