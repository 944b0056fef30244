"""The packed launcher's work: compose each job as Hydra's run_job does, group the jobs into packs, train."""
from __future__ import annotations

import copy
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class _Job:
    """One composed job. (No dataclass: Hydra's plugin scan runs this module outside sys.modules.)"""

    def __init__(self, config: DictConfig, ret: JobReturn, member, error: str | None) -> None:
        self.config = config  # the job's full config, hydra node included
        self.ret = ret
        self.member = member  # experiments.packed.PackMember
        self.error = error  # why its config cannot be resolved, if it cannot


def _compose(launcher, idx: int, overrides: Sequence[str]) -> _Job:
    """hydra.core.utils.run_job up to calling the task: config, output dir, .hydra/ files, JobReturn."""
    from experiments.packed import PackMember

    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    HydraConfig.instance().set_config(config)
    output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                              str(OmegaConf.select(config, "hydra.sweep.subdir")))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(config)

    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    ret = JobReturn(overrides=OmegaConf.to_container(config.hydra.overrides.task), cfg=task_cfg,
                    hydra_cfg=hydra_cfg, working_dir=os.getcwd(), task_name=str(config.hydra.job.name))
    run_dir = Path(config.hydra.runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.hydra.output_subdir is not None:
        hydra_output = run_dir / str(config.hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", hydra_output)
        _save_config(hydra_cfg, "hydra.yaml", hydra_output)
        _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
    # Resolved now, while this job's HydraConfig is the current one.
    resolved, error = copy.deepcopy(task_cfg), None
    try:
        OmegaConf.resolve(resolved)
    except Exception as exc:  # e.g. a missing environment variable: this run fails, the sweep goes on
        from experiments.run_record import one_line

        resolved, error = task_cfg, one_line(exc)
    run_name = str(hydra_cfg.hydra.job.override_dirname) or "default"
    return _Job(config=config, ret=ret, member=PackMember(resolved, run_dir, run_name), error=error)


class _OneMember(logging.Filter):
    """Keeps the lines of one pack member plus the pack-wide lines (those tagged with no member)."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "pack_member", self.run_dir) == self.run_dir


@contextmanager
def _pack_logging(jobs: list[_Job], pack_dir: Path) -> Iterator[None]:
    """Hydra's job logging aimed at the pack folder, plus each run's own <job name>.log, as a single run has."""
    config = copy.deepcopy(jobs[0].config)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(pack_dir)
    HydraConfig.instance().set_config(config)
    pack_dir.mkdir(parents=True, exist_ok=True)
    configure_log(config.hydra.job_logging, config.hydra.verbose)
    file_handler = OmegaConf.select(config, "hydra.job_logging.handlers.file")
    handlers: list[logging.Handler] = []
    if file_handler is not None:
        fmt = OmegaConf.select(config, f"hydra.job_logging.formatters.{file_handler.get('formatter')}.format")
        for job in jobs:
            handler = logging.FileHandler(job.member.run_dir / f"{config.hydra.job.name}.log")
            handler.setFormatter(logging.Formatter(fmt))
            handler.addFilter(_OneMember(str(job.member.run_dir)))
            handlers.append(handler)
            logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _final_test_acc(summary: dict | None):
    """What a single run's task function returns: its final test accuracy, None when it failed."""
    if summary and summary.get("status") in ("finished", "diverged"):
        return summary["final"]["test_acc"]
    return None


def _run_pack(launcher, jobs: list[_Job], pack_dir: Path) -> list[str]:
    """Trains one pack; returns a line per run that could not train (failed, or refused)."""
    from experiments import run_files
    from experiments.packed import train_pack
    from experiments.run_record import one_line, record_failure

    callbacks = launcher.hydra_context.callbacks
    with _pack_logging(jobs, pack_dir):
        for job in jobs:
            HydraConfig.instance().set_config(job.config)
            callbacks.on_job_start(config=job.config, task_function=launcher.task_function)
        members = [job.member for job in jobs]
        try:
            with env_override(dict(jobs[0].config.hydra.job.env_set)):
                summaries = train_pack(members, pack_dir, packed_init=launcher.packed_init, route=launcher.route,
                                       base_dir=str(jobs[0].config.hydra.runtime.cwd))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing pack must never take down the sweep
            message = one_line(exc)
            log.debug("pack %s failed", pack_dir.name, exc_info=True)
            log.error("pack %s failed: %s", pack_dir.name, message)
            for m in members:
                record_failure(m.cfg, m.run_dir, m.run_name, message)
            summaries = [run_files.read_json(m.run_dir / "summary.json") for m in members]
        failures = []
        for job, summary in zip(jobs, summaries):
            job.ret.status = JobStatus.COMPLETED
            job.ret.return_value = _final_test_acc(summary)
            HydraConfig.instance().set_config(job.config)
            callbacks.on_job_end(config=job.config, job_return=job.ret)
            if summary is None or summary.get("status") in ("failed", "refused"):
                error = (summary or {}).get("error") or "see its log"
                failures.append(f"{job.member.run_name}: {error}")
    return failures


class _PackJob:
    """One pack as a submitit job. Requeued after a preemption or timeout (submitit calls `checkpoint`), it
    starts again from the top and train_pack resumes every member from the pack checkpoint."""

    def __init__(self, launcher, jobs: list[_Job], pack_dir: Path, singleton_state: dict) -> None:
        self.launcher, self.jobs, self.pack_dir, self.singleton_state = launcher, jobs, pack_dir, singleton_state

    def __call__(self) -> list[str]:
        from hydra.core.singleton import Singleton

        from experiments import preemption

        Singleton.set_state(self.singleton_state)
        setup_globals()
        return preemption.handing_over(lambda: _run_pack(self.launcher, self.jobs, self.pack_dir),
                                       f"pack {self.pack_dir.name}")

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _executor(queue):
    """A submitit executor set up from hydra-submitit-launcher's launcher `queue`, as that plugin sets up its own:
    the same keys mean the same for launcher=slurm and launcher=packed_slurm."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cluster = type(queue)._EXECUTOR
    params = dict(queue.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=cluster, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in shared else f"{cluster}_{key}": value for key, value in params.items()})
    return executor


def _submit_packs(launcher, planned: list[tuple[list[_Job], Path]]) -> list[str]:
    """Each pack one job of one submitit array; waits for all. A job that dies without writing its runs' records
    (killed, out of memory, out of requeues) leaves them marked failed, naming the job's log."""
    from hydra.core.singleton import Singleton

    from experiments import run_files
    from experiments.run_record import one_line, record_failure

    executor = _executor(launcher.submitit)
    with executor.batch():
        handles = [executor.submit(_PackJob(launcher, pack_jobs, pack_dir, Singleton.get_state()))
                   for pack_jobs, pack_dir in planned]
    for handle, (pack_jobs, pack_dir) in zip(handles, planned):
        log.info("Pack %s: submitit job %s", pack_dir.name, handle.job_id)
    failures = []
    for handle, (pack_jobs, pack_dir) in zip(handles, planned):
        try:
            failures += handle.result()
        except Exception as exc:  # the job itself ended badly: its runs are marked, the other packs go on
            message = f"pack job {handle.job_id} ended badly ({one_line(exc)}); its log: {handle.paths.stderr}"
            log.error("pack %s: %s", pack_dir.name, message)
            for job in pack_jobs:
                m = job.member
                summary = run_files.read_json(m.run_dir / "summary.json")
                if not summary or summary.get("status") not in ("finished", "diverged", "failed"):
                    record_failure(m.cfg, m.run_dir, m.run_name, message)
                    failures.append(f"{m.run_name}: {message}")
        for job in pack_jobs:
            job.ret.status = JobStatus.COMPLETED
            job.ret.return_value = _final_test_acc(run_files.read_json(job.member.run_dir / "summary.json"))
    return failures


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    from experiments.packed import check_pack_options, group_into_packs, pack_key, pack_name
    from experiments.run_record import record_failure

    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    try:
        check_pack_options(launcher.packed_init, launcher.pack_size, launcher.route)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Packing %d jobs (pack_size=%s, packed_init=%s, route=%s)", len(job_overrides), launcher.pack_size,
             launcher.packed_init, launcher.route)
    jobs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        jobs.append(_compose(launcher, idx, overrides))
    for job in jobs:
        if job.error is not None:
            log.error("%s failed: %s", job.member.run_name, job.error)
            record_failure(job.member.cfg, job.member.run_dir, job.member.run_name, job.error)
            job.ret.status, job.ret.return_value = JobStatus.COMPLETED, None
    # A grid point swept twice (seed=0,0) is one run folder: trained once, as the other launchers skip the second.
    first_of: dict[Path, _Job] = {}
    twice: list[tuple[_Job, _Job]] = []
    for job in jobs:
        if job.error is None and (first := first_of.setdefault(job.member.run_dir, job)) is not job:
            log.warning("%s: job #%s is the same run as job #%s; training it once", job.member.run_name,
                        job.config.hydra.job.num, first.config.hydra.job.num)
            twice.append((job, first))
    ready = [job for job in jobs if job.error is None and first_of[job.member.run_dir] is job]
    keys = [pack_key(job.member.cfg, launcher.packed_init) for job in ready]
    packs = group_into_packs(keys, launcher.pack_size)
    failures = [f"{job.member.run_name}: {job.error}" for job in jobs if job.error is not None]
    planned = []
    for number, indices in enumerate(packs, start=1):
        pack_jobs = [ready[i] for i in indices]
        pack_dir = sweep_dir / ".packs" / pack_name([job.member.run_name for job in pack_jobs])
        log.info("Pack %d/%d (%s): %d runs", number, len(packs), pack_dir.name, len(pack_jobs))
        planned.append((pack_jobs, pack_dir))
    if launcher.submitit is not None:
        failures += _submit_packs(launcher, planned)
    else:
        from experiments import preemption

        preemption.terminate_as_interrupt()  # the packs train in this process: SIGTERM stops them as Ctrl-C does
        for pack_jobs, pack_dir in planned:
            failures += _run_pack(launcher, pack_jobs, pack_dir)
            configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    for job, first in twice:
        job.ret = first.ret
    if failures:
        # Every pack has run; the sweep still says, on stderr and in its exit code, that runs are missing.
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
        print(f"error: {len(failures)} of {len(jobs)} runs of this sweep failed (each run's summary.json and log "
              "say why); fix the cause and run the same command again: finished runs are skipped", file=sys.stderr)
        sys.exit(1)
    return [job.ret for job in jobs]
