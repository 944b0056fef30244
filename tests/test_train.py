"""The single-run trainer through its real command line."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli import REPO, cli_env, run_cli, wait_for

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64", "logger=none"]
METRICS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "model_norm", "grad_norm", "lr",
           "epoch_time_s", "images_per_s"]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_outputs_exist_and_are_complete(tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=2", "optimizer=adamp", "optimizer.lr=1e-3", "optimizer.weight_decay=1e-4",
             "model.batch_norm=false", f"hydra.run.dir={run_dir}"])
    rows = read_metrics(run_dir)
    assert list(rows[0].keys())[: len(METRICS)] == METRICS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    s = summary(run_dir)
    assert s["status"] == "finished"
    assert s["epochs_completed"] == 2
    assert s["config"]["optimizer"]["name"] == "adamp" and s["config"]["model"]["batch_norm"] is False
    assert s["hparams"]["weight_decay"] == pytest.approx(1e-4)
    for key in ("test_acc", "test_loss", "train_acc", "train_loss", "model_norm"):
        assert s["final"][key] == pytest.approx(float(rows[-1][key]))
    assert 0 <= s["final"]["test_acc"] <= 1 and 0 <= s["best"]["test_acc"] <= 1
    assert s["best"]["epoch"] in (1, 2)
    assert s["versions"]["torch"] and s["wall_time_s"] > 0 and "git_commit" in s
    # Where and when: the CPU's model name (this machine's /proc/cpuinfo), the time of the last write.
    from datetime import datetime, timezone

    with open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    assert s["device"] == "cpu" and s["hardware"].startswith(cpu) and "logical CPUs" in s["hardware"]
    written = datetime.fromisoformat(s["written_at"])
    assert written.tzinfo is not None and abs((datetime.now(timezone.utc) - written).total_seconds()) < 600
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    # The values, not only the columns: model norm of the saved weights (BN off: the state is all parameters),
    # the constant schedule's lr, a finite positive gradient norm, timings that agree with each other.
    import torch

    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"].values()
    norm = torch.linalg.vector_norm(torch.stack([w.double().norm() for w in weights])).item()
    assert float(rows[-1]["model_norm"]) == pytest.approx(norm, rel=1e-6)
    for r in rows:
        assert float(r["lr"]) == pytest.approx(1e-3) and 0 < float(r["grad_norm"]) < float("inf")
        assert float(r["images_per_s"]) * float(r["epoch_time_s"]) == pytest.approx(256 // 64 * 64, rel=1e-6)


def test_real_cifar10_one_epoch_with_bn_beats_chance(tmp_path, cifar10_root, data_cache_dir):
    run_dir = tmp_path / "run"
    run_cli(["data=cifar10", f"data.root={cifar10_root}", f"data.cache_dir={data_cache_dir}", "data.subset=5000",
             "data.test_subset=1000", "trainer.epochs=1", "trainer.batch_size=64", "model.batch_norm=true",
             "optimizer=adamw",
             "optimizer.lr=2e-3", "logger=none", f"hydra.run.dir={run_dir}"])
    s = summary(run_dir)
    assert s["status"] == "finished"
    assert s["final"]["test_acc"] > 0.2, s["final"]  # chance is 0.1


def test_loss_multiplier_scales_the_backward_pass_and_reports_the_plain_loss(tmp_path):
    run_cli(["-m", *TINY, "trainer.epochs=1", "optimizer=adam,adaml2", "loss_multiplier=1,100",
             f"hydra.sweep.dir={tmp_path}"])
    runs = {}
    for path in tmp_path.glob("*/summary.json"):
        s = json.loads(path.read_text())
        runs[s["config"]["optimizer"]["name"], s["config"]["loss_multiplier"]] = (s, read_metrics(path.parent)[-1])
    assert len(runs) == 4, sorted(runs)
    # AdamL2 is not scale-free: a loss 100x larger outweighs its L2 term, so training goes elsewhere.
    assert runs["adaml2", 100][0]["final"]["model_norm"] != runs["adaml2", 1][0]["final"]["model_norm"]
    # Adam is (up to eps): the same run, and the reported loss and gradient norm are those of the plain loss,
    # not 100x them.
    (plain, plain_row), (scaled, scaled_row) = runs["adam", 1], runs["adam", 100]
    assert scaled["final"]["train_loss"] == pytest.approx(plain["final"]["train_loss"], rel=1e-3)
    assert float(scaled_row["grad_norm"]) == pytest.approx(float(plain_row["grad_norm"]), rel=1e-3)


def _kill_after_first_epoch(args: list[str], run_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # summary.json is written right after the epoch's checkpoint: both exist once it does.
        if (run_dir / "summary.json").exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    args = [*TINY, "trainer.epochs=4", "schedule=cosine", "optimizer=adamw", "optimizer.lr=3e-3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli([*args, f"hydra.run.dir={straight}"])
    _kill_after_first_epoch([*args, f"hydra.run.dir={resumed}"], resumed)
    assert summary(resumed)["status"] == "running"
    before_kill = read_metrics(resumed)
    proc = run_cli([*args, f"hydra.run.dir={resumed}"])
    assert f"resuming after epoch {len(before_kill)}" in proc.stdout + proc.stderr
    a, b = read_metrics(straight), read_metrics(resumed)
    # The epochs done before the kill were not trained again: their rows, timings included, are kept as written.
    assert b[: len(before_kill)] == before_kill
    timing = {"epoch_time_s", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]
    assert summary(resumed)["final"] == summary(straight)["final"]


@pytest.mark.parametrize("launch", [[], ["-m", "seed=0,1"], ["-m", "seed=0,1", "launcher=packed"]],
                         ids=["single", "sweep", "packed"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_command_says_so_in_one_line_and_records_its_runs_as_interrupted(tmp_path, signum, launch):
    """Ctrl-C, or a kill (SIGTERM), mid-run: the run in progress is recorded as interrupted, to resume from its last
    epoch (SIGTERM ended the process at once before, leaving it 'running'), and the command says so in one line
    instead of a traceback."""
    out = tmp_path / "out"
    args = [*launch[:1], *TINY, "trainer.epochs=50", *launch[1:],
            f"hydra.{'sweep' if launch else 'run'}.dir={out}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(s.parent.parent.name != ".packs" for s in out.rglob("summary.json")) or
                 proc.poll() is not None, 300, "the first epoch")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err[-2000:]
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert err.strip().splitlines()[-1] == (f"interrupted ({name}): the runs in progress are recorded as interrupted; "
                                            "run the same command again to resume them from their last epoch")
    assert "Traceback" not in err
    stopped = [summary(s.parent) for s in out.rglob("summary.json") if s.parent.parent.name != ".packs"]
    assert stopped and all(s["status"] == "interrupted" and 1 <= s["epochs_completed"] < 50 for s in stopped)
    assert all("run the same command again to resume" in s["error"] for s in stopped)


@pytest.mark.parametrize("launch", [[], ["-m", "seed=0,1"]], ids=["single", "sweep"])
def test_an_output_root_through_a_file_is_a_one_line_error(tmp_path, launch):
    (tmp_path / "afile").write_text("")
    proc = run_cli([*launch[:1], *TINY, *launch[1:], f"output_root={tmp_path / 'afile' / 'out'}"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: output_root={tmp_path / 'afile' / 'out'} cannot hold the "
                                                    f"run folders: {tmp_path / 'afile'} is a file; choose another "
                                                    "output_root")


def test_finished_run_is_skipped_when_launched_again(tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"])
    before = (run_dir / "metrics.csv").read_bytes(), (run_dir / "summary.json").read_bytes()
    proc = run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"])
    assert "already finished" in proc.stdout + proc.stderr
    assert before == ((run_dir / "metrics.csv").read_bytes(), (run_dir / "summary.json").read_bytes())


def test_divergence_is_recorded_and_exits_zero(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "trainer.epochs=3", "optimizer=sgd", "optimizer.lr=1e4", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0
    s = summary(run_dir)
    assert s["status"] == "diverged" and s["diverged_epoch"] == 1 and s["epochs_completed"] == 1
    assert len(read_metrics(run_dir)) == 1


@pytest.mark.parametrize("damage", ["garbage", "bytes flipped", "a part missing", "epoch edited"])
def test_corrupt_checkpoint_is_an_error_not_a_silent_restart(tmp_path, damage):
    """Bytes flipped inside the weights still load with torch.load: that would resume from wrong weights."""
    args = [*TINY, "trainer.epochs=4", f"hydra.run.dir={tmp_path / 'run'}"]
    run_dir = tmp_path / "run"
    _kill_after_first_epoch(args, run_dir)
    metrics_before = (run_dir / "metrics.csv").read_bytes()
    checkpoint = run_dir / "checkpoint.pt"
    if damage == "garbage":
        checkpoint.write_bytes(b"not a checkpoint")
    elif damage in ("a part missing", "epoch edited"):  # whole files, but no state this trainer wrote
        state = torch.load(checkpoint, weights_only=True)
        state.pop("optimizer") if damage == "a part missing" else state.update(epoch=3)
        torch.save(state, checkpoint)
    else:
        import zipfile

        with zipfile.ZipFile(checkpoint) as archive:  # the largest tensor's bytes, well inside its entry
            entry = max(archive.infolist(), key=lambda i: i.file_size)
        raw = bytearray(checkpoint.read_bytes())
        start = raw.index(entry.filename.encode(), entry.header_offset) + len(entry.filename) + 200
        raw[start:start + 64] = bytes(255 - b for b in raw[start:start + 64])
        checkpoint.write_bytes(bytes(raw))
        torch.load(checkpoint, weights_only=True)  # what torch alone makes of it: no complaint
    proc = run_cli(args, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "checkpoint.pt" in last and "move it away" in last
    said = {"garbage": "corrupt", "a part missing": "not a whole checkpoint of this trainer (KeyError",
            "epoch edited": "is after epoch 3 but holds 1 epochs"}
    assert (said.get(damage) or f"corrupt (entry {entry.filename} fails its CRC-32)") in last
    assert (run_dir / "metrics.csv").read_bytes() == metrics_before
    assert summary(run_dir)["status"] == "failed"


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.keep_freed_memory=3", "trainer.keep_freed_memory"),
    ("model.batch_norm=maybe", "model.batch_norm"),
    ("trainer.epochs=true", "trainer.epochs"),  # YAML's true is no integer, although Python's bool is
    ("optimizer.lr=abc", "optimizer.lr"),
    ("optimizer.lr=true", "optimizer.lr"),
    ("model.depth=21", "model.depth"),
    ("trainer.compile=yes", "trainer.compile"),
    ("optimizer.exclude_norm_and_bias='false'", "optimizer.exclude_norm_and_bias"),  # a string: it was true
    ("loss_multiplier=inf", "loss_multiplier"),
    ("seed=1.5", "seed"),  # it trained as seed 1, recorded as another run
    ("seed=abc", "seed"),
    ("data.train_size=100.5", "data.train_size"),
    ("data.subset_seed=abc", "data.subset_seed"),
    ("trainer.device=gpu", "trainer.device"),
    ("trainer.device=meta", "trainer.device"),
    ("trainer.progress=sometimes", "trainer.progress"),
    ("schedule=multistep schedule.milestones=0.5", "schedule.milestones"),
])
def test_bad_numbers_fail_before_training_with_one_line(tmp_path, override, key):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, *override.split(" "), f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: ConfigError: {key} must be")
    assert not (run_dir / "metrics.csv").exists()
    # Said once on the console, and kept in the run's log file.
    assert (proc.stdout + proc.stderr).count(f"{key} must be") == 1
    assert f"ConfigError: {key} must be" in (run_dir / "train.log").read_text()


def test_a_non_number_says_it_must_be_a_number(tmp_path):
    proc = run_cli([*TINY, "optimizer.lr=abc", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.stderr.strip().splitlines()[-1] == ("error: ConfigError: optimizer.lr must be a number > 0 (got 'abc'); "
                                                    "e.g. optimizer.lr=1e-3")


@pytest.mark.parametrize("overrides, line", [
    (["schedule=cosine", "schedule.warmup_epochs=3", "trainer.epochs=2"],
     "error: ConfigError: schedule.warmup_epochs=3 is not shorter than trainer.epochs=2, so the schedule would never "
     "leave its warmup; use fewer warmup epochs or more epochs"),
    (["trainer.batch_size=100000"],
     "error: ConfigError: trainer.batch_size=100000 is larger than the 256 training images, so an epoch would have no "
     "batch; use trainer.batch_size <= 256, or more images (data.subset)"),
    (["data.subset=5"],
     "error: ValueError: data.subset=5 is smaller than the 10 classes, so some class would have no image; use "
     "data.subset >= 10"),
], ids=["warmup_longer_than_the_run", "batch_larger_than_the_data", "subset_smaller_than_the_classes"])
def test_settings_that_cannot_train_name_the_real_remedy(tmp_path, overrides, line):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == line
    assert not (run_dir / "metrics.csv").exists()


def test_missing_data_root_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere" / "cifar10"
    # No network: a proxy that refuses connections makes the download attempt fail at once.
    offline = cli_env(tmp_path, https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    proc = run_cli(["data=cifar10", f"data.root={missing}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                   env=offline, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DatasetNotFoundError") and str(missing) in last and "download failed" in last
    # The accepted layouts, where to get the files, and how to point at them.
    for part in ("cifar-10-batches-py/", "train/<class>/", "https://www.cs.toronto.edu/~kriz/cifar.html",
                 "DNM_DATA_ROOT"):
        assert part in last
    assert not (tmp_path / "nowhere").exists()


def test_unknown_optimizer_lists_the_choices(tmp_path):
    proc = run_cli([*TINY, "optimizer=adamq", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode != 0
    assert "adamq" in proc.stderr and "adamp" in proc.stderr and "proxadam" in proc.stderr


def test_wandb_offline_run_lives_in_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    env = cli_env(tmp_path)
    env.pop("WANDB_MODE")  # no key, no mode: the trainer itself must choose offline
    run_cli([*[a for a in TINY if a != "logger=none"], "logger=wandb", "trainer.epochs=2", "name=wandbtest",
             f"hydra.run.dir={run_dir}"], env=env)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").glob("*"))
    assert list(runs[0].glob("*.wandb")), "the offline run has no data file"
    assert summary(run_dir)["status"] == "finished"


def test_wandb_with_a_key_but_no_network_falls_back_to_offline_once_per_process(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # A configured key makes the runs go online; the server address refuses connections.
    env = cli_env(tmp_path, WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="10")
    env.pop("WANDB_MODE")
    proc = run_cli(["-m", *[a for a in TINY if a != "logger=none"], "logger=wandb", "trainer.epochs=1", "seed=0,1",
                    f"hydra.sweep.dir={sweep_dir}"], env=env)
    out = proc.stdout + proc.stderr
    # The first job of the sweep tries online and falls back; the second goes offline at once
    # instead of waiting out the init timeout again.
    assert out.count("W&B online init failed (") == 1, out
    assert out.count("W&B online init already failed in this process") == 1, out
    run_dirs = sorted(d for d in sweep_dir.iterdir() if (d / "summary.json").exists())
    assert len(run_dirs) == 2, list(sweep_dir.iterdir())
    for run_dir in run_dirs:
        assert summary(run_dir)["status"] == "finished"
        runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((run_dir / "wandb").glob("*"))
    online_attempts = [r for d in run_dirs for r in (d / "wandb").glob("run-*")]
    assert len(online_attempts) == 1, online_attempts


def test_rerun_without_a_checkpoint_starts_over_but_keeps_the_earlier_metrics(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.epochs=3", "trainer.checkpoint=false", f"hydra.run.dir={run_dir}"]
    _kill_after_first_epoch(args, run_dir)
    earlier = (run_dir / "metrics.csv").read_text()
    proc = run_cli(args)
    assert "training from epoch 1 again" in proc.stdout + proc.stderr
    assert (run_dir / "metrics.before-restart.csv").read_text() == earlier
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1, 2, 3]
    assert summary(run_dir)["status"] == "finished"
