"""A run folder is reused only for the very run it holds; a run resumes under any launcher; one process per run.

Through the real command line: a finished run is skipped only when every setting that changes its result
matches (the data by content, not by path), a half-done run resumes from whichever checkpoint holds it
(its own or its pack's), two launches of a sweep never train a run twice, and a fault while writing a
run's files is one line.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import REPO, cli_env, run_cli
from test_data import write_image_folder

IMAGES = ["data=cifar10", "data.test_subset=null", "trainer.batch_size=8", "trainer.epochs=1", "logger=none",
          "model.batch_norm=false"]
TINY = ["data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=16", "logger=none"]
TIMINGS = ("epoch_time_s", "images_per_s")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/summary.json"))


@pytest.fixture
def two_datasets(tmp_path):
    a, b = tmp_path / "data_a", tmp_path / "data_b"
    write_image_folder(a, n_train=2, n_test=1, seed=1)
    write_image_folder(b, n_train=2, n_test=1, seed=2)  # the same layout and size, other pixels
    return a, b


@pytest.mark.parametrize("launcher", ["local", "packed"])
def test_a_finished_run_is_reused_only_for_the_same_data(tmp_path, two_datasets, launcher):
    a, b = two_datasets
    sweep = tmp_path / "sweep"
    env = cli_env(tmp_path, DNM_CACHE_DIR=str(tmp_path / "cache"))
    grid = ["-m", *IMAGES, "optimizer.lr=1e-3,1e-2", f"launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    run_cli([*grid, f"data.root={a}"], env=env)
    before = {d: (d / "summary.json").read_bytes() for d in run_dirs(sweep)}
    assert len(before) == 2
    # data.root is no part of the folder name, so the other folder's images would land in these folders.
    proc = run_cli([*grid, f"data.root={b}"], env=env, check=False)
    assert proc.returncode != 0, "runs on other data must not count as the runs already done"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert sum("holds a finished run of other settings (data: " in line for line in errors) == 2, proc.stderr[-3000:]
    assert "give this sweep another sweep_id" in errors[0]
    assert errors[-1].startswith("error: 2 ") and ("could not train" in errors[-1] or "failed" in errors[-1])
    assert "already finished" not in proc.stdout + proc.stderr
    assert before == {d: (d / "summary.json").read_bytes() for d in run_dirs(sweep)}, "the old runs were touched"
    # The same images at another path are the same data: the finished runs are skipped.
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)
    again = run_cli([*grid, f"data.root={moved}"], env=env)
    assert (again.stdout + again.stderr).count("already finished") == 2
    assert before == {d: (d / "summary.json").read_bytes() for d in run_dirs(sweep)}
    # The summary says which data it read.
    s = summary(run_dirs(sweep)[0])
    assert s["data"]["train_images"] == 20 and s["hparams"]["data.fingerprint"] == s["data"]["fingerprint"]


def test_a_finished_run_with_another_setting_under_the_same_name_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"])
    before = (run_dir / "summary.json").read_bytes()
    # Identity comes from the resolved config, so a setting changed in a config file counts as well: here the
    # optimizer's betas, which the folder name does not mention.
    proc = run_cli([*TINY, "trainer.epochs=1", "optimizer.betas=[0.8,0.99]", f"hydra.run.dir={run_dir}"],
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: RunMismatch: {run_dir} holds a finished run of other settings (optimizer.betas: [0.9, 0.999] -> "
        "[0.8, 0.99])")
    # What it says to do works for a single run, whose folder no sweep_id names.
    assert "a single run another folder (hydra.run.dir=PATH)" in proc.stderr.strip().splitlines()[-1]
    run_cli([*TINY, "trainer.epochs=1", "optimizer.betas=[0.8,0.99]", f"hydra.run.dir={tmp_path / 'other'}"])
    assert (run_dir / "summary.json").read_bytes() == before


def _kill_after(proc: subprocess.Popen, ready) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be interrupted"


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("first, then", [("local", "packed"), ("packed", "local")])
def test_a_sweep_killed_under_one_launcher_resumes_under_the_other(tmp_path, first, then):
    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    grid = ["-m", *TINY, "trainer.epochs=3", "schedule=cosine", "optimizer=adamw,adamp"]
    straight = tmp_path / "straight"
    run_cli([*grid, "launcher=local", f"hydra.sweep.dir={straight}"], env=env)

    sweep = tmp_path / "sweep"
    proc = _start([*grid, f"launcher={first}", f"hydra.sweep.dir={sweep}"], env)
    _kill_after(proc, lambda: any(s.is_file() for s in sweep.glob("*/summary.json")))
    started = {d.name: summary(d)["epochs_completed"] for d in run_dirs(sweep)}
    assert started and all(n >= 1 for n in started.values())
    out = run_cli([*grid, f"launcher={then}", f"hydra.sweep.dir={sweep}"], env=env)
    log = out.stdout + out.stderr
    assert log.count("resuming after epoch") >= 1, log[-3000:]
    assert "training from epoch 1 again" not in log
    for name in [d.name for d in run_dirs(straight)]:
        # On a CPU every route runs the single run's own kernels: the resumed runs end bit for bit where the
        # uninterrupted ones do.
        assert metrics(sweep / name) == metrics(straight / name), name
        s = summary(sweep / name)
        assert s["status"] == "finished" and s["epochs_completed"] == 3
        assert (sweep / name / s["checkpoint"]).resolve().is_file()
        if then == "packed":  # the state moved into the pack's checkpoint: no stale file beside the summary
            assert not (sweep / name / "checkpoint.pt").exists()


def test_a_run_held_by_a_live_process_is_left_to_it_and_a_stale_lock_is_taken_over(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["-m", *TINY, "trainer.epochs=1", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"]
    env = cli_env(tmp_path)
    names = ["data.test_size=32,data.train_size=64,data=synthetic,optimizer.lr=0.001,trainer.batch_size=16,"
             "trainer.epochs=1",
             "data.test_size=32,data.train_size=64,data=synthetic,optimizer.lr=0.002,trainer.batch_size=16,"
             "trainer.epochs=1"]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (sweep / names[0]).mkdir(parents=True)
        (sweep / names[0] / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid,
                                                            "started": "then"}))
        proc = run_cli(grid, env=env)
        assert "is being trained by another process (pid" in proc.stdout + proc.stderr
        assert not (sweep / names[0] / "summary.json").exists()
        assert summary(sweep / names[1])["status"] == "finished"
        assert not (sweep / names[1] / ".lock").exists(), "a finished run leaves no lock behind"
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone: the lock is stale, the next launch takes it over and trains the run.
    proc = run_cli(grid, env=env)
    assert "taking over a stale lock" in proc.stdout + proc.stderr
    assert summary(sweep / names[0])["status"] == "finished" and not (sweep / names[0] / ".lock").exists()


def test_two_launches_of_one_sweep_at_once_train_every_run_once(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["-m", *TINY, "trainer.epochs=2", "optimizer.lr=1e-3,2e-3,3e-3,4e-3", f"hydra.sweep.dir={sweep}"]
    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.train", *grid], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = run_dirs(sweep)
    assert len(dirs) == 4 and all(summary(d)["status"] == "finished" for d in dirs)
    for d in dirs:
        # Each epoch was trained and logged by one process only.
        assert (d / "train.log").read_text().count("epoch 1/2") == 1, d.name
        assert [r["epoch"] for r in metrics(d)] == ["1", "2"]


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "summary.json").mkdir(parents=True)  # a folder where the summary must go: even root cannot write it
    proc = run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: IsADirectoryError"), proc.stderr[-2000:]
    assert "summary.json cannot be written" in lines[0]


@pytest.mark.parametrize("lock", ["", "[1]", '{"host": "HOST", "pid": "abc"}', '{"host": "HOST"}'],
                         ids=["empty: its owner between O_EXCL and its record", "a list", "pid no number", "no pid"])
def test_a_damaged_lock_is_taken_over_as_a_stale_one(tmp_path, lock):
    """A lock record this trainer cannot have written names no live owner: stale once it is older than a lock's
    owner takes to write its record, and never a crash."""
    from experiments import run_lock as run_lock_module
    from experiments.run_lock import RunLock, RunLocked

    (tmp_path / ".lock").write_text(lock.replace("HOST", os.uname().nodename))
    run_lock = RunLock(tmp_path)
    # Just written, it may be a lock whose owner is still writing its record: left to that owner for a moment.
    with pytest.raises(RunLocked, match="its record is being written"):
        run_lock.acquire()
    old = time.time() - run_lock_module.WRITE_GRACE_S - 1
    os.utime(tmp_path / ".lock", (old, old))
    run_lock.acquire()
    assert run_lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    run_lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("launcher", ["local", "packed"])
def test_a_summary_that_is_json_but_no_record_is_a_damaged_one_not_a_crash(tmp_path, launcher):
    """'[1]' parses as JSON: read as a record it took a packed sweep down before any run trained."""
    sweep = tmp_path / "sweep"
    grid = ["-m", *TINY, "trainer.epochs=1", f"launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    run_cli([*grid, "seed=0"], env=cli_env(tmp_path))
    (first,) = run_dirs(sweep)
    (first / "summary.json").write_text("[1]\n")
    run_cli([*grid, "seed=0,1"], env=cli_env(tmp_path))
    assert [summary(d)["status"] for d in run_dirs(sweep)] == ["finished", "finished"]
