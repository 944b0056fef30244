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
    assert f"next: python scripts/full_scale.py publish {home / 'blog_adamw_vs_adamp'}" in out
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


def _bench(path: Path, rates: dict[str, tuple[int, str, str | None, float]]) -> Path:
    """A scripts/benchmark.py JSON holding these pipelines: name -> (members, route, compile, images/s)."""
    path.write_text(json.dumps({
        "pipelines": {n: {"kind": "single" if n.startswith("single") else "pack", "members": k, "route": r,
                          "compile": c} for n, (k, r, c, _) in rates.items()},
        "images_per_s": {n: {"median": v} for n, (_, _, _, v) in rates.items()}}))
    return path


RATES = {"single": (1, "loop", None, 20_000.0), "packed_4_vmap": (4, "vmap", None, 40_000.0),
         "packed_12_grouped": (12, "grouped", None, 60_000.0), "packed_24_grouped": (24, "grouped", None, 70_000.0),
         "packed_24_grouped_reduce-overhead": (24, "grouped", "reduce-overhead", 90_000.0)}


@pytest.mark.parametrize("name", [w.name for w in full_scale.WINDOWS])
def test_every_cut_of_a_window_is_parts_of_whole_runs_each_run_once(name):
    w = full_scale.window(name)
    whole = full_scale.grid(w)
    counts = full_scale.part_counts(whole)
    assert counts[0] == 1 and counts[-1] == len(whole.runs)
    for count in counts:
        cut = full_scale.parts(w, count)
        assert [p.name for p in cut] == ([name] if count == 1 else [f"{name}.{i}of{count}" for i in
                                                                    range(1, count + 1)])
        runs = [run for p in cut for run in full_scale.grid(p).runs]
        assert Counter(map(_key, runs)) == Counter(map(_key, whole.runs)), count  # none missing, none twice
        assert {len(full_scale.grid(p).runs) for p in cut} == {len(whole.runs) // count}
        for p in cut:  # each key once on the command line: a cut axis the window set is replaced, not repeated
            keys = [o.split("=", 1)[0] for o in p.overrides]
            assert len(keys) == len(set(keys)), p
            assert full_scale.resolve(p.name) == p


def test_a_part_is_cut_along_the_fewest_axes_and_named_as_the_sweeper_writes_values():
    half, quarter = full_scale.resolve("blog-s0.2of2"), full_scale.resolve("blog-s0.1of4")
    assert half.overrides == ("seed=0", "optimizer=adamp")
    assert quarter.overrides == ("seed=0", "optimizer.weight_decay=1e-05")  # what run folder names hold
    assert {r["optimizer.weight_decay"] for r in full_scale.grid(quarter).runs} == {1e-5}
    assert full_scale.resolve("scale_free-s01.2of2").overrides == ("seed=1",)
    # Packs: two seeds cannot share one (packed_init=shared), methods and loss multipliers can.
    assert full_scale.grid(full_scale.window("scale_free-s01")).pack_sizes() == [12, 12]
    assert full_scale.grid(full_scale.window("blog-s0")).pack_sizes() == [24]


@pytest.mark.parametrize("name, message", [
    ("blog-s0.1of5", "window blog-s0 (24 runs) cannot be cut into 5 parts along its axes; choose from 1, 2, 3, 4, 6"),
    ("blog-s0.3of2", "part blog-s0.3of2: I in WINDOW.IofN runs from 1 to N"),
    ("blog-s9.1of2", "unknown window 'blog-s9'"),
])
def test_a_bad_part_is_a_one_line_error(capsys, name, message):
    assert full_scale.main(["overrides", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_rates_are_the_measured_ones_or_the_line_between_two_sizes(tmp_path):
    rates = full_scale.bench_rates(_bench(tmp_path / "bench.json", RATES))
    assert rates[24] == full_scale.Rate(24, 90_000.0, "grouped", "reduce-overhead")  # the fastest of a size
    assert rates[1] == full_scale.Rate(1, 20_000.0, "loop", "false")
    assert full_scale.rate_for(rates, 12) == rates[12]
    eight = full_scale.rate_for(rates, 8)  # half way from 4 to 12; nearer 12 by ratio
    assert eight.images_per_s == pytest.approx(50_000.0) and eight.route == "grouped"
    six = full_scale.rate_for(rates, 6)
    assert six.images_per_s == pytest.approx(45_000.0) and six.route == "vmap"
    assert full_scale.rate_for(rates, 48).images_per_s == 90_000.0  # beyond the largest: the largest's
    assert full_scale.rate_for({12: rates[12]}, 4) is None  # below the smallest: unknown
    # blog-s0 at 90,000 images/s, compiled: 60 M x 1.1 / 90,000 + 150 s of start-up and compiling.
    assert full_scale.estimate_s(full_scale.grid(full_scale.window("blog-s0")), rates) == 884
    # scale_free-s01 is two packs of 12, one after the other.
    assert full_scale.estimate_s(full_scale.grid(full_scale.window("scale_free-s01")), rates) == 2 * (550 + 60)


def test_a_bad_bench_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bench.json"
    bad.write_text("{not json")
    assert full_scale.main(["device-plan", "blog-s0", "--bench", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a scripts/benchmark.py JSON" in err


def _shell(capsys, *argv: str) -> dict[str, str]:
    import shlex

    assert full_scale.main(["device-plan", *argv]) == 0
    return dict(shlex.split(line)[0].split("=", 1) for line in capsys.readouterr().out.splitlines())


def test_the_device_runs_the_window_if_it_fits_else_part_one_of_the_fewest_parts_that_fit(tmp_path, capsys):
    bench = str(_bench(tmp_path / "bench.json", RATES))
    whole = _shell(capsys, "blog-s0", "--bench", bench, "--seconds", "1000")  # 884 s: within 90% of it
    assert whole == {"window": "blog-s0", "overrides": "experiment=blog_adamw_vs_adamp seed=0",
                     "sweep": "blog_adamw_vs_adamp", "images": "60000000", "runs": "24", "route": "grouped",
                     "mode": "reduce-overhead", "rate": "90000", "need": "884"}
    # 480 s, 90% of it 432: halves (12 runs at 60,000/s: 610 s) and thirds (8 at 50,000/s: 500 s) do not fit,
    # quarters (6 at 45,000/s: 427 s) do.
    part = _shell(capsys, "blog-s0", "--bench", bench, "--seconds", "480")
    assert part["window"] == "blog-s0.1of4" and part["runs"] == "6" and part["route"] == "vmap"
    assert part["overrides"] == "experiment=blog_adamw_vs_adamp seed=0 optimizer.weight_decay=1e-05"
    assert int(part["need"]) <= 480
    # A part named is run as named; nothing fits: the window as named, its estimate over (the stage skips it).
    assert _shell(capsys, "blog-s0.2of2", "--bench", bench, "--seconds", "100")["window"] == "blog-s0.2of2"
    assert _shell(capsys, "blog-s0", "--bench", bench, "--seconds", "30")["need"] == "884"
    # No benchmark: the window as named, no estimate.
    unmeasured = _shell(capsys, "blog-s0", "--seconds", "30")
    assert unmeasured["window"] == "blog-s0" and unmeasured["need"] == unmeasured["rate"] == ""


def test_plan_sizes_parts_by_the_rates_and_names_a_part_none_of_whose_runs_is_there(tmp_path):
    bench = full_scale.bench_rates(_bench(tmp_path / "bench.json", RATES))
    sweep = tmp_path / "sweeps" / "blog_adamw_vs_adamp"
    for i, run in enumerate(full_scale.grid(full_scale.resolve("blog-s0.1of4")).runs):
        config = {"optimizer": {"name": run["optimizer"], "lr": run["optimizer.lr"],
                                "weight_decay": run["optimizer.weight_decay"]}, "seed": run["seed"],
                  "trainer": {"epochs": 50}, "data": {"name": "cifar10", "subset": None}}
        (sweep / f"run{i}").mkdir(parents=True)
        (sweep / f"run{i}" / "summary.json").write_text(json.dumps({"status": "finished", "config": config}))
    table = full_scale.plan(tmp_path / "sweeps", bench, 480)
    assert "| blog-s0 | 1 | blog_adamw_vs_adamp seed=0 | 24 | 60 M | 6 done, 18 missing | 4 |" in table
    assert "| scale_free-s2 | 3 | scale_free seed=2 | 12 | 30 M | 12 missing | 3 |" in table
    assert "Next: blog-s0.2of4 (seed=0 optimizer.weight_decay=0.0001; 6 runs, about 427 s)" in table
    assert 'run(command="GRID_WINDOW=blog-s0.2of4 bash scripts/device_check.sh env grid"' in table
    # At a rate where not one run fits, the plan says so.
    slow = {1: full_scale.Rate(1, 1_000.0, "loop", "false")}
    assert "No part of blog-s0, not even one run, fits in 480 s at these rates." in full_scale.plan(
        tmp_path / "sweeps", slow, 480)


def _full_scale_run(root: Path, w: full_scale.Window, index: int, status: str, acc: float) -> Path:
    """A run folder as the trainer writes it for run `index` of window w (its composed config and hparams)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from experiments import run_info

    g = full_scale.grid(w)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={w.experiment}", *g.names[index].split(",")])
    done = status == "finished"
    run = root / g.names[index]
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "status": status, "config": OmegaConf.to_container(cfg, resolve=True),
        "hparams": run_info.hparams(cfg, "fingerprint"), "epochs_completed": 50 if done else 3,
        "final": {"test_acc": acc, "test_loss": 1.0, "train_acc": acc, "train_loss": 1.0, "model_norm": 30.0},
        "best": {"test_acc": acc, "epoch": 50 if done else 3}}))
    rows = "".join(f"{epoch},{acc},1.0,10.0\n" for epoch in range(1, (50 if done else 3) + 1))
    (run / "metrics.csv").write_text(f"epoch,test_acc,train_loss,epoch_time_s\n{rows}")
    return run


def test_runs_of_a_window_that_came_home_in_part_are_collected_and_drawn_as_missing(tmp_path, capsys):
    import collect
    import figures

    w = full_scale.window("blog-s0")
    third = full_scale.resolve("blog-s0.1of3")  # lr 1e-3: 8 of the window's 24 runs
    g, g_third = full_scale.grid(w), full_scale.grid(third)
    src = tmp_path / "device" / "blog_adamw_vs_adamp"
    for k, name in enumerate(g_third.names):
        _full_scale_run(src, w, g.names.index(name), "interrupted" if k == 0 else "finished", 0.5 + k / 100)
    tarball = tmp_path / "grid_blog-s0.1of3.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="blog_adamw_vs_adamp")
    sweeps = tmp_path / "sweeps"
    assert full_scale.main(["merge", str(tarball), "--into", str(sweeps)]) == 0
    expected = json.loads((sweeps / "blog_adamw_vs_adamp" / "expected_runs.json").read_text())
    assert expected["windows"] == ["blog-s0"] and len(expected["runs"]) == 24
    assert {r["run_name"] for r in expected["runs"]} == set(g.names)
    capsys.readouterr()
    csv = tmp_path / "blog.csv"
    assert collect.main([str(sweeps / "blog_adamw_vs_adamp"), "-o", str(csv)]) == 0
    assert "16 of the 24 runs of blog-s0 that" in capsys.readouterr().err
    import pandas as pd

    df = pd.read_csv(csv)
    assert len(df) == 24 and df["status"].value_counts().to_dict() == {"missing": 16, "finished": 7, "interrupted": 1}
    missing = df[df["status"] == "missing"]
    assert set(missing["lr"]) == {1e-2, 1e-1} and set(missing["optimizer"]) == {"adamw", "adamp"}
    assert set(missing["epochs"]) == {50} and not missing["batch_norm"].any()
    # The figures are drawn, every cell of lr 1e-2 and 1e-1 marked incomplete, and the command says so.
    out = tmp_path / "figures"
    with pytest.raises(figures.IncompleteResults):
        figures.make_figures(csv, out)
    assert (out / "heatmap_test_acc.png").exists()
    lines = figures.incomplete_report(figures.load_results(csv), None, "test_acc")
    assert sum("lr 1e-2," in line or "lr 0.1," in line for line in lines) == 16  # 2 methods x 2 lr x 4 wd
    assert "17 run(s) did not complete: 16 missing, 1 interrupted." in figures.heatmap_caption(
        figures.load_results(csv), "final_test_acc", "native")
    # The rest of the window comes home: nothing is missing any more.
    rest = tmp_path / "device2" / "blog_adamw_vs_adamp"
    for i, name in enumerate(g.names):
        if name not in g_third.names:
            _full_scale_run(rest, w, i, "finished", 0.6)
    with tarfile.open(tmp_path / "rest.tar.gz", "w:gz") as tar:
        tar.add(rest, arcname="blog_adamw_vs_adamp")
    assert full_scale.main(["merge", str(tmp_path / "rest.tar.gz"), "--into", str(sweeps)]) == 0
    assert collect.main([str(sweeps / "blog_adamw_vs_adamp"), "-o", str(csv)]) == 0
    assert "missing" not in set(pd.read_csv(csv)["status"])


def test_an_unreadable_expected_runs_file_is_a_one_line_error_that_says_how_to_rewrite_it(tmp_path, capsys):
    import collect

    sweep = tmp_path / "sweeps" / "blog_adamw_vs_adamp"
    w = full_scale.window("blog-s0")
    _full_scale_run(sweep, w, 0, "finished", 0.5)
    (sweep / "expected_runs.json").write_text('{"runs": [')
    assert collect.main([str(sweep), "-o", str(tmp_path / "r.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected_runs.json is unreadable; write it again with python " \
                                    "scripts/full_scale.py expect" in err
    assert full_scale.main(["expect", str(sweep)]) == 0
    assert "24 runs of blog-s0" in capsys.readouterr().out
    assert collect.main([str(sweep), "-o", str(tmp_path / "r.csv")]) == 0
    assert "23 of the 24 runs of blog-s0" in capsys.readouterr().err
    # A sweep folder with no full-scale run: nothing to expect, said in one line.
    other = tmp_path / "sweeps" / "smoke"
    other.mkdir()
    assert full_scale.main(["expect", str(other)]) == 2
    assert "holds no run of a full-scale window" in capsys.readouterr().err


def test_provenance_says_how_much_of_the_started_windows_is_home(tmp_path, capsys):
    import provenance

    sweep = tmp_path / "sweeps" / "blog_adamw_vs_adamp"
    for i in range(3):
        _full_scale_run(sweep, full_scale.window("blog-s1"), i, "finished", 0.5)
    assert full_scale.main(["expect", str(sweep)]) == 0
    assert provenance.main([str(sweep)]) == 0
    assert ("- blog_adamw_vs_adamp: windows blog-s1 started, 24 runs expected, 3 run folders here (collect.py "
            "marks the others missing)") in capsys.readouterr().out


def test_the_precision_check_is_estimated_as_three_packs_of_eight(tmp_path, capsys):
    """What device_check.sh gates its precision stage on: a pack of 8 (2 methods x 4 seeds, packed_init=own) per
    precision, each member 3 epochs of 50,000 images."""
    g = full_scale.grid(full_scale.Window("precision_check", 0, "precision_check", ()))
    assert g.pack_sizes("own") == [8, 8, 8] and g.epochs == 3
    bench = _bench(tmp_path / "bench.json", RATES)
    assert full_scale.main(["estimate", "precision_check", "--bench", str(bench), "--packed-init", "own",
                            "--start-s", "30"]) == 0
    # 8 members at 50,000 images/s (on the line from 4 to 12): 8 x 150,000 x 1.1 / 50,000 + 30 s, three times.
    assert int(capsys.readouterr().out) == 170  # 3 x 56.4 = 169.2, rounded up


def test_publish_writes_an_experiments_results_figures_claims_and_provenance_even_when_part_is_home(tmp_path, capsys):
    w = full_scale.window("blog-s0")
    g = full_scale.grid(w)
    sweep = tmp_path / "sweeps" / "blog_adamw_vs_adamp"
    names = full_scale.grid(full_scale.resolve("blog-s0.1of3")).names  # lr 1e-3: 8 of the 24 runs
    for k, name in enumerate(names):
        _full_scale_run(sweep, w, g.names.index(name), "finished", 0.5 + k / 100)
    assert full_scale.main(["expect", str(sweep)]) == 0
    results = tmp_path / "results"
    capsys.readouterr()
    assert full_scale.main(["publish", str(sweep), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"blog_adamw_vs_adamp: 24 runs (16 missing, 8 finished) in {results / 'blog_adamw_vs_adamp.csv'}" in out
    import pandas as pd

    assert len(pd.read_csv(results / "blog_adamw_vs_adamp_curves.csv")) == 8 * 50  # 8 runs of 50 epochs
    assert (results / "figures" / "blog_adamw_vs_adamp" / "heatmap_test_acc.png").exists()
    claims_md = (results / "claims" / "blog_adamw_vs_adamp.md").read_text()
    assert "24 runs (8 completed)" in claims_md, claims_md[:400]
    assert "24 runs expected, 8 run folders here" in (results / "provenance" / "blog_adamw_vs_adamp.md").read_text()
    # A sweep folder that is not there: collect fails, nothing is drawn, and the command says where it stopped.
    assert full_scale.main(["publish", str(tmp_path / "sweeps" / "nothing"), "--results", str(results)]) == 1
    assert "publish failed at nothing: collect" in capsys.readouterr().err
    assert not (results / "figures" / "nothing").exists()
