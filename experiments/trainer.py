"""One training run: config in, metrics.csv, summary.json, checkpoint and a W&B run out."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from data import DeviceLoader
from experiments import run_files, run_info
from experiments.builders import build_model, build_optimizer, load_data, pick_device, setup_host_memory, setup_precision
from experiments.config_checks import check_config
from experiments.epoch import evaluate, model_norm, train_epoch
from experiments.schedules import build_scheduler
from experiments.wandb_run import start_wandb

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "model_norm", "grad_norm", "lr",
                  "epoch_time_s", "images_per_s"]
# Re-running these would give the same result again, so a re-launched sweep skips them.
DONE_STATUSES = ("finished", "diverged")


def make_loaders(cfg: DictConfig, dataset, device: torch.device) -> tuple[DeviceLoader, DeviceLoader]:
    common = dict(mean=dataset.mean, std=dataset.std, device=device, channels_last=cfg.trainer.channels_last)
    train = DeviceLoader(dataset.train_x, dataset.train_y, batch_size=cfg.trainer.batch_size, train=True,
                         seed=cfg.seed, **common)
    test = DeviceLoader(dataset.test_x, dataset.test_y, batch_size=max(cfg.trainer.batch_size, 500), train=False,
                        **common)
    return train, test


def is_done(summary: dict | None) -> bool:
    return bool(summary) and summary.get("status") in DONE_STATUSES


def show_progress(trainer_cfg: DictConfig) -> bool:
    """trainer.progress: auto shows a bar only when stderr is a terminal."""
    return trainer_cfg.progress is True or (trainer_cfg.progress == "auto" and sys.stderr.isatty())


def log_epoch(run_name: str, epochs: int, row: dict, **log_kwargs) -> None:
    log.info("%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | norm %.2f | %.0f img/s",
             run_name, row["epoch"], epochs, row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"],
             row["model_norm"], row["images_per_s"], **log_kwargs)


def wandb_summary_fields(summary: dict) -> dict:
    """What a finished run adds to its W&B run's summary."""
    return {"status": summary.get("status"), **{f"final/{k}": v for k, v in summary.get("final", {}).items()},
            "best/test_acc": summary.get("best", {}).get("test_acc")}


def is_finite(row: dict) -> bool:
    return all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "model_norm"))


def summarize(cfg: DictConfig, run_dir: Path, run_name: str, history: list[dict], status: str, *,
              wall_time_s: float, device: str, error: str | None = None, diverged_epoch: int | None = None) -> dict:
    finite = [r for r in history if is_finite(r)]
    last = finite[-1] if finite else None
    best = max(finite, key=lambda r: r["test_acc"]) if finite else None
    return {
        "status": status,
        "run_dir": str(run_dir),
        "run_name": run_name,
        "sweep_id": str(cfg.sweep_id),
        "experiment": str(cfg.name),
        "hparams": run_info.hparams(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "final": {k: (last[k] if last else None) for k in ("test_acc", "test_loss", "train_acc", "train_loss",
                                                            "model_norm")},
        "best": {"test_acc": best["test_acc"] if best else None, "epoch": best["epoch"] if best else None},
        "epochs_completed": len(history),
        "diverged_epoch": diverged_epoch,
        "error": error,
        "wall_time_s": wall_time_s,
        "versions": run_info.versions(),
        "git_commit": run_info.git_commit(),
        "device": device,
        "hostname": run_info.host(),
    }


def train_run(cfg: DictConfig, run_dir: str | Path, run_name: str = "default", base_dir: str | None = None) -> dict:
    """Trains one run into run_dir, resuming from its checkpoint; returns the summary it wrote."""
    run_dir = Path(run_dir)
    previous = run_files.read_json(run_dir / "summary.json")
    if is_done(previous):
        log.info("%s: already %s, skipping (delete %s to run it again)", run_name, previous["status"], run_dir)
        return previous
    check_config(cfg)
    run_info.git_commit()  # pin the commit before training starts
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    # Read before anything is written, so a damaged checkpoint never leads to training over good results.
    checkpoint = run_files.load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if checkpoint is None and previous and previous.get("epochs_completed") and (run_dir / "metrics.csv").exists():
        # No checkpoint to resume from (trainer.checkpoint=false, or it was deleted): start over, but keep
        # the earlier epochs' metrics instead of writing over them.
        earlier = run_dir / "metrics.before-restart.csv"
        os.replace(run_dir / "metrics.csv", earlier)
        log.warning("%s: %d epochs done before but no %s to resume from; training from epoch 1 again "
                    "(the earlier metrics are in %s)", run_name, previous["epochs_completed"], ckpt_path.name,
                    earlier.name)

    device = pick_device(cfg.trainer.device)
    setup_host_memory(cfg.trainer, device)
    autocast = setup_precision(cfg.trainer.precision, device)
    dataset = load_data(cfg, base_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(dataset.classes), device)
    optimizer = build_optimizer(cfg.optimizer, model)
    train_loader, test_loader = make_loaders(cfg, dataset, device)
    scheduler = build_scheduler(optimizer, cfg.schedule, len(train_loader), cfg.trainer.epochs)
    forward = torch.compile(model) if cfg.trainer.compile else model

    history: list[dict] = []
    wall_before = 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = list(checkpoint["history"])
        wall_before = checkpoint["wall_time_s"]
        log.info("%s: resuming after epoch %d from %s", run_name, checkpoint["epoch"], ckpt_path)
    run_files.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    progress = show_progress(cfg.trainer)
    start = time.perf_counter()
    status, diverged_epoch = "running", None

    def write(status_now: str, error: str | None = None) -> dict:
        summary = summarize(cfg, run_dir, run_name, history, status_now, wall_time_s=wall_before + time.perf_counter()
                            - start, device=str(device), error=error, diverged_epoch=diverged_epoch)
        run_files.write_json(run_dir / "summary.json", summary)
        return summary

    with start_wandb(cfg, run_dir, run_name) as wandb_run:
        try:
            for epoch in range(len(history) + 1, cfg.trainer.epochs + 1):
                train_loader.set_epoch(epoch)
                row = {"epoch": epoch}
                row.update(train_epoch(forward, train_loader, optimizer, scheduler,
                                       loss_multiplier=float(cfg.loss_multiplier), autocast=autocast,
                                       progress=progress, desc=f"epoch {epoch}/{cfg.trainer.epochs}"))
                row.update(evaluate(forward, test_loader, autocast=autocast))
                row["model_norm"] = model_norm(model).item()
                row["lr"] = optimizer.param_groups[0]["lr"]
                history.append({k: row[k] for k in METRIC_COLUMNS})
                log_epoch(run_name, cfg.trainer.epochs, row)
                run_files.write_csv(run_dir / "metrics.csv", history, METRIC_COLUMNS)
                if wandb_run is not None:
                    wandb_run.log(row, step=epoch)
                if not is_finite(row):
                    status, diverged_epoch = "diverged", epoch
                    log.warning("%s diverged at epoch %d (non-finite loss or weights); stopping this run",
                                run_name, epoch)
                    break
                if cfg.trainer.checkpoint:
                    run_files.save_checkpoint(ckpt_path, {
                        "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history,
                        "wall_time_s": wall_before + time.perf_counter() - start,
                    })
                write("running")
            else:
                status = "finished"
        except KeyboardInterrupt:
            write("interrupted", error="interrupted; run the same command again to resume from the last epoch")
            raise
        summary = write(status)
        if wandb_run is not None:
            wandb_run.summary.update(wandb_summary_fields(summary))
    return summary


def one_line(exc: BaseException) -> str:
    """The exception as the one line a user sees."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


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
