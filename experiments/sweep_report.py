"""A sweep that leaves runs behind says so: its exit code is 1 and stderr lists them (Hydra callback).

One failing run never stops the others (experiments/train.py records it and goes on); once every job
has run, this callback prints one line per run that failed or was refused and exits 1, whichever
launcher ran the jobs. Jobs of the basic launcher (launcher=local) run in the driver process and
report in memory; joblib's and submitit's run in other processes, even on other machines, so each
failure is also written as a file under the sweep folder, in a folder of this launch's own
(DNM_SWEEP_FAILURES, which those processes inherit), and read back here. The packed launcher
reports its packs' failures itself.

While a job trains it also leaves a marker there (`in_flight`): a joblib worker killed mid-run (out of
memory, kill -9) cannot report, and the joblib launcher (hydra_plugins/dnm_packed_launcher/joblib_jobs.py)
finds the runs it was training by their markers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import run_files

# (run name, one-line error) of every job of this process that could not train.
FAILED: list[tuple[str, str]] = []
FAILURES_ENV = "DNM_SWEEP_FAILURES"


def record(run_name: str, message: str) -> None:
    """A job of the sweep could not train: kept for this process's report, and written where the driver reads."""
    FAILED.append((run_name, message))
    folder = os.environ.get(FAILURES_ENV)
    if folder:
        name = hashlib.sha1(run_name.encode()).hexdigest()[:16] + ".json"
        try:
            run_files.write_json(Path(folder) / name, {"run": run_name, "error": message})
        except OSError:
            pass  # the run's own summary.json and log still say it


def in_flight_marker(folder: str | os.PathLike, job_num: int) -> Path:
    return Path(folder) / "in_flight" / f"{job_num}.json"


@contextmanager
def in_flight(run_name: str, run_dir: Path, job_num: int) -> Iterator[None]:
    """While the block runs, a marker naming this job's run in this launch's folder (none outside a sweep)."""
    folder = os.environ.get(FAILURES_ENV)
    marker = in_flight_marker(folder, job_num) if folder else None
    if marker is not None:
        try:
            run_files.write_json(marker, {"run": run_name, "run_dir": str(run_dir), "pid": os.getpid()})
        except OSError:
            marker = None  # the run's own records still say what happened to it
    try:
        yield
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def _reported(folder: Path | None) -> list[tuple[str, str]]:
    found = dict(FAILED)
    if folder is not None and folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            entry = run_files.read_json(path)
            if isinstance(entry, dict) and "run" in entry and "error" in entry:
                found.setdefault(str(entry["run"]), str(entry["error"]))
            else:
                found.setdefault(path.name, "a failure record that cannot be read; see the runs' summary.json")
    return sorted(found.items())


class FailedRunsReport(Callback):
    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED.clear()
        # One folder per launch, so that two launches into one sweep folder report only their own jobs.
        self.folder = Path(str(config.hydra.sweep.dir)).absolute() / ".failures" / uuid.uuid4().hex
        os.environ[FAILURES_ENV] = str(self.folder)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = _reported(self.folder)
        os.environ.pop(FAILURES_ENV, None)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            try:
                self.folder.parent.rmdir()  # .failures/ itself, unless another launch is using it
            except OSError:
                pass
        if not failed:
            return
        for name, message in failed:
            print(f"error: {name}: {message}", file=sys.stderr)
        print(f"error: {len(failed)} runs of this sweep could not train (each one's summary.json and log say why); "
              "fix the cause and run the same command again: finished runs are skipped", file=sys.stderr)
        sys.exit(1)
