"""launcher=joblib: Hydra's joblib launcher, except that one worker killed mid-run does not take the sweep down.

When a loky worker dies without a word (the out-of-memory killer, kill -9), joblib raises
TerminatedWorkerError in the driver and loky stops the pool's other workers: Hydra's launcher then ends
the whole sweep with a traceback, leaving the runs that were training marked "running" and the runs not
yet started untried. Here the jobs go through the same `execute_job` of hydra-joblib-launcher, and when
the pool breaks, the runs that were training (each left its marker: experiments.sweep_report.in_flight)
are marked failed with a one-line reason, to resume from their last epoch checkpoint when the sweep is
run again, and every job that had not started is launched again in a new pool. The sweep's report lists
the failed runs and exits 1, as for any failed run.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals

log = logging.getLogger(__name__)

# A job lost when the pool broke, with no marker (its worker died before the run began), is launched again
# this many times at most.
MAX_LOSSES = 3


def _execute(i: int, *args) -> tuple[int, JobReturn]:
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    return i, execute_job(*args)


def _why(exc: BaseException) -> str:
    codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(exc))
    return f"exit codes {codes.group(1)}" if codes else type(exc).__name__


def _alive(pid: int) -> bool:
    """Whether pid runs; a zombie (ended, not yet reaped by loky) has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill's answer


def _wait_until_gone(pid: int, timeout_s: float = 60.0) -> None:
    """loky may report the broken pool before it has stopped the other workers: a run is marked failed only once
    the process that trained it has ended, so that its own last summary cannot overwrite the mark."""
    deadline = time.monotonic() + timeout_s
    while pid > 0 and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import BrokenProcessPool

    from experiments import run_files, sweep_report
    from experiments.run_record import record_failure

    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    joblib_cfg = dict(launcher.joblib)
    if joblib_cfg.get("n_jobs") == 0:  # Hydra's schema has already made it an integer
        print("error: hydra.launcher.n_jobs must be a non-zero integer (got 0): N processes at once, -1 for one per "
              "CPU", file=sys.stderr)
        sys.exit(2)
    joblib_cfg["backend"] = "loky"  # as hydra-joblib-launcher: its threading backend cannot run Hydra jobs
    process_joblib_cfg(joblib_cfg)
    log.info("Joblib.Parallel(%s) is launching %d jobs", ",".join(f"{k}={v}" for k, v in joblib_cfg.items()),
             len(job_overrides))
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    joblib_cfg["return_as"] = "generator_unordered"  # each result as it comes: a break loses none of them
    singleton_state = Singleton.get_state()
    folder = os.environ.get(sweep_report.FAILURES_ENV)
    returns: dict[int, JobReturn] = {}
    pending = list(range(len(job_overrides)))
    losses: Counter = Counter()
    while pending:
        try:
            for i, ret in Parallel(**joblib_cfg)(
                    delayed(_execute)(i, initial_job_idx + i, job_overrides[i], launcher.hydra_context, launcher.config,
                                      launcher.task_function, singleton_state) for i in pending):
                returns[i] = ret
            break
        except BrokenProcessPool as exc:
            why = _why(exc)
            message = (f"its joblib worker was killed ({why}: out of memory, say), or stopped with the pool when "
                       "another worker was; run the sweep again to resume it from its last epoch checkpoint")
            failed = []
            for i in (i for i in pending if i not in returns):
                marker = sweep_report.in_flight_marker(folder, initial_job_idx + i) if folder else None
                entry = run_files.read_json(marker) if marker is not None else None
                if entry is None:
                    losses[i] += 1
                    if losses[i] < MAX_LOSSES:
                        continue
                    run, run_dir = " ".join(filter_overrides(job_overrides[i])), None
                    error = f"its joblib worker died {MAX_LOSSES} times before the run began ({why})"
                else:
                    run, run_dir, error = str(entry["run"]), Path(entry["run_dir"]), message
                    _wait_until_gone(int(entry.get("pid", -1)))
                    marker.unlink(missing_ok=True)
                if run_dir is not None:
                    record_failure(None, run_dir, run, error)
                sweep_report.record(run, error)
                returns[i] = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.COMPLETED)
                failed.append(run)
            pending = [i for i in pending if i not in returns]
            log.error("the joblib pool broke (%s): %d runs it was training marked failed (%s); %d jobs launched again",
                      why, len(failed), "; ".join(failed) or "none", len(pending))
    return [returns[i] for i in range(len(job_overrides))]
