"""What makes two runs the same run: every config key that changes what a run computes, and the data it read.

One list says which keys do *not* change the result: the keys that configs/train.yaml keeps out of
run-folder names (hydra.job.config.override_dirname.exclude_keys: the launcher, the logger, where
outputs and caches go, the device, compiling, progress bars, checkpointing). Everything else in a
run's resolved config is its identity, except `data.root`: a path says where the data lies, not
what it is, so the data's own fingerprint (a hash of the images and labels trained and tested on)
stands in for it. Collect and the figures use the identity to never average different runs as
seeds of one; the trainer uses it to never skip or resume a run folder whose run was different.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
# Config group choices (`experiment=...`, `launcher=...`) that are no keys of a resolved config.
_GROUPS_ONLY = ("experiment", "launcher")
DATA_FINGERPRINT = "data.fingerprint"


@functools.cache
def non_result_keys() -> tuple[str, ...]:
    """Keys (or key prefixes) of a resolved config that do not change what a run computes."""
    cfg = OmegaConf.load(REPO_ROOT / "configs" / "train.yaml")
    keys = OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys")
    return tuple(str(k) for k in keys if str(k) not in _GROUPS_ONLY)


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in non_result_keys())


def flatten(container: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (as JSON lists)."""
    flat: dict[str, Any] = {}
    for key, value in container.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def result_keys(config: dict, data_fingerprint: str | None = None) -> dict[str, Any]:
    """The run's identity: its resolved config (a plain dict), flat, without the keys that change nothing,
    and with data.root replaced by the data's fingerprint when it is known."""
    identity = {k: v for k, v in flatten(config).items() if not _excluded(k)}
    if data_fingerprint is not None:
        identity[DATA_FINGERPRINT] = data_fingerprint
    return identity


def differences(stored: dict[str, Any], current: dict[str, Any], *, limit: int = 3) -> list[str]:
    """'key: old -> new' for every key whose value differs (a key missing on one side counts)."""
    diffs = [f"{k}: {_show(stored.get(k, '<unset>'))} -> {_show(current.get(k, '<unset>'))}"
             for k in sorted(set(stored) | set(current)) if stored.get(k, "<unset>") != current.get(k, "<unset>")]
    return diffs if len(diffs) <= limit else diffs[:limit] + [f"and {len(diffs) - limit} more"]


def same_value(a: Any, b: Any) -> bool:
    """Whether two recorded values of one setting are the same: numbers within float rounding (1e-3 read back
    as 0.001), None and NaN (an empty CSV cell) alike, anything else equal."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9) or a == b
    return a == b


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def data_fingerprint(dataset) -> str:
    """A hash of exactly the images and labels a run trains and tests on (after subsets and splits)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y):
        t = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def config_id(identity: dict[str, Any], without: tuple[str, ...] = ("seed",)) -> str:
    """A short hash of an identity without some keys (default: the seed): runs that may share a figure cell."""
    kept = {k: v for k, v in identity.items() if k not in without}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RunMismatch(ValueError):
    """A run folder holds a run of other settings than the one asked for."""


_FINGERPRINTS: dict[str, str] = {}


def cached_fingerprint(cfg, base_dir: str | None, dataset=None) -> str:
    """The fingerprint of the data `cfg.data` names, computed once per process (loading it unless given)."""
    key = json.dumps({"data": OmegaConf.to_container(cfg.data, resolve=True), "base_dir": base_dir}, sort_keys=True,
                     default=str)
    if key not in _FINGERPRINTS:
        if dataset is None:
            from experiments.builders import load_data

            dataset = load_data(cfg, base_dir)
        _FINGERPRINTS[key] = data_fingerprint(dataset)
    return _FINGERPRINTS[key]


def worth_checking(previous: dict | None) -> bool:
    """Whether a run folder's summary records something a launch would reuse: a done run, or epochs to resume."""
    return bool(previous) and (previous.get("status") in ("finished", "diverged")
                               or bool(previous.get("epochs_completed")))


def check_same_run(run_dir: Path, previous: dict, config: dict, fingerprint: Callable[[], str]) -> None:
    """Raises RunMismatch when the run recorded in run_dir (its summary.json) was made with other settings.

    `config`: the resolved config asked for now; `fingerprint()`: its data's fingerprint, asked only when
    the data lies elsewhere than before: the same files moved are the same data, other files are not.
    """
    stored_config = previous.get("config")
    if not isinstance(stored_config, dict):
        return  # a summary from a failure before the config was known: nothing to reuse
    diffs = differences(result_keys(stored_config), result_keys(config))
    old_root, new_root = (stored_config.get("data") or {}).get("root"), (config.get("data") or {}).get("root")
    if not diffs and old_root != new_root:
        stored_fp = (previous.get("data") or {}).get("fingerprint")
        if stored_fp is None:
            diffs = [f"data.root: {old_root} -> {new_root}"]
        elif stored_fp != (now := fingerprint()):
            diffs = [f"data: {old_root} -> {new_root} holds other images (fingerprint {stored_fp} -> {now})"]
    if diffs:
        raise RunMismatch(f"{run_dir} holds a {previous.get('status')} run of other settings ({'; '.join(diffs)}); "
                          "give this sweep another sweep_id (e.g. sweep_id=NEW_NAME), a single run another folder "
                          "(hydra.run.dir=PATH), or move that folder away")
