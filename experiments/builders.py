"""Builds the parts of a run from its config: device, data, model, optimizer."""
from __future__ import annotations

import os
from contextlib import nullcontext

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import data as datasets
import models
import optimizers
from experiments.cpu_memory import keep_freed_memory


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def setup_host_memory(trainer_cfg: DictConfig, device: torch.device) -> None:
    """trainer.keep_freed_memory: on CPU, stop malloc from returning activation memory to the kernel each step."""
    if device.type == "cpu" and trainer_cfg.get("keep_freed_memory", True):
        keep_freed_memory()


def setup_cudnn(trainer_cfg: DictConfig, device: torch.device) -> None:
    """trainer.cudnn_benchmark: on CUDA, let cuDNN time its convolution algorithms once per shape and keep the
    fastest (every batch of a run has one shape). Changes rounding, not what is computed."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(trainer_cfg.get("cudnn_benchmark", True))


def setup_precision(precision: str, device: torch.device):
    """Sets matmul precision and returns the autocast context for the forward pass."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def load_data(cfg: DictConfig, base_dir: str | None = None) -> "datasets.ImageDataset":
    d = cfg.data
    root = d.get("root")
    if root is not None and base_dir is not None and not os.path.isabs(root):
        root = os.path.join(base_dir, root)
    return datasets.load_dataset(
        d.name,
        root,
        subset=d.get("subset"),
        test_subset=d.get("test_subset"),
        val_split=d.get("val_split"),
        seed=d.get("subset_seed", 0),
        cache_dir=d.get("cache_dir"),
        synthetic_size=(d.get("train_size", 2048), d.get("test_size", 512)),
    )


def build_model(cfg: DictConfig, num_classes: int, device: torch.device) -> torch.nn.Module:
    model = models.build_model(cfg.model.depth, cfg.model.batch_norm, num_classes)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    return model.to(device=device, memory_format=memory_format)


# Keys of configs/optimizer/*.yaml that say how the run uses its optimizer, not how to construct it.
RUN_KEYS = ("name", "exclude_norm_and_bias")


def optimizer_constructor_cfg(opt_cfg: DictConfig) -> dict:
    """The optimizer node without RUN_KEYS: `_target_` and its constructor's keyword arguments."""
    return {k: v for k, v in OmegaConf.to_container(opt_cfg, resolve=True).items() if k not in RUN_KEYS}


def build_optimizer(opt_cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Hydra instantiates optimizer._target_ as a partial, completed here with the model's parameter groups
    (optimizer.exclude_norm_and_bias decides who gets no decay)."""
    make = hydra.utils.instantiate(optimizer_constructor_cfg(opt_cfg), _partial_=True)
    groups = optimizers.param_groups(
        model, opt_cfg.weight_decay, exclude_norm_and_bias=opt_cfg.get("exclude_norm_and_bias", False)
    )
    return make(groups)
