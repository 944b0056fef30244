"""The one training driver: K runs trained together on one device, where a single run is a pack of one.

`train_members` does what every run needs, for each member alike: it builds the models, data and
optimizers from the members' configs, resumes from a checkpoint, trains epoch by epoch
(experiments/epoch.py), writes each member's config.yaml, metrics.csv and summary.json after every
epoch (atomically), logs to W&B, stops a member that diverges while the others go on, and marks the
members interrupted when the process is stopped. It resumes each member from a state in the
single-run formats (experiments/checkpoints.py), wherever it was saved, so any launcher resumes a
run any other launcher began. Where the checkpoint goes and how it is laid out is the caller's
`store`: a single run keeps its own checkpoint.pt in its run folder (experiments/trainer.py), a pack
one checkpoint for all members in its pack folder (experiments/packed.py); both formats are what
they were before this driver existed, and each member's summary.json names the file holding it.

W&B: every member has its own live run (several in one process, wandb's reinit="create_new") and logs
each epoch as it happens, so an interrupted pack leaves each member's history up to its last epoch; the
resumed pack continues the same runs (a run id per run folder, resume="allow").
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig, OmegaConf

from data import DeviceLoader
from experiments import layer_stats, preemption, run_files
from experiments.builders import (
    build_model,
    build_optimizer,
    load_data,
    setup_cudnn,
    setup_host_memory,
    setup_precision,
)
from experiments.checkpoints import MemberState
from experiments.config_checks import check_data_fits, compile_mode
from experiments.device_slots import training_device
from experiments.epoch import TrainStep, evaluate, train_epoch
from experiments.layer_stats import LayerStats
from experiments.pack_optimizer import PackOptimizer
from experiments.packed_models import ModelPack
from experiments.route_table import auto_route
from experiments.run_identity import cached_fingerprint
from experiments.run_record import (
    METRIC_COLUMNS,
    is_finite,
    log_epoch,
    one_line,
    show_progress,
    summarize,
    wandb_summary_fields,
)
from experiments.wandb_run import start_wandb

log = logging.getLogger(__name__)


@dataclass
class PackMember:
    """One grid point: its resolved config (no hydra node), run folder and run name."""

    cfg: DictConfig
    run_dir: Path
    run_name: str


class MemberRecord:
    """A trained member's history and status while its pack trains."""

    def __init__(self, member: PackMember) -> None:
        self.spec = member
        self.history: list[dict] = []
        self.status = "running"
        self.diverged_epoch: int | None = None
        self.end_wall: float | None = None
        self.checkpoint: Path | None = None  # the file that holds this member after its last epoch
        self.magnitudes: list[dict] = []  # trainer.magnitude_stats_every: rows of magnitudes.csv, step_sizes.csv
        self.step_sizes: list[dict] = []

    @property
    def extra(self) -> dict:
        # Lets a per-run log handler (the packed launcher's) keep only this member's lines.
        return {"pack_member": str(self.spec.run_dir)}

    def summary(self, status: str, wall: float, device: str, error: str | None = None, data: dict | None = None,
                checkpoint: str | None = None) -> dict:
        m = self.spec
        return summarize(m.cfg, m.run_dir, m.run_name, self.history, status, wall_time_s=wall, device=device,
                         error=error, diverged_epoch=self.diverged_epoch, data=data, checkpoint=checkpoint)


class Store(Protocol):
    """Where a training keeps its checkpoint, and what else it writes beside the members' own files."""

    path: Path
    label: str  # how log lines name the training

    def save(self, run: "PackRun", epoch: int) -> None: ...

    def on_start(self, run: "PackRun") -> None: ...

    def on_epoch(self, run: "PackRun") -> None:
        """After an epoch's training, before its checkpoint."""

    def after_epoch(self, run: "PackRun") -> None:
        """After the epoch's checkpoint and the members' summaries that name it."""


def make_loaders(cfg: DictConfig, dataset, device: torch.device, *, pad_eval: bool = False):
    check_data_fits(cfg, dataset.train_y.numel())
    common = dict(mean=dataset.mean, std=dataset.std, device=device, channels_last=cfg.trainer.channels_last)
    train = DeviceLoader(dataset.train_x, dataset.train_y, batch_size=cfg.trainer.batch_size, train=True,
                         seed=cfg.seed, **common)
    test = DeviceLoader(dataset.test_x, dataset.test_y, batch_size=max(cfg.trainer.batch_size, 500), train=False,
                        pad_last=pad_eval, **common)
    return train, test


def fusion_order(cfgs: list[DictConfig]) -> list[int]:
    """Member indices with equal optimizer settings (all but lr and weight decay) next to each other, in order of
    first appearance: such neighbours step as one fused update (experiments/pack_optimizer.py)."""
    keys = []
    for cfg in cfgs:
        opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
        for key in ("lr", "weight_decay", "exclude_norm_and_bias"):
            opt.pop(key, None)
        keys.append(json.dumps(opt, sort_keys=True, default=str))
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    return sorted(range(len(cfgs)), key=lambda i: first[keys[i]])


class PackRun:
    """What one training of a pack is made of: members, models, optimizer, data, the step; a store's view."""

    def __init__(self, members: list[PackMember], *, route: str, base_dir: str | None) -> None:
        self.members = [MemberRecord(m) for m in members]
        cfgs = [m.cfg for m in members]
        lead = cfgs[0]
        self.lead = lead
        self.device, self.device_claim = training_device(lead.trainer.device)
        if self.device_claim is not None:
            torch.cuda.set_device(self.device)  # compiled graphs and cuDNN's handles go to this GPU too
            log.info("%s on %s, the least busy of %d visible GPUs", "pack" if len(members) > 1 else "run",
                     self.device, torch.cuda.device_count())
        setup_host_memory(lead.trainer, self.device)
        setup_cudnn(lead.trainer, self.device)
        self.autocast = setup_precision(lead.trainer.precision, self.device)
        dataset = load_data(lead, base_dir)
        models = []
        for cfg in cfgs:
            torch.manual_seed(int(cfg.seed))  # under packed_init=shared every member has the pack seed
            models.append(build_model(cfg, len(dataset.classes), self.device))
        self.compile = compile_mode(lead.trainer)
        self.route, self.route_reason = route, "asked for"
        if route == "auto":
            self.route, self.route_reason = auto_route(self.device, len(models), self.compile)
            if len(models) > 1:
                log.info("route=auto: %s, %s", self.route, self.route_reason)
        self.pack = ModelPack(models, route=self.route)
        optimizers = [build_optimizer(cfg.optimizer, model) for cfg, model in zip(cfgs, models)]
        self.train_loader, self.test_loader = make_loaders(lead, dataset, self.device, pad_eval=self.compile is not None)
        self.epochs = int(lead.trainer.epochs)
        self.optimizer = PackOptimizer(self.pack, optimizers, lead.schedule, len(self.train_loader), self.epochs)
        self.step = TrainStep(self.pack, self.optimizer, [float(cfg.loss_multiplier) for cfg in cfgs], self.autocast)
        every = int(lead.trainer.get("magnitude_stats_every") or 0)
        self.stats = LayerStats(self.pack, every) if every else None
        if self.compile is not None:
            self.step.compile(self.compile)
        self.data = {"fingerprint": cached_fingerprint(lead, base_dir, dataset), "train_images": len(dataset.train_y),
                     "test_images": len(dataset.test_y)}
        self.checkpointing = bool(lead.trainer.checkpoint)
        self.throughput: list[dict] = []
        self.wall_before = 0.0
        self._start = time.perf_counter()

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self._start

    def write_summary(self, member: MemberRecord, status: str, error: str | None = None) -> dict:
        summary = member.summary(status, member.end_wall if member.end_wall is not None else self.wall(),
                                 str(self.device), error, self.data, self.checkpoint_of(member))
        run_files.write_json(member.spec.run_dir / "summary.json", summary)
        return summary

    def checkpoint_of(self, member: MemberRecord) -> str | None:
        """The checkpoint file holding the member after its last epoch, relative to its run folder."""
        if member.checkpoint is None:
            return None
        return os.path.relpath(member.checkpoint, member.spec.run_dir)

    def restore(self, states: list[MemberState]) -> int:
        """Loads every member's state (all after the same epoch); returns that epoch."""
        running = [int(s.scheduler["last_epoch"]) for s in states if s.status == "running"]
        self.optimizer.set_steps(max(running, default=0))
        for i, (member, state) in enumerate(zip(self.members, states)):
            try:
                self.pack.members[i].load_state_dict(state.model)
            except (RuntimeError, KeyError) as exc:
                raise run_files.CheckpointError(
                    f"checkpoint {state.source} holds another model for {member.spec.run_name} "
                    f"({type(exc).__name__}); move it away to restart that run") from None
            self.optimizer.load_member_state_dict(i, state.optimizer, state.scheduler,
                                                  active=state.status == "running", where=str(state.source))
            member.history, member.status = list(state.history), state.status
            member.diverged_epoch, member.end_wall = state.diverged_epoch, state.end_wall
            member.checkpoint = state.source  # until this training saves its own
        self.wall_before = max(s.wall_time_s for s in states)
        return states[0].epoch


def _keep_earlier_metrics(member: PackMember, store_path: Path) -> None:
    """No checkpoint to resume from (trainer.checkpoint=false, or it was deleted): the member starts over, but
    the epochs it had done keep their metrics in metrics.before-restart.csv instead of being written over."""
    previous = run_files.read_json(member.run_dir / "summary.json")
    if previous and previous.get("epochs_completed") and (member.run_dir / "metrics.csv").exists():
        earlier = member.run_dir / "metrics.before-restart.csv"
        os.replace(member.run_dir / "metrics.csv", earlier)
        log.warning("%s: %d epochs done before but no %s to resume from; training from epoch 1 again "
                    "(the earlier metrics are in %s)", member.run_name, previous["epochs_completed"], store_path.name,
                    earlier.name, extra={"pack_member": str(member.run_dir)})


def train_members(members: list[PackMember], store: Store, states: list[MemberState] | None = None, *,
                  route: str = "auto", base_dir: str | None = None, heartbeat=None) -> None:
    """Trains `members` (configs already checked, all sharing model, data, trainer and schedule) from their
    states (read by the caller before anything was written; all after the same epoch) or from scratch; every
    member's files say how it ended. heartbeat(), if given, is called after every epoch (the run locks)."""
    if states is None:
        for member in members:
            _keep_earlier_metrics(member, store.path)
    elif len({s.epoch for s in states}) != 1 or len(states) != len(members):
        raise ValueError("a pack resumes only members that have all done the same number of epochs")
    # Equal optimizer settings side by side, so that they step as one.
    order = fusion_order([m.cfg for m in members])
    members = [members[i] for i in order]
    states = [states[i] for i in order] if states is not None else None
    run = PackRun(members, route=route, base_dir=base_dir)
    try:
        _train(run, store, states, heartbeat)
    finally:
        if run.device_claim is not None:
            run.device_claim.release()


def _train(run: PackRun, store: Store, states: list[MemberState] | None, heartbeat) -> None:
    trained = run.members
    first_epoch = 1
    if states is not None:
        first_epoch = run.restore(states) + 1
        sources = sorted({str(s.source) for s in states})
        log.info("%s: resuming after epoch %d from %s", store.label, first_epoch - 1, ", ".join(sources))
    if run.stats is not None:
        steps_per_epoch = len(run.train_loader)
        run.stats.steps_seen = (first_epoch - 1) * steps_per_epoch  # the same steps are recorded when resumed
        for member in trained:
            member.magnitudes = layer_stats.read_rows(member.spec.run_dir / "magnitudes.csv", first_epoch)
            member.step_sizes = layer_stats.read_rows(member.spec.run_dir / "step_sizes.csv", first_epoch)
    for member in trained:
        run_files.atomic_write_text(member.spec.run_dir / "config.yaml", OmegaConf.to_yaml(member.spec.cfg,
                                                                                          resolve=True))
    store.on_start(run)

    lead, epochs = run.lead, run.epochs
    progress = show_progress(lead.trainer)
    live = len(trained) == 1
    with ExitStack() as wandb_stack:
        wandb_runs = [_open_wandb(wandb_stack, member) for member in trained]
        try:
            for epoch in range(first_epoch, epochs + 1):
                active = [m.status == "running" for m in trained]
                if not any(active):
                    break
                run.step.set_active(active)
                run.train_loader.set_epoch(epoch)
                desc = f"epoch {epoch}/{epochs}" if live else f"pack epoch {epoch}/{epochs}"
                if run.stats is not None:
                    run.stats.reset()
                train_rows = train_epoch(run.step, run.train_loader, progress=progress, desc=desc, stats=run.stats)
                test_rows = evaluate(run.pack, run.test_loader, autocast=run.autocast)
                # A Ctrl-C from here on takes effect once the epoch is recorded whole: files, checkpoint, W&B.
                with preemption.interrupts_held():
                    norms = run.pack.model_norms().tolist()
                    stats_rows = run.stats.member_rows(epoch) if run.stats is not None else None
                    for i, member in enumerate(trained):
                        if not active[i]:
                            continue
                        row = {"epoch": epoch, **train_rows[i], **test_rows[i], "model_norm": norms[i],
                               "lr": run.optimizer.lr(i)}
                        member.history.append({k: row[k] for k in METRIC_COLUMNS})
                        log_epoch(member.spec.run_name, epochs, row, extra=member.extra)
                        run_files.write_csv(member.spec.run_dir / "metrics.csv", member.history, METRIC_COLUMNS)
                        logged = row
                        if stats_rows is not None:
                            magnitudes, step_sizes = stats_rows[i]
                            member.magnitudes += magnitudes
                            member.step_sizes += step_sizes
                            run_files.write_csv(member.spec.run_dir / "magnitudes.csv", member.magnitudes,
                                                   layer_stats.MAGNITUDE_COLUMNS)
                            run_files.write_csv(member.spec.run_dir / "step_sizes.csv", member.step_sizes,
                                                   layer_stats.STEP_SIZE_COLUMNS)
                            if wandb_runs[i] is not None:
                                logged = {**row, **layer_stats.wandb_histograms(magnitudes),
                                          **{f"relative_update/{r['layer']}": r["relative_update"] for r in step_sizes}}
                        if wandb_runs[i] is not None:
                            wandb_runs[i].log(logged, step=epoch)
                        if not is_finite(row):
                            member.status, member.diverged_epoch, member.end_wall = "diverged", epoch, run.wall()
                            log.warning("%s diverged at epoch %d (non-finite loss or weights); stopping this run%s",
                                        member.spec.run_name, epoch, "" if live else ", the rest of its pack goes on",
                                        extra=member.extra)
                    # images_per_s: the shared batches' rate, which every member's metrics.csv reports as its own.
                    images_per_s = train_rows[0]["images_per_s"]
                    run.throughput.append({"epoch": epoch, "epoch_time_s": train_rows[0]["epoch_time_s"],
                                           "models_trained": sum(active), "images_per_s": images_per_s,
                                           "model_images_per_s": images_per_s * sum(active)})
                    store.on_epoch(run)
                    # Nothing is left to resume once every member has stopped.
                    if run.checkpointing and any(m.status == "running" for m in trained):
                        store.save(run, epoch)
                        for member in trained:
                            member.checkpoint = store.path
                    for i, member in enumerate(trained):
                        if active[i]:
                            run.write_summary(member, member.status)
                    store.after_epoch(run)
                    if heartbeat is not None:
                        heartbeat()
        except KeyboardInterrupt:
            for member in trained:
                if member.status == "running":
                    run.write_summary(member, "interrupted",
                                      error="interrupted; run the same command again to resume from the last epoch")
            raise
        for member, wandb_run in zip(trained, wandb_runs):
            if member.status == "running":
                member.status, member.end_wall = "finished", run.wall()
            summary = run.write_summary(member, member.status)
            if wandb_run is not None:
                wandb_run.summary.update(wandb_summary_fields(summary))


def _open_wandb(stack: ExitStack, member: MemberRecord):
    """The member's own live W&B run (several at once in one process), finished when `stack` closes; None with
    logger=none or when W&B cannot start (the run's results are on disk, W&B is a copy)."""
    m = member.spec
    try:
        return stack.enter_context(start_wandb(m.cfg, m.run_dir, m.run_name))
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: W&B could not start (%s); training goes on, metrics.csv and summary.json are complete",
                    m.run_name, one_line(exc), extra=member.extra)
        return None


def member_state_dicts(run: PackRun, k: int) -> dict:
    """Member k's model, optimizer and scheduler state, each in the format its single run's checkpoint has."""
    model = {name: tensor.detach().clone() for name, tensor in run.pack.members[k].state_dict().items()}
    optimizer, scheduler = run.optimizer.member_state_dict(k)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}

