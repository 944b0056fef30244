"""Real multiruns through the command line on tiny synthetic settings, then collect and figures."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from cli import REPO, cli_env, run_cli, sbatch_script, wait_for
from hydra import compose, initialize_config_dir

TINY = ["data=synthetic", "data.train_size=128", "data.test_size=64", "trainer.batch_size=64", "trainer.epochs=1",
        "logger=none"]
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (REPO / "configs" / "launcher").glob("*.yaml"))


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_experiment_composes_with_every_launcher(experiment, launcher):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"launcher={launcher}"],
                      return_hydra_config=True)
    assert cfg.name == experiment
    assert cfg.hydra.sweeper.params, "an experiment must define its grid"
    for key in cfg.hydra.sweeper.params:
        assert key in ("optimizer", "seed", "loss_multiplier") or "." in key


def test_smoke_sweep_end_to_end_then_collect_and_figures(tmp_path):
    sweep = tmp_path / "sweep"
    # The smoke experiment's CIFAR subset sizes do not apply to the small synthetic set.
    run_cli(["-m", "experiment=smoke", *TINY, "data.subset=null", "data.test_subset=null",
             f"hydra.sweep.dir={sweep}"])
    runs = summaries(sweep)
    assert len(runs) == 8  # adamw, adamp x lr {1e-3, 1e-2} x wd {1e-4, 1e-2}
    assert {s["status"] for s in runs.values()} == {"finished"}
    assert len({s["sweep_id"] for s in runs.values()}) == 1
    # Run folders are named by their overrides.
    assert all("optimizer=" in name and "optimizer.lr=" in name and "seed=0" in name for name in runs)

    out_csv = tmp_path / "results" / "smoke.csv"
    run_cli(["scripts/collect.py", str(sweep), "-o", str(out_csv)], module="")
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {r["optimizer"] for r in rows} == {"adamw", "adamp"}
    assert {float(r["lr"]) for r in rows} == {1e-3, 1e-2}
    assert {float(r["weight_decay"]) for r in rows} == {1e-4, 1e-2}

    fig_dir = tmp_path / "figures"
    run_cli(["scripts/figures.py", str(out_csv), "-o", str(fig_dir)], module="")
    pngs = sorted(p.name for p in fig_dir.glob("*.png"))
    assert pngs and all((fig_dir / p).with_suffix(".pdf").exists() for p in pngs)
    assert any("heatmap" in p and "test_acc" in p for p in pngs), pngs
    assert any("heatmap" in p and "model_norm" in p for p in pngs), pngs
    assert all((fig_dir / p).stat().st_size > 5000 for p in pngs)


def test_relaunching_a_sweep_skips_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "optimizer=adamw", "optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}"]
    run_cli(args)
    before = {p: p.read_bytes() for p in sweep.glob("*/metrics.csv")}
    assert len(before) == 2
    proc = run_cli(args)
    assert (proc.stdout + proc.stderr).count("already finished") == 2
    assert before == {p: p.read_bytes() for p in sweep.glob("*/metrics.csv")}


def test_a_failing_run_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # Adam takes no weight decay, so its point fails its config check; the others must still run.
    proc = run_cli(["-m", *TINY, "optimizer=adamw,adam,adamp", "optimizer.weight_decay=1e-4",
                    f"hydra.sweep.dir={sweep}"], check=False)
    # Every run was tried; the sweep then says which one failed, on stderr and in its exit code.
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 1 runs of this sweep could not train") and "optimizer=adam," in lines[-2]
    runs = {s["config"]["optimizer"]["name"]: s for s in summaries(sweep).values()}
    assert {name: s["status"] for name, s in runs.items()} == {"adamw": "finished", "adam": "failed",
                                                              "adamp": "finished"}
    assert "weight decay" in runs["adam"]["error"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_of_other_processes_exits_1_and_names_its_failed_run(tmp_path, launcher):
    """joblib's and submitit's jobs run in other processes: their failures still reach the sweep's exit code."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"launcher={launcher}", "hydra.launcher.n_jobs=2" if launcher == "joblib" else
                    "hydra.launcher.timeout_min=10", "optimizer=adamw,adam", "optimizer.weight_decay=1e-4",
                    f"hydra.sweep.dir={sweep}"], check=False, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 1 runs of this sweep could not train"), lines[-5:]
    assert "optimizer=adam," in lines[-2] and "weight decay" in lines[-2]
    assert {s["config"]["optimizer"]["name"]: s["status"] for s in summaries(sweep).values()} == {
        "adamw": "finished", "adam": "failed"}
    assert not (sweep / ".failures").exists()  # the launch's failure records are read and gone
    # The same sweep without the failing point: nothing failed in this launch, exit 0.
    run_cli(["-m", *TINY, f"launcher={launcher}", "optimizer=adamw", "optimizer.weight_decay=1e-4",
             f"hydra.sweep.dir={sweep}"], timeout=900)


@pytest.mark.parametrize("launcher", ["local", "packed"])
def test_a_grid_point_swept_twice_is_trained_once_and_the_sweep_succeeds(tmp_path, launcher):
    """seed=0,0 makes two jobs of one run folder; in one pack they fought over its lock and the sweep exited 1."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"launcher={launcher}", "seed=0,0", f"hydra.sweep.dir={sweep}"])
    assert [s["status"] for s in summaries(sweep).values()] == ["finished"]
    if launcher == "packed":
        assert "job #1 is the same run as job #0; training it once" in proc.stdout + proc.stderr


def test_a_joblib_pool_of_no_size_is_a_one_line_error(tmp_path):
    proc = run_cli(["-m", *TINY, "launcher=joblib", "hydra.launcher.n_jobs=0", "seed=0,1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: hydra.launcher.n_jobs must be a non-zero integer (got 0): "
                                                    "N processes at once, -1 for one per CPU")
    assert "Traceback" not in proc.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_joblib_worker_stops_its_run_when_the_sweep_driver_is_killed(tmp_path, signum):
    """A signal to a joblib sweep's driver alone (kill, kill -9, pkill -f): loky passes none on to its workers,
    which must not go on training alone. Each stops between two steps, records its run as interrupted (to resume
    when the sweep is run again) and exits, releasing the run's lock."""
    sweep = tmp_path / "sweep"
    args = ["-m", "data=synthetic", "data.train_size=256", "data.test_size=32", "trainer.batch_size=32",
            "trainer.epochs=5000", "logger=none", "model.depth=8", "launcher=joblib", "hydra.launcher.n_jobs=2",
            "optimizer=adamw,adamp", f"hydra.sweep.dir={sweep}"]  # 5000 epochs: minutes of training left at the kill
    driver = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                              env=cli_env(tmp_path, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_for(lambda: sum(len(p.read_text().splitlines()) >= 3 for p in sweep.glob("*/metrics.csv")) == 2, 300,
                 "two epochs of both runs")
        run_dirs = sorted(p.parent for p in sweep.glob("*/metrics.csv"))
        workers = [json.loads((d / ".lock").read_text())["pid"] for d in run_dirs]
        assert driver.pid not in workers and len(set(workers)) == 2  # two loky workers
        driver.send_signal(signum)
        driver.wait(60)
        wait_for(lambda: not any(_alive(pid) for pid in workers), 120, "the workers to stop")
    finally:
        for pid in (driver.pid, *workers):
            if _alive(pid):
                os.kill(pid, 9)
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 2 <= summary["epochs_completed"] < 5000, summary
        assert "resume" in summary["error"]
        assert not (run_dir / ".lock").exists()
        log = "".join(p.read_text() for p in run_dir.glob("*.log"))
        assert f"driver process (pid {driver.pid}) is gone" in log, log[-2000:]


def test_a_killed_joblib_worker_fails_its_run_and_the_rest_of_the_sweep_goes_on(tmp_path):
    """A worker killed mid-run (the out-of-memory killer, kill -9) breaks joblib's pool: the runs it and the pool
    were training are marked failed in one line, every run not yet started still runs, the sweep exits 1 naming
    the killed run, and the same command again resumes it from its checkpoint."""
    sweep = tmp_path / "sweep"
    args = ["-m", "data=synthetic", "data.train_size=256", "data.test_size=32", "trainer.batch_size=32",
            "trainer.epochs=40", "logger=none", "model.depth=8", "launcher=joblib", "hydra.launcher.n_jobs=2",
            "optimizer=adamw,adamp", "optimizer.lr=1e-3,2e-3,3e-3", f"hydra.sweep.dir={sweep}"]
    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    driver = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training():
            return [p.parent for p in sweep.glob("*/metrics.csv") if len(p.read_text().splitlines()) >= 3
                    and not summaries_of(p.parent).get("status") == "finished"]
        wait_for(lambda: training(), 300, "a run's second epoch")
        killed = training()[0]
        os.kill(json.loads((killed / ".lock").read_text())["pid"], signal.SIGKILL)
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, err[-3000:]
    runs = summaries(sweep)
    assert len(runs) == 6
    statuses = Counter(s["status"] for s in runs.values())
    assert statuses["failed"] in (1, 2) and statuses["finished"] == 6 - statuses["failed"], statuses
    assert runs[killed.name]["status"] == "failed" and "joblib worker was killed" in runs[killed.name]["error"]
    assert "exit codes {SIGKILL(-9)}" in runs[killed.name]["error"]
    # (After the report, multiprocessing's resource tracker may warn of the killed worker's semaphores.)
    lines = err.strip().splitlines()
    assert any(line.startswith(f"error: {statuses['failed']} runs of this sweep could not train") for line in lines)
    assert any(line.startswith(f"error: {killed.name}: its joblib worker was killed") for line in lines)
    assert "Traceback" not in err
    assert not list((sweep / ".failures").glob("*/in_flight/*.json"))
    # Run again: the finished runs are skipped, the failed ones resume from their last epoch checkpoint.
    again = run_cli(args, env=env, timeout=600)
    assert (again.stdout + again.stderr).count("already finished") == statuses["finished"]
    assert "resuming after epoch" in (killed / "train.log").read_text()
    assert {s["status"] for s in summaries(sweep).values()} == {"finished"}


def summaries_of(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def test_submitit_local_sweep_really_runs(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY, "launcher=submitit_local", "optimizer=adamw,adamp", f"hydra.sweep.dir={sweep}"],
            timeout=900)
    runs = summaries(sweep)
    assert {s["status"] for s in runs.values()} == {"finished"} and len(runs) == 2
    assert list((sweep / ".submitit").glob("*/*_submission.sh")) or list((sweep / ".submitit").glob("*/*.pkl"))


def test_slurm_launcher_renders_the_sbatch_script(tmp_path):
    """The real submitit SLURM path up to sbatch; a stand-in sbatch keeps the script it was given."""
    script, _ = sbatch_script(["-m", *TINY, "launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.launcher.timeout_min=90", "hydra.launcher.array_parallelism=1",
                               "optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --array=0-1%1"):
        assert line in script, f"{line!r} missing from:\n{script}"
    assert "--signal=USR2@" in script  # submitit's requeue on preemption and timeout
