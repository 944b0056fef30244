"""trainer.device=auto on a machine with several GPUs: each training process takes the least busy one.

A sweep's workers (launcher=joblib's processes, launcher=packed_submitit_local's pack jobs) start
without knowing each other. Each one, when it starts a run or a pack, holds an flock on a slot file
of the GPU it takes (`<lock dir>/cuda<i>.<j>.lock`) for as long as it trains; the next one counts
the slots held per GPU and takes a GPU with the fewest. The kernel drops a dead process's locks, so
a killed worker never leaves a GPU marked busy. Slot files live in DNM_DEVICE_LOCK_DIR (default
<tmp>/decay-no-more-devices-<uid>), which is per machine, as the GPUs are.
"""
from __future__ import annotations

import fcntl
import itertools
import os
import tempfile
from pathlib import Path

import torch


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"decay-no-more-devices-{os.getuid()}"
    return Path(os.environ.get("DNM_DEVICE_LOCK_DIR") or default)


class DeviceClaim:
    """GPU `index`, held until release() (or until this process ends)."""

    def __init__(self, index: int, fd: int) -> None:
        self.index, self._fd = index, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops its flock
            self._fd = None

    __del__ = release  # e.g. a pack that failed while being built, in a worker process that lives on


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _held_slots(folder: Path, device: int) -> tuple[int, int]:
    """(slots of `device` held by some process, the first free slot number)."""
    held, first_free = 0, None
    for j in itertools.count():
        path = folder / f"cuda{device}.{j}.lock"
        if not path.exists():
            return held, j if first_free is None else first_free
        fd = _try_lock(path)
        if fd is None:
            held += 1
        else:
            os.close(fd)
            first_free = j if first_free is None else first_free


def claim_device(count: int, folder: Path | None = None) -> DeviceClaim:
    """Takes the GPU (of `count`) with the fewest slots held, the lowest index among equals."""
    folder = folder or lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "choose.lock", "a") as chooser:
        fcntl.flock(chooser, fcntl.LOCK_EX)  # one process chooses at a time, so two never count the same slot free
        busy = [_held_slots(folder, device) for device in range(count)]
        device = min(range(count), key=lambda d: (busy[d][0], d))
        fd = _try_lock(folder / f"cuda{device}.{busy[device][1]}.lock")
        assert fd is not None, "a free slot was taken while this process held the chooser lock"
        return DeviceClaim(device, fd)


def training_device(name: str) -> tuple[torch.device, DeviceClaim | None]:
    """trainer.device: `auto` takes cuda:<least busy> when several GPUs are visible (and holds it), else it is
    builders.pick_device's choice; an explicit device (cpu, cuda, cuda:N) is used as given."""
    from experiments.builders import pick_device

    if name == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        claim = claim_device(torch.cuda.device_count())
        return torch.device("cuda", claim.index), claim
    return pick_device(name), None
