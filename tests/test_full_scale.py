"""scripts/full_scale.py: the full-scale experiments as GPU windows, and bringing a window's runs home."""
from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from cli import REPO

sys.path.insert(0, str(REPO / "scripts"))
import full_scale  # noqa: E402


def _key(run: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in run.items()))


def test_the_windows_of_each_experiment_are_its_whole_sweep_each_run_once():
    by_experiment: dict[str, list[dict]] = {}
    for w in full_scale.WINDOWS:
        g = full_scale.grid(w)
        assert len(g.runs) <= 24 and g.images <= 60_000_000, w  # one device command at the engine's target
        assert g.epochs == 50 and g.train_images == 50_000, w  # full scale: all of CIFAR-10, 50 epochs
        by_experiment.setdefault(w.experiment, []).extend(g.runs)
    assert set(by_experiment) == {"blog_adamw_vs_adamp", "scale_free", "blog_bn", "l2_vs_decoupled_near"}
    for experiment, runs in by_experiment.items():
        whole = full_scale.grid(full_scale.Window("all", 0, experiment, ())).runs
        assert Counter(map(_key, runs)) == Counter(map(_key, whole)), experiment  # none missing, none twice
    blog = full_scale.grid(full_scale.window("blog-s0"))
    assert len(blog.runs) == 24 and {r["seed"] for r in blog.runs} == {0}
    assert {r["optimizer"] for r in blog.runs} == {"adamw", "adamp"}
    assert {r["optimizer.lr"] for r in blog.runs} == {1e-3, 1e-2, 1e-1}
    assert {r["optimizer.weight_decay"] for r in blog.runs} == {1e-5, 1e-4, 1e-3, 1e-2}
    # The post's grid has 3 seeds, the BN grid too; the scale-freeness sweep 4 methods x 3 c x 3 seeds.
    assert len(by_experiment["blog_adamw_vs_adamp"]) == len(by_experiment["blog_bn"]) == 72
    assert len(by_experiment["scale_free"]) == 36
    zhuang = by_experiment["l2_vs_decoupled_near"]
    assert len(zhuang) == 72 and {r["model.batch_norm"] for r in zhuang} == {True, False}
    assert {r["optimizer.weight_decay"] for r in zhuang} == {0, 5e-5, 5e-4, 5e-3}
    assert full_scale.grid(full_scale.window("blog_bn-s1")).sweep_id == "blog_bn"


def test_an_unknown_window_is_a_one_line_error(capsys):
    assert full_scale.main(["overrides", "blog-s9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown window 'blog-s9'; choose from blog-s0" in err


def _run(root: Path, name: str, status: str, *, lr: float = 1e-3, seed: int = 0, epochs: int = 50,
         marker: str = "") -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4}, "seed": seed,
              "model": {"batch_norm": False}}
    (run / "summary.json").write_text(json.dumps({
        "status": status, "config": config, "epochs_completed": epochs if status == "finished" else 3,
        "hparams": {"optimizer": "adamw", "lr": lr, "weight_decay": 1e-4, "seed": seed, "data.fingerprint": "f"}}))
    (run / "metrics.csv").write_text(f"epoch,test_acc\n1,0.5{marker}\n")
    return run


def _tarball(tmp_path: Path, runs: list[tuple[str, str, dict]], extra: dict[str, str] | None = None) -> Path:
    src = tmp_path / "device" / "blog_adamw_vs_adamp"
    for name, status, kw in runs:
        _run(src, name, status, marker="device", **kw)
    for name, text in (extra or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    path = tmp_path / "grid.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="blog_adamw_vs_adamp")
    return path


def test_merge_adds_new_runs_replaces_unfinished_ones_and_keeps_done_ones(tmp_path, capsys):
    home = tmp_path / "sweeps"
    here = home / "blog_adamw_vs_adamp"
    _run(here, "b", "interrupted")
    _run(here, "c", "finished")
    (here / "multirun.yaml").write_text("ours\n")
    tarball = _tarball(tmp_path, [("a", "finished", {}), ("b", "finished", {}), ("c", "finished", {})],
                       {"multirun.yaml": "theirs\n", ".packs/pack-0/pack.log": "log\n"})
    assert full_scale.main(["merge", str(tarball), "--into", str(home)]) == 0
    out = capsys.readouterr().out
    assert "add      blog_adamw_vs_adamp/a" in out and "replace  blog_adamw_vs_adamp/b" in out
    assert "keep     blog_adamw_vs_adamp/c  (already finished here" in out
    assert "2 of 3 run folders added or replaced" in out
    assert "python scripts/collect.py" in out and "results/blog_adamw_vs_adamp.csv" in out
    for name, origin in (("a", "device"), ("b", "device"), ("c", "")):
        assert (here / name / "metrics.csv").read_text() == f"epoch,test_acc\n1,0.5{origin}\n", name
        assert json.loads((here / name / "summary.json").read_text())["status"] == "finished"
    assert (here / "multirun.yaml").read_text() == "ours\n"  # sweep-level files: ours stay, missing ones come
    assert (here / ".packs" / "pack-0" / "pack.log").read_text() == "log\n"
    assert not list(home.glob(".merge-*"))  # nothing staged is left behind
    # The same tarball again changes nothing.
    assert full_scale.main(["merge", str(tarball), "--into", str(home)]) == 0
    assert "0 of 3 run folders added or replaced" in capsys.readouterr().out


def test_merge_refuses_another_run_under_the_same_folder_and_writes_nothing(tmp_path, capsys):
    home = tmp_path / "sweeps"
    here = home / "blog_adamw_vs_adamp"
    _run(here, "b", "interrupted", lr=1e-2)
    tarball = _tarball(tmp_path, [("a", "finished", {}), ("b", "finished", {})])
    assert full_scale.main(["merge", str(tarball), "--into", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blog_adamw_vs_adamp/b holds another run than the tarball's (lr: 0.01 -> 0.001)" in err
    assert not (here / "a").exists() and json.loads((here / "b" / "summary.json").read_text())["status"] == "interrupted"
    assert not list(home.glob(".merge-*"))


@pytest.mark.parametrize("content", ["not a tarball", "empty", "truncated"])
def test_merge_of_a_corrupt_tarball_is_a_one_line_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.tar.gz"
    if content == "truncated":  # a copy cut short on its way back
        whole = _tarball(tmp_path, [(f"run{i}", "finished", {}) for i in range(30)]).read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        bad.write_bytes(b"" if content == "empty" else content.encode())
    assert full_scale.main(["merge", str(bad), "--into", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot unpack" in err and "bring it back from the device again" in err


def test_plan_counts_each_windows_runs_by_status_and_names_the_next_window(tmp_path):
    sweep = tmp_path / "blog_adamw_vs_adamp"
    g = full_scale.grid(full_scale.window("blog-s0"))
    for i, run in enumerate(g.runs):
        config = {"optimizer": {"name": run["optimizer"], "lr": run["optimizer.lr"],
                                "weight_decay": run["optimizer.weight_decay"]}, "seed": run["seed"],
                  "trainer": {"epochs": 50}, "data": {"name": "cifar10", "subset": None}}
        status = "diverged" if i == 0 else "finished"
        (sweep / f"run{i}").mkdir(parents=True)
        (sweep / f"run{i}" / "summary.json").write_text(json.dumps({"status": status, "config": config}))
    # One run of seed 1 is there, cut short; another, finished, trained on a subset: not a full-scale run.
    for name, status, subset in (("s1", "interrupted", None), ("s1-subset", "finished", 2000)):
        (sweep / name).mkdir()
        (sweep / name / "summary.json").write_text(json.dumps({"status": status, "config": {
            "optimizer": {"name": "adamp", "lr": 1e-3 if subset is None else 1e-2, "weight_decay": 1e-4}, "seed": 1,
            "trainer": {"epochs": 50}, "data": {"name": "cifar10", "subset": subset}}}))
    counts = full_scale.window_status(g, full_scale.read_summaries(sweep))
    assert counts == {"done": 24}
    s1 = full_scale.grid(full_scale.window("blog-s1"))
    assert full_scale.window_status(s1, full_scale.read_summaries(sweep)) == {"missing": 23, "interrupted": 1}
    table = full_scale.plan(tmp_path)
    assert "| blog-s0 | 1 | blog_adamw_vs_adamp seed=0 | 24 | 60 M | 24 done |" in table
    assert "| blog-s1 | 2 | blog_adamw_vs_adamp seed=1 | 24 | 60 M | 1 interrupted, 23 missing |" in table
    assert 'Next: run(command="GRID_WINDOW=blog-s1 bash scripts/device_check.sh env grid"' in table
