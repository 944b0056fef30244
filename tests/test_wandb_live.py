"""Every run, single or pack member, logs each epoch to its own live W&B run as it happens, and a resumed run
continues the same W&B run. Checked on the offline .wandb files themselves (W&B's log of protobuf records)."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO, cli_env, wait_for

sys.path.insert(0, str(REPO / "scripts"))
from collect import OfflineRun, wandb_run_files  # noqa: E402

GRID = ["-m", "data=synthetic", "data.train_size=1024", "data.test_size=64", "trainer.batch_size=64",
        "trainer.epochs=4", "trainer.device=cpu", "model.depth=8", "logger=wandb", "sweep_id=live",
        "optimizer.lr=1e-3,2e-3"]


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def wandb_history(run_dir: Path) -> tuple[OfflineRun, list[dict]]:
    run = OfflineRun(wandb_run_files(run_dir))
    columns = list(metrics_rows(run_dir)[0]) if (run_dir / "metrics.csv").exists() else []
    return run, [{k: float(row[k]) for k in columns} for row in run.history().to_dict("records")]


@pytest.mark.parametrize("launcher", ["packed", "local"])
def test_each_run_logs_live_to_its_own_wandb_run_and_a_resume_continues_it(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.train", *GRID, f"launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    env = cli_env(tmp_path)
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Epoch 2 done in some run: then interrupt, as Ctrl-C would.
        wait_for(lambda: any(len(p.read_text().splitlines()) >= 3 for p in sweep.glob("*/metrics.csv")), 300,
                  "two epochs")
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=300)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
    started = [p.parent for p in sweep.glob("*/metrics.csv")]
    assert started, output[-3000:]
    for run_dir in started:  # the history up to its last epoch is in W&B already
        run, history = wandb_history(run_dir)
        assert history == metrics_rows(run_dir) and 2 <= len(history) < 4, (run_dir.name, len(history))
    ids = {run_dir.name: wandb_history(run_dir)[0].id for run_dir in started}

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    run_dirs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        run, history = wandb_history(run_dir)
        assert history == metrics_rows(run_dir) and [row["epoch"] for row in history] == [1, 2, 3, 4]
        assert run.id == ids.get(run_dir.name, run.id)  # the same W&B run, continued
        if run_dir in started:
            assert len(wandb_run_files(run_dir)) == 2  # one file per process that logged it
        # Named, grouped and tagged as the single run is.
        assert run.name == run_dir.name and run.group == "live" and run.state == "finished"
        assert run.config["hparams"]["lr"] in (1e-3, 2e-3)
        assert run.summary_metrics["final/test_acc"] == pytest.approx(history[-1]["test_acc"])
