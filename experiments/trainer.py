"""One training run: config in, metrics.csv, summary.json, checkpoint and a W&B run out.

A single run is a pack of one (experiments/engine.py); what is its own is the checkpoint: checkpoint.pt
in the run folder, holding the model's state_dict, its optimizer's and LambdaLR's state_dicts, the
history and the wall time so far. It resumes from that file, or from the pack checkpoint its
summary.json names when a packed sweep trained it before (experiments/checkpoints.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments import run_files, run_info
from experiments.checkpoints import CheckpointCache, resume_state
from experiments.config_checks import check_config
from experiments.engine import PackMember, PackRun, member_state_dicts, train_members
from experiments.run_identity import cached_fingerprint, check_same_run, worth_checking
from experiments.run_lock import RunLock
from experiments.run_record import is_done

log = logging.getLogger(__name__)


class SingleRunStore:
    """checkpoint.pt in the run folder, in the format single runs have always written."""

    def __init__(self, member: PackMember) -> None:
        self.path = member.run_dir / "checkpoint.pt"
        self.label = member.run_name

    def save(self, run: PackRun, epoch: int) -> None:
        run_files.save_checkpoint(self.path, {"epoch": epoch, **member_state_dicts(run, 0),
                                              "history": run.members[0].history, "wall_time_s": run.wall()})

    def on_start(self, run: PackRun) -> None:
        pass

    def on_epoch(self, run: PackRun) -> None:
        pass

    def after_epoch(self, run: PackRun) -> None:
        pass


def train_run(cfg: DictConfig, run_dir: str | Path, run_name: str = "default", base_dir: str | None = None) -> dict:
    """Trains one run into run_dir, resuming where it stopped; returns the summary it wrote.

    A run folder that holds a run of other settings (experiments/run_identity.py) is neither skipped nor
    resumed: RunMismatch, and nothing in the folder changes.
    """
    run_dir = Path(run_dir)
    previous = run_files.read_json(run_dir / "summary.json")
    if worth_checking(previous):
        check_same_run(run_dir, previous, OmegaConf.to_container(cfg, resolve=True),
                       lambda: cached_fingerprint(cfg, base_dir))
    if is_done(previous):
        log.info("%s: already %s, skipping (delete %s to run it again)", run_name, previous["status"], run_dir)
        return previous
    check_config(cfg)
    run_info.git_commit()  # pin the commit before training starts
    # Read before anything is written (the lock file too), so a damaged checkpoint never leads to training over
    # good results; read again once this process holds the run.
    resume_state(run_dir, run_name, previous, [run_dir / "checkpoint.pt"], CheckpointCache())
    lock = RunLock(run_dir)
    lock.acquire()  # RunLocked when another process trains this folder
    try:
        previous = run_files.read_json(run_dir / "summary.json")  # it may have moved on while we waited
        if is_done(previous):
            log.info("%s: already %s, skipping (delete %s to run it again)", run_name, previous["status"], run_dir)
            return previous
        member = PackMember(cfg, run_dir, run_name)
        store = SingleRunStore(member)
        # Read before anything is written, so a damaged checkpoint never leads to training over good results.
        state = resume_state(run_dir, run_name, previous, [store.path], CheckpointCache())
        train_members([member], store, [state] if state else None, route="loop", base_dir=base_dir,
                      heartbeat=lock.touch)
    finally:
        lock.release()
    return run_files.read_json(run_dir / "summary.json")
