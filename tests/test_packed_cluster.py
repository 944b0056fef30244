"""Packs as submitit jobs (launcher=packed_slurm, packed_submitit_local): real processes through submitit's local
executor, the sbatch script SLURM would get, and a preempted pack that is requeued."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import REPO, cli_env, run_cli, sbatch_script, wait_for

# Two packs (BatchNorm on and off cannot share one), two members each.
GRID = ["-m", "data=synthetic", "data.train_size=128", "data.test_size=64", "trainer.batch_size=64",
        "trainer.epochs=2", "logger=none", "trainer.device=cpu", "model.batch_norm=true,false",
        "optimizer.lr=1e-3,2e-3"]


def metrics(sweep: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sweep.glob("*/metrics.csv"):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # timings differ between any two runs
            del row["epoch_time_s"], row["images_per_s"]
        out[path.parent.name] = rows
    return out


def statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")}


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in (sweep / ".submitit").iterdir() if list(p.glob("*_result.pkl")))


def test_each_pack_is_one_submitit_job_and_trains_as_the_local_packed_launcher(tmp_path):
    run_cli([*GRID, "launcher=packed", f"hydra.sweep.dir={tmp_path / 'local'}"])
    proc = run_cli([*GRID, "launcher=packed_submitit_local", f"hydra.sweep.dir={tmp_path / 'jobs'}"], timeout=900)
    jobs = tmp_path / "jobs"
    assert len(job_dirs(jobs)) == 2 and proc.stdout.count("submitit job") + proc.stderr.count("submitit job") == 2
    assert set(statuses(jobs).values()) == {"finished"} and len(statuses(jobs)) == 4
    assert metrics(jobs) == metrics(tmp_path / "local")
    # Relaunched: every member is already finished, and no job trains anything again.
    before = {p: p.read_bytes() for p in jobs.glob("*/metrics.csv")}
    again = run_cli([*GRID, "launcher=packed_submitit_local", f"hydra.sweep.dir={jobs}"], timeout=900)
    assert before == {p: p.read_bytes() for p in jobs.glob("*/metrics.csv")}
    logs = "".join(p.read_text() for p in jobs.glob("*/*.log"))
    assert logs.count("already finished, skipping") == 4, again.stderr[-2000:]


def _task_pids(sweep: Path) -> list[int]:
    """The processes that run this sweep's submitit jobs (python -m submitit.core._submit <job folder>)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in cmdline and any(str(sweep).encode() in part for part in cmdline):
            pids.append(int(proc.name))
    return pids


PREEMPTED_GRID = ["-m", "data=synthetic", "data.train_size=1024", "data.test_size=64", "trainer.batch_size=64",
                  "trainer.epochs=6", "logger=none", "trainer.device=cpu", "model.depth=8"]


def _preempt_once(args: list[str], launcher: str, sweep: Path, tmp_path: Path) -> str:
    """Runs the sweep through submitit with `launcher`; once its one job has written epoch 1, SIGUSR2 (SLURM's
    preemption notice) to that job; returns submitit's job logs after the driver exited 0."""
    driver = subprocess.Popen([sys.executable, "-m", "experiments.train", *args, f"launcher={launcher}",
                               f"hydra.sweep.dir={sweep}"], cwd=REPO, env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(len(p.read_text().splitlines()) >= 2 for p in sweep.glob("*/metrics.csv")), 300,
                 "the first epoch")
        pids = _task_pids(sweep)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGUSR2)
        output = driver.communicate(timeout=600)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output[-3000:]
    job_logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "Requeued job" in job_logs, job_logs[-3000:]
    return job_logs


def test_a_preempted_pack_is_requeued_and_ends_as_an_uninterrupted_pack(tmp_path):
    grid = [*PREEMPTED_GRID, "optimizer.lr=1e-3,2e-3"]
    run_cli([*grid, "launcher=packed", f"hydra.sweep.dir={tmp_path / 'straight'}"])
    sweep = tmp_path / "preempted"
    _preempt_once(grid, "packed_submitit_local", sweep, tmp_path)
    pack_log = "".join(p.read_text() for p in (sweep / ".packs").glob("*/*.log"))
    assert "stopped between two steps" in pack_log and "resuming after epoch" in pack_log
    assert set(statuses(sweep).values()) == {"finished"}
    assert metrics(sweep) == metrics(tmp_path / "straight") and all(len(r) == 6 for r in metrics(sweep).values())


def test_a_preempted_single_run_under_submitit_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path):
    """launcher=submitit_local / slurm, one run per job: the notice stops training between two steps as well, so a
    notice during an epoch's bookkeeping does not cost the epoch's checkpoint."""
    grid = [*PREEMPTED_GRID, "optimizer.lr=1e-3"]
    run_cli([*grid, f"hydra.sweep.dir={tmp_path / 'straight'}"])
    sweep = tmp_path / "preempted"
    _preempt_once(grid, "submitit_local", sweep, tmp_path)
    run_log = "".join(p.read_text() for p in sweep.glob("*/*.log"))
    assert "stopped between two steps" in run_log and "resuming" in run_log, run_log[-3000:]
    assert set(statuses(sweep).values()) == {"finished"}
    assert metrics(sweep) == metrics(tmp_path / "straight") and all(len(r) == 6 for r in metrics(sweep).values())


def test_a_pack_job_that_is_killed_marks_its_runs_failed_and_the_other_pack_finishes(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [g.replace("trainer.epochs=2", "trainer.epochs=12").replace("data.train_size=128", "data.train_size=256")
            for g in GRID]
    driver = subprocess.Popen([sys.executable, "-m", "experiments.train", *grid, "hydra.launcher.pack_size=2",
                               "launcher=packed_submitit_local", "hydra.launcher.submitit.timeout_min=10",
                               f"hydra.sweep.dir={sweep}"], cwd=REPO, env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(sweep.glob(".packs/*/checkpoint.pt"))) == 2, 300, "both packs' first epoch")
        os.kill(_task_pids(sweep)[0], signal.SIGKILL)  # out of memory, say: no handler runs
        stdout, stderr = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, stderr[-3000:]
    done = statuses(sweep)
    assert sorted(done.values()) == ["failed", "failed", "finished", "finished"], done
    failed = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")
              if json.loads(p.read_text())["status"] == "failed"]
    for s in failed:
        assert "pack job" in s["error"] and "_log.err" in s["error"]
    assert stderr.strip().splitlines()[-1].startswith("error: 2 of 4 runs of this sweep failed")
    # Relaunched, the killed pack resumes from its checkpoint and the finished one is skipped.
    again = subprocess.run([sys.executable, "-m", "experiments.train", *grid, "hydra.launcher.pack_size=2",
                            "launcher=packed_submitit_local", f"hydra.sweep.dir={sweep}"], cwd=REPO,
                           env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(statuses(sweep).values()) == {"finished"}
    pack_logs = "".join(p.read_text() for p in (sweep / ".packs").glob("*/*.log"))
    assert "resuming after epoch" in pack_logs
    assert "".join(p.read_text() for p in sweep.glob("*/*.log")).count("already finished, skipping") == 2


def test_packed_slurm_renders_one_sbatch_array_task_per_pack_with_the_slurm_settings(tmp_path):
    """The real submitit SLURM path up to sbatch; a stand-in sbatch keeps the script it was given."""
    script, output = sbatch_script([*GRID, "launcher=packed_slurm", "hydra.launcher.submitit.partition=gpu",
                                    "hydra.launcher.submitit.timeout_min=90",
                                    "hydra.launcher.submitit.array_parallelism=1", "hydra.launcher.submitit.mem_gb=48",
                                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=48GB", "#SBATCH --array=0-1%1"):
        assert line in script, f"{line!r} missing from:\n{script}"
    assert "--signal=USR2@" in script  # submitit's requeue on preemption and timeout
    assert "Pack 1/2" in output and "Pack 2/2" in output


def test_a_notice_only_stops_training_when_it_is_checked_and_the_old_handler_comes_back():
    from experiments import preemption

    calls = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with preemption.deferred(signal.SIGUSR2) as replaced:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)  # the handler has run: nothing was raised, the old handler was not called
            assert calls == []
            with pytest.raises(preemption.Preempted):
                preemption.stop_if_noticed()
        replaced(signal.SIGUSR2, None)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
        with preemption.deferred(signal.SIGUSR2):
            preemption.stop_if_noticed()  # a new job starts without the old notice
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_a_ctrl_c_during_an_epochs_bookkeeping_waits_for_its_end():
    from experiments import preemption

    done = []
    with pytest.raises(KeyboardInterrupt):
        with preemption.interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("files")  # not cut short
            done.append("wandb")
    assert done == ["files", "wandb"]
