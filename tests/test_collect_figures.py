"""scripts/collect.py and scripts/figures.py on fake run folders whose numbers the test knows."""
from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

import collect  # noqa: E402
import fake_runs  # noqa: E402
import figure_lib as lib  # noqa: E402
import figures  # noqa: E402

LRS = (1e-3, 1e-2, 1e-1)
WDS = (1e-5, 1e-4, 1e-3)
SEEDS = (0, 1, 2)
DIVERGED = {("adamw", 0.1, 1e-5): (0, 1, 2), ("adamw", 0.1, 1e-4): (2,)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two sweep folders: a grid of AdamW and AdamP, and one DecoupledAdamW run in the other."""
    base = tmp_path_factory.mktemp("sweeps")
    truth = fake_runs.write_fake_sweep(base / "grid", lrs=LRS, wds=WDS, seeds=SEEDS, diverged=DIVERGED)
    fake_runs.write_fake_run(base / "other", optimizer="decoupled_adamw", lr=1e-3, weight_decay=5e-5,
                             seed=0, test_acc=0.8, model_norm=30.0)
    (base / "grid" / "multirun.yaml").write_text("hydra: {}\n")
    return base, pd.DataFrame(truth)


@pytest.fixture(scope="module")
def collected(sweep, tmp_path_factory):
    base, truth = sweep
    out = tmp_path_factory.mktemp("results") / "nested" / "grid.csv"
    assert collect.main([str(base / "grid"), str(base / "other"), "-o", str(out)]) == 0
    return out, pd.read_csv(out), pd.read_csv(collect.curves_path_for(out)), truth


# ---------------------------------------------------------------- collect

def test_collect_and_the_figures_read_back_every_float_to_the_bit(tmp_path):
    """pandas before 3.0 (what Python 3.10 gets) parses some floats a bit off: 0.002178950145685785, as a run wrote
    it, came back as 0.0021789501456857. collect.py and figures.py read every CSV exactly."""
    written = "0.002178950145685785"
    run = fake_runs.write_fake_run(tmp_path / "sweep", optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=0,
                                   test_acc=0.5, model_norm=30.0, epochs=2)
    header, first, second = (run / "metrics.csv").read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index("train_loss")] = written
    (run / "metrics.csv").write_text("\n".join([header, ",".join(cells), second]) + "\n")
    out = tmp_path / "results" / "r.csv"
    assert collect.main([str(tmp_path / "sweep"), "-o", str(out)]) == 0
    assert written in collect.curves_path_for(out).read_text()
    curves = figures.load_curves(out)
    assert curves.loc[curves["epoch"] == 1, "train_loss"].item() == float(written)


def test_collect_writes_one_row_per_run_with_all_columns(collected):
    out, results, curves, truth = collected
    assert len(results) == len(truth) + 1
    assert list(results.columns) == collect.RESULT_COLUMNS
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.csv", "grid_curves.csv"]  # no temp files
    merged = truth.merge(results, on=["optimizer", "lr", "weight_decay", "seed"], validate="one_to_one")
    finished = merged[merged["status_x"] == "finished"]
    np.testing.assert_allclose(finished["final_test_acc"], finished["test_acc"], rtol=1e-12)
    np.testing.assert_allclose(finished["final_model_norm"], finished["model_norm"], rtol=1e-12)
    assert (merged["status_x"] == merged["status_y"]).all()
    assert merged.loc[merged["status_y"] == "diverged", "final_test_acc"].isna().all()
    assert (results["depth"] == 20).all() and (results["subset"] == 5000).all()
    assert not results["run_dir"].str.contains(".hydra", regex=False).any()


def test_collect_writes_long_curves(collected):
    _, results, curves, _ = collected
    assert list(curves.columns[:len(collect.CURVE_ID_COLUMNS)]) == collect.CURVE_ID_COLUMNS
    # metrics.csv's own per-epoch lr is kept apart from the swept lr
    assert {"epoch", "test_acc", "train_loss", "epoch_lr"} <= set(curves.columns)
    assert len(curves) == results["epochs_completed"].sum()
    one = curves[curves["run_dir"] == results["run_dir"].iloc[0]]
    assert list(one["epoch"]) == list(range(1, int(results["epochs_completed"].iloc[0]) + 1))


def test_collect_marks_every_run_it_cannot_read_with_the_reason_and_keeps_running_ones(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_runs.write_fake_run(sweep, optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=0,
                             test_acc=0.8, model_norm=30.0)
    fake_runs.write_fake_run(sweep, optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=1,
                             test_acc=0.7, model_norm=30.0, status="running", epochs_completed=2)
    corrupt = fake_runs.write_fake_run(sweep, optimizer="adamp", lr=1e-3, weight_decay=1e-4, seed=0,
                                       test_acc=0.8, model_norm=30.0)
    (corrupt / "summary.json").write_text('{"status": "fini')
    # Its resolved config.yaml still says which run it was, so its row can find its cell.
    (corrupt / "config.yaml").write_text("seed: 0\noptimizer: {name: adamp, lr: 0.001, weight_decay: 0.0001}\n")
    partial = fake_runs.write_fake_run(sweep, optimizer="adamp", lr=1e-2, weight_decay=1e-4, seed=0,
                                       test_acc=0.8, model_norm=30.0)
    (partial / "summary.json").unlink()
    keyless = fake_runs.write_fake_run(sweep, optimizer="adamp", lr=1e-1, weight_decay=1e-4, seed=0,
                                       test_acc=0.8, model_norm=30.0)
    summary = json.loads((keyless / "summary.json").read_text())
    del summary["hparams"]["lr"], summary["final"]
    (keyless / "summary.json").write_text(json.dumps(summary))
    no_test_acc = fake_runs.write_fake_run(sweep, optimizer="adamw", lr=1e-2, weight_decay=1e-4, seed=0,
                                           test_acc=0.6, model_norm=30.0)
    metrics = pd.read_csv(no_test_acc / "metrics.csv").drop(columns="test_acc")
    metrics.to_csv(no_test_acc / "metrics.csv", index=False)

    unstarted = sweep / "optimizer=adamp,seed=9"
    (unstarted / ".hydra").mkdir(parents=True)
    (unstarted / ".hydra" / "config.yaml").write_text("seed: 9\n")
    empty = sweep / "optimizer=adamp,seed=8"
    empty.mkdir()

    results, _ = collect.collect_runs([sweep])
    err = capsys.readouterr().err.strip().splitlines()
    assert sorted(results["status"]) == ["finished", "finished", "running"] + ["unreadable"] * 5
    by_name = {Path(r).name: row for r, row in zip(results["run_dir"], results.to_dict("records"))}
    assert "never finished an epoch" in by_name[unstarted.name]["error"]
    assert "not valid JSON" in by_name[corrupt.name]["error"]
    assert "no summary.json" in by_name[partial.name]["error"]
    assert "final" in by_name[keyless.name]["error"] and "hparams.lr" in by_name[keyless.name]["error"]
    assert by_name[empty.name]["error"] == "empty run folder"
    assert (by_name[corrupt.name]["optimizer"], by_name[corrupt.name]["lr"]) == ("adamp", 1e-3)
    assert by_name[no_test_acc.name]["curves"] == "metrics.csv lacks test_acc"
    # Every one is said on stderr, with the reason.
    assert sum("marked unreadable" in line for line in err) == 5
    assert any(no_test_acc.name in line and "lacks test_acc" in line for line in err)


def test_collect_never_takes_a_damaged_record_for_a_whole_run(tmp_path, capsys):
    """Records the trainer never writes (a file cut off, a stale or hand-edited summary) are not drawn as runs."""
    sweep = tmp_path / "sweep"

    def run(seed, **kw):
        return fake_runs.write_fake_run(sweep, optimizer="adamw", lr=1e-3, weight_decay=1e-4, seed=seed,
                                        test_acc=0.8, model_norm=30.0, **kw)

    whole = run(0)
    diverged = run(1, status="diverged", epochs_completed=2)  # its last row's loss is NaN: that is allowed
    cut = run(2)
    text = (cut / "metrics.csv").read_text()
    (cut / "metrics.csv").write_text(text[:text.rstrip("\n").rindex(",", 0, -20)])  # the last row cut mid-row
    short_curves = run(3)
    metrics = pd.read_csv(short_curves / "metrics.csv")
    metrics.iloc[:-1].to_csv(short_curves / "metrics.csv", index=False)
    short = run(4)
    summary = json.loads((short / "summary.json").read_text())
    summary["epochs_completed"] = 1
    (short / "summary.json").write_text(json.dumps(summary))
    no_final = run(5)
    summary = json.loads((no_final / "summary.json").read_text())
    summary["final"]["test_acc"] = None
    (no_final / "summary.json").write_text(json.dumps(summary))

    results, curves = collect.collect_runs([sweep])
    err = capsys.readouterr().err
    by_name = {Path(r).name: row for r, row in zip(results["run_dir"], results.to_dict("records"))}
    assert by_name[whole.name]["curves"] == by_name[diverged.name]["curves"] == "ok"
    assert by_name[cut.name]["status"] == "finished" and "has empty fields at epoch 5" in by_name[cut.name]["curves"]
    assert by_name[short_curves.name]["curves"] == "metrics.csv holds 4 epochs, summary.json 5"
    assert set(curves["run_dir"]) == {by_name[whole.name]["run_dir"], by_name[diverged.name]["run_dir"]}
    assert by_name[short.name]["status"] == "unreadable" and \
        by_name[short.name]["error"] == "summary.json says finished after 1 of 5 epochs"
    assert by_name[no_final.name]["status"] == "unreadable" and \
        by_name[no_final.name]["error"] == "summary.json says finished but has no final test_acc"
    assert err.count("marked unreadable (move the folder away and run the sweep again to redo it)") == 2
    assert by_name[short.name]["lr"] == 1e-3, "placed in its cell, where the figures frame it as incomplete"


def test_collect_fails_in_one_line_when_no_run_is_found(tmp_path, capsys):
    (tmp_path / "empty" / ".submitit").mkdir(parents=True)
    (tmp_path / "empty" / ".submitit" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "empty" / "multirun.yaml").write_text("a: 1\n")
    out = tmp_path / "r.csv"
    assert collect.main([str(tmp_path / "empty"), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run" in err[0]
    assert not out.exists()
    assert collect.main([str(tmp_path / "missing"), "-o", str(out)]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_join_adds_new_runs_to_a_csv_collected_before_as_if_collected_together(tmp_path):
    """Seeds 0 and 1 collected first (their folders then gone), seed 2 joined later: the same rows and curves as
    collecting all three from their folders, and the old CSV's layer tables carried over."""
    fake_runs.write_fake_sweep(tmp_path / "old", lrs=LRS, wds=WDS, seeds=(0, 1))
    fake_runs.write_fake_sweep(tmp_path / "new", lrs=LRS, wds=WDS, seeds=(2,))
    both = tmp_path / "both.csv"
    assert collect.main([str(tmp_path / "old"), str(tmp_path / "new"), "-o", str(both)]) == 0
    joined = tmp_path / "results" / "grid.csv"
    joined.parent.mkdir()
    assert collect.main([str(tmp_path / "old"), "-o", str(joined)]) == 0
    fake_runs.write_fake_layer_tables(joined)
    magnitudes = collect.layer_table_path_for(joined, "magnitudes")
    old_magnitudes = magnitudes.read_text()
    assert collect.main([str(tmp_path / "new"), "-o", str(joined), "--join", str(joined)]) == 0

    def rows(path):
        return collect.read_csv_exact(path).sort_values("run_dir", ignore_index=True).drop(columns="written_at")

    pd.testing.assert_frame_equal(rows(joined), rows(both))
    curves = [collect.read_csv_exact(collect.curves_path_for(p)).sort_values(["run_dir", "epoch"], ignore_index=True)
              for p in (joined, both)]
    pd.testing.assert_frame_equal(*curves)
    assert sorted(rows(joined)["seed"].unique()) == [0, 1, 2] and len(rows(joined)) == 2 * 9 * 3
    assert magnitudes.read_text() == old_magnitudes
    assert figures.main([str(joined), "-o", str(tmp_path / "figs")]) == 0


def test_join_drops_an_old_missing_row_that_a_new_run_now_holds(tmp_path):
    """A run the old CSV marked "missing" (still to run when it was collected) and a new run now holds: the
    joined CSV has the run once, finished, not also as missing."""
    fake_runs.write_fake_sweep(tmp_path / "old", lrs=LRS, wds=WDS, seeds=(0,))
    fake_runs.write_fake_sweep(tmp_path / "new", lrs=LRS, wds=WDS, seeds=(1,))
    out, new = tmp_path / "grid.csv", tmp_path / "new.csv"
    assert collect.main([str(tmp_path / "old"), "-o", str(out)]) == 0
    assert collect.main([str(tmp_path / "new"), "-o", str(new)]) == 0
    new_rows, old = collect.read_csv_exact(new), collect.read_csv_exact(out)
    filled, other = new_rows.iloc[0], new_rows.iloc[1]
    # As collect writes it: the settings composed from the sweep's configs, which lack what only the run knows
    # (its data's fingerprint), so its config_id is not the run's.
    placeholder = {**filled[list(collect.EXPECTED_MATCH)].to_dict(), "config_id": "composed0000",
                   "run_dir": f"old/{filled['run_name']}", "status": collect.MISSING}
    pd.concat([old, pd.DataFrame([placeholder])], ignore_index=True).to_csv(out, index=False)
    assert collect.main([str(tmp_path / "new"), "-o", str(out), "--join", str(out)]) == 0
    joined = collect.read_csv_exact(out)
    assert len(joined) == len(old) + len(new_rows)
    mine = joined[(joined["config_id"] == filled["config_id"]) & (joined["seed"] == filled["seed"])]
    assert list(mine["status"]) == ["finished"]
    assert (joined["config_id"] == other["config_id"]).sum() == 2  # seeds 0 and 1 of another cell, both kept


@pytest.mark.parametrize("damage", ["repeat folder", "repeat seed", "no curves", "no config_id"])
def test_join_refuses_what_it_cannot_add_in_one_line_and_writes_nothing(tmp_path, capsys, damage):
    fake_runs.write_fake_sweep(tmp_path / "old", lrs=LRS, wds=WDS, seeds=(0, 1))
    new = tmp_path / "old" if damage == "repeat folder" else tmp_path / "new"
    fake_runs.write_fake_sweep(tmp_path / "new", lrs=LRS, wds=WDS, seeds=(1,) if damage == "repeat seed" else (2,))
    out = tmp_path / "grid.csv"
    assert collect.main([str(tmp_path / "old"), "-o", str(out)]) == 0
    if damage == "no curves":
        collect.curves_path_for(out).unlink()
    if damage == "no config_id":
        collect.read_csv_exact(out).drop(columns="config_id").to_csv(out, index=False)
    before = out.read_bytes()
    capsys.readouterr()
    assert collect.main([str(new), "-o", str(out), "--join", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("collect: error: --join: "), err
    assert {"repeat folder": "repeats", "repeat seed": "seed=1", "no curves": "grid_curves.csv does not exist",
            "no config_id": "has no config_id column"}[damage] in err[0]
    assert out.read_bytes() == before


def test_figures_refuse_to_count_one_run_as_two_seeds(tmp_path, capsys):
    """The same sweep collected from two places (a copy of a run folder): its seed would count twice."""
    import shutil

    fake_runs.write_fake_sweep(tmp_path / "a", lrs=LRS, wds=WDS, seeds=(0, 1))
    (tmp_path / "b").mkdir()
    run = next(p for p in sorted((tmp_path / "a").iterdir()) if p.is_dir())
    shutil.copytree(run, tmp_path / "b" / run.name)
    out = tmp_path / "ab.csv"
    assert collect.main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)]) == 0
    capsys.readouterr()
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than once" in err[0] and run.name in err[0], err
    assert not (tmp_path / "figs").exists()


def test_csv_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    collect.write_csv_atomically(pd.DataFrame({"a": [1]}), out)
    before = out.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the new bytes went to the temp file
    with pytest.raises(OSError):
        collect.write_csv_atomically(pd.DataFrame({"a": [2]}), out)
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_wandb_without_access_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert collect.main(["grid", "-o", str(tmp_path / "r.csv"), "--wandb-project", "me/nothing"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "W&B" in err[0]
    assert not (tmp_path / "r.csv").exists()


# ---------------------------------------------------------------- tables

def test_heatmap_table_matches_seed_statistics(collected):
    _, results, _, truth = collected
    runs = results[results["optimizer"] == "adamw"]
    table = lib.heatmap_table(runs, "final_test_acc")
    assert table.lrs == list(LRS) and table.wds == list(WDS)
    for i, lr in enumerate(LRS):
        for j, wd in enumerate(WDS):
            cell = truth[(truth.optimizer == "adamw") & (truth.lr == lr) & (truth.weight_decay == wd)]
            ok = cell.loc[cell.status == "finished", "test_acc"].to_numpy()
            assert table.n_runs.iat[i, j] == len(SEEDS)
            assert table.n_diverged.iat[i, j] == len(SEEDS) - len(ok)
            if len(ok):
                assert table.mean.iat[i, j] == pytest.approx(ok.mean(), rel=1e-12)
                assert table.std.iat[i, j] == pytest.approx(ok.std(ddof=1), rel=1e-12)
            else:
                assert math.isnan(table.mean.iat[i, j])
    assert table.all_diverged.to_numpy().sum() == 1 and table.all_diverged.loc[0.1, 1e-5]
    assert table.some_diverged.to_numpy().sum() == 1 and table.some_diverged.loc[0.1, 1e-4]
    assert not table.missing.to_numpy().any()


def test_running_and_failed_runs_stay_out_of_means_but_are_counted_in_their_cells():
    df = pd.DataFrame({"optimizer": "adamw", "lr": [1e-3, 1e-3, 1e-2], "weight_decay": 1e-4,
                       "status": ["finished", "running", "failed"], "final_test_acc": [0.8, 0.1, 0.2]})
    table = lib.heatmap_table(df, "final_test_acc")
    # The failed run's lr is a row of the grid, but its cell has no result and says so: not "no run".
    assert table.lrs == [1e-3, 1e-2] and table.n_runs.iat[0, 0] == 1 and table.mean.iat[0, 0] == 0.8
    assert table.n_incomplete.iloc[:, 0].tolist() == [1, 1] and not table.missing.to_numpy().any()
    assert figures.cell_text(table, 1, 0, "final_test_acc") == "1 incomplete"
    assert figures.cell_text(table, 0, 0, "final_test_acc").endswith("\n1 incomplete")


def test_best_config_skips_cells_where_a_seed_diverged():
    df = pd.DataFrame({
        "optimizer": "adamw", "weight_decay": 1e-4,
        "lr": [1e-3, 1e-3, 1e-2, 1e-2],
        "status": ["finished", "finished", "finished", "diverged"],
        "final_test_acc": [0.7, 0.72, 0.9, np.nan],
    })
    assert lib.best_config(lib.heatmap_table(df, "final_test_acc")) == (1e-3, 1e-4)
    assert lib.best_config(lib.heatmap_table(df, "final_test_acc"), higher_is_better=False) == (1e-3, 1e-4)


def grid_frame(values: dict[tuple[float, float], float], optimizer: str = "adamw") -> pd.DataFrame:
    return pd.DataFrame([{"optimizer": optimizer, "lr": lr, "weight_decay": wd, "seed": 0,
                          "status": "finished", "final_test_acc": v} for (lr, wd), v in values.items()])


def test_decoupling_score_is_zero_for_a_rectangular_region_and_positive_for_a_diagonal():
    lrs, wds = [1e-3, 1e-2, 1e-1], [1e-5, 1e-4, 1e-3]
    rectangular = {(lr, wd): 0.9 - 0.1 * abs(math.log10(lr) + 2) - 0.01 * j
                   for lr in lrs for j, wd in enumerate(wds)}
    diagonal = {(lr, wd): 0.9 - 0.1 * abs(i - j) for i, lr in enumerate(lrs) for j, wd in enumerate(wds)}
    rect = lib.decoupling(lib.heatmap_table(grid_frame(rectangular), "final_test_acc"))
    diag = lib.decoupling(lib.heatmap_table(grid_frame(diagonal), "final_test_acc"))
    assert list(rect.best_lr_per_wd) == [1e-2] * 3
    assert rect.lr_shift_std == 0 and rect.lr_shift_range == 0 and rect.region_fill == 1
    assert list(diag.best_lr_per_wd) == lrs
    assert diag.lr_shift_std == pytest.approx(math.sqrt(2 / 3))
    assert diag.lr_shift_range == pytest.approx(2)
    assert diag.region_fill == pytest.approx(3 / 9)


def test_decoupling_table_ranks_fake_adamw_above_adamp(collected):
    _, results, _, _ = collected
    scores = figures.decoupling_table(results).set_index("optimizer")
    assert scores.loc["adamw", "lr_shift_std"] == 0
    assert scores.loc["adamp", "lr_shift_std"] > 0.3
    assert scores.loc["decoupled_adamw", "wd_convention"] == "paper"


def test_weight_decay_conventions():
    assert lib.convert_weight_decay(1e-4, 1e-3, "adamw", "paper") == pytest.approx(1e-7)
    # Zhuang et al.: paper-form wd 5e-5 at lr 1e-3 is PyTorch-form wd 0.05
    assert lib.convert_weight_decay(5e-5, 1e-3, "decoupled_adamw", "torch") == pytest.approx(0.05)
    assert lib.convert_weight_decay(5e-5, 1e-3, "proxadam", "paper") == 5e-5
    assert lib.convert_weight_decay(1e-4, 1e-3, "adamp", "native") == 1e-4
    with pytest.raises(ValueError, match="convention"):
        lib.convert_weight_decay(1e-4, 1e-3, "adamw", "pytorch")


def test_titles_and_labels(collected):
    _, results, _, _ = collected
    assert lib.setting_title(results) == "ResNet20, BN off, CIFAR-10 (5k subset), 5 epochs"
    assert lib.method_label({"optimizer": "adamp", "batch_norm": True, "loss_multiplier": 10.0}) == "AdamP, BN on, c=10"
    assert lib.format_hparam(5e-5) == "5e-5" and lib.format_hparam(0.001) == "1e-3" and lib.format_hparam(0) == "0"


# ---------------------------------------------------------------- drawing

def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def text_at(ax, j: int, i: int) -> str:
    return next(t.get_text() for t in ax.texts if t.get_position() == (j, i))


def test_heatmap_cells_show_means_divergence_and_missing(collected):
    _, results, _, _ = collected
    results = results[~((results.optimizer == "adamp") & (results.lr == 1e-2) & (results.weight_decay == 1e-3))]
    fig = figures.plot_heatmaps(results, "test_acc")
    adamw, adamp = panel(fig, "AdamW"), panel(fig, "AdamP")
    table = lib.heatmap_table(results[results.optimizer == "adamw"], "final_test_acc")
    assert text_at(adamw, 0, 2) == "3/3 div"  # lr 0.1 (row 2), wd 1e-5 (column 0)
    assert any(p.get_hatch() == "///" for p in adamw.patches)
    assert text_at(adamw, 1, 2).endswith("1/3 div")
    mean, std = table.mean.iat[0, 1] * 100, table.std.iat[0, 1] * 100
    assert text_at(adamw, 1, 0) == f"{mean:.1f}\n±{std:.1f}"
    assert text_at(adamp, 2, 1) == "—"
    assert "div" not in "".join(t.get_text() for t in adamp.texts)
    assert [t.get_text() for t in adamw.get_xticklabels()] == ["1e-5", "1e-4", "1e-3"]


def test_heatmap_caption_carries_decoupling_scores(collected):
    _, results, _, _ = collected
    scores = figures.decoupling_table(results)
    fig = figures.plot_heatmaps(results, "test_acc", scores=scores)
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    expected = scores.set_index("optimizer").loc["adamp", "lr_shift_std"]
    assert f"AdamP: {expected:.2f}" in caption and "AdamW: 0.00" in caption


def test_heatmap_adds_converted_weight_decay_in_other_convention(collected):
    _, results, _, _ = collected
    fig = figures.plot_heatmaps(results, "test_acc", wd_convention="paper")
    assert text_at(panel(fig, "AdamW"), 1, 0).endswith("λ=1e-7")  # lr 1e-3 x torch wd 1e-4
    assert "λ" not in text_at(panel(fig, "DecoupledAdamW"), 0, 0)  # already in the paper convention
    fig = figures.plot_heatmaps(results, "test_acc", wd_convention="torch")
    assert text_at(panel(fig, "DecoupledAdamW"), 0, 0).endswith("λ=5e-2")
    with pytest.raises(ValueError, match="convention"):
        figures.plot_heatmaps(results, "test_acc", wd_convention="pytorch")


def test_make_figures_writes_png_and_pdf_of_every_figure(collected, tmp_path, capsys):
    out, _, _, _ = collected
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 0
    stdout = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    stems = ["curves_best", "heatmap_model_norm", "heatmap_test_acc"]
    assert names == sorted([f"{s}.{ext}" for s in stems for ext in ("png", "pdf")] + ["decoupling.csv"])
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in names if not n.endswith(".csv"))
    for name in names:
        assert str(tmp_path / "figs" / name) in stdout
    assert "lr_shift_std" in stdout
    scores = pd.read_csv(tmp_path / "figs" / "decoupling.csv")
    assert set(scores["optimizer"]) == {"adamw", "adamp", "decoupled_adamw"}


def test_figures_cli_fails_in_one_line_on_a_missing_csv(tmp_path, capsys):
    assert figures.main([str(tmp_path / "nope.csv"), "-o", str(tmp_path / "f")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "collect.py" in err[0]


def test_best_curves_follow_the_best_configuration(collected):
    _, results, curves, _ = collected
    fig = figures.plot_best_curves(results, curves)
    acc_ax = fig.axes[0]
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert "AdamW (lr 1e-3, wd 1e-4)" in labels
    line = acc_ax.get_lines()[labels.index("AdamW (lr 1e-3, wd 1e-4)")]
    best = results[(results.optimizer == "adamw") & (results.lr == 1e-3) & (results.weight_decay == 1e-4)]
    last = curves[curves.run_dir.isin(best.run_dir) & (curves.epoch == 5)]["test_acc"].mean()
    assert line.get_ydata()[-1] == pytest.approx(last * 100)
    # AdamW's and AdamP's best cells have every seed; the one DecoupledAdamW run has one.
    assert best.seed.nunique() == len(SEEDS) > 1 and f"over 1-{len(SEEDS)} seeds" in fig._suptitle.get_text()
    grid_only = results[results.optimizer != "decoupled_adamw"]
    assert f"over {len(SEEDS)} seeds)" in figures.plot_best_curves(grid_only, curves)._suptitle.get_text()


def test_best_curves_of_many_methods_never_share_a_look(tmp_path):
    """Four optimizers x three loss multipliers: twelve curves, past matplotlib's ten-colour cycle."""
    fake_runs.write_fake_sweep(tmp_path / "sf", optimizers=("adaml2", "adamw", "proxadam", "adamp"), lrs=(1e-3,),
                               wds=(1e-4,), seeds=(0,), loss_multipliers=(0.01, 1.0, 100.0), epochs=2)
    results, curves = collect.collect_runs([tmp_path / "sf"])
    lines = figures.plot_best_curves(results, curves).axes[0].get_lines()
    looks = {line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(looks) == 12 and len(set(looks.values())) == 12
    for optimizer in ("AdamL2", "AdamW", "ProxAdam", "AdamP"):  # one colour per optimizer, its c as the dashes
        mine = [look for label, look in looks.items() if label.startswith(optimizer + ",")]
        assert len(mine) == 3 and len({colour for colour, _, _ in mine}) == 1
    many = figures.method_styles([{"optimizer": "adamw", "loss_multiplier": c} for c in range(9)])
    assert len({tuple(style.values()) for style in many}) == 9


def test_figure_pngs_are_palette_images_that_look_like_the_render(tmp_path):
    """PNGs are stored with a 256-colour palette (a third of the bytes, for git and the GPU machine's 64 MiB)."""
    from PIL import Image

    fig = figures.Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.imshow(np.linspace(0, 1, 64).reshape(8, 8), cmap=figures.CMAP)
    ax.set_title("a title")
    png, _ = figures.save_figure(fig, tmp_path, "probe")
    render = io.BytesIO()
    fig.savefig(render, format="png", dpi=150)
    with Image.open(png) as saved, Image.open(render) as rgba:
        assert saved.mode == "P" and saved.size == rgba.size
        difference = np.abs(np.asarray(saved.convert("RGB"), dtype=int) - np.asarray(rgba.convert("RGB"), dtype=int))
    assert difference.mean() < 1 and png.stat().st_size < render.tell()


def test_scale_free_plot_when_loss_multiplier_varies(tmp_path):
    fake_runs.write_fake_sweep(tmp_path / "sf", optimizers=("adamw", "adamp"), lrs=(1e-3, 1e-2),
                               wds=(1e-4,), seeds=(0, 1), loss_multipliers=(1.0, 10.0, 100.0), epochs=2)
    results, _ = collect.collect_runs([tmp_path / "sf"])
    table = figures.scale_free_table(results)
    assert len(table) == 6 and set(table["loss_multiplier"]) == {1.0, 10.0, 100.0}
    row = table[(table.optimizer == "adamw") & (table.loss_multiplier == 10.0)].iloc[0]
    seeds = results[(results.optimizer == "adamw") & (results.loss_multiplier == 10.0)
                    & (results.lr == row.lr) & (results.weight_decay == row.weight_decay)]
    assert row["mean"] == pytest.approx(seeds["final_test_acc"].mean())
    fig = figures.plot_scale_free(results)
    assert fig.axes[0].get_xscale() == "log"
    assert figures.plot_scale_free(results[results.loss_multiplier == 1.0]) is None
    # The second panel: final model norm at the configuration the accuracy picked.
    norms = figures.scale_free_table(results, report="model_norm")
    assert list(norms[["lr", "weight_decay"]].itertuples(index=False)) == list(
        table[["lr", "weight_decay"]].itertuples(index=False))
    norm_row = norms[(norms.optimizer == "adamw") & (norms.loss_multiplier == 10.0)].iloc[0]
    assert norm_row["mean"] == pytest.approx(seeds["final_model_norm"].mean())
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == figures._metric_title("final_model_norm")
    line = fig.axes[1].get_lines()[0]
    first = norms[norms.method == norms.method.iloc[0]]
    assert list(line.get_ydata()) == pytest.approx(list(first["mean"] * figures._scale("final_model_norm")))
    # The title says how many seeds stand behind the error bars, and that some point has fewer.
    assert "over 2 seeds" in fig._suptitle.get_text()
    one_short = results.drop(seeds.index[:1])
    assert "over 1-2 seeds" in figures.plot_scale_free(one_short)._suptitle.get_text()


# ---------------------------------------------------------------- runs that differ, runs that are missing

def test_figures_refuse_to_average_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    """Real runs: the same grid swept twice, the second with optimizer.exclude_norm_and_bias=true."""
    from cli import cli_env, run_cli

    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    grid = ["-m", "data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=16",
            "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,1e-2", "optimizer.weight_decay=0.5"]
    run_cli([*grid, f"hydra.sweep.dir={tmp_path / 'A'}"], env=env)
    run_cli([*grid, "optimizer.exclude_norm_and_bias=true", f"hydra.sweep.dir={tmp_path / 'C'}"], env=env)
    out = tmp_path / "ac.csv"
    assert collect.main([str(tmp_path / "A"), str(tmp_path / "C"), "-o", str(out)]) == 0
    results = pd.read_csv(out)
    # Every key that changes a run's result is a column, the ones no list names too.
    assert sorted(results["optimizer.exclude_norm_and_bias"]) == [False, False, True, True]
    assert {"optimizer.betas", "trainer.precision", "schedule.warmup_epochs", "data.fingerprint"} <= set(results)
    assert results["config_id"].nunique() == 4
    capsys.readouterr()
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("figures: error: the cell ") and \
        "differ in more than the seed: optimizer.exclude_norm_and_bias (False, True)" in err[0]
    assert not (tmp_path / "figs").exists(), "nothing is drawn from a mixed cell"
    assert figures.main([str(out), "-o", str(tmp_path / "figs"), "--split-by", "optimizer.exclude_norm_and_bias"]) == 0
    scores = pd.read_csv(tmp_path / "figs" / "decoupling.csv")
    assert len(scores) == 2  # AdamW with and without the exclusion: two methods


def test_a_grid_whose_rows_differ_in_more_than_lr_is_refused(tmp_path, capsys):
    """Every cell is uniform, but AdamW's lr 1e-2 row ran in bf16: its cells would be compared with fp32 ones
    (best configuration, decoupling, the claims) as one grid."""
    import claims

    sweep = tmp_path / "sweep"
    fake_runs.write_fake_sweep(sweep, lrs=(1e-3, 1e-2), wds=(1e-4, 1e-3), seeds=(0, 1))
    for summary_file in sweep.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        bf16 = summary["hparams"]["optimizer"] == "adamw" and summary["hparams"]["lr"] == 1e-2
        summary["hparams"]["trainer.precision"] = "bf16" if bf16 else "fp32"
        summary_file.write_text(json.dumps(summary))
    out = tmp_path / "r.csv"
    assert collect.main([str(sweep), "-o", str(out)]) == 0
    capsys.readouterr()
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid of optimizer=adamw holds runs that differ in more than lr, weight decay and " \
        "the seed: trainer.precision (bf16, fp32)" in err[0], err
    assert not (tmp_path / "figs").exists(), "nothing is drawn from a mixed grid"
    assert claims.main([str(out)]) == 1
    assert "trainer.precision (bf16, fp32)" in capsys.readouterr().err
    assert figures.main([str(out), "-o", str(tmp_path / "figs"), "--split-by", "trainer.precision"]) == 0
    assert len(pd.read_csv(tmp_path / "figs" / "decoupling.csv")) == 3  # AdamW bf16, AdamW fp32, AdamP


def test_jobs_of_a_sweep_that_left_no_folder_are_collected_as_missing_from_its_multirun_yaml(tmp_path, capsys):
    """Real runs: a sweep of 2 lr x 2 seeds, then one run folder gone (a job never started, still queued, or
    removed) and one emptied to what a job leaves before its first write. Neither leaves a row of its own."""
    import shutil

    import sweep_plan
    from cli import cli_env, run_cli

    sweep = tmp_path / "sweep"
    run_cli(["-m", "data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=32",
             "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,1e-2", "optimizer.weight_decay=0.5", "seed=0,1",
             f"hydra.sweep.dir={sweep}"], env=cli_env(tmp_path, OMP_NUM_THREADS="1"))
    plan = sweep_plan.planned_runs(sweep).runs
    assert sorted(run.name for run in plan) == sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")
    gone, unstarted = (next(p for p in plan if f"optimizer.lr={lr},optimizer.weight_decay=0.5,seed={seed}" in p.name)
                       for lr, seed in (("0.01", 1), ("0.001", 0)))
    shutil.rmtree(sweep / gone.name)
    for path in (sweep / unstarted.name).iterdir():
        if path.name != ".hydra":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = tmp_path / "r.csv"
    assert collect.main([str(sweep), "-o", str(out)]) == 0
    assert f"1 of the 4 runs that {collect.display_path(sweep / 'multirun.yaml')} plans have no run folder; " \
           "marked missing" in capsys.readouterr().err
    results = pd.read_csv(out).set_index("run_name")
    assert sorted(results["status"]) == ["finished", "finished", "missing", "unreadable"]
    for run, status in ((gone, "missing"), (unstarted, "unreadable")):
        row = results.loc[run.name]
        assert row["status"] == status
        assert (row["optimizer"], row["lr"], row["weight_decay"], row["seed"]) == \
            ("adamw", float(run.name.split("optimizer.lr=")[1].split(",")[0]), 0.5,
             int(run.name.split("seed=")[1].split(",")[0]))
        neighbour = results[(results["status"] == "finished") & (results["lr"] == row["lr"])].iloc[0]
        assert all(collect.same_value(row[k], neighbour[k]) for k in collect.EXPECTED_MATCH if k != "seed")
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert "incomplete: AdamW, lr 1e-2, wd 0.5: 1 run(s) did not complete" in err
    assert "incomplete: AdamW, lr 1e-3, wd 0.5: 1 run(s) did not complete" in err
    assert "in no cell" not in err

    (sweep / "multirun.yaml").write_text("hydra: {sweeper: [")  # damaged: the runs there are still collected
    assert collect.main([str(sweep), "-o", str(out)]) == 0
    assert "multirun.yaml cannot be read (ParserError); move it away" in capsys.readouterr().err
    assert sorted(pd.read_csv(out)["status"]) == ["finished", "finished", "unreadable"]


def test_a_results_csv_that_cannot_tell_runs_apart_is_refused(tmp_path, capsys):
    df = pd.DataFrame({"run_dir": ["a", "b"], "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "seed": 0,
                       "status": "finished", "final_test_acc": [0.9, 0.2]})  # BN on and off, but no column says so
    df.to_csv(tmp_path / "hand.csv", index=False)
    assert figures.main([str(tmp_path / "hand.csv"), "-o", str(tmp_path / "f")]) == 1
    assert "lack batch_norm" in capsys.readouterr().err


@pytest.mark.parametrize("missing, which", [("run_dir", "results"), ("epoch", "curves"), ("run_dir", "curves")])
def test_a_csv_without_a_needed_column_is_a_one_line_error(collected, tmp_path, capsys, missing, which):
    out, results, curves, _ = collected
    target = tmp_path / "r.csv"
    (results.drop(columns=missing) if which == "results" else results).to_csv(target, index=False)
    (curves.drop(columns=missing) if which == "curves" else curves).to_csv(collect.curves_path_for(target),
                                                                            index=False)
    assert figures.main([str(target), "-o", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("figures: error: ") and f"lacks columns {missing}" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_a_damaged_run_is_drawn_apart_from_no_run_and_fails_the_figures(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_runs.write_fake_sweep(sweep, lrs=(1e-3, 1e-2), wds=(1e-4, 1e-3), seeds=(0, 1))
    # One seed of a cell is damaged; the other is fine, and the cell keeps it (its record is partial, so it is
    # counted in the cell, not compared with the finished run as a different setting).
    damaged = next(p for p in sweep.iterdir()
                   if "optimizer=adamw,optimizer.lr=0.01,optimizer.weight_decay=0.001,seed=0" in p.name)
    (damaged / "summary.json").write_text("garbage")
    # Its resolved config says which run it was (as the trainer writes it, at the start of a run).
    (damaged / "config.yaml").write_text(
        "seed: 0\nloss_multiplier: 1.0\noptimizer: {name: adamw, lr: 0.01, weight_decay: 0.001}\n"
        "model: {depth: 20, batch_norm: false}\ndata: {name: cifar10, subset: 5000}\n"
        "trainer: {epochs: 5, batch_size: 128}\nschedule: {name: constant}\n")
    (sweep / "never-started").mkdir()
    out = tmp_path / "r.csv"
    assert collect.main([str(sweep), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"cannot read {collect.display_path(damaged)}" in err and "is an empty run folder" in err
    results = pd.read_csv(out)
    assert sorted(results["status"].unique()) == ["finished", "unreadable"] and len(results) == 17

    figs = tmp_path / "figs"
    assert figures.main([str(out), "-o", str(figs)]) == 1
    err = capsys.readouterr().err
    assert "incomplete: AdamW, lr 1e-2, wd 1e-3: 1 run(s) did not complete" in err
    assert "never-started: unreadable and in no cell" in err
    assert "pass --allow-incomplete" in err.strip().splitlines()[-1]
    assert (figs / "heatmap_test_acc.png").is_file(), "the figures are drawn, marked"
    df = figures.load_results(out)
    tables = dict((k["optimizer"], t) for k, t in figures.heatmap_tables(df, "final_test_acc"))
    assert figures.cell_text(tables["adamw"], 1, 1, "final_test_acc").endswith("\n1 incomplete")
    assert tables["adamw"].n_runs.iat[1, 1] == 1
    assert not tables["adamw"].missing.to_numpy().any()  # no cell reads as "no run"
    assert pd.read_csv(figs / "decoupling.csv").set_index("optimizer").loc["adamw", "incomplete_cells"] == 1
    assert figures.main([str(out), "-o", str(figs), "--allow-incomplete"]) == 0


def test_a_cell_with_a_seed_absent_is_marked_and_fails_the_figures(tmp_path, capsys):
    """A run folder that is not there at all (removed, never brought home) leaves no row to mark: the cell is
    still told apart from its neighbours, which have that seed."""
    import shutil

    import claims

    sweep = tmp_path / "sweep"
    fake_runs.write_fake_sweep(sweep, lrs=(1e-3, 1e-2), wds=(1e-4, 1e-3), seeds=(0, 1, 2))
    shutil.rmtree(next(sweep.glob("optimizer=adamw,optimizer.lr=0.01,optimizer.weight_decay=0.0001,seed=1")))
    out = tmp_path / "r.csv"
    assert collect.main([str(sweep), "-o", str(out)]) == 0
    capsys.readouterr()
    assert figures.main([str(out), "-o", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert "incomplete: AdamW, lr 1e-2, wd 1e-4: no run of seed 1 (the method's other cells have one)" in err
    assert (tmp_path / "figs" / "heatmap_test_acc.png").is_file(), "the figures are drawn, marked"
    tables = dict((k["optimizer"], t) for k, t in figures.heatmap_tables(figures.load_results(out), "final_test_acc"))
    assert figures.cell_text(tables["adamw"], 1, 0, "final_test_acc").endswith("\n1 seed absent")
    assert tables["adamw"].incomplete.to_numpy().sum() == 1 and not tables["adamp"].incomplete.to_numpy().any()
    assert figures.main([str(out), "-o", str(tmp_path / "figs"), "--allow-incomplete"]) == 0
    same = next(v for v in claims.judge(figures.load_results(out)) if v.claim.startswith("AdamW and AdamP reach"))
    assert same.verdict == claims.UNJUDGED and "a seed absent" in same.why and "AdamW without BN: 1" in same.why


def test_curves_without_a_plotted_metric_fail_the_figures(collected, tmp_path, capsys):
    out, results, curves, _ = collected
    target = tmp_path / "r.csv"
    results[results["status"] != "running"].to_csv(target, index=False)
    curves.drop(columns="test_acc").to_csv(collect.curves_path_for(target), index=False)
    assert figures.main([str(target), "-o", str(tmp_path / "f")]) == 1
    assert "has no test_acc curve" in capsys.readouterr().err


def test_collect_reads_runs_back_from_their_wandb_files_as_from_their_folders(tmp_path):
    """W&B records what collect needs: real offline runs, their .wandb transaction logs parsed record by record."""
    from cli import cli_env, run_cli

    sweep = tmp_path / "sweep"
    run_cli(["-m", "data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=16",
             "trainer.epochs=2", "logger=wandb", "optimizer=adamw,adamp", f"hydra.sweep.dir={sweep}"],
            env=cli_env(tmp_path, WANDB_MODE="offline"))
    assert len(list(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))) == 2
    folders = collect.collect_runs([sweep])
    files = collect.collect_wandb_files([sweep])
    for a, b in zip(folders, files):
        keys = [c for c in ("run_name", "optimizer") if c in a.columns]
        a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
        same = [c for c in a.columns if c not in ("run_dir", "wall_time_s", "epoch_epoch_time_s",
                                                   "epoch_images_per_s", "epoch_time_s", "images_per_s", "curves")]
        assert set(a.columns) == set(b.columns)
        pd.testing.assert_frame_equal(a[same], b[same], check_dtype=False)
    results = files[0]
    assert set(results["status"]) == {"finished"} and results["lr"].notna().all()
    assert results["data.fingerprint"].notna().all() and results["config_id"].nunique() == 2


def test_figures_read_each_optimizers_convention_and_name_from_its_class(monkeypatch):
    import optimizers
    from optimizers.adam_core import AdamCore
    from optimizers.decay_rules import ProximalDecay

    class ProxAdamTomorrow(AdamCore):  # an optimizer added tomorrow: its decay rule says how lambda scales
        decay_rule = ProximalDecay()

    monkeypatch.setitem(optimizers.OPTIMIZERS, "proxadam_tomorrow", ProxAdamTomorrow)
    assert lib.native_convention("proxadam_tomorrow") == "paper"
    assert lib.display_name("proxadam_tomorrow") == "ProxAdamTomorrow"
    assert lib.convert_weight_decay(5e-5, 1e-3, "proxadam_tomorrow", "torch") == pytest.approx(0.05)
    for name, cls in optimizers.OPTIMIZERS.items():
        assert lib.display_name(name) == cls.display_name and lib.native_convention(name) in ("torch", "paper")
    with pytest.raises(lib.UnknownOptimizer, match="unknown optimizer 'adamq'.*adamw"):
        lib.display_name("adamq")
