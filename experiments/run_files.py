"""Atomic writes of a run's files: nothing that was written is ever left half-written."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from data.integrity import torch_file_damage


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes data to a temporary file beside path, then renames it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's files are owner-only; a plain open() would not be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object at path, or None when it is missing, unreadable or not an object: every record this repo
    writes is one, so any other JSON is a damaged record, as a truncated one is."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Loads with weights_only; a damaged file (cut off, or bytes changed: data.integrity) raises CheckpointError
    instead of a silent restart or a resume from wrong weights."""
    damage, state = torch_file_damage(path), None
    if damage is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            damage = type(e).__name__
    if damage is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({damage}); move it away to restart this run "
            "from scratch, or restore it from a backup"
        ) from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint of this trainer; move it away to restart this run"
        )
    return state
