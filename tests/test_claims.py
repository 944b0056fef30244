"""scripts/claims.py on fixture results whose verdicts are known by construction."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from cli import REPO, run_cli

sys.path.insert(0, str(REPO / "scripts"))
import claims  # noqa: E402

LRS, WDS = (1e-3, 1e-2), (1e-4, 1e-2)
NORM_CLAIM = "AdamP ends with a smaller model norm than AdamW among the high-accuracy configurations without BN"


def post_grid(seeds=(0, 1, 2), adamp_gap=0.0, adamp_best_lr_seed1=None, status=None) -> pd.DataFrame:
    """The post's grid: AdamW's best lr is 1e-3 in every wd column (decoupled); AdamP's moves to 1e-2 at wd 1e-2;
    AdamP ends with the smaller norm. Accuracies carry a small seed effect shared by both methods."""
    rows = []
    for seed in seeds:
        noise = 0.003 * (seed - 1)
        for opt in ("adamw", "adamp"):
            for lr in LRS:
                for wd in WDS:
                    acc = 0.80 if lr == 1e-3 else 0.50
                    if opt == "adamp":
                        acc -= adamp_gap
                        if wd == 1e-2:
                            acc = 0.60 if lr == 1e-3 else 0.70
                        if adamp_best_lr_seed1 and seed == 1 and lr == adamp_best_lr_seed1 and wd == 1e-4:
                            acc = 0.95
                    norm = (40.0 if opt == "adamw" else 30.0) + 0.2 * seed
                    rows.append(dict(run_dir=f"{opt}-{lr}-{wd}-{seed}", status="finished", optimizer=opt, lr=lr,
                                     weight_decay=wd, seed=seed, batch_norm=False, loss_multiplier=1.0, depth=20,
                                     dataset="cifar10", epochs=5, batch_size=128, schedule="constant",
                                     final_test_acc=acc + noise, final_model_norm=norm))
    df = pd.DataFrame(rows)
    if status:
        df.loc[0, "status"] = status
    return df


def by_claim(verdicts) -> dict[str, claims.Verdict]:
    return {v.claim.rsplit(" (", 1)[0]: v for v in verdicts}


def test_the_post_claims_on_a_grid_where_each_holds():
    v = by_claim(claims.judge(post_grid()))
    assert v["AdamW and AdamP reach about the same best accuracy without BN"].verdict == claims.HOLDS
    assert v["The best configurations all have lr 1e-3 without BN"].verdict == claims.HOLDS
    norm = v[NORM_CLAIM]
    assert norm.verdict == claims.HOLDS and "-10.00" in norm.numbers
    decoupled = v["AdamW's high-accuracy region is more rectangular (decoupled) than AdamP's without BN"]
    assert decoupled.verdict == claims.HOLDS, decoupled
    assert "AdamW without BN 0.00, AdamP without BN 0.50" in decoupled.numbers
    # Methods the results do not have, and a single loss multiplier: said, not guessed.
    zhuang = v["AdamW generalises better than AdamL2 without BN"]
    assert zhuang.verdict == claims.UNJUDGED and "no AdamL2 runs" in zhuang.why
    scale = [x for x in v.values() if "scale-free" in x.claim]
    assert scale and all(x.verdict == claims.UNJUDGED and "one loss multiplier" in x.why for x in scale)


def test_claims_that_do_not_hold_say_so():
    v = by_claim(claims.judge(post_grid(adamp_gap=0.05, adamp_best_lr_seed1=1e-2)))
    same = v["AdamW and AdamP reach about the same best accuracy without BN"]
    assert same.verdict == claims.FAILS and "+5.0 points" in same.numbers
    best = v["The best configurations all have lr 1e-3 without BN"]
    assert best.verdict == claims.FAILS and "AdamP without BN: 1e-3, 1e-2, 1e-3" in best.numbers


def test_a_single_seed_cannot_judge_a_rule_that_needs_spread():
    v = by_claim(claims.judge(post_grid(seeds=(0,))))
    same = v["AdamW and AdamP reach about the same best accuracy without BN"]
    assert same.verdict == claims.UNJUDGED and "1 seed" in same.why
    assert v["The best configurations all have lr 1e-3 without BN"].verdict == claims.HOLDS  # needs no spread


def test_a_grid_with_one_lr_cannot_say_which_lr_is_best():
    v = by_claim(claims.judge(post_grid()[lambda df: df["lr"] == 1e-3]))
    best = v["The best configurations all have lr 1e-3 without BN"]
    assert best.verdict == claims.UNJUDGED and "one lr" in best.why


def test_a_grid_with_an_incomplete_run_cannot_be_judged():
    v = by_claim(claims.judge(post_grid(status="failed")))
    same = v["AdamW and AdamP reach about the same best accuracy without BN"]
    assert same.verdict == claims.UNJUDGED and "did not complete (AdamW without BN: 1)" in same.why


def test_a_cell_where_a_seed_diverged_is_never_best_nor_high_accuracy():
    """As in the figures: AdamW's (1e-2, 1e-4) is the best cell on the two seeds that survived, but seed 2
    diverged there, so the claims judge AdamW at its best cell without a divergence (lr 1e-3)."""
    df = post_grid()
    cell = (df["optimizer"] == "adamw") & (df["lr"] == 1e-2) & (df["weight_decay"] == 1e-4)
    df.loc[cell, "final_test_acc"] = 0.95
    df.loc[cell & (df["seed"] == 2), ["status", "final_test_acc", "final_model_norm"]] = ["diverged", np.nan, np.nan]
    v = by_claim(claims.judge(df))
    same = v["AdamW and AdamP reach about the same best accuracy without BN"]
    assert same.numbers.startswith("AdamW without BN 80.0% (lr 1e-3, wd 1e-4)"), same.numbers
    assert v["The best configurations all have lr 1e-3 without BN"].verdict == claims.HOLDS
    assert "over 2 cells" in v[NORM_CLAIM].numbers.split(" vs ")[1]  # AdamW's two lr 1e-3 cells, not the struck one

    df.loc[df["optimizer"] == "adamw", ["status", "final_test_acc"]] = ["diverged", np.nan]
    v = by_claim(claims.judge(df))
    for claim in ("AdamW and AdamP reach about the same best accuracy without BN",
                  "The best configurations all have lr 1e-3 without BN", NORM_CLAIM):
        assert v[claim].verdict == claims.UNJUDGED and "every cell of AdamW without BN" in v[claim].why, v[claim]


def test_only_one_learning_row_cannot_judge_decoupling():
    df = post_grid()
    df.loc[df["lr"] == 1e-2, "final_test_acc"] = 0.1
    v = by_claim(claims.judge(df))
    decoupled = v["AdamW's high-accuracy region is more rectangular (decoupled) than AdamP's without BN"]
    assert decoupled.verdict == claims.UNJUDGED and "only 1 lr row" in decoupled.why


def norm_gaps(gaps: dict[int, float]) -> pd.DataFrame:
    """The post's grid with AdamP's model norm `gaps[seed]` below AdamW's in that seed (every cell)."""
    df = post_grid(seeds=tuple(gaps))
    for seed, gap in gaps.items():
        adamw = df.loc[(df["optimizer"] == "adamw") & (df["seed"] == seed), "final_model_norm"].iloc[0]
        df.loc[(df["optimizer"] == "adamp") & (df["seed"] == seed), "final_model_norm"] = adamw - gap
    return df


@pytest.mark.parametrize("gaps, verdict, shown", [
    # mean -5, s = 5.66 over 2 seeds: -5 +- 12.706 * 4.0 (t for 1 degree of freedom, from any table).
    ({0: 1.0, 1: 9.0}, claims.UNJUDGED, "-5.00, 95% interval [-55.8, +45.8] over 2 seeds"),
    # mean -5, s = 4 over 3 seeds: -5 +- 4.303 * 2.309.
    ({0: 1.0, 1: 5.0, 2: 9.0}, claims.UNJUDGED, "-5.00, 95% interval [-14.9, +4.9] over 3 seeds"),
    # mean -5, s = 1 over 3 seeds: -5 +- 4.303 * 0.577, below 0.
    ({0: 4.0, 1: 5.0, 2: 6.0}, claims.HOLDS, "-5.00, 95% interval [-7.5, -2.5] over 3 seeds"),
])
def test_the_interval_over_few_seeds_is_students_t(gaps, verdict, shown):
    # A percentile bootstrap would give about the range of the seeds' gaps, [-9, -1], in the first two cases
    # (an interval that holds the true mean half the time with 2 seeds, three times in four with 3) and
    # call both "holds".
    norm = by_claim(claims.judge(norm_gaps(gaps)))[NORM_CLAIM]
    assert norm.verdict == verdict and shown in norm.numbers, norm
    if verdict == claims.UNJUDGED:
        assert "the interval holds 0" in norm.why


def scale_free_runs(seeds=(0, 1)) -> pd.DataFrame:
    """AdamW moves by 1e-6 over c (its seed spread is 0.35); AdamP by 5."""
    rows = []
    for seed in seeds:
        for opt in ("adamw", "adamp"):
            for c in (1e-2, 1.0, 1e2):
                norm = 40 + 0.5 * seed + (1e-6 * np.log10(c) if opt == "adamw" else 2.5 * np.log10(c))
                rows.append(dict(run_dir=f"{opt}-{c}-{seed}", status="finished", optimizer=opt, lr=1e-3,
                                 weight_decay=1e-4, seed=seed, batch_norm=False, loss_multiplier=c, depth=20,
                                 dataset="cifar10", epochs=5, batch_size=128, schedule="constant",
                                 final_test_acc=0.5 + 0.01 * seed, final_model_norm=norm))
    return pd.DataFrame(rows)


def test_scale_freeness_against_the_seed_spread():
    norm = [v for v in claims.judge(scale_free_runs()) if "final model norm" in v.claim][0]
    assert norm.verdict == claims.HOLDS and "AdamW 4e-06 vs 0.354" in norm.numbers and "AdamP 10 vs 0.354" in norm.numbers
    swapped = scale_free_runs().replace({"optimizer": {"adamw": "adamp", "adamp": "adamw"}})
    assert [v for v in claims.judge(swapped) if "final model norm" in v.claim][0].verdict == claims.FAILS
    one = [v for v in claims.judge(scale_free_runs(seeds=(0,))) if "final model norm" in v.claim][0]
    assert one.verdict == claims.UNJUDGED and "no seed spread" in one.why


def test_the_command_writes_the_table_and_fills_the_readme_section(tmp_path):
    csv = tmp_path / "grid.csv"
    post_grid().to_csv(csv, index=False)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims: grid.csv -->\nold table\n<!-- end claims -->\nrest\n")
    out = tmp_path / "claims" / "grid.md"
    run_cli(["scripts/claims.py", str(csv), "-o", str(out), "--into", str(readme)], module="")
    table = out.read_text()
    assert table.startswith("Judged by `scripts/claims.py` on `grid.csv`: 24 runs (24 completed), 3 seeds.")
    assert "| The best configurations all have lr 1e-3 without BN (post) |" in table and "**holds**" in table
    text = readme.read_text()
    assert text == f"intro\n<!-- claims: grid.csv -->\n{table}<!-- end claims -->\nrest\n"


@pytest.mark.parametrize("change, message", [
    (lambda df: df.assign(depth=[20, 32] * (len(df) // 2)), "the results vary in depth"),
    (lambda df: df.drop(columns="final_test_acc"), "the results lack columns final_test_acc"),
])
def test_results_it_cannot_judge_are_a_one_line_error(tmp_path, change, message):
    csv = tmp_path / "grid.csv"
    change(post_grid()).to_csv(csv, index=False)
    proc = run_cli(["scripts/claims.py", str(csv)], module="", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr


def test_a_readme_without_the_section_is_an_error(tmp_path):
    csv = tmp_path / "grid.csv"
    post_grid().to_csv(csv, index=False)
    (tmp_path / "README.md").write_text("no section\n")
    proc = run_cli(["scripts/claims.py", str(csv), "--into", str(tmp_path / "README.md")], module="", check=False)
    assert proc.returncode == 1 and "has no '<!-- claims: grid.csv -->'" in proc.stderr
    assert (tmp_path / "README.md").read_text() == "no section\n"
