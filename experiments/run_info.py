"""What a run's summary records about where and how it ran."""
from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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

    Cached, so that a long sweep reports the code it started with, not a later HEAD. DNM_GIT_COMMIT, when set,
    is the answer instead: a copy of the repo without its history (the GPU machine's) learns its commit from
    the stamp that scripts/source_stamp.py checks.
    """
    if os.environ.get("DNM_GIT_COMMIT"):
        return os.environ["DNM_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


# The short CSV names of the most used hyperparameters (what figures group and label by); every other key
# that changes a run's result is a column under its dotted config name (experiments/run_identity.py).
SHORT_NAMES = {
    "optimizer": "optimizer.name", "lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay",
    "depth": "model.depth", "batch_norm": "model.batch_norm", "dataset": "data.name", "subset": "data.subset",
    "test_subset": "data.test_subset", "epochs": "trainer.epochs", "batch_size": "trainer.batch_size",
    "schedule": "schedule.name", "seed": "seed", "loss_multiplier": "loss_multiplier",
}


def hparams(cfg: DictConfig | dict, data_fingerprint: str | None = None) -> dict:
    """Everything that changes what the run computes, flat: SHORT_NAMES first, then the other keys, dotted."""
    from experiments.run_identity import result_keys

    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    identity = result_keys(container, data_fingerprint)
    out = {short: identity.pop(dotted, None) for short, dotted in SHORT_NAMES.items()}
    out.update(sorted(identity.items()))
    return out


def host() -> str:
    return socket.gethostname()


@functools.cache
def hardware(device: str) -> str | None:
    """What a run trained on, by name: the GPU's ('NVIDIA H200'), or the CPU model and its logical CPUs."""
    if not device:
        return None
    if device.startswith("cuda"):
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(device))
        except (RuntimeError, AssertionError, ValueError):
            return device
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
