"""Packed training: the grid points of a sweep that share model, data and schedule, trained in one process.

Every member of a pack sees the same augmented batches (one loader) and keeps its own weights,
BatchNorm statistics, optimizer state, schedule and loss multiplier (experiments/packed_models.py,
experiments/pack_optimizer.py). The pack trains through the one driver that single runs use
(experiments/engine.py), so each member writes exactly a single run's files into its own run
folder (config.yaml, metrics.csv, summary.json, a W&B run); the pack itself keeps one checkpoint
and a pack.json in its pack folder. `launcher=packed` (configs/launcher/packed.yaml) reaches this
from a Hydra sweep.

Init (`packed_init`): "shared" packs only runs with the same seed, so all members start from the
same weights and each sees the data order of its single run. "own" lets seeds differ inside a
pack: each member initialises from its own seed, as its single run would, but the data order is
the pack seed's (the first member's seed), so members with another seed differ from their single
runs in data order only.

Throughput: a member's images_per_s (metrics.csv) is the rate of the shared batches, i.e. that
member's own throughput; the pack's aggregate (that times the models trained) is in pack.json.

W&B: one live run per member (experiments/engine.py), each epoch logged as it happens; a resumed pack
continues the same runs.

Member order: a new pack puts members with equal optimizer settings (all but lr and weight decay)
next to each other, so that they step as one fused update; pack.json and the checkpoint list the
members in that order.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments import run_files, run_info
from experiments.checkpoints import CheckpointCache, resume_state
from experiments.config_checks import ConfigError, check_config
from experiments.engine import PackMember, PackRun, member_state_dicts, train_members
from experiments.packed_models import ROUTES
from experiments.run_identity import RunMismatch, cached_fingerprint, check_same_run, worth_checking
from experiments.run_lock import RunLock, RunLocked
from experiments.run_record import is_done, one_line, record_failure

log = logging.getLogger(__name__)

PACKED_INITS = ("shared", "own")
# Config keys a pack's members may differ in; everything else must be equal within a pack.
MEMBER_KEYS = ("optimizer", "loss_multiplier")

__all__ = ["PackMember", "train_pack", "group_into_packs", "pack_key", "pack_name", "check_pack_options"]


def check_pack_options(packed_init: str, pack_size: int | None, route: str = "auto") -> None:
    if route != "auto" and route not in ROUTES:
        raise ValueError(f"route must be auto, {', '.join(ROUTES)} (got {route!r}); e.g. hydra.launcher.route=auto")
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


def _check_shareable(cfgs: list[DictConfig], packed_init: str) -> None:
    keys = [pack_key(cfg, packed_init) for cfg in cfgs]
    if len(set(keys)) > 1:
        raise ValueError("runs in one pack must share everything but optimizer and loss_multiplier (and seed with "
                         "packed_init=own); group them with experiments.packed.group_into_packs")


class PackStore:
    """The pack folder: checkpoint.pt for all members, and pack.json (members, route, throughput)."""

    def __init__(self, pack_dir: Path, packed_init: str) -> None:
        self.pack_dir = pack_dir
        self.path = pack_dir / "checkpoint.pt"
        self.label = f"pack {pack_dir.name}"
        self.packed_init = packed_init

    def save(self, run: PackRun, epoch: int) -> None:
        states = [member_state_dicts(run, i) for i in range(len(run.members))]
        run_files.save_checkpoint(self.path, {
            "epoch": epoch, "model": run.pack.state_dict(),
            "optimizers": [s["optimizer"] for s in states], "schedulers": [s["scheduler"] for s in states],
            "histories": [m.history for m in run.members], "statuses": [m.status for m in run.members],
            "diverged_epochs": [m.diverged_epoch for m in run.members],
            "end_walls": [m.end_wall for m in run.members], "members": [m.spec.run_name for m in run.members],
            "packed_init": self.packed_init, "wall_time_s": run.wall(), "throughput": run.throughput,
        })

    def _info(self, run: PackRun) -> dict:
        cfgs = [m.spec.cfg for m in run.members]
        return {"members": [m.spec.run_name for m in run.members], "run_dirs": [str(m.spec.run_dir) for m in run.members],
                "size": len(run.members), "route": run.route, "route_reason": run.route_reason,
                "compile": run.compile or False, "precision": str(run.lead.trainer.precision),
                "packed_init": self.packed_init, "pack_seed": int(cfgs[0].seed), "loader_seed": int(cfgs[0].seed),
                "init_seeds": [int(c.seed) for c in cfgs], "device": str(run.device), "throughput": run.throughput}

    def on_start(self, run: PackRun) -> None:
        if run.members[0].history:  # resumed: the epochs before keep their throughput records
            earlier = (run_files.read_json(self.pack_dir / "pack.json") or {}).get("throughput", [])
            run.throughput = [t for t in earlier if t.get("epoch", 0) <= len(run.members[0].history)]
        run_files.write_json(self.pack_dir / "pack.json", self._info(run))
        log.info("pack %s: training %d runs on %s (route=%s, packed_init=%s, compile=%s); members in %s",
                 self.pack_dir.name, len(run.members), run.device, run.route, self.packed_init, run.compile or False,
                 self.pack_dir / "pack.json")

    def on_epoch(self, run: PackRun) -> None:
        run_files.write_json(self.pack_dir / "pack.json", self._info(run))

    def after_epoch(self, run: PackRun) -> None:
        # A member resumed from its own single-run checkpoint is held by the pack's now (its summary says so):
        # the old file would only mislead.
        for member in run.members:
            own = member.spec.run_dir / "checkpoint.pt"
            if member.checkpoint == self.path and own.exists():
                own.unlink()


def train_pack(members: list[PackMember], pack_dir: str | Path, *, packed_init: str = "shared", route: str = "auto",
               base_dir: str | None = None) -> list[dict | None]:
    """Trains the members that are not finished or diverged, each resuming where it stopped.

    A member resumes from whichever checkpoint holds it at the epoch its summary.json records: this pack's,
    another pack's, or its own single-run checkpoint.pt (a sweep relaunched under another launcher);
    members that have done different numbers of epochs train as separate packs, one after another.
    route: auto (the route measured fastest for this device type, pack size and compile mode:
    experiments/route_table.py), loop, streams, vmap or grouped (experiments/packed_models.py).
    Returns each member's summary: the one already on disk for members that were done; None for a member
    whose config check failed (its summary records the failure); {"status": "refused", "error": ...} for a
    run folder that holds a run of other settings, which is left as it is.
    """
    check_pack_options(packed_init, None, route)
    pack_dir = Path(pack_dir)
    summaries = [run_files.read_json(m.run_dir / "summary.json") for m in members]
    candidates = []
    for k, (m, summary) in enumerate(zip(members, summaries)):
        extra = {"pack_member": str(m.run_dir)}
        if worth_checking(summary):
            try:
                check_same_run(m.run_dir, summary, OmegaConf.to_container(m.cfg, resolve=True),
                               lambda cfg=m.cfg: cached_fingerprint(cfg, base_dir))
            except RunMismatch as exc:
                log.error("%s failed: %s", m.run_name, one_line(exc), extra=extra)
                summaries[k] = {"status": "refused", "error": one_line(exc)}  # its folder stays as it is
                continue
        if is_done(summary):
            log.info("%s: already %s, skipping (delete %s to run it again)", m.run_name, summary["status"],
                     m.run_dir, extra=extra)
        else:
            candidates.append(k)
    # Read before anything is written (a lock file too), so a damaged checkpoint never leads to training over good
    # results; read again below, once this process holds the runs.
    _resume_states(members, summaries, candidates, pack_dir, CheckpointCache())
    locks = {}
    for k in list(candidates):
        lock = RunLock(members[k].run_dir)
        try:
            lock.acquire()
        except RunLocked as exc:  # another launch of this sweep trains it: not a failure of this one
            log.warning("%s: %s", members[k].run_name, exc, extra={"pack_member": str(members[k].run_dir)})
            candidates.remove(k)
            continue
        locks[k] = lock
    try:
        return _train_candidates(members, summaries, candidates, locks, pack_dir, packed_init, route, base_dir)
    finally:
        for lock in locks.values():
            lock.release()


def _train_candidates(members, summaries, candidates, locks, pack_dir, packed_init, route, base_dir):
    for k in list(candidates):  # it may have moved on while another process held it
        summaries[k] = run_files.read_json(members[k].run_dir / "summary.json")
        if is_done(summaries[k]):
            candidates.remove(k)
    if not candidates:
        return summaries
    states = _resume_states(members, summaries, candidates, pack_dir, CheckpointCache())
    ready = [k for k in candidates if _config_ok(members[k], summaries, k)]
    by_epoch: dict[int, list[int]] = {}
    for k in ready:
        by_epoch.setdefault(states[k].epoch if states[k] else 0, []).append(k)
    run_info.git_commit()  # pin the commit before training starts, as train_run does
    for epoch, ks in sorted(by_epoch.items()):
        group = [members[k] for k in ks]
        _check_shareable([m.cfg for m in group], packed_init)
        where = pack_dir if len(by_epoch) == 1 else pack_dir.parent / pack_name([m.run_name for m in group])
        if len(by_epoch) > 1:
            log.info("pack %s: %d of its runs have done %d epochs; they train as pack %s", pack_dir.name, len(group),
                     epoch, where.name)
        train_members(group, PackStore(where, packed_init), [states[k] for k in ks] if epoch else None, route=route,
                      base_dir=base_dir, heartbeat=lambda: [lock.touch() for lock in locks.values()])
    for k in ready:
        summaries[k] = run_files.read_json(members[k].run_dir / "summary.json")
    return summaries


def _resume_states(members, summaries, candidates, pack_dir: Path, cache: CheckpointCache) -> dict:
    """Each candidate's resume state (experiments/checkpoints.py): from the checkpoint its summary names, its own
    single-run checkpoint, or this pack's."""
    return {k: resume_state(members[k].run_dir, members[k].run_name, summaries[k],
                            [members[k].run_dir / "checkpoint.pt", pack_dir / "checkpoint.pt"], cache)
            for k in candidates}


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
