"""A run's record on disk: the metrics columns, its summary.json, when it counts as done, how failures read."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments import run_files, run_info

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "model_norm", "grad_norm", "lr",
                  "epoch_time_s", "images_per_s"]
# Re-running these would give the same result again, so a re-launched sweep skips them.
DONE_STATUSES = ("finished", "diverged")


def is_done(summary: dict | None) -> bool:
    return bool(summary) and summary.get("status") in DONE_STATUSES


def is_finite(row: dict) -> bool:
    return all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "model_norm"))


def one_line(exc: BaseException) -> str:
    """The exception as the one line a user sees."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def show_progress(trainer_cfg: DictConfig) -> bool:
    """trainer.progress: auto shows a bar only when stderr is a terminal."""
    return trainer_cfg.progress is True or (trainer_cfg.progress == "auto" and sys.stderr.isatty())


def log_epoch(run_name: str, epochs: int, row: dict, **log_kwargs) -> None:
    log.info("%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | norm %.2f | %.0f img/s",
             run_name, row["epoch"], epochs, row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"],
             row["model_norm"], row["images_per_s"], **log_kwargs)


# summary.json's fields that a W&B run's summary repeats, so that collect.py reads a run from W&B as from its folder.
WANDB_SUMMARY_KEYS = ("status", "run_name", "sweep_id", "experiment", "hparams", "epochs_completed", "diverged_epoch",
                      "wall_time_s", "git_commit", "hardware", "written_at", "versions", "error", "data")


def wandb_summary_fields(summary: dict) -> dict:
    """What a run adds to its W&B run's summary when it ends: summary.json's fields, metrics flat for the W&B UI."""
    fields = {key: summary.get(key) for key in WANDB_SUMMARY_KEYS}
    fields.update({f"final/{k}": v for k, v in (summary.get("final") or {}).items()})
    fields.update({f"best/{k}": v for k, v in (summary.get("best") or {}).items()})
    return fields


def summarize(cfg: DictConfig, run_dir: Path, run_name: str, history: list[dict], status: str, *,
              wall_time_s: float, device: str, error: str | None = None, diverged_epoch: int | None = None,
              data: dict | None = None, checkpoint: str | None = None) -> dict:
    """summary.json. data: what the run read ({"fingerprint", "train_images", "test_images"}); checkpoint: the
    file that holds the run's state after its last completed epoch (its own, or its pack's)."""
    finite = [r for r in history if is_finite(r)]
    last = finite[-1] if finite else None
    best = max(finite, key=lambda r: r["test_acc"]) if finite else None
    return {
        "status": status,
        "run_dir": str(run_dir),
        "run_name": run_name,
        "sweep_id": str(cfg.sweep_id),
        "experiment": str(cfg.name),
        "hparams": run_info.hparams(cfg, (data or {}).get("fingerprint")),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "final": {k: (last[k] if last else None) for k in ("test_acc", "test_loss", "train_acc", "train_loss",
                                                            "model_norm")},
        "best": {"test_acc": best["test_acc"] if best else None, "epoch": best["epoch"] if best else None},
        "epochs_completed": len(history),
        "data": data,
        "checkpoint": checkpoint,
        "diverged_epoch": diverged_epoch,
        "error": error,
        "wall_time_s": wall_time_s,
        "versions": run_info.versions(),
        "git_commit": run_info.git_commit(),
        "device": device,
        "hardware": run_info.hardware(device),
        "hostname": run_info.host(),
        "written_at": run_info.utc_now(),
    }


def record_failure(cfg: DictConfig, run_dir: Path, run_name: str, message: str) -> None:
    """Marks the run failed, keeping whatever its summary already recorded."""
    path = run_dir / "summary.json"
    summary = run_files.read_json(path)
    if summary is None:
        try:
            summary = summarize(cfg, run_dir, run_name, [], "failed", wall_time_s=0.0, device="")
        except Exception:  # the config itself may be what failed
            summary = {"run_dir": str(run_dir), "run_name": run_name}
    if is_done(summary):
        return
    summary.update(status="failed", error=message)
    run_files.write_json(path, summary)
