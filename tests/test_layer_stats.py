"""trainer.magnitude_stats_every (experiments/layer_stats.py): counts against numpy, relative update sizes against a
hand computation, and a real run that records them without changing what it trains."""
from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from cli import run_cli

import models
from experiments import layer_stats
from experiments.packed_models import ModelPack


def numpy_bin(x: np.ndarray) -> list:
    """Bin label of each |x| by hand: 'zero', or e with 2^e <= |x| < 2^(e+1), clamped to the range."""
    out = []
    for v in np.abs(x.ravel()):
        if v == 0:
            out.append("zero")
        else:
            e = int(np.floor(np.log2(v)))
            out.append(min(max(e, layer_stats.LOWEST), layer_stats.HIGHEST))
    return out


@pytest.fixture
def pack():
    torch.manual_seed(0)
    members = [models.build_model(8, True, 10).double() for _ in range(2)]
    pack = ModelPack(members)
    with torch.no_grad():
        pack.flat_grads.copy_(torch.randn_like(pack.flat_grads) * 1e-3)
        pack.flat_grads[0, :5] = 0.0  # exact zeros have their own bin
        pack.flat_grads[1, 5] = 1e30  # beyond the range: counted in the last bin
    return pack


def test_counts_and_relative_updates_equal_a_direct_computation(pack):
    stats = layer_stats.LayerStats(pack, every=1)
    lrs = [1e-3, 4e-3]
    before = pack.flat_params.clone()
    stats.before_step(torch.tensor(lrs, dtype=torch.float64))
    with torch.no_grad():  # an update of its own shape per member: -lr * g, plus a decay
        pack.flat_params.mul_(1 - 1e-2).sub_(torch.tensor(lrs, dtype=torch.float64)[:, None] * pack.flat_grads)
    stats.after_step()
    rows = stats.member_rows(epoch=3)
    for k in range(2):
        w = pack.flat_params[k].numpy()
        g = pack.flat_grads[k].numpy()
        u = w - before[k].numpy()
        magnitudes, steps = rows[k]
        for name, values in (("param", w), ("grad", g), ("update", u), ("update_per_lr", u / lrs[k])):
            for layer in [None, *pack.names]:
                if layer is None:
                    want = Counter(numpy_bin(values))
                else:
                    start, stop = pack.columns[layer]
                    want = Counter(numpy_bin(values[start:stop]))
                got = {r["exponent"]: r["count"] for r in magnitudes
                       if r["quantity"] == name and r["layer"] == (layer or "all")}
                assert got == dict(want), (k, name, layer)
        for row in steps:
            start, stop = pack.columns[row["layer"]]
            prev, now = before[k, start:stop].numpy(), w[start:stop]
            with np.errstate(divide="ignore"):  # BN biases start at 0: an infinite relative update, on both sides
                want = np.linalg.norm(now - prev) / np.linalg.norm(prev)
            assert row["relative_update"] == pytest.approx(want, rel=1e-12)
            assert row["weight_norm"] == pytest.approx(np.linalg.norm(now), rel=1e-12)
            assert row["epoch"] == 3 and row["recorded_steps"] == 1
    assert {r["exponent"] for r in rows[1][0] if r["quantity"] == "grad"} >= {layer_stats.HIGHEST}
    assert any(r["exponent"] == "zero" for r in rows[0][0] if r["quantity"] == "grad")


def test_only_every_nth_step_is_recorded(pack):
    stats = layer_stats.LayerStats(pack, every=3)
    assert [stats.due() for _ in range(7)] == [False, False, True, False, False, True, False]


TINY = ["data=synthetic", "data.train_size=128", "data.test_size=32", "trainer.batch_size=32", "trainer.epochs=2",
        "logger=none", "model.depth=8"]


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_records_its_layers_without_changing_what_it_trains(tmp_path):
    run_cli([*TINY, f"hydra.run.dir={tmp_path / 'plain'}"])
    run_cli([*TINY, "trainer.magnitude_stats_every=2", f"hydra.run.dir={tmp_path / 'stats'}"])
    plain, stats = read(tmp_path / "plain" / "metrics.csv"), read(tmp_path / "stats" / "metrics.csv")
    for a, b in zip(plain, stats):
        for key in ("train_loss", "test_acc", "model_norm", "grad_norm"):
            assert a[key] == b[key]
    magnitudes = read(tmp_path / "stats" / "magnitudes.csv")
    n_params = sum(p.numel() for p in models.build_model(8, True, 10).parameters())
    for epoch in ("1", "2"):  # 4 steps an epoch, every 2nd recorded: each value counted twice per quantity
        for quantity in layer_stats.QUANTITIES:
            counted = sum(int(r["count"]) for r in magnitudes
                          if r["epoch"] == epoch and r["layer"] == "all" and r["quantity"] == quantity)
            assert counted == 2 * n_params
    steps = read(tmp_path / "stats" / "step_sizes.csv")
    assert {r["epoch"] for r in steps} == {"1", "2"} and all(float(r["relative_update"]) > 0 for r in steps)
    assert all(r["recorded_steps"] == "2" for r in steps)

    # collect puts them beside the results (whole model, one column per bin), and figures draws them.
    out = tmp_path / "results" / "r.csv"
    run_cli(["scripts/collect.py", str(tmp_path / "stats"), "-o", str(out)], module="")
    wide = read(tmp_path / "results" / "r_magnitudes.csv")
    assert len(wide) == 2 * len(layer_stats.QUANTITIES)
    for row in wide:
        assert sum(int(v) for k, v in row.items() if k == "zero" or k.lstrip("-").isdigit()) == 2 * n_params
    sizes = read(tmp_path / "results" / "r_step_sizes.csv")
    assert [r["epoch"] for r in sizes] == ["1", "2"]
    assert sizes[1]["relative_update/conv1.weight"] == next(r["relative_update"] for r in steps
                                                           if r["epoch"] == "2" and r["layer"] == "conv1.weight")
    proc = run_cli(["scripts/figures.py", str(out), "-o", str(tmp_path / "figures")], module="")
    for stem in ("magnitudes_param", "magnitudes_grad", "magnitudes_update", "magnitudes_update_per_lr", "step_sizes"):
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 5000, proc.stdout


def test_the_benchmark_times_the_single_run_with_and_without_recording(tmp_path):
    import importlib.util
    import json

    from cli import REPO

    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "bench.json"
    assert benchmark.main(["--device", "cpu", "--steps", "2", "--warmup", "0", "--rounds", "1", "--ks", "1",
                           "--no-reference", "--magnitude-stats-every", "1", "--batch-size", "8", "--min-time", "0",
                           "--depth", "8", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["pipelines"]["single_stats_1"]["stats_every"] == 1
    measured = results["images_per_s"]
    assert results["magnitude_stats_cost"]["1"] == pytest.approx(
        1 - measured["single_stats_1"]["median"] / measured["single"]["median"])


def test_the_figures_show_each_method_at_its_best_configuration_bn_off_and_on():
    import sys

    import pandas as pd
    from cli import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import figures

    results, magnitudes, steps = [], [], []
    for opt in ("adaml2", "decoupled_adamw", "proxadam"):
        for bn in (False, True):
            for lr in (1e-3, 1e-2):
                run_dir = f"{opt}-{bn}-{lr}"
                best = lr == (1e-2 if opt == "proxadam" and bn else 1e-3)  # ProxAdam's best moves with BN
                results.append(dict(run_dir=run_dir, status="finished", optimizer=opt, lr=lr, weight_decay=5e-4,
                                    seed=0, batch_norm=bn, loss_multiplier=1.0, final_test_acc=0.5 if best else 0.2,
                                    final_model_norm=30.0))
                for epoch in (1, 2, 3, 4, 5):
                    for quantity in layer_stats.QUANTITIES:
                        magnitudes.append({"run_dir": run_dir, "epoch": epoch, "quantity": quantity, "zero": 0,
                                           "-10": 10 if best else 1000, "-9": 5})
                    steps.append({"run_dir": run_dir, "epoch": epoch, "relative_update/conv1.weight": 1e-3 * epoch,
                                  "relative_update/fc.weight": 2e-3, "relative_update/bn1.weight": 1.0})
    df, mags, sizes = pd.DataFrame(results), pd.DataFrame(magnitudes), pd.DataFrame(steps)
    fig = figures.plot_magnitudes(df, mags, "update")
    assert len(fig.axes) == 6  # BN off / on x epochs 1, 3, 5
    assert [ax.get_title() for ax in fig.axes[:3]] == ["BN off, epoch 1", "BN off, epoch 3", "BN off, epoch 5"]
    for ax in fig.axes:
        assert len(ax.lines) == 3
        for line in ax.lines:  # the best run's shares (10 and 5 of 15), not the lr 1e-2 run's
            assert list(line.get_ydata()) == pytest.approx([10 / 15, 5 / 15])
    # Each BN row's legend names that row's own best configurations; one colour per optimizer in every panel.
    for row, prox_lr in ((fig.axes[:3], "1e-3"), (fig.axes[3:], "1e-2")):
        assert [t.get_text() for t in row[-1].get_legend().get_texts()] == [
            "AdamL2 (lr 1e-3, wd 5e-4)", "DecoupledAdamW (lr 1e-3, wd 5e-4)", f"ProxAdam (lr {prox_lr}, wd 5e-4)"]
    assert len({tuple(ax.lines[i].get_color() for i in range(3)) for ax in fig.axes}) == 1
    assert "mean over 1 seed" in fig._suptitle.get_text()
    fig = figures.plot_step_sizes(df, sizes)
    assert len(fig.axes) == 2 and all(len(ax.lines) == 3 for ax in fig.axes)
    median = fig.axes[0].lines[0].get_ydata()  # conv1 and fc, not the BatchNorm weight
    assert list(median) == pytest.approx([(1e-3 * e + 2e-3) / 2 for e in (1, 2, 3, 4, 5)])
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()][-1] == "ProxAdam (lr 1e-2, wd 5e-4)"
    assert fig.axes[0].lines[2].get_color() == fig.axes[1].lines[2].get_color()
    assert figures.plot_magnitudes(df, mags.iloc[0:0], "update") is None
