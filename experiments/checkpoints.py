"""A run's saved state, from whichever checkpoint holds it: its own (single run) or its pack's.

Two formats exist, both as they have always been written:
- a single run's `checkpoint.pt` in its run folder: epoch, model (state_dict), optimizer, scheduler,
  history, wall_time_s;
- a pack's `checkpoint.pt` in its pack folder: epoch, model ({"params", "buffers"}, each [K, ...]),
  optimizers, schedulers, histories, statuses, diverged_epochs, end_walls, members (run names),
  packed_init, wall_time_s, throughput.
A run's summary.json names the file that holds its state after its last completed epoch ("checkpoint",
relative to the run folder). `resume_state` finds a run's state in any such file, so a run trained
by one launcher resumes under another: a killed local sweep relaunched packed, or the reverse.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from experiments import run_files

log = logging.getLogger(__name__)


@dataclass
class MemberState:
    """One run's state after `epoch` epochs, in the single-run formats (what restore_member needs)."""

    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    history: list
    status: str
    diverged_epoch: int | None
    end_wall: float | None
    wall_time_s: float
    source: Path


def read_member_state(checkpoint: dict, run_name: str, source: Path) -> MemberState | None:
    """run_name's state in a loaded checkpoint of either format; None when it does not hold that run.
    CheckpointError when the file lacks a part of a state, or its epoch and the run's history disagree (a
    checkpoint this trainer did not write whole)."""
    try:
        state = _member_state(checkpoint, run_name, source)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise run_files.CheckpointError(
            f"checkpoint {source} is not a whole checkpoint of this trainer ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0]}); move it away to restart the run") from None
    if state is not None and not (len(state.history) == state.epoch if state.status == "running"
                                  else len(state.history) <= state.epoch):
        raise run_files.CheckpointError(
            f"checkpoint {source} is after epoch {state.epoch} but holds {len(state.history)} epochs of "
            f"{run_name}'s metrics; move it away to restart the run")
    return state


def _member_state(checkpoint: dict, run_name: str, source: Path) -> MemberState | None:
    if "members" not in checkpoint:  # a single run's own checkpoint
        return MemberState(int(checkpoint["epoch"]), checkpoint["model"], checkpoint["optimizer"],
                           checkpoint["scheduler"], list(checkpoint["history"]), "running", None, None,
                           float(checkpoint["wall_time_s"]), source)
    if run_name not in checkpoint["members"]:
        return None
    k = checkpoint["members"].index(run_name)
    stacked = checkpoint["model"]
    model = {name: tensor[k].clone() for kind in ("params", "buffers") for name, tensor in stacked[kind].items()}
    return MemberState(int(checkpoint["epoch"]), model, checkpoint["optimizers"][k], checkpoint["schedulers"][k],
                       list(checkpoint["histories"][k]), checkpoint["statuses"][k], checkpoint["diverged_epochs"][k],
                       checkpoint["end_walls"][k], float(checkpoint["wall_time_s"]), source)


class CheckpointCache:
    """Loads each checkpoint file once (a pack's holds every member), raising CheckpointError on a damaged one."""

    def __init__(self) -> None:
        self._loaded: dict[Path, dict] = {}

    def get(self, path: Path) -> dict | None:
        path = Path(os.path.abspath(path))
        if path not in self._loaded:
            if not path.is_file():
                return None
            self._loaded[path] = run_files.load_checkpoint(path)
        return self._loaded[path]


def resume_state(run_dir: Path, run_name: str, summary: dict | None, candidates: list[Path],
                 cache: CheckpointCache) -> MemberState | None:
    """The run's state after the epochs its summary.json records, from the first candidate file holding it.

    Candidates: the file the summary names, then `candidates` (the run's own checkpoint.pt, its pack's).
    Every candidate that exists is read, so a damaged one is an error, never a silent restart. None when
    no file holds the run at its recorded epoch (then it starts over; see engine._keep_earlier_metrics).
    """
    named = (summary or {}).get("checkpoint")
    paths = ([run_dir / named] if named else []) + [Path(c) for c in candidates]
    done = int((summary or {}).get("epochs_completed") or 0)
    usable, stale = [], []
    for path in dict.fromkeys(Path(os.path.abspath(p)) for p in paths):
        checkpoint = cache.get(path)
        state = read_member_state(checkpoint, run_name, path) if checkpoint is not None else None
        if state is None:
            continue
        # A checkpoint one epoch ahead of the summary is the process killed between writing the two; one behind
        # is a state that later training (elsewhere) has left behind.
        (usable if state.epoch >= max(done, 1) else stale).append(state)
    if usable:
        return max(usable, key=lambda s: s.epoch)
    if stale and done > 0:
        log.warning("%s: its summary records %d epochs, but the checkpoints holding it are older (%s); training from "
                    "epoch 1 again", run_name, done, ", ".join(f"{s.source}: epoch {s.epoch}" for s in stale),
                    extra={"pack_member": str(run_dir)})
    return None
