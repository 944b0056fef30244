"""scripts/provenance.py: how a sweep's runs were made, read from the run folders and the packs' pack.json."""
from __future__ import annotations

import csv
import sys

from cli import REPO, run_cli

sys.path.insert(0, str(REPO / "scripts"))
import provenance  # noqa: E402

from experiments.run_info import git_commit, hardware  # noqa: E402

TINY = ["data=synthetic", "data.train_size=128", "data.test_size=64", "trainer.batch_size=32", "trainer.epochs=2",
        "logger=none", "trainer.device=cpu"]


def _epoch_seconds(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["epoch_time_s"]) for r in csv.DictReader(f)]


def test_provenance_of_a_packed_and_a_single_run_sweep(tmp_path, capsys):
    packed, single = tmp_path / "packed", tmp_path / "single"
    run_cli(["-m", *TINY, "launcher=packed", "optimizer=adamw,adamp", "seed=0", f"hydra.sweep.dir={packed}"])
    run_cli(["-m", *TINY, "optimizer=adamw", "seed=1,2", f"hydra.sweep.dir={single}"])
    assert provenance.main([str(packed), str(single), "-o", str(tmp_path / "p.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "p.md").read_text() == text
    assert "- runs: 4 (finished); seeds 0 (2), 1 (1), 2 (1); epochs 2; batch 32" in text
    assert "- data: synthetic, 128 training / 64 test images" in text
    assert f"- hardware: {hardware('cpu')}" in text and f"- code: commit {git_commit()}" in text
    assert "- packs: 1; members 2; route loop" in text and "precision fp32" in text
    # The rate, recomputed from metrics.csv: the pack's 2 members share its epochs; each single run has its own.
    pack_seconds = _epoch_seconds(next(run for run in packed.glob("*/") if "optimizer=adamw," in run.name))
    single_seconds = [t for run in single.glob("*/") if (run / "metrics.csv").exists() for t in _epoch_seconds(run)]
    seconds = sum(pack_seconds) + sum(single_seconds)
    images = 128 * (2 * len(pack_seconds) + len(single_seconds))
    assert len(single_seconds) == 4
    line = next(x for x in text.splitlines() if x.startswith("- training time"))
    rate = float(line.split("aggregate ")[1].split(" images/s")[0].replace(",", ""))
    assert abs(rate - images / seconds) <= 0.5 + 1e-3 * rate, (line, images / seconds)


def test_provenance_of_no_runs_is_a_one_line_error(tmp_path, capsys):
    assert provenance.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run folder with a summary.json" in err
    assert provenance.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
