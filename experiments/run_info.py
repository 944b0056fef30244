"""What a run's summary records about where and how it ran."""
from __future__ import annotations

import functools
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "wandb", "numpy", "pandas")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.cache
def git_commit() -> str | None:
    """HEAD of the repo when this process first asked, with '-dirty' for uncommitted changes.

    Cached, so that a long sweep reports the code it started with, not a later HEAD.
    """
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def hparams(cfg: DictConfig) -> dict:
    """The flat hyperparameters that collect.py turns into CSV columns."""
    return {
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "depth": cfg.model.depth,
        "batch_norm": cfg.model.batch_norm,
        "dataset": cfg.data.name,
        "subset": cfg.data.get("subset"),
        "test_subset": cfg.data.get("test_subset"),
        "epochs": cfg.trainer.epochs,
        "batch_size": cfg.trainer.batch_size,
        "schedule": cfg.schedule.name,
        "seed": cfg.seed,
        "loss_multiplier": cfg.loss_multiplier,
    }


def host() -> str:
    return socket.gethostname()
