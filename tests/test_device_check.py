"""scripts/device_check.sh, dry-run on this CPU: every stage runs, is recorded, and leaves its files in $OUT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli import REPO, cli_env
from PIL import Image

sys.path.insert(0, str(REPO / "scripts"))
import collect  # noqa: E402
import dataset_archive  # noqa: E402
import full_scale  # noqa: E402
import source_stamp  # noqa: E402

from experiments.run_info import git_commit  # noqa: E402

TINY = "data=synthetic data.train_size=64 data.test_size=20 trainer.batch_size=16 trainer.epochs=1"


def _python3_path(tmp_path: Path) -> str:
    """A PATH whose python3 is this interpreter, as the GPU machine's python3 is its torch environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_the_device_check_runs_every_stage_and_packs_its_outputs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # A stamp that names another commit: what the runs record must come from it, not from git here.
    stamp = tmp_path / "source_stamp.json"
    source_stamp.write(stamp, REPO)
    stamped = json.loads(stamp.read_text())
    stamped["commit"] = "f" * 40
    stamp.write_text(json.dumps(stamped))
    expected_commit = "f" * 40 + ("-dirty" if git_commit().endswith("-dirty") else "")
    # Rates of an earlier benchmark (GRID_BENCH) at which the window does not fit but each half does (a pack of
    # 12 at any speed still takes the minute of start-up): the grid stage runs part 1 of 2.
    grid_bench = tmp_path / "earlier_bench.json"
    grid_bench.write_text(json.dumps({
        "pipelines": {"packed_12_grouped": {"kind": "pack", "members": 12, "route": "grouped", "compile": None},
                      "packed_24_loop": {"kind": "pack", "members": 24, "route": "loop", "compile": None}},
        "images_per_s": {"packed_12_grouped": {"median": 1e9}, "packed_24_loop": {"median": 1.0}}}))
    env = cli_env(tmp_path, PATH=_python3_path(tmp_path), OUT=str(out), WORK=str(work),
                  DEVICE="cpu", DEADLINE_S="900", SOURCE_STAMP=str(stamp), TESTS_SELECT="single_fused_adamw",
                  BENCH_ARGS="--ks 2 --routes loop,grouped --steps 1 --warmup 0 --rounds 1 --min-time 0 "
                             "--batch-size 8 --workers 0 --no-reference --profile --profile-steps 1",
                  OPTIM_ARGS="--steps 1 --repeats 1 --warmup 0", RUN_ARGS=TINY,
                  PRECISION_ARGS="trainer.precision=fp32,bf16 seed=0,1", PRECISION_NEEDS_S="0",
                  GRID_ARGS="optimizer.lr=1e-3 optimizer.weight_decay=1e-4,1e-2", GRID_BENCH=str(grid_bench))
    proc = subprocess.run(["bash", "scripts/device_check.sh", "tests", "bench", "precision", "grid", "optim"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert [(s["stage"], s["result"]) for s in stages] == [("tests", "ok"), ("bench", "ok"), ("precision", "ok"),
                                                           ("grid", "ok"), ("optim", "ok")], stages
    assert "fused_adamw_x24_per_member" in json.loads((out / "bench_optimizers.json").read_text())["results"]
    bench = json.loads((out / "bench.json").read_text())
    assert {"packed_2_loop", "packed_2_grouped"} <= set(bench["images_per_s"])
    assert bench["profile"]["packed_2_grouped"]["host_ops_per_step"] > 0
    # The window did not fit at GRID_BENCH's rates: its first half ran, on the route measured for 12 members.
    assert ("grid: window blog-s0.1of2 (experiment=blog_adamw_vs_adamp seed=0 optimizer=adamw, 12 runs, 30 M "
            "images), route grouped, compile false, 1000000000 img/s for its packs") in proc.stdout
    precision = json.loads((out / "precision.json").read_text())
    assert set(precision["acceptable"]) == {"fp32", "tf32", "bf16"} and precision["seeds"] == [0, 1]
    assert "Cheapest acceptable precision" in (out / "precision.md").read_text()
    with tarfile.open(out / "grid_blog-s0.1of2.tar.gz") as tar:
        names = tar.getnames()
        summaries = [n for n in names if n.endswith("/summary.json")]
        recorded = {json.load(tar.extractfile(n))["git_commit"] for n in summaries}
    assert len(summaries) == 2 and not any(n.endswith(".pt") for n in names)
    # The part's run folders are named as the whole window's would be: only AdamW's, seed 0.
    assert all("optimizer=adamw," in n and ",seed=0," in n and "optimizer.lr=0.001," in n for n in summaries)
    assert recorded == {expected_commit} and bench["git_commit"] == expected_commit
    assert all("trainer.compile" not in n for n in summaries)  # compiling changes no run folder
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    assert (out / "device_check.log").read_text().count("===") >= 8
    # Brought home: the window's runs join the sweep folder collect.py reads.
    sweeps = tmp_path / "sweeps"
    assert full_scale.main(["merge", str(out / "grid_blog-s0.1of2.tar.gz"), "--into", str(sweeps)]) == 0
    assert collect.main([str(sweeps / "blog_adamw_vs_adamp"), "-o", str(tmp_path / "grid.csv")]) == 0
    import pandas as pd

    results = pd.read_csv(tmp_path / "grid.csv")
    assert len(results) == 2 and set(results["status"]) == {"finished"} and set(results["optimizer"]) == {"adamw"}
    assert set(results["git_commit"]) == {expected_commit}


def test_a_grid_command_after_the_benchmark_finds_its_rates_on_the_warm_machine(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    # What an earlier command's bench stage left in $WORK ($OUT is emptied between commands): a window of 24
    # does not fit at its rates, a half (12 members: on the line from 4 to 24) does.
    (work / "bench.json").write_text(json.dumps({
        "pipelines": {"packed_4_vmap": {"kind": "pack", "members": 4, "route": "vmap", "compile": None},
                      "packed_24_grouped": {"kind": "pack", "members": 24, "route": "grouped", "compile": None}},
        "images_per_s": {"packed_4_vmap": {"median": 1e9}, "packed_24_grouped": {"median": 1.0}}}))
    env = cli_env(tmp_path, PATH=_python3_path(tmp_path), OUT=str(out), WORK=str(work), DEVICE="cpu",
                  DEADLINE_S="400", RUN_ARGS=TINY, GRID_ARGS="optimizer.lr=1e-3 optimizer.weight_decay=1e-4")
    proc = subprocess.run(["bash", "scripts/device_check.sh", "grid"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"from {work / 'bench.json'}" in proc.stdout and "grid: window blog-s0.1of2 (" in proc.stdout
    assert json.loads((out / "stages.json").read_text())[0]["result"] == "ok"
    with tarfile.open(out / "grid_blog-s0.1of2.tar.gz") as tar:  # AdamW (the part) at lr 1e-3, wd 1e-4
        summaries = [n for n in tar.getnames() if n.endswith("/summary.json")]
    assert len(summaries) == 1 and "optimizer=adamw," in summaries[0]
    # A GRID_BENCH that did not travel: a recorded failure that says what to do, nothing trained.
    proc = subprocess.run(["bash", "scripts/device_check.sh", "grid"], cwd=REPO, text=True, capture_output=True,
                          env={**env, "GRID_BENCH": "results/benchmark_cuda/missing.json"}, timeout=120)
    result = json.loads((out / "stages.json").read_text())[0]["result"]
    assert result.startswith("failed (GRID_BENCH=results/benchmark_cuda/missing.json is not there; commit it"), result


def _image_folders(root: Path) -> dict[str, bytes]:
    """A CIFAR-10-like copy in miniature: 2 splits x 2 classes x 4 JPEGs of quality 75, as the shared copy was
    encoded; returns each file's bytes by its path under root."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                smooth = np.linspace(0, 200, 32)[None, :, None] + rng.integers(0, 40, (32, 32, 3))
                Image.fromarray(smooth.astype(np.uint8)).save(root / split / cls / f"{i:04d}.jpg", quality=75)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_dataset_travels_as_an_archive_smaller_than_its_files_and_comes_back_byte_for_byte(tmp_path, capsys):
    files = _image_folders(tmp_path / "source")
    archive = tmp_path / "bundle" / "data.tar.gz"
    dataset_archive.main(["pack", str(tmp_path / "source"), str(archive)])
    # The JPEGs' shared headers are stored about once: under 70% of the JPEG bytes even for 16 files.
    assert archive.stat().st_size < 0.7 * sum(len(b) for b in files.values())
    dataset_archive.main(["unpack", str(archive), str(tmp_path / "unpacked")])
    assert _files(tmp_path / "unpacked") == files
    assert "16 files" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists; remove it"):  # never over an existing copy
        dataset_archive.main(["unpack", str(archive), str(tmp_path / "unpacked")])


def _fresh(source: Path, archive: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        dataset_archive.main(["fresh", str(source), str(archive)])
    return exc.value.code, capsys.readouterr().out


def test_an_archive_is_stale_once_its_source_folder_changes(tmp_path, capsys):
    _image_folders(tmp_path / "source")
    source, archive = tmp_path / "source", tmp_path / "bundle" / "data.tar.gz"
    assert _fresh(source, archive, capsys) == (1, f"stale: no archive at {archive}\n")
    dataset_archive.pack(source, archive)
    assert _fresh(source, archive, capsys) == (0, f"{archive}: up to date with {source}\n")
    first = sorted(p for p in source.rglob("*.jpg"))[0]
    stat = first.stat()
    first.write_bytes(bytes(reversed(first.read_bytes())))  # same size, other bytes
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    code, out = _fresh(source, archive, capsys)
    assert code == 1 and out.startswith(f"stale: {source} has changed since {archive} was packed (16 files")
    dataset_archive.pack(source, archive)
    assert _fresh(source, archive, capsys)[0] == 0
    (first.parent / "extra.jpg").write_bytes(first.read_bytes())
    code, out = _fresh(source, archive, capsys)
    assert code == 1 and "(16 files, " in out and "; 17 files, " in out
    dataset_archive.pack(source, archive)
    (archive.parent / "data.tar.gz.source").unlink()  # an archive made before signatures, or by hand
    code, out = _fresh(source, archive, capsys)
    assert code == 1 and "has no readable record of its source" in out


@pytest.mark.parametrize("damage", ["flipped", "cut_short"])
def test_a_damaged_dataset_archive_is_a_one_line_error_and_leaves_no_partial_copy(damage, tmp_path):
    _image_folders(tmp_path / "source")
    archive = tmp_path / "data.tar.gz"
    dataset_archive.pack(tmp_path / "source", archive)
    data = bytearray(archive.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) * 3 // 4:]
    archive.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exc:
        dataset_archive.main(["unpack", str(archive), str(tmp_path / "unpacked")])
    message = str(exc.value)
    assert message.startswith(f"error: {archive} cannot be unpacked (") and "\n" not in message
    assert message.endswith("make it again with scripts/device_bundle.sh")
    # No dest, no temporary folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tar.gz", "data.tar.gz.source", "source"]


def test_the_device_check_unpacks_the_carried_dataset_once_per_machine(tmp_path):
    files = _image_folders(tmp_path / "source")
    archive, data_dir = tmp_path / "carried.tar.gz", tmp_path / "machine" / "cifar10-jpeg"
    dataset_archive.pack(tmp_path / "source", archive)
    env = cli_env(tmp_path, PATH=_python3_path(tmp_path), OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"),
                  DEVICE="cpu", DATA_ARCHIVE=str(archive), DATA_DIR=str(data_dir))
    env.pop("DNM_DATA_ROOT", None)  # as on the bare machine
    for unpacks in (True, False):  # the second command finds the first one's copy on the warm machine
        proc = subprocess.run(["bash", "scripts/device_check.sh", "env"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (f"{data_dir}: 16 files from {archive}" in proc.stdout) is unpacks
        assert f"data: {data_dir} (16 files)" in proc.stdout
    assert _files(data_dir) == files


def _fake_summary(root: Path, method: str, precision: str, seed: int, acc: float, norm: float,
                  status: str = "finished") -> None:
    run = root / f"optimizer={method},seed={seed},trainer.precision={precision}"
    run.mkdir(parents=True)
    cfg = {"optimizer": {"name": method}, "trainer": {"precision": precision, "epochs": 5}, "seed": seed}
    (run / "summary.json").write_text(json.dumps({"status": status, "epochs_completed": 5 if status == "finished" else 2,
                                                  "config": cfg, "final": {"test_acc": acc, "model_norm": norm}}))


def test_the_precision_check_accepts_a_precision_only_within_half_the_seed_spread(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("precision_check", REPO / "scripts" / "precision_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    seed_effect = [0.0, 0.01, -0.01, 0.005]  # fp32 seed std of accuracy: about 0.009
    for method in ("adamw", "adamp"):
        for seed, effect in enumerate(seed_effect):
            _fake_summary(tmp_path, method, "fp32", seed, 0.60 + effect, 30.0 + 10 * effect)
            _fake_summary(tmp_path, method, "tf32", seed, 0.60 + effect + 0.001, 30.0 + 10 * effect)
            _fake_summary(tmp_path, method, "bf16", seed, 0.60 + effect + 0.02, 30.0 + 10 * effect)  # 2 points off
    assert check.main([str(tmp_path), "--json", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["acceptable"] == {"fp32": True, "tf32": True, "bf16": False} and report["choice"] == "tf32"
    bf16 = next(r for r in report["rows"] if r["precision"] == "bf16" and r["method"] == "adamw")
    assert abs(bf16["test_acc"]["paired_diff"] - 0.02) < 1e-12 and bf16["test_acc"]["paired_diff_std"] < 1e-12
    assert "> ½ seed std" in capsys.readouterr().out
    # A run that did not finish is named and makes the check fail; it is never silently left out.
    _fake_summary(tmp_path, "adamw", "bf16", 4, 0.1, 1.0, status="failed")
    assert check.main([str(tmp_path)]) == 1
    assert "status failed, 2 epochs" in capsys.readouterr().out


def test_a_precision_with_a_run_that_did_not_finish_is_never_chosen(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("precision_check", REPO / "scripts" / "precision_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    for method in ("adamw", "adamp"):
        for seed, effect in enumerate([0.0, 0.01, -0.01, 0.005]):
            _fake_summary(tmp_path, method, "fp32", seed, 0.60 + effect, 30.0 + 10 * effect)
            _fake_summary(tmp_path, method, "tf32", seed, 0.60 + effect, 30.0 + 10 * effect)
            if (method, seed) == ("adamp", 3):  # bf16: one run diverged, one never started (the deadline)
                _fake_summary(tmp_path, method, "bf16", seed, 0.1, 1.0, status="diverged")
            elif (method, seed) != ("adamw", 2):
                _fake_summary(tmp_path, method, "bf16", seed, 0.60 + effect, 30.0 + 10 * effect)
    assert check.main([str(tmp_path), "--json", str(tmp_path / "p.json"), "-o", str(tmp_path / "p.md")]) == 1
    report = json.loads((tmp_path / "p.json").read_text())
    # On the seeds that finished bf16 is indistinguishable from fp32, yet it is not acceptable.
    assert report["acceptable"] == {"fp32": True, "tf32": True, "bf16": False} and report["choice"] == "tf32"
    assert report["incomplete"]["bf16"] == ["adamp seed 3 (bf16)", "adamw seed 2 (bf16)"]
    assert "- bf16 cannot be accepted: not finished: adamp seed 3 (bf16), adamw seed 2 (bf16)" in \
        (tmp_path / "p.md").read_text()


def test_the_source_stamp_names_the_commit_only_for_an_unchanged_copy(tmp_path, capsys):
    # The hash is git's own object id for the file's content.
    readme = subprocess.run(["git", "-C", str(REPO), "hash-object", "README.md"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert source_stamp.blob_hash(REPO / "README.md") == readme
    stamp = tmp_path / "stamp.json"
    assert source_stamp.main(["write", str(stamp), "--root", str(REPO)]) == 0
    assert "files" in capsys.readouterr().out
    payload = json.loads(stamp.read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert payload["commit"] == head and "experiments/engine.py" in payload["files"]
    # A copy of two of HEAD's files, stamped with just those: the commit, clean; one changed: -dirty, named.
    copy = tmp_path / "copy"
    for path in ("README.md", "experiments/engine.py"):
        content = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{path}"], capture_output=True,
                                 check=True).stdout
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_bytes(content)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"commit": head, "files": {p: payload["files"][p]
                                                           for p in ("README.md", "experiments/engine.py")}}))
    assert source_stamp.check(small, copy) == (head, [])
    (copy / "experiments/engine.py").write_text((copy / "experiments/engine.py").read_text() + "# edited\n")
    assert source_stamp.check(small, copy) == (head + "-dirty", ["experiments/engine.py"])
    (copy / "README.md").unlink()
    assert source_stamp.main(["check", str(small), "--root", str(copy)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == head + "-dirty"
    assert "2 files differ from the stamped commit (README.md, experiments/engine.py)" in captured.err
    # A broken stamp is a one-line error, not a commit.
    small.write_text("{not json")
    assert source_stamp.main(["check", str(small), "--root", str(copy)]) == 2
    assert "make it with scripts/device_bundle.sh" in capsys.readouterr().err


def test_dnm_git_commit_is_the_commit_a_run_records(tmp_path):
    code = "from experiments.run_info import git_commit; print(git_commit())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(tmp_path, DNM_GIT_COMMIT="abc123"),
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "abc123"
