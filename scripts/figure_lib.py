"""The numbers behind the figures: lr x weight-decay tables, best configurations, decoupling scores.

No drawing here (that is scripts/figures.py), so every number a figure shows can be tested on its own.
Input is the results DataFrame written by scripts/collect.py (one row per run).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # run in place, installed or not
    sys.path.insert(0, _REPO)
from optimizers import OPTIMIZERS  # noqa: E402  (each optimizer's display name and convention live on its class)
from optimizers.convert import CONVENTIONS  # noqa: E402
from optimizers.convert import convert_weight_decay as _convert  # noqa: E402

WD_CONVENTIONS = ("native",) + CONVENTIONS
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic data"}
# Columns besides the optimizer that make two runs different methods when they vary in one CSV.
SETTING_COLUMNS = ["batch_norm", "loss_multiplier", "depth", "dataset", "subset", "epochs",
                   "batch_size", "schedule"]
# Statuses of runs that ran to their end; any other (running, interrupted, failed, unreadable, missing) is incomplete.
COMPLETE_STATUSES = ("finished", "diverged")
# Results columns that describe how a run went, not what it was: the rest is its identity (collect.py).
OUTCOME_COLUMNS = frozenset({"run_dir", "run_name", "sweep_id", "experiment", "status", "best_test_acc", "best_epoch",
                             "epochs_completed", "diverged_epoch", "wall_time_s", "git_commit", "hardware", "torch",
                             "written_at", "error", "curves", "config_id", "seed"})
# What a results CSV without config_id (made by an older collect.py) must at least hold to tell runs apart.
CORE_COLUMNS = ("optimizer", "lr", "weight_decay", "seed", "batch_norm", "depth", "dataset", "epochs", "batch_size",
                "schedule", "loss_multiplier")


class MixedCell(ValueError):
    """Runs that differ in more than the seed would be averaged in one figure cell."""
METRIC_CHOICES = ("test_acc", "train_acc", "test_loss", "train_loss", "model_norm", "best_test_acc")


# ---------------------------------------------------------------- names and conventions

class UnknownOptimizer(ValueError):
    """A results CSV names an optimizer this repo does not have."""


def _optimizer_class(optimizer: str):
    try:
        return OPTIMIZERS[optimizer]
    except KeyError:
        raise UnknownOptimizer(f"unknown optimizer {optimizer!r} in the results; this repo has "
                               f"{', '.join(OPTIMIZERS)} (optimizers.OPTIMIZERS)") from None


def display_name(optimizer: str) -> str:
    return _optimizer_class(optimizer).display_name


def native_convention(optimizer: str) -> str:
    """The optimizer class's weight-decay convention: 'paper' (independent of lr) or 'torch' (scaled by lr;
    also for Adam, which has no weight decay to convert)."""
    return _optimizer_class(optimizer).weight_decay_convention or "torch"


def convert_weight_decay(wd, lr, optimizer: str, to: str):
    """Weight decay of `optimizer` (in its native convention) expressed in convention `to` (native, torch, paper);
    elementwise on numpy arrays and pandas Series (optimizers.convert_weight_decay)."""
    if to not in WD_CONVENTIONS:
        raise ValueError(f"unknown weight-decay convention {to!r}; use one of {', '.join(WD_CONVENTIONS)}")
    source = native_convention(optimizer)
    return wd if to == "native" else _convert(wd, lr, source, to)


def format_hparam(value: float) -> str:
    """Compact label for a grid value: 0.001 -> '1e-3', 5e-05 -> '5e-5', 0 -> '0', 10 -> '10'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0 or 0.1 <= abs(value) < 1000:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10**exponent, 3)
    if mantissa == 10:
        mantissa, exponent = 1, exponent + 1
    return f"{mantissa:g}e{exponent}"


def metric_column(df: pd.DataFrame, metric: str) -> str:
    """The results column holding `metric` (final_<metric>, or the column itself, e.g. best_test_acc)."""
    for column in (f"final_{metric}", metric):
        if column in df.columns:
            return column
    raise ValueError(f"results have no column for metric {metric!r}; use one of {', '.join(METRIC_CHOICES)}")


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric and "norm" not in metric


def is_accuracy(metric: str) -> bool:
    return "acc" in metric


# ---------------------------------------------------------------- methods and titles

def completed_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(COMPLETE_STATUSES)]


def identity_columns(df: pd.DataFrame) -> list[str]:
    """The columns that say what a run was (everything but its outcome, its metrics and its seed)."""
    return [c for c in df.columns if c not in OUTCOME_COLUMNS and not c.startswith("final_")]


def varying_setting_columns(df: pd.DataFrame, exclude: tuple[str, ...] = (), split_by: tuple[str, ...] = ()) -> list[str]:
    columns = list(SETTING_COLUMNS) + [c for c in split_by if c not in SETTING_COLUMNS]
    return [c for c in columns if c in df.columns and c not in exclude and df[c].nunique(dropna=False) > 1]


def method_columns(df: pd.DataFrame, exclude: tuple[str, ...] = (), split_by: tuple[str, ...] = ()) -> list[str]:
    """Columns that identify a method: the optimizer plus every setting that varies in df (and split_by)."""
    return ["optimizer"] + varying_setting_columns(df, exclude, split_by)


def check_cells(df: pd.DataFrame, split_by: tuple[str, ...] = ()) -> None:
    """MixedCell unless the completed runs of every method's lr x wd cell (those its mean averages) differ in
    nothing but the seed, no seed of one setting comes twice (a run collected from two places), and the cells
    of each method's grid differ in nothing but lr and weight decay.

    With collect.py's config_id, any difference counts (every key that changes a run's result); a CSV
    without it must at least have CORE_COLUMNS, and is checked on the columns it has. Runs that did not
    complete are only counted in their cells, so their (often partial) records are not compared.
    """
    missing = [c for c in split_by if c not in df.columns]
    if missing:
        raise ValueError(f"--split-by names columns the results do not have: {', '.join(missing)}")
    if "config_id" not in df.columns:
        lacking = [c for c in CORE_COLUMNS if c not in df.columns]
        if lacking:
            raise MixedCell(f"the results lack {', '.join(lacking)} and config_id, so runs of different settings "
                            "cannot be told apart; collect them with scripts/collect.py")
    placed = completed_runs(df).dropna(subset=["optimizer", "lr", "weight_decay"])
    keys = method_columns(placed, split_by=split_by) + ["lr", "weight_decay"]
    id_column = "config_id" if "config_id" in placed.columns else None
    for key, cell in placed.groupby(keys, dropna=False):
        where = ", ".join(f"{k}={v}" for k, v in zip(keys, key if isinstance(key, tuple) else (key,)))
        if "seed" in cell.columns:
            twice = cell[cell.duplicated([c for c in (id_column, "seed") if c], keep=False)]
            if len(twice):
                runs = ", ".join(map(str, twice["run_dir"])) if "run_dir" in twice.columns else f"{len(twice)} rows"
                raise MixedCell(f"the cell {where} holds seed {twice['seed'].iloc[0]} more than once ({runs}): one "
                                "run, or two runs of one setting and seed, would count as several seeds; collect "
                                "only one of them")
        known = cell[cell[id_column].notna()] if id_column else cell
        if id_column and known[id_column].nunique() <= 1:
            continue
        differing = [c for c in identity_columns(known) if c not in keys and known[c].nunique(dropna=False) > 1]
        if id_column is None and not differing:
            continue
        raise MixedCell(f"the cell {where} holds runs that differ in more than the seed: "
                        f"{_values(known, differing) or 'config_id'}; keep them apart with --split-by "
                        f"{','.join(differing[:3]) or 'KEY'}, or collect them separately")
    # The cells of one panel are compared with each other (best configuration, decoupling), so they too may
    # differ in nothing but lr and weight decay: rows trained on other data or in another precision are no grid.
    panel_keys = keys[:-2]
    for key, panel in placed.groupby(panel_keys, dropna=False):
        differing = [c for c in identity_columns(panel) if c not in keys and panel[c].nunique(dropna=False) > 1]
        if differing:
            where = ", ".join(f"{k}={v}" for k, v in zip(panel_keys, key if isinstance(key, tuple) else (key,)))
            raise MixedCell(f"the lr x weight-decay grid of {where} holds runs that differ in more than lr, weight "
                            f"decay and the seed: {_values(panel, differing)}; draw them as separate grids with "
                            f"--split-by {','.join(differing[:3])}, or collect them separately")


def _values(runs: pd.DataFrame, columns: list[str]) -> str:
    """'key (a, b); key2 (c, d)' for the first three columns: the values that set the runs apart."""
    return "; ".join(f"{c} ({', '.join(map(str, sorted(runs[c].astype(str).unique())))})" for c in columns[:3])


def _matches(series: pd.Series, value) -> pd.Series:
    return series.isna() if pd.isna(value) else series == value


def split_methods(df: pd.DataFrame, exclude: tuple[str, ...] = (), split_by: tuple[str, ...] = ()
                  ) -> list[tuple[dict, pd.DataFrame]]:
    """[(method key, its runs)], optimizers in optimizers.OPTIMIZERS order, then by the varying settings."""
    columns = method_columns(df, exclude, split_by)
    keys = df[columns].drop_duplicates().copy()
    order = {name: i for i, name in enumerate(OPTIMIZERS)}
    keys["_rank"] = keys["optimizer"].map(lambda o: order.get(o, len(order)))
    keys = keys.sort_values(["_rank"] + columns[1:], na_position="last").drop(columns="_rank")
    methods = []
    for key in keys.to_dict("records"):
        mask = np.logical_and.reduce([_matches(df[c], v) for c, v in key.items()])
        methods.append((key, df[mask]))
    return methods


def setting_label(column: str, value) -> str:
    if pd.isna(value):
        return f"{column}=?"
    if column == "batch_norm":
        return "BN on" if as_bool(value) else "BN off"
    if column == "loss_multiplier":
        return f"c={value:g}"
    if column == "depth":
        return f"ResNet{int(value)}"
    if column == "dataset":
        return DATASET_NAMES.get(value, str(value))
    if column == "subset":
        return f"{_count(value)} subset" if value else "full data"
    if column == "epochs":
        return f"{int(value)} epochs"
    if column == "schedule":
        return f"{value} schedule"
    return f"{column}={value}"


def method_label(key: dict) -> str:
    """'AdamW' or, when settings vary, 'AdamW, BN on, c=10'."""
    parts = [display_name(key["optimizer"])]
    parts += [setting_label(c, v) for c, v in key.items() if c != "optimizer"]
    return ", ".join(parts)


def setting_title(df: pd.DataFrame) -> str:
    """What the runs share, e.g. 'ResNet20, BN off, CIFAR-10 (5k subset), 10 epochs'."""
    def single(column):
        if column not in df.columns or df[column].nunique(dropna=False) != 1:
            return None
        value = df[column].iloc[0]
        return None if pd.isna(value) else value

    parts = []
    if (depth := single("depth")) is not None:
        parts.append(f"ResNet{int(depth)}")
    if (bn := single("batch_norm")) is not None:
        parts.append(setting_label("batch_norm", bn))
    if (dataset := single("dataset")) is not None:
        name = DATASET_NAMES.get(dataset, str(dataset))
        subset = single("subset")
        parts.append(f"{name} ({_count(subset)} subset)" if subset else name)
    if (epochs := single("epochs")) is not None:
        parts.append(f"{int(epochs)} epochs")
    if (schedule := single("schedule")) is not None and schedule != "constant":
        parts.append(f"{schedule} schedule")
    if (c := single("loss_multiplier")) is not None and c != 1:
        parts.append(f"loss x{c:g}")
    return ", ".join(parts)


def _count(n) -> str:
    n = int(n)
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def as_bool(value) -> bool:
    return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


# ---------------------------------------------------------------- lr x wd tables

@dataclass
class HeatmapTable:
    """One method's grid: rows = lr (ascending), columns = weight decay (ascending, native convention).

    mean and std are over the seeds that did not diverge; n_runs counts completed runs
    (finished or diverged), n_diverged the diverged ones, n_incomplete the runs of the cell that did
    not complete (running, interrupted, failed, unreadable, missing), absent the seeds of the method
    that a cell holding runs has no run of at all (absent_seeds; a tuple per cell).
    """

    mean: pd.DataFrame
    std: pd.DataFrame
    n_runs: pd.DataFrame
    n_diverged: pd.DataFrame
    n_incomplete: pd.DataFrame
    absent: pd.DataFrame

    @property
    def lrs(self) -> list[float]:
        return list(self.mean.index)

    @property
    def wds(self) -> list[float]:
        return list(self.mean.columns)

    @property
    def missing(self) -> pd.DataFrame:
        """No run at all: neither a completed nor an incomplete one."""
        return (self.n_runs == 0) & (self.n_incomplete == 0)

    @property
    def n_absent(self) -> pd.DataFrame:
        return self.absent.map(len)

    @property
    def incomplete(self) -> pd.DataFrame:
        return (self.n_incomplete > 0) | (self.n_absent > 0)

    @property
    def all_diverged(self) -> pd.DataFrame:
        return (self.n_runs > 0) & (self.n_diverged == self.n_runs)

    @property
    def some_diverged(self) -> pd.DataFrame:
        return (self.n_diverged > 0) & (self.n_diverged < self.n_runs)

    @property
    def selectable(self) -> pd.DataFrame:
        """mean where no seed diverged, NaN elsewhere: a cell that diverges is never 'best'."""
        return self.mean.where((self.n_runs > 0) & (self.n_diverged == 0))


def heatmap_table(runs: pd.DataFrame, column: str) -> HeatmapTable:
    """lr x wd table of `column` over the completed runs of one method (mean/std over seeds); the method's
    incomplete runs are counted per cell (and give the grid its rows and columns too)."""
    every = runs.dropna(subset=["lr", "weight_decay"])
    unfinished = every[~every["status"].isin(COMPLETE_STATUSES)]
    runs = completed_runs(every)
    if runs.empty and unfinished.empty:
        raise ValueError("no run to tabulate")
    lrs = sorted(every["lr"].unique())
    wds = sorted(every["weight_decay"].unique())
    diverged = runs["status"] == "diverged"
    cells = ["lr", "weight_decay"]
    kept = runs[~diverged].groupby(cells)[column]

    def grid(series: pd.Series) -> pd.DataFrame:
        frame = series.unstack() if len(series) else pd.DataFrame()
        out = frame.reindex(index=lrs, columns=wds).astype(float)
        out.index.name, out.columns.name = "lr", "weight_decay"
        return out

    return HeatmapTable(
        mean=grid(kept.mean()),
        std=grid(kept.std()),
        n_runs=grid(runs.groupby(cells).size()).fillna(0).astype(int),
        n_diverged=grid(runs[diverged].groupby(cells).size()).fillna(0).astype(int),
        n_incomplete=grid(unfinished.groupby(cells).size()).fillna(0).astype(int),
        absent=_absent_grid(absent_seeds(every), lrs, wds),
    )


def _absent_grid(absent: pd.Series, lrs: list, wds: list) -> pd.DataFrame:
    frame = absent.unstack() if len(absent) else pd.DataFrame()
    out = frame.reindex(index=lrs, columns=wds).astype(object)
    out.index.name, out.columns.name = "lr", "weight_decay"
    return out.map(lambda seeds: seeds if isinstance(seeds, tuple) else ())


def absent_seeds(runs: pd.DataFrame) -> pd.Series:
    """Per (lr, wd) cell that holds a run of one method (complete or not): the seeds the method has elsewhere in
    its grid and the cell has no run of (a run folder removed, never brought home, or a job never started);
    empty tuples where none is absent. A cell without any run is 'no run', not counted here."""
    every = runs.dropna(subset=["lr", "weight_decay"])
    if "seed" not in every.columns or every.empty:
        return pd.Series(dtype=object)
    seeds = set(every["seed"].dropna())
    held = every.groupby(["lr", "weight_decay"])["seed"].agg(lambda s: set(s.dropna()))
    return held.map(lambda have: tuple(sorted(seeds - have)))


def best_config(table: HeatmapTable, higher_is_better: bool = True) -> tuple[float, float] | None:
    """(lr, wd) of the best cell among cells where no seed diverged; None when there is none."""
    stacked = table.selectable.stack().dropna()
    if stacked.empty:
        return None
    lr, wd = stacked.idxmax() if higher_is_better else stacked.idxmin()
    return float(lr), float(wd)


# ---------------------------------------------------------------- decoupling

@dataclass
class Decoupling:
    """How much the best lr depends on weight decay (Loshchilov & Hutter's 'rectangular region').

    best_lr_per_wd: for every wd column with a usable cell, the lr of its best cell.
    lr_shift_std: population std of log10(best lr) across those columns (0 = the best lr never
        moves = fully decoupled; one decade of drift per column gives about 1). Lower is better.
    lr_shift_range: max - min of log10(best lr), in decades.
    region_fill: cells within `tolerance` of the grid's best value, divided by the cells of their
        bounding box in the grid; 1 = the good region is a rectangle, small = a diagonal band.
    """

    best_lr_per_wd: pd.Series
    lr_shift_std: float
    lr_shift_range: float
    region_fill: float


def decoupling(table: HeatmapTable, higher_is_better: bool = True, tolerance: float = 0.02) -> Decoupling:
    """Decoupling scores of one method's table; cells where a seed diverged do not count.

    tolerance is in the metric's units (0.02 = 2 accuracy points for accuracies).
    """
    values = table.selectable
    usable = values.dropna(axis=1, how="all")
    best_lr = usable.idxmax(axis=0) if higher_is_better else usable.idxmin(axis=0)
    best_lr = best_lr.astype(float)
    log_lr = np.log10(best_lr.to_numpy())
    if len(log_lr) >= 2:
        std, spread = float(np.std(log_lr)), float(np.ptp(log_lr))
    else:
        std = spread = math.nan
    return Decoupling(best_lr, std, spread, _region_fill(values, higher_is_better, tolerance))


def _region_fill(values: pd.DataFrame, higher_is_better: bool, tolerance: float) -> float:
    grid = values.to_numpy(dtype=float)
    if not np.isfinite(grid).any():
        return math.nan
    if higher_is_better:
        region = grid >= np.nanmax(grid) - tolerance
    else:
        region = grid <= np.nanmin(grid) + tolerance
    rows, cols = np.nonzero(region)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return float(region.sum() / box)
