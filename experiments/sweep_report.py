"""A sweep that leaves runs behind says so: its exit code is 1 and stderr lists them (Hydra callback).

One failing run never stops the others (experiments/train.py records it and goes on); once every job
has run, this callback prints one line per run that failed or was refused and exits 1. It sees the
jobs that ran in the driver process: the basic launcher's (launcher=local). The packed launcher does
the same itself; joblib and submitit run jobs elsewhere, and their failures are in each run's
summary.json and log.
"""
from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# (run name, one-line error) of every job of this process that could not train.
FAILED: list[tuple[str, str]] = []


class FailedRunsReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not FAILED:
            return
        for name, message in FAILED:
            print(f"error: {name}: {message}", file=sys.stderr)
        print(f"error: {len(FAILED)} runs of this sweep could not train (each one's summary.json and log say why); "
              "fix the cause and run the same command again: finished runs are skipped", file=sys.stderr)
        sys.exit(1)
