"""Decode cache: a dataset's decoded tensors in one torch.save file, validated by a source fingerprint."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

import torch

from data.integrity import torch_file_damage

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "decay-no-more")
_TENSOR_KEYS = ("train_x", "train_y", "test_x", "test_y")


class CacheWarning(UserWarning):
    """The decode cache was unusable (corrupt, stale, unwritable) and is being ignored or rebuilt."""


def resolve_cache_dir(cache_dir: str | None) -> str:
    """The cache_dir argument, else $DNM_CACHE_DIR, else ~/.cache/decay-no-more."""
    return os.path.expanduser(cache_dir or os.environ.get("DNM_CACHE_DIR") or DEFAULT_CACHE_DIR)


def cache_path(cache_dir: str, name: str, layout: str, source: str) -> str:
    source_id = hashlib.sha1(os.path.realpath(source).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{name}-{layout}-{source_id}-v{CACHE_VERSION}.pt")


def load_cache(path: str, fingerprint: dict) -> dict | None:
    """The cached record if it exists, is readable and matches fingerprint; otherwise warn (one line) and None."""
    if not os.path.exists(path):
        return None
    reason = torch_file_damage(path)
    if reason is None:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if reason is not None:
        warnings.warn(f"decode cache {path} is unreadable ({reason}); rebuilding it", CacheWarning, stacklevel=3)
        return None
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION or not all(
        isinstance(record.get(k), torch.Tensor) for k in _TENSOR_KEYS
    ):
        warnings.warn(f"decode cache {path} has an unknown format; rebuilding it", CacheWarning, stacklevel=3)
        return None
    if record.get("fingerprint") != fingerprint:
        warnings.warn(f"decode cache {path} is stale (source files changed); rebuilding it", CacheWarning, stacklevel=3)
        return None
    return record


def save_cache(path: str, fingerprint: dict, tensors: dict[str, torch.Tensor], classes: list[str]) -> None:
    """Write atomically (temp file + os.replace); an unwritable cache dir only warns."""
    record = {"version": CACHE_VERSION, "fingerprint": fingerprint, "classes": list(classes)}
    record.update({k: tensors[k] for k in _TENSOR_KEYS})
    directory = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache may be shared between users
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"cannot write decode cache {path} ({exc.strerror or exc}); continuing without it",
                      CacheWarning, stacklevel=3)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
