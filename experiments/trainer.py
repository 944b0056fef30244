"""One training run: config in, metrics.csv, summary.json, checkpoint and a W&B run out.

A single run is a pack of one (experiments/engine.py); what is its own is the checkpoint: checkpoint.pt
in the run folder, holding the model's state_dict, its optimizer's and LambdaLR's state_dicts, the
history and the wall time so far.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from experiments import run_files, run_info
from experiments.config_checks import check_config
from experiments.engine import PackMember, PackRun, member_state, train_members
from experiments.run_record import is_done

log = logging.getLogger(__name__)


class SingleRunStore:
    """checkpoint.pt in the run folder, in the format single runs have always written."""

    def __init__(self, member: PackMember) -> None:
        self.path = member.run_dir / "checkpoint.pt"
        self.label = member.run_name

    def restore(self, run: PackRun, checkpoint: dict) -> int:
        member = run.members[0]
        try:
            run.pack.members[0].load_state_dict(checkpoint["model"])
        except (RuntimeError, KeyError) as exc:
            raise run_files.CheckpointError(f"checkpoint {self.path} holds another model ({type(exc).__name__}); "
                                            "move it away to restart this run") from None
        scheduler = checkpoint["scheduler"]
        run.optimizer.set_steps(int(scheduler["last_epoch"]))
        run.optimizer.load_member_state_dict(0, checkpoint["optimizer"], scheduler, active=True, where=str(self.path))
        member.history = list(checkpoint["history"])
        run.wall_before = checkpoint["wall_time_s"]
        return int(checkpoint["epoch"])

    def save(self, run: PackRun, epoch: int) -> None:
        run_files.save_checkpoint(self.path, {"epoch": epoch, **member_state(run, 0), "history": run.members[0].history,
                                              "wall_time_s": run.wall()})

    def on_start(self, run: PackRun) -> None:
        pass

    def on_epoch(self, run: PackRun) -> None:
        pass


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
    member = PackMember(cfg, run_dir, run_name)
    store = SingleRunStore(member)
    # Read before anything is written, so a damaged checkpoint never leads to training over good results.
    checkpoint = run_files.load_checkpoint(store.path) if store.path.exists() else None
    train_members([member], store, checkpoint, route="loop", base_dir=base_dir)
    return run_files.read_json(run_dir / "summary.json")
