"""Judges each claim of the post and of Zhuang et al. (SPEC.md) on a results CSV, by a stated rule.

    python scripts/claims.py results/NAME.csv [-o results/claims/NAME.md] [--into results/README.md]
        [--tolerance 0.01] [--high-accuracy-gap 0.02] [--chance 0.1]

Writes a markdown table: claim, rule, numbers, verdict. A verdict is "holds", "does not hold", or
"cannot be judged" with why: the methods are not in the results, a grid has runs that did not
complete, only one lr row learns, or the rule sets a difference against the seed-to-seed spread and
there is one seed. Differences between methods are paired by seed; their 95% interval is Student's t
interval over the seeds, mean +- t(0.975, n-1) s / sqrt(n). With the few seeds a grid affords it is wide
(t = 12.71 for 2 seeds, 4.30 for 3), as it should be: a percentile bootstrap of the mean would give about
the range of the seeds' differences, an interval that holds the true mean half the time with 2 seeds
and three times in four with 3, not 95%.

--into FILE replaces the text between `<!-- claims: NAME.csv -->` and `<!-- end claims -->` in FILE
with the table, so results/README.md's claim tables are this script's output.

Every figure's rule reads only runs that completed (finished or diverged; a diverged cell is never
"best"). Runs are grouped as figures.py groups them: a grid whose cells mix settings other than the
seed is refused (figures.py's --split-by is the way to keep such runs apart there).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

_SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)
import figure_lib as lib  # noqa: E402
from collect import run_files  # noqa: E402
from figures import load_results  # noqa: E402

HOLDS, FAILS, UNJUDGED = "holds", "does not hold", "cannot be judged"
# Optimizers whose iterates do not change when the loss is multiplied by c (SPEC.md, scale-freeness).
SCALE_FREE = ("adam", "adamw", "decoupled_adamw", "proxadam")
NOT_SCALE_FREE = ("adaml2", "adamp")


@dataclass
class Verdict:
    claim: str
    rule: str
    numbers: str
    verdict: str
    why: str = ""

    def cell(self) -> str:
        return f"**{self.verdict}**" + (f": {self.why}" if self.why else "")


@dataclass
class Settings:
    tolerance: float = 0.01  # "about the same" accuracy: within 1 point
    high_accuracy_gap: float = 0.02  # "high-accuracy configurations": within 2 points of the method's best
    chance: float | None = None  # accuracy of guessing; None: 1 / classes of the dataset column


# ---------------------------------------------------------------- numbers

def pct(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def hp(value: float) -> str:
    return lib.format_hparam(float(value))


def mean_ci(values) -> tuple[float, float] | None:
    """The 95% Student's t interval on the mean of `values` (one per seed); None with fewer than 2."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
    return float(values.mean() - half), float(values.mean() + half)


def interval(ci: tuple[float, float] | None, scale: float = 100, unit: str = " points") -> str:
    return "" if ci is None else f", 95% interval [{ci[0] * scale:+.1f}, {ci[1] * scale:+.1f}]{unit}"


def seeds_text(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def cells_text(n: int) -> str:
    return f"{n} cell" + ("s" if n != 1 else "")


# ---------------------------------------------------------------- grids

class Grid:
    """One method's completed runs in one setting: seed x (lr, wd) tables of a metric."""

    def __init__(self, runs: pd.DataFrame, name: str) -> None:
        self.name = name
        self.all = runs
        self.runs = lib.completed_runs(runs)
        self.incomplete = int((~runs["status"].isin(lib.COMPLETE_STATUSES)).sum())
        self.absent = int(lib.absent_seeds(runs).map(len).sum())  # runs of no status at all: no folder, no row
        self.seeds = sorted(self.runs["seed"].dropna().unique()) if "seed" in self.runs else [0]

    def per_seed(self, metric: str) -> pd.DataFrame:
        """rows: seed, columns: (lr, wd); NaN where the run is missing, and in every seed of a cell where one
        diverged: as in the figures (figure_lib.HeatmapTable.selectable), such a cell is never best nor among the
        high-accuracy ones on the seeds that survived."""
        ok = self.runs[self.runs["status"] == "finished"]
        seed = ok["seed"] if "seed" in ok else 0
        table = ok.assign(seed=seed).pivot_table(index="seed", columns=["lr", "weight_decay"], values=metric,
                                                 aggfunc="first")
        diverged = self.runs[self.runs["status"] == "diverged"]
        struck = set(zip(diverged["lr"], diverged["weight_decay"]))
        return table.loc[:, [cell not in struck for cell in table.columns]]

    def mean(self, metric: str) -> pd.Series:
        return self.per_seed(metric).mean(axis=0)

    def best(self, metric: str = "final_test_acc") -> tuple[float, float]:
        mean = self.mean(metric).dropna()
        return mean.idxmax()

    def learning_rows(self, chance: float, margin: float = 0.05) -> list[float]:
        mean = self.mean("final_test_acc").dropna()
        return sorted({lr for (lr, _), acc in mean.items() if acc >= chance + margin})


def _chance(df: pd.DataFrame, settings: Settings) -> float:
    if settings.chance is not None:
        return settings.chance
    datasets = set(df["dataset"].dropna().astype(str)) if "dataset" in df else set()
    return 0.01 if datasets == {"cifar100"} else 0.1


def _grid(df: pd.DataFrame, optimizer: str, label: str) -> Grid | None:
    runs = df[df["optimizer"] == optimizer]
    return Grid(runs, f"{lib.display_name(optimizer)}{label}") if len(runs) else None


def _missing(claim: str, rule: str, names: list[str], label: str) -> Verdict:
    return Verdict(claim, rule, "", UNJUDGED, f"the results have no {' or '.join(names)} runs{label}")


def _incomplete(grids: list[Grid]) -> str:
    broken = [f"{g.name}: {g.incomplete}" for g in grids if g.incomplete]
    absent = [f"{g.name}: {g.absent}" for g in grids if g.absent]
    why = [f"runs that did not complete ({', '.join(broken)})"] if broken else []
    why += [f"cells with a seed absent that the method's other cells have ({', '.join(absent)})"] if absent else []
    return f"{'; '.join(why)}; rerun or collect them first" if why else ""


def _same_update_note(best_a, best_b) -> str:
    """Both bests at weight decay 0, where every decay rule is the same update (plain Adam)."""
    return "; both best at wd 0, where the methods are the same optimizer" if best_a[1] == 0 == best_b[1] else ""


def _two_grids(df, label, claim, rule, a, b) -> tuple[Grid, Grid] | Verdict:
    """Both methods' grids, or the verdict that they cannot be judged (a method absent, runs incomplete)."""
    ga, gb = _grid(df, a, label), _grid(df, b, label)
    if ga is None or gb is None:
        return _missing(claim, rule, [lib.display_name(m) for m, g in ((a, ga), (b, gb)) if g is None], label)
    if why := _incomplete([ga, gb]):
        return Verdict(claim, rule, "", UNJUDGED, why)
    if why := _nothing_selectable([ga, gb]):
        return Verdict(claim, rule, "", UNJUDGED, why)
    return ga, gb


def _nothing_selectable(grids: list[Grid]) -> str:
    empty = [g.name for g in grids if g.mean("final_test_acc").dropna().empty]
    return f"every cell of {' and '.join(empty)} has a seed that diverged or no finished run" if empty else ""


def _paired(a: pd.Series, b: pd.Series) -> pd.Series:
    """a - b over the seeds both have."""
    return (a - b).dropna()


def _compare(diffs: pd.Series, *, within: float | None = None) -> tuple[str, str]:
    """Verdict on the mean paired difference: `within` set = "about equal" (the interval inside ±within);
    None = "a is larger" (the interval above 0)."""
    ci = mean_ci(diffs)
    if ci is None:
        return UNJUDGED, f"{seeds_text(len(diffs))}: no seed-to-seed spread to set the difference against"
    lo, hi = ci
    if within is not None:
        if -within <= lo and hi <= within:
            return HOLDS, ""
        if lo > within or hi < -within:
            return FAILS, ""
        return UNJUDGED, f"the interval reaches past ±{100 * within:.1f} points: more seeds are needed"
    if lo > 0:
        return HOLDS, ""
    if hi <= 0:
        return FAILS, ""
    return UNJUDGED, "the interval holds 0: the difference is within the seed-to-seed spread"


# ---------------------------------------------------------------- the claims

def same_best_accuracy(df, label, settings, a="adamw", b="adamp", claim=None, source="post") -> Verdict:
    claim = claim or f"{lib.display_name(a)} and {lib.display_name(b)} reach about the same best accuracy{label} ({source})"
    rule = (f"each method's best (lr, wd) by seed-mean final test accuracy; paired difference of the seeds' accuracies "
            f"there; holds if its 95% interval lies within ±{100 * settings.tolerance:.1f} points")
    grids = _two_grids(df, label, claim, rule, a, b)
    if isinstance(grids, Verdict):
        return grids
    ga, gb = grids
    best_a, best_b = ga.best(), gb.best()
    acc_a, acc_b = ga.per_seed("final_test_acc")[best_a], gb.per_seed("final_test_acc")[best_b]
    diffs = _paired(acc_a, acc_b)
    numbers = (f"{ga.name} {pct(acc_a.mean())} (lr {hp(best_a[0])}, wd {hp(best_a[1])}) vs {gb.name} "
               f"{pct(acc_b.mean())} (lr {hp(best_b[0])}, wd {hp(best_b[1])}); difference "
               f"{points(diffs.mean())} points{interval(mean_ci(diffs))} over {seeds_text(len(diffs))}"
               f"{_same_update_note(best_a, best_b)}")
    verdict, why = _compare(diffs, within=settings.tolerance)
    return Verdict(claim, rule, numbers, verdict, why)


def better_accuracy(df, label, settings, a, b, source) -> Verdict:
    claim = f"{lib.display_name(a)} generalises better than {lib.display_name(b)}{label} ({source})"
    rule = ("each method's best (lr, wd) by seed-mean final test accuracy; paired difference of the seeds' accuracies "
            "there; holds if its 95% interval lies above 0, does not hold if it lies at or below 0")
    grids = _two_grids(df, label, claim, rule, a, b)
    if isinstance(grids, Verdict):
        return grids
    ga, gb = grids
    best_a, best_b = ga.best(), gb.best()
    diffs = _paired(ga.per_seed("final_test_acc")[best_a], gb.per_seed("final_test_acc")[best_b])
    numbers = (f"{ga.name} {pct(ga.mean('final_test_acc')[best_a])} vs {gb.name} "
               f"{pct(gb.mean('final_test_acc')[best_b])}; difference {points(diffs.mean())} points"
               f"{interval(mean_ci(diffs))} over {seeds_text(len(diffs))}"
               f"{_same_update_note(best_a, best_b)}")
    verdict, why = _compare(diffs)
    return Verdict(claim, rule, numbers, verdict, why)


def best_at(df, label, settings, methods, key, value, claim, rule_what) -> Verdict:
    """Every seed's best configuration of every method has `key` (lr or weight_decay) == value."""
    rule = (f"for each method and seed, the {rule_what} of the best (lr, wd) by final test accuracy; holds if all are "
            f"{hp(value)}")
    grids = [g for g in (_grid(df, m, label) for m in methods) if g is not None]
    if not grids:
        return _missing(claim, rule, [lib.display_name(m) for m in methods], label)
    if why := _incomplete(grids) or _nothing_selectable(grids):
        return Verdict(claim, rule, "", UNJUDGED, why)
    what = "lr" if key == "lr" else "weight decay"
    if any(g.runs[key].nunique() < 2 for g in grids):
        return Verdict(claim, rule, "", UNJUDGED, f"the grid has one {what}, so no other could be best")
    if not all(np.isclose(g.runs[key], value).any() for g in grids):
        return Verdict(claim, rule, "", UNJUDGED, f"the grid has no {what} {hp(value)}")
    position = 0 if key == "lr" else 1
    parts, every = [], []
    for g in grids:
        table = g.per_seed("final_test_acc")
        bests = [table.loc[seed].dropna().idxmax()[position] for seed in table.index if table.loc[seed].notna().any()]
        every += bests
        parts.append(f"{g.name}: {', '.join(hp(v) for v in bests)}")
    numbers = "; ".join(parts) + f" ({seeds_text(max(len(g.seeds) for g in grids))})"
    ok = all(math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-15) for v in every)
    return Verdict(claim, rule, numbers, HOLDS if ok else FAILS)


def smaller_norm(df, label, settings, small="adamp", large="adamw") -> Verdict:
    claim = (f"{lib.display_name(small)} ends with a smaller model norm than {lib.display_name(large)} among the "
             f"high-accuracy configurations{label} (post)")
    gap = settings.high_accuracy_gap
    rule = (f"high-accuracy configurations: a method's (lr, wd) cells whose seed-mean final test accuracy is within "
            f"{100 * gap:.0f} points of its best; per seed, the mean final model norm over them; paired difference "
            f"{lib.display_name(small)} - {lib.display_name(large)}; holds if its 95% interval lies below 0")
    grids = _two_grids(df, label, claim, rule, small, large)
    if isinstance(grids, Verdict):
        return grids
    gs, gl = grids

    def norms(g: Grid) -> tuple[pd.Series, int]:
        acc = g.mean("final_test_acc").dropna()
        cells = acc[acc >= acc.max() - gap].index
        return g.per_seed("final_model_norm")[cells].mean(axis=1), len(cells)

    (ns, cs), (nl, cl) = norms(gs), norms(gl)
    diffs = _paired(ns, nl)
    numbers = (f"{gs.name} {ns.mean():.2f} over {cells_text(cs)} vs {gl.name} {nl.mean():.2f} over {cells_text(cl)}; "
               "difference "
               f"{diffs.mean():+.2f}{interval(mean_ci(diffs), scale=1, unit='')} "
               f"over {seeds_text(len(diffs))}")
    verdict, why = _compare(-diffs)
    return Verdict(claim, rule, numbers, verdict, why)


def more_decoupled(df, label, settings, a, b, source) -> Verdict:
    claim = (f"{lib.display_name(a)}'s high-accuracy region is more rectangular (decoupled) than "
             f"{lib.display_name(b)}'s{label} ({source})")
    rule = ("per seed, the std of log10(best lr) across the wd columns (0: the best lr never moves; figures.py's "
            f"decoupling score); paired difference {lib.display_name(b)} - {lib.display_name(a)}; holds if its 95% "
            "interval lies above 0; needs at least two lr rows that learn (seed-mean accuracy 5 points above chance)")
    grids = _two_grids(df, label, claim, rule, a, b)
    if isinstance(grids, Verdict):
        return grids
    ga, gb = grids
    chance = _chance(df, settings)
    for g in (ga, gb):
        rows = g.learning_rows(chance)
        if len(rows) < 2:
            return Verdict(claim, rule, f"{g.name}: lr rows that learn: {', '.join(map(hp, rows)) or 'none'}",
                           UNJUDGED, f"only {len(rows)} lr row of {g.name} learns, so its best lr cannot move")

    def scores(g: Grid) -> pd.Series:
        table = g.per_seed("final_test_acc")
        out = {}
        for seed in table.index:
            grid = table.loc[seed].unstack("weight_decay")
            out[seed] = float(np.std(np.log10(grid.dropna(axis=1, how="all").idxmax(axis=0).astype(float))))
        return pd.Series(out)

    sa, sb = scores(ga), scores(gb)
    diffs = _paired(sb, sa)
    numbers = (f"{ga.name} {sa.mean():.2f}, {gb.name} {sb.mean():.2f} (decades); difference {diffs.mean():+.2f}"
               f"{interval(mean_ci(diffs), scale=1, unit='')} over {seeds_text(len(diffs))}")
    verdict, why = _compare(diffs)
    return Verdict(claim, rule, numbers, verdict, why)


def scale_free(df, settings, metric="final_model_norm") -> Verdict:
    name = metric.removeprefix("final_").replace("_", " ")
    claim = (f"Adam, AdamW (both forms) and ProxAdam are scale-free, AdamL2 and AdamP are not: final {name} under "
             "loss multipliers c (post)")
    rule = (f"per method, the range of final {name} over c at each configuration and seed, averaged (c-spread), against "
            "the std over seeds at c = 1 (seed spread); a method is scale-free in training if its c-spread is at most "
            "its seed spread; holds if that sorts every method present as SPEC.md does")
    if "loss_multiplier" not in df or df["loss_multiplier"].nunique() < 2:
        return Verdict(claim, rule, "", UNJUDGED, "the results have one loss multiplier")
    present = [m for m in lib.OPTIMIZERS if (df["optimizer"] == m).any()]
    grids = [Grid(df[df["optimizer"] == m], lib.display_name(m)) for m in present]
    if why := _incomplete(grids):
        return Verdict(claim, rule, "", UNJUDGED, why)
    parts, verdicts, seeds = [], [], set()
    for m, g in zip(present, grids):
        runs = g.runs[g.runs["status"] == "finished"]
        cells = runs.groupby(["lr", "weight_decay", "seed"])[metric]
        c_spread = float((cells.max() - cells.min()).mean())
        at_one = runs[np.isclose(runs["loss_multiplier"], 1.0)]
        seed_spread = float(at_one.groupby(["lr", "weight_decay"])[metric].std().mean())
        seeds.add(runs["seed"].nunique())
        parts.append(f"{g.name} {c_spread:.3g} vs {seed_spread:.3g}" if math.isfinite(seed_spread)
                     else f"{g.name} {c_spread:.3g}")
        if m in SCALE_FREE or m in NOT_SCALE_FREE:
            verdicts.append((c_spread <= seed_spread) == (m in SCALE_FREE))
    numbers = f"c-spread vs seed spread: {'; '.join(parts)} ({seeds_text(min(seeds))})"
    if min(seeds) < 2:
        return Verdict(claim, rule, numbers, UNJUDGED,
                       f"{seeds_text(min(seeds))}: no seed spread to set the c-spread against")
    return Verdict(claim, rule, numbers, HOLDS if all(verdicts) else FAILS)


# ---------------------------------------------------------------- the table

def _bn_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "batch_norm" not in df or df["batch_norm"].nunique(dropna=False) < 2:
        bn = df["batch_norm"].iloc[0] if "batch_norm" in df and len(df) else None
        return [("" if bn is None else (" with BN" if lib.as_bool(bn) else " without BN"), df)]
    return [(" without BN" if not value else " with BN", part) for value, part in df.groupby("batch_norm")]


NEEDED = ("status", "optimizer", "lr", "weight_decay", "seed", "final_test_acc", "final_model_norm")


def judge(df: pd.DataFrame, settings: Settings | None = None) -> list[Verdict]:
    """Every claim SPEC.md lists, judged on the results `df` (a results CSV of collect.py)."""
    settings = settings or Settings()
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"the results lack columns {', '.join(missing)}; is it a results CSV from scripts/collect.py?")
    lib.check_cells(df)
    others = lib.varying_setting_columns(df, exclude=("batch_norm", "loss_multiplier"))
    if others:
        raise ValueError(f"the results vary in {', '.join(others)}; claims.py judges one setting at a time: collect "
                         "each separately")
    plain = df[np.isclose(df["loss_multiplier"], 1.0)] if "loss_multiplier" in df else df
    verdicts = []
    for label, part in _bn_groups(plain):
        verdicts += [
            same_best_accuracy(part, label, settings),
            best_at(part, label, settings, ("adamw", "adamp"), "lr", 1e-3,
                    f"The best configurations all have lr 1e-3{label} (post)", "lr"),
            smaller_norm(part, label, settings),
            more_decoupled(part, label, settings, "adamw", "adamp", "post; Loshchilov & Hutter's criterion"),
        ]
    for label, part in _bn_groups(plain):
        bn_on = label == " with BN"
        adamw = "decoupled_adamw" if (part["optimizer"] == "decoupled_adamw").any() else "adamw"
        if bn_on:
            verdicts.append(same_best_accuracy(part, label, settings, adamw, "adaml2",
                                               claim=f"{lib.display_name(adamw)} and AdamL2 are on par{label} "
                                                     "(Zhuang et al.)", source="Zhuang et al."))
            verdicts.append(best_at(part, label, settings, ("adaml2", adamw, "proxadam"), "weight_decay", 0.0,
                                    f"The best weight decay is 0{label} (Zhuang et al.)", "weight decay"))
        else:
            verdicts.append(better_accuracy(part, label, settings, adamw, "adaml2", "Zhuang et al."))
            verdicts.append(more_decoupled(part, label, settings, adamw, "adaml2", "Zhuang et al."))
    verdicts += [scale_free(df, settings, "final_model_norm"), scale_free(df, settings, "final_test_acc")]
    return verdicts


def markdown(verdicts: list[Verdict], source: str, df: pd.DataFrame) -> str:
    seeds = df["seed"].nunique() if "seed" in df else 1
    done = lib.completed_runs(df)
    lines = [f"Judged by `scripts/claims.py` on `{source}`: {len(df)} runs ({len(done)} completed), "
             f"{seeds_text(seeds)}.", "",
             "| claim | rule | numbers | verdict |", "|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.claim} | {v.rule} | {v.numbers or '—'} | {v.cell()} |")
    return "\n".join(lines) + "\n"


MARKER = "<!-- claims: {name} -->"
END = "<!-- end claims -->"


def insert_into(path: Path, name: str, table: str) -> None:
    """Replaces the text between the markers for `name` in `path` (written atomically)."""
    text = path.read_text()
    start = MARKER.format(name=name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no '{start}' ... '{END}' section to fill; add one where the table belongs")
    run_files.atomic_write_text(path, pattern.sub(lambda _: f"{start}\n{table}{END}", text))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results_csv")
    p.add_argument("-o", "--output", help="write the table here (markdown); default: print it")
    p.add_argument("--into", help="fill this file's '<!-- claims: NAME.csv -->' section with the table")
    p.add_argument("--tolerance", type=float, default=Settings.tolerance)
    p.add_argument("--high-accuracy-gap", type=float, default=Settings.high_accuracy_gap)
    p.add_argument("--chance", type=float, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(args.tolerance, args.high_accuracy_gap, args.chance)
    try:
        df = load_results(args.results_csv)
        table = markdown(judge(df, settings), os.path.basename(args.results_csv), df)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            run_files.atomic_write_text(Path(args.output), table)
            print(args.output)
        if args.into:
            insert_into(Path(args.into), os.path.basename(args.results_csv), table)
            print(args.into)
        if not args.output and not args.into:
            print(table, end="")
    except (ValueError, FileNotFoundError) as e:
        print(f"claims: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
