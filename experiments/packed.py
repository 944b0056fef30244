"""Packed training: the grid points of a sweep that share model, data and schedule, trained in one process.

Every member of a pack sees the same augmented batches (one loader) and keeps its own weights,
BatchNorm statistics, optimizer, scheduler and loss multiplier (experiments/packed_models.py).
Each member writes exactly a single run's files into its own run folder (config.yaml,
metrics.csv, summary.json from trainer.summarize, a W&B run); the pack itself keeps one
checkpoint and a pack.json in its pack folder. `launcher=packed` (configs/launcher/packed.yaml)
reaches this from a Hydra sweep.

Init (`packed_init`): "shared" packs only runs with the same seed, so all members start from the
same weights and each sees the data order of its single run. "own" lets seeds differ inside a
pack: each member initialises from its own seed, as its single run would, but the data order is
the pack seed's (the first member's seed), so members with another seed differ from their single
runs in data order only.

Throughput: a member's images_per_s (metrics.csv) is the rate of the shared batches, i.e. that
member's own throughput; the pack's aggregate (that times the models trained) is in pack.json.

W&B: one run per member, logged with its whole history once the member's pack ends (W&B holds
one live run per process at a time); an interrupted pack logs nothing until it is resumed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from experiments import run_files, run_info
from experiments.builders import build_model, build_optimizer, load_data, pick_device, setup_host_memory, setup_precision
from experiments.config_checks import ConfigError, check_config
from experiments.packed_epoch import evaluate_packed, train_packed_epoch
from experiments.packed_models import ROUTES, ModelPack, default_route
from experiments.schedules import build_scheduler
from experiments.trainer import (
    METRIC_COLUMNS,
    is_done,
    is_finite,
    log_epoch,
    make_loaders,
    one_line,
    record_failure,
    show_progress,
    summarize,
    wandb_summary_fields,
)
from experiments.wandb_run import start_wandb

log = logging.getLogger(__name__)

PACKED_INITS = ("shared", "own")
# Config keys a pack's members may differ in; everything else must be equal within a pack.
MEMBER_KEYS = ("optimizer", "loss_multiplier")


@dataclass
class PackMember:
    """One grid point: its resolved config (no hydra node), run folder and run name."""

    cfg: DictConfig
    run_dir: Path
    run_name: str


def check_pack_options(packed_init: str, pack_size: int | None, route: str = "auto") -> None:
    if route != "auto" and route not in ROUTES:
        raise ValueError(f"route must be auto, vmap or loop (got {route!r}); e.g. hydra.launcher.route=auto")
    if packed_init not in PACKED_INITS:
        raise ValueError(f"packed_init must be shared or own (got {packed_init!r}); e.g. "
                         "hydra.launcher.packed_init=shared")
    if pack_size is not None and (isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 1):
        raise ValueError(f"pack_size must be null (whole sweep) or an integer >= 1 (got {pack_size!r}); e.g. "
                         "hydra.launcher.pack_size=12")


def pack_key(cfg: DictConfig, packed_init: str) -> str:
    """What runs must share to be packed together: the config without the per-member keys."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in MEMBER_KEYS + (("seed",) if packed_init == "own" else ()):
        container.pop(key, None)
    return json.dumps(container, sort_keys=True, default=str)


def group_into_packs(keys: list[str], pack_size: int | None) -> list[list[int]]:
    """Indices grouped by equal key (in order of first appearance), each group cut into packs of <= pack_size."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    packs = []
    for indices in groups.values():
        step = pack_size or len(indices)
        packs.extend(indices[i:i + step] for i in range(0, len(indices), step))
    return packs


def pack_name(run_names: list[str]) -> str:
    """A stable folder name for the pack of these runs, so a re-launched sweep finds its checkpoint."""
    return "pack-" + hashlib.sha1("\n".join(run_names).encode()).hexdigest()[:12]


def _members_to_train(members: list[PackMember], summaries: list[dict | None], checkpoint: dict | None,
                      ckpt_path: Path) -> list[int]:
    if checkpoint is None:
        return [k for k, summary in enumerate(summaries) if not is_done(summary)]
    names = [m.run_name for m in members]
    saved = list(checkpoint.get("members", []))
    missing = [name for name in saved if name not in names]
    left_out = [m.run_name for m, s in zip(members, summaries) if not is_done(s) and m.run_name not in saved]
    if missing or left_out:
        raise ValueError(f"pack checkpoint {ckpt_path} was written for another set of runs (it "
                         f"{'holds ' + missing[0] if missing else 'lacks ' + left_out[0]}); move it away to restart "
                         "this pack, or re-launch with the grid and pack_size it was written with")
    return [names.index(name) for name in saved]


def _check_shareable(cfgs: list[DictConfig], packed_init: str) -> None:
    keys = [pack_key(cfg, packed_init) for cfg in cfgs]
    if len(set(keys)) > 1:
        raise ValueError("runs in one pack must share everything but optimizer and loss_multiplier (and seed with "
                         "packed_init=own); group them with experiments.packed.group_into_packs")


class _Member:
    """A trained member's mutable record during the pack."""

    def __init__(self, member: PackMember) -> None:
        self.spec = member
        self.history: list[dict] = []
        self.status = "running"
        self.diverged_epoch: int | None = None
        self.end_wall: float | None = None

    @property
    def extra(self) -> dict:
        # Lets a per-run log handler (the packed launcher's) keep only this member's lines.
        return {"pack_member": str(self.spec.run_dir)}

    def summary(self, status: str, wall: float, device: str, error: str | None = None) -> dict:
        m = self.spec
        return summarize(m.cfg, m.run_dir, m.run_name, self.history, status, wall_time_s=wall, device=device,
                         error=error, diverged_epoch=self.diverged_epoch)


def train_pack(members: list[PackMember], pack_dir: str | Path, *, packed_init: str = "shared", route: str = "auto",
               base_dir: str | None = None) -> list[dict | None]:
    """Trains the members that are not finished or diverged, resuming from the pack checkpoint.

    route: vmap, loop or auto (vmap on CUDA for packs of 4 or more, loop otherwise; see
    experiments/packed_models.py).
    Returns each member's summary (the one already on disk for members that were done, None
    for a member whose config check failed: its summary records the failure).
    """
    check_pack_options(packed_init, None, route)
    pack_dir = Path(pack_dir)
    summaries = [run_files.read_json(m.run_dir / "summary.json") for m in members]
    for m, summary in zip(members, summaries):
        if is_done(summary):
            log.info("%s: already %s, skipping (delete %s to run it again)", m.run_name, summary["status"],
                     m.run_dir, extra={"pack_member": str(m.run_dir)})
    if all(is_done(summary) for summary in summaries):
        return summaries
    ckpt_path = pack_dir / "checkpoint.pt"
    # Read before anything is written, so a damaged checkpoint never leads to training over good results.
    checkpoint = run_files.load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    indices = _members_to_train(members, summaries, checkpoint, ckpt_path)
    if checkpoint is None:
        indices = [k for k in indices if _config_ok(members[k], summaries, k)]
    else:
        for k in indices:
            check_config(members[k].cfg)
    if not indices:
        return summaries
    trained = [_Member(members[k]) for k in indices]
    run_info.git_commit()  # pin the commit before training starts, as train_run does
    _train(trained, pack_dir, ckpt_path, checkpoint, packed_init, route, base_dir)
    for k, member in zip(indices, trained):
        summaries[k] = run_files.read_json(member.spec.run_dir / "summary.json")
    return summaries


def _config_ok(member: PackMember, summaries: list, k: int) -> bool:
    try:
        check_config(member.cfg)
        return True
    except ConfigError as exc:
        message = one_line(exc)
        record_failure(member.cfg, member.run_dir, member.run_name, message)
        log.error("%s failed: %s", member.run_name, message, extra={"pack_member": str(member.run_dir)})
        summaries[k] = None
        return False


def _train(trained: list[_Member], pack_dir: Path, ckpt_path: Path, checkpoint: dict | None, packed_init: str,
           route: str, base_dir: str | None) -> None:
    cfgs = [m.spec.cfg for m in trained]
    _check_shareable(cfgs, packed_init)
    lead = cfgs[0]
    pack_seed = int(lead.seed)
    device = pick_device(lead.trainer.device)
    setup_host_memory(lead.trainer, device)
    autocast = setup_precision(lead.trainer.precision, device)
    if lead.trainer.compile:
        log.warning("trainer.compile is ignored by packed training: packs run eagerly")
    dataset = load_data(lead, base_dir)
    models = []
    for cfg in cfgs:
        # As train_run does; under packed_init=shared every member has the pack seed.
        torch.manual_seed(int(cfg.seed))
        models.append(build_model(cfg, len(dataset.classes), device))
    route = default_route(device, len(trained)) if route == "auto" else route
    pack = ModelPack(models, route=route)
    optimizers = [build_optimizer(cfg.optimizer, model) for cfg, model in zip(cfgs, models)]
    train_loader, test_loader = make_loaders(lead, dataset, device)
    epochs = int(lead.trainer.epochs)
    schedulers = [build_scheduler(opt, cfg.schedule, len(train_loader), epochs) for opt, cfg in zip(optimizers, cfgs)]
    multipliers = [float(cfg.loss_multiplier) for cfg in cfgs]

    first_epoch, wall_before, throughput = 1, 0.0, []
    if checkpoint is not None:
        pack.load_state_dict(checkpoint["model"])
        for i, member in enumerate(trained):
            optimizers[i].load_state_dict(checkpoint["optimizers"][i])
            schedulers[i].load_state_dict(checkpoint["schedulers"][i])
            member.history = list(checkpoint["histories"][i])
            member.status = checkpoint["statuses"][i]
            member.diverged_epoch = checkpoint["diverged_epochs"][i]
            member.end_wall = checkpoint["end_walls"][i]
        first_epoch = checkpoint["epoch"] + 1
        wall_before = checkpoint["wall_time_s"]
        throughput = list(checkpoint["throughput"])
        log.info("pack %s: resuming after epoch %d from %s", pack_dir.name, checkpoint["epoch"], ckpt_path)
    for member in trained:
        run_files.atomic_write_text(member.spec.run_dir / "config.yaml", OmegaConf.to_yaml(member.spec.cfg,
                                                                                           resolve=True))
    info = {"members": [m.spec.run_name for m in trained], "run_dirs": [str(m.spec.run_dir) for m in trained],
            "size": len(trained), "route": route, "packed_init": packed_init, "pack_seed": pack_seed,
            "loader_seed": pack_seed, "init_seeds": [int(c.seed) for c in cfgs], "device": str(device),
            "throughput": throughput}
    run_files.write_json(pack_dir / "pack.json", info)
    log.info("pack %s: training %d runs on %s (route=%s, packed_init=%s); members in %s", pack_dir.name,
             len(trained), device, route, packed_init, pack_dir / "pack.json")

    tr = lead.trainer
    progress = show_progress(tr)
    start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    def write(member: _Member, status: str, error: str | None = None) -> None:
        summary = member.summary(status, member.end_wall if member.end_wall is not None else wall(), str(device),
                                 error)
        run_files.write_json(member.spec.run_dir / "summary.json", summary)

    try:
        for epoch in range(first_epoch, epochs + 1):
            active = [m.status == "running" for m in trained]
            if not any(active):
                break
            train_loader.set_epoch(epoch)
            train_rows = train_packed_epoch(pack, train_loader, optimizers, schedulers, loss_multipliers=multipliers,
                                            active=active, autocast=autocast, progress=progress,
                                            desc=f"pack epoch {epoch}/{epochs}")
            test_rows = evaluate_packed(pack, test_loader, autocast=autocast)
            norms = pack.model_norms().tolist()
            for i, member in enumerate(trained):
                if not active[i]:
                    continue
                row = {"epoch": epoch, **train_rows[i], **test_rows[i], "model_norm": norms[i],
                       "lr": optimizers[i].param_groups[0]["lr"]}
                member.history.append({k: row[k] for k in METRIC_COLUMNS})
                log_epoch(member.spec.run_name, epochs, row, extra=member.extra)
                run_files.write_csv(member.spec.run_dir / "metrics.csv", member.history, METRIC_COLUMNS)
                if not is_finite(row):
                    member.status, member.diverged_epoch, member.end_wall = "diverged", epoch, wall()
                    log.warning("%s diverged at epoch %d (non-finite loss or weights); stopping this run, the "
                                "rest of its pack goes on", member.spec.run_name, epoch, extra=member.extra)
            # images_per_s: the shared batches' rate, which every member's metrics.csv reports as its own.
            images_per_s = train_rows[0]["images_per_s"]
            throughput.append({"epoch": epoch, "epoch_time_s": train_rows[0]["epoch_time_s"],
                               "models_trained": sum(active), "images_per_s": images_per_s,
                               "model_images_per_s": images_per_s * sum(active)})
            run_files.write_json(pack_dir / "pack.json", info)
            if tr.checkpoint:
                run_files.save_checkpoint(ckpt_path, {
                    "epoch": epoch, "model": pack.state_dict(),
                    "optimizers": [opt.state_dict() for opt in optimizers],
                    "schedulers": [sched.state_dict() for sched in schedulers],
                    "histories": [m.history for m in trained], "statuses": [m.status for m in trained],
                    "diverged_epochs": [m.diverged_epoch for m in trained],
                    "end_walls": [m.end_wall for m in trained], "members": info["members"],
                    "packed_init": packed_init, "wall_time_s": wall(), "throughput": throughput,
                })
            for i, member in enumerate(trained):
                if active[i]:
                    write(member, member.status)
    except KeyboardInterrupt:
        for member in trained:
            if member.status == "running":
                write(member, "interrupted", error="interrupted; run the same command again to resume from the "
                                                   "last epoch")
        raise
    for member in trained:
        if member.status == "running":
            member.status, member.end_wall = "finished", wall()
        write(member, member.status)
    _log_to_wandb(trained)


def _log_to_wandb(trained: list[_Member]) -> None:
    """Each member's W&B run with its whole history, one after another (one live W&B run per process)."""
    for member in trained:
        m = member.spec
        summary = run_files.read_json(m.run_dir / "summary.json") or {}
        try:
            with start_wandb(m.cfg, m.run_dir, m.run_name) as wandb_run:
                if wandb_run is None:
                    continue
                for row in member.history:
                    wandb_run.log(row, step=row["epoch"])
                wandb_run.summary.update(wandb_summary_fields(summary))
        except Exception as exc:  # the run's results are on disk; W&B is a copy
            log.warning("%s: W&B logging failed (%s: %s); metrics.csv and summary.json are complete",
                        m.run_name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                        extra=member.extra)
