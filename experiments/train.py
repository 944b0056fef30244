"""`python -m experiments.train [overrides]`: one run, or a sweep with -m. See configs/train.yaml."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

# Hydra finds launchers only under the `hydra_plugins` namespace package on sys.path. An install maps
# launcher_plugins/hydra_plugins there (pyproject.toml); a plain checkout, run in place, puts the folder beside
# this file on the path instead, for this process and for the ones it starts (submitit jobs unpickle the packed
# launcher), so `launcher=packed` needs no install.
_LAUNCHER_PLUGINS = str(Path(__file__).resolve().parent / "launcher_plugins")
if Path(_LAUNCHER_PLUGINS).is_dir() and _LAUNCHER_PLUGINS not in sys.path:
    sys.path.insert(0, _LAUNCHER_PLUGINS)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_LAUNCHER_PLUGINS, os.environ.get("PYTHONPATH")]))

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import preemption, sweep_report
from experiments.run_identity import RunMismatch
from experiments.run_lock import RunLocked
from experiments.run_record import one_line, record_failure
from experiments.trainer import train_run

log = logging.getLogger("experiments.train")

# An empty override list would give an empty folder name.
OmegaConf.register_new_resolver("run_dirname", lambda overrides: overrides or "default", replace=True)


def _log_to_files(level: int, msg: str, *args) -> None:
    """Log through the file handlers Hydra set up (the run's .log file), not the console."""
    record = log.makeRecord(log.name, level, __file__, 0, msg, args, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    run_name = hc.job.override_dirname or "default"
    multirun = hc.mode == RunMode.MULTIRUN
    in_worker = preemption.stop_with_parent()  # a joblib worker stops training when its sweep's driver is gone
    if not in_worker and not preemption.in_submitit_job():
        preemption.terminate_as_interrupt()  # the command's own process trains: SIGTERM stops it as Ctrl-C does
    try:
        def train() -> dict:
            return train_run(cfg, run_dir, run_name, base_dir=hc.runtime.cwd)

        # A run as a submitit job (launcher=slurm, submitit_local) stops for preemption between two steps.
        with sweep_report.in_flight(run_name, run_dir, hc.job.num if multirun else 0):
            summary = preemption.handing_over(train, run_name) if preemption.in_submitit_job() else train()
    except KeyboardInterrupt:
        if preemption.parent_gone():
            # The runs are recorded as interrupted; with the driver gone no one waits for this worker's result, and
            # loky would keep the process idle until its worker timeout: end it now.
            logging.shutdown()
            os._exit(1)
        raise
    except RunLocked as exc:  # another launch of the same run: leave it to that one, no failure of this launch
        if multirun:
            log.warning("%s: %s", run_name, exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # one failing run must never take down a sweep
        message = one_line(exc)
        log.debug("traceback:\n%s", traceback.format_exc())
        # A folder holding a run of other settings is left exactly as it is.
        if not isinstance(exc, RunMismatch):
            try:
                record_failure(cfg, run_dir, run_name, message)
            except OSError as write_error:  # e.g. an unwritable run folder: say so, in the same one line
                message += f" (and {run_dir / 'summary.json'} cannot be written: {write_error.strerror or write_error})"
        if multirun:
            log.error("%s failed: %s", run_name, message)
            sweep_report.record(run_name, message)
            return None
        # A single run says it once, on stderr; the run's own log file keeps it too.
        _log_to_files(logging.ERROR, "%s failed: %s", run_name, message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    acc = summary["final"]["test_acc"]
    return acc


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as interrupt:
        # The runs in progress were recorded as interrupted on the way here; a traceback would say nothing more.
        terminated = isinstance(interrupt, preemption.Terminated)
        print(f"interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}): the runs in progress are recorded as "
              "interrupted; run the same command again to resume them from their last epoch", file=sys.stderr)
        sys.exit(143 if terminated else 130)
