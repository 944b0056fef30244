"""A W&B run per training run: online with an API key, offline otherwise or when online fails; never a failure."""
from __future__ import annotations

import hashlib
import logging
import netrc
import os
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments import run_info
from experiments.run_record import one_line

log = logging.getLogger(__name__)

# Set once an online start has failed in this process. The later runs of a sweep or a pack then go
# offline at once instead of each waiting out W&B's init timeout (90 s by default), e.g. on cluster
# nodes that have an API key but no route to the W&B server.
_online_failed_before = False


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg_mode: str | None) -> str:
    """WANDB_MODE wins, then logger.mode, then online only when a key is configured."""
    return os.environ.get("WANDB_MODE") or cfg_mode or ("online" if _has_api_key() else "offline")


def start_wandb(cfg: DictConfig, run_dir: Path, run_name: str):
    """A context manager yielding the W&B run, or None when logger=none."""
    if cfg.logger.name != "wandb":
        return nullcontext(None)
    import wandb

    global _online_failed_before
    mode = wandb_mode(cfg.logger.mode)
    if mode == "online" and _online_failed_before:
        log.warning("W&B online init already failed in this process; logging offline in %s, `wandb sync` "
                    "uploads it later", run_dir / "wandb")
        mode = "offline"
    # A stable id per run folder lets a resumed run continue the same W&B run.
    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    log.info("W&B run %s (%s mode) in %s", run_id, mode, run_dir / "wandb")
    settings = dict(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), id=run_id,
                    resume="allow", group=str(cfg.sweep_id), name=run_name, tags=[str(cfg.name)],
                    config={**OmegaConf.to_container(cfg, resolve=True), "hparams": run_info.hparams(cfg)},
                    reinit="create_new")  # a pack keeps one live run per member
    try:
        return wandb.init(mode=mode, **settings)
    except Exception as exc:  # noqa: BLE001 - no network, a bad key, a server down: the training must go on
        if mode != "online":
            raise
        _online_failed_before = True
        log.warning("W&B online init failed (%s); logging offline in %s instead, `wandb sync` uploads it later",
                    one_line(exc), run_dir / "wandb")
        wandb.teardown()  # the failed online run still holds its id in the W&B service
        return wandb.init(mode="offline", **settings)
