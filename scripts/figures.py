"""Heatmaps, best-configuration curves, the scale-free plot and decoupling scores of a results CSV.

    python scripts/figures.py results/NAME.csv -o results/figures/NAME/ \
        [--wd-convention native|torch|paper] [--metric test_acc] [--split-by KEY,...] [--allow-incomplete]

Reads results/NAME.csv and results/NAME_curves.csv from scripts/collect.py. Writes every figure as
PNG and PDF plus decoupling.csv, and prints the paths written. From a notebook:

    sys.path.insert(0, "<repo>/scripts"); import figures
    df = figures.load_results(path); fig = figures.plot_heatmaps(df, "test_acc")

Figures are matplotlib.figure.Figure objects built without pyplot, so they never touch the
notebook's backend or pile up in pyplot's figure list.

Runs are averaged in one cell only when they differ in nothing but the seed: a cell whose runs differ
in any setting that changes a result (collect.py's config_id; the columns say which) is an error that
names the keys; --split-by KEY,... draws such runs as separate methods instead. So is a method's grid whose
cells differ in more than lr and weight decay (figure_lib.check_cells). Runs that did not
complete (failed, unreadable, still running, or missing: listed in the sweep's expected_runs.json
but not run yet) are counted in their cells and drawn framed in red, a
cell with no completed run hatched red, apart from "—" (no run); so is a cell without any run of a seed
the method's other cells have ("k seeds absent"). The figures are written, and the
command then exits 1 unless --allow-incomplete.

Weight-decay axis: every panel's columns are the weight decays as swept, in the optimizer's own
(native) convention. --wd-convention torch|paper does not move cells (the converted grid is not
rectangular, since lambda_paper = lr * lambda_torch depends on the row); it adds the converted
value as the last line of every cell of the optimizers whose native convention differs.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

_SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if _SCRIPTS_DIR not in sys.path:  # so that `figures` imports its siblings however it was loaded
    sys.path.insert(0, _SCRIPTS_DIR)
import figure_lib as lib  # noqa: E402  (sibling module; scripts/ is not a package)
from collect import curves_path_for, layer_table_path_for, read_csv_exact, run_files, write_csv_atomically  # noqa: E402

CMAP = "viridis"
CAPTION_FONTSIZE = 7
MISSING_COLOR = "#ececec"
DIVERGED_COLOR = "#9a9a9a"
INCOMPLETE_COLOR = "#d62728"
RESULT_COLUMNS_NEEDED = ("run_dir", "optimizer", "lr", "weight_decay", "status")
CURVE_COLUMNS_NEEDED = ("run_dir", "epoch")
CURVE_METRICS = (("test_acc", "test accuracy (%)"), ("train_loss", "train loss"))
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = "osD^v<>"
# PNGs go into git and travel to the GPU machine within its 64 MiB: a 256-colour palette keeps a figure's
# look (a few flat cells and antialiased text) at about a third of the bytes of matplotlib's RGBA.
PNG_COLOURS = 256


# ---------------------------------------------------------------- inputs

def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """The results CSV of scripts/collect.py, checked for the columns the figures need."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results CSV {path} not found; run scripts/collect.py first")
    df = read_csv_exact(path)
    missing = [c for c in RESULT_COLUMNS_NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {', '.join(missing)}; is it a results CSV from scripts/collect.py?")
    if "batch_norm" in df.columns and not pd.api.types.is_bool_dtype(df["batch_norm"]):
        df["batch_norm"] = df["batch_norm"].map(lambda v: v if pd.isna(v) else lib.as_bool(v))
    return df


def load_curves(results_csv: str | os.PathLike) -> pd.DataFrame | None:
    """NAME_curves.csv beside results_csv, or None when it is absent."""
    path = curves_path_for(results_csv)
    if not path.is_file():
        return None
    curves = read_csv_exact(path)
    missing = [c for c in CURVE_COLUMNS_NEEDED if c not in curves.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {', '.join(missing)}; is it a curves CSV from scripts/collect.py?")
    return curves


# ---------------------------------------------------------------- heatmaps

def _scale(column: str) -> float:
    return 100.0 if lib.is_accuracy(column) else 1.0


def _format_value(value: float, column: str) -> str:
    if lib.is_accuracy(column) or "norm" in column:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _metric_title(column: str) -> str:
    name = column.removeprefix("final_").replace("_", " ")
    name = name.replace("acc", "accuracy")
    prefix = "" if column.startswith("best_") else "final "
    return f"{prefix}{name}" + (" (%)" if lib.is_accuracy(column) else "")


def cell_text(table: lib.HeatmapTable, i: int, j: int, column: str,
              converted_wd: float | None = None) -> str:
    """What cell (lr row i, wd column j) says: '—' (no run), 'k incomplete', 'div', or
    'mean\\n±std[\\nk/n div][\\nk incomplete][\\nk seeds absent][\\nλ=..]'."""
    n, n_div = int(table.n_runs.iat[i, j]), int(table.n_diverged.iat[i, j])
    n_inc, n_absent = int(table.n_incomplete.iat[i, j]), int(table.n_absent.iat[i, j])
    if n == 0 and n_inc == 0:
        return "—"
    lines = []
    if n and n_div == n:
        lines.append("div" if n == 1 else f"{n}/{n} div")
    elif n:
        scale = _scale(column)
        mean = table.mean.iat[i, j]
        lines.append("n/a" if math.isnan(mean) else _format_value(mean * scale, column))
        if n - n_div > 1 and not math.isnan(table.std.iat[i, j]):
            lines.append(f"±{_format_value(table.std.iat[i, j] * scale, column)}")
        if n_div:
            lines.append(f"{n_div}/{n} div")
    if n_inc:
        lines.append(f"{n_inc} incomplete")
    if n_absent:
        lines.append(f"{n_absent} seed{'s' if n_absent > 1 else ''} absent")
    if converted_wd is not None and n:
        lines.append(f"λ={lib.format_hparam(converted_wd)}")
    return "\n".join(lines)


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _draw_panel(ax, table: lib.HeatmapTable, key: dict, column: str, norm: Normalize, cmap,
                wd_convention: str):
    data = table.mean.to_numpy(dtype=float) * _scale(column)
    shown = np.ma.masked_invalid(np.where(table.all_diverged.to_numpy(), np.nan, data))
    image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
    native = lib.native_convention(key["optimizer"])
    convert = wd_convention not in ("native", native)
    for i, lr in enumerate(table.lrs):
        for j, wd in enumerate(table.wds):
            converted = lib.convert_weight_decay(wd, lr, key["optimizer"], wd_convention) if convert else None
            text = cell_text(table, i, j, column, converted)
            if table.incomplete.iat[i, j]:
                # Runs of this cell did not complete: never to be read as "no run" nor as a whole cell.
                no_result = int(table.n_runs.iat[i, j]) == 0
                ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, facecolor="#f7d4d4" if no_result else "none",
                                       hatch="xx" if no_result else None, edgecolor=INCOMPLETE_COLOR, linewidth=2,
                                       linestyle="--"))
            if table.all_diverged.iat[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=DIVERGED_COLOR,
                                       hatch="///", edgecolor="#555555", linewidth=0))
                color = "black"
            elif np.ma.is_masked(shown[i, j]):
                color = "#8b0000" if table.incomplete.iat[i, j] else "#555555"
            else:
                color = _text_color(cmap(norm(data[i, j])))
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(table.wds)), [lib.format_hparam(w) for w in table.wds])
    ax.set_yticks(range(len(table.lrs)), [lib.format_hparam(lr) for lr in table.lrs])
    ax.set_xlabel(f"weight decay ({native} convention)")
    ax.set_ylabel("learning rate")
    ax.set_title(lib.method_label(key), fontsize=10)
    return image


def _setting_key(key: dict) -> tuple[str, ...]:
    return tuple(lib.setting_label(c, v) for c, v in key.items() if c != "optimizer")


def heatmap_caption(df: pd.DataFrame, column: str, wd_convention: str,
                    scores: pd.DataFrame | None = None) -> str:
    """The text under a heatmap figure: how to read it, and the decoupling scores."""
    seeds = completed_seed_count(df)
    lines = [f"Mean over {seeds}; ± = std over seeds that did not diverge. "
             "Hatched grey 'div' = every seed diverged; 'k/n div' = k of n seeds diverged; '—' = no run; "
             "red dashed frame 'k incomplete' = k runs of the cell did not complete (failed, unreadable, running, "
             "missing: not run yet) "
             "and are not in its mean; 'k seeds absent' = k seeds the method has elsewhere in its grid have no run "
             "in the cell at all."]
    if wd_convention != "native":
        lines.append(f"Columns: weight decay as swept, in each optimizer's own convention; λ in a cell = "
                     f"the same decay in the {wd_convention} convention (λ_paper = lr·λ_torch).")
    incomplete = int((~df["status"].isin(lib.COMPLETE_STATUSES)).sum())
    if incomplete:
        lines.append(f"{incomplete} run(s) did not complete: " + ", ".join(
            f"{n} {status}" for status, n in df.loc[~df["status"].isin(lib.COMPLETE_STATUSES), "status"]
            .value_counts().items()) + ".")
    if scores is not None and len(scores):
        parts = [f"{r.method}: {r.lr_shift_std:.2f}" + ("" if math.isnan(r.region_fill) else f" (fill {r.region_fill:.2f})")
                 for r in scores.itertuples()]
        lines.append("Decoupling = std of log10(best lr) across wd columns, lower = more decoupled "
                     "(fill = share of the good region's bounding box it covers, 1 = rectangle): " + "; ".join(parts))
    return "\n".join(lines)


def completed_seed_count(df: pd.DataFrame) -> str:
    done = lib.completed_runs(df)
    if "seed" not in done.columns or done.empty:
        return "seeds"
    per_cell = done.groupby(lib.method_columns(done) + ["lr", "weight_decay"], dropna=False)["seed"].nunique()
    return seed_phrase(per_cell)


def seed_phrase(counts) -> str:
    """'3 seeds', or '2-3 seeds' when the points of a figure rest on different numbers of seeds."""
    counts = [int(n) for n in counts]
    if not counts:
        return "seeds"
    lo, hi = min(counts), max(counts)
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{count} seed" + ("" if count == "1" else "s")


def placed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that belong in a cell: those whose optimizer, lr and weight decay are known."""
    return df.dropna(subset=["optimizer", "lr", "weight_decay"])


def heatmap_tables(df: pd.DataFrame, column: str, split_by: tuple[str, ...] = ()) -> list:
    """[(method key, HeatmapTable)] of every method with a run, complete or not."""
    return [(key, lib.heatmap_table(runs, column)) for key, runs in lib.split_methods(placed_runs(df), split_by=split_by)]


def plot_heatmaps(df: pd.DataFrame, metric: str = "test_acc", *, wd_convention: str = "native",
                  scores: pd.DataFrame | None = None, split_by: tuple[str, ...] = ()) -> Figure:
    """One lr x wd panel per method, shared colour scale, annotated cells; see heatmap_caption."""
    if wd_convention not in lib.WD_CONVENTIONS:
        raise ValueError(f"unknown weight-decay convention {wd_convention!r}; use one of {', '.join(lib.WD_CONVENTIONS)}")
    column = lib.metric_column(df, metric)
    if lib.completed_runs(df).empty:
        raise ValueError("no finished or diverged run in the results; nothing to draw")
    methods = heatmap_tables(df, column, split_by)
    finite = np.concatenate([t.mean.to_numpy(dtype=float).ravel() for _, t in methods]) * _scale(column)
    finite = finite[np.isfinite(finite)]
    norm = Normalize(*(finite.min(), finite.max()) if finite.size else (0, 1))
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad=MISSING_COLOR)

    # One column per optimizer, one row per combination of the other varying settings (e.g. BN on/off).
    columns = list(dict.fromkeys(key["optimizer"] for key, _ in methods))
    rows = list(dict.fromkeys(_setting_key(key) for key, _ in methods))
    width = 3.9 * len(columns) + 1.2
    # Wrapped by hand so that the space kept free below the panels fits the caption exactly.
    caption = "\n".join(textwrap.fill(paragraph, width=int(width * 72 / (CAPTION_FONTSIZE * 0.55)))
                         for paragraph in heatmap_caption(df, column, wd_convention, scores).splitlines())
    caption_height = (caption.count("\n") + 1) * CAPTION_FONTSIZE * 1.3 / 72 + 0.1
    height = 3.2 * len(rows) + 0.4 + caption_height
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(rect=(0, caption_height / height, 1, 1 - caption_height / height))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    used = set()
    image = None
    for key, table in methods:
        position = (rows.index(_setting_key(key)), columns.index(key["optimizer"]))
        used.add(position)
        image = _draw_panel(axes[position], table, key, column, norm, cmap, wd_convention)
    for position, ax in np.ndenumerate(axes):
        if position not in used:
            ax.set_axis_off()
    fig.colorbar(image, ax=axes.ravel().tolist(), label=_metric_title(column), shrink=0.9)
    title = lib.setting_title(df)
    fig.suptitle(f"{_metric_title(column).capitalize()}" + (f" — {title}" if title else ""))
    fig.text(0.01, 0.05 / height, caption, ha="left", va="bottom", fontsize=CAPTION_FONTSIZE)
    return fig


# ---------------------------------------------------------------- decoupling scores

def decoupling_table(df: pd.DataFrame, metric: str = "test_acc", tolerance: float = 0.02,
                     split_by: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per method: its decoupling scores (see figure_lib.Decoupling) on the swept grid, and how many of
    its cells hold runs that did not complete (the scores then rest on fewer seeds there)."""
    column = lib.metric_column(df, metric)
    done = lib.completed_runs(df)
    incomplete = {tuple(sorted(key.items())): int(table.incomplete.to_numpy().sum())
                  for key, table in heatmap_tables(df, column, split_by)}
    rows = []
    for key, runs in lib.split_methods(done, split_by=split_by):
        score = lib.decoupling(lib.heatmap_table(runs, column), lib.higher_is_better(metric), tolerance)
        rows.append({
            "method": lib.method_label(key), **key,
            "wd_convention": lib.native_convention(key["optimizer"]),
            "n_wd_columns": len(score.best_lr_per_wd),
            "best_lr_per_wd": " ".join(f"{lib.format_hparam(wd)}:{lib.format_hparam(lr)}"
                                       for wd, lr in score.best_lr_per_wd.items()),
            "lr_shift_std": score.lr_shift_std,
            "lr_shift_range": score.lr_shift_range,
            "region_fill": score.region_fill,
            "incomplete_cells": incomplete.get(tuple(sorted(key.items())), 0),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- curves of the best configurations

def best_configs(df: pd.DataFrame, metric: str = "test_acc", split_by: tuple[str, ...] = ()
                 ) -> list[tuple[dict, float, float, pd.DataFrame]]:
    """[(method key, lr, wd, its finished runs)] of each method's best cell (mean over seeds)."""
    column = lib.metric_column(df, metric)
    out = []
    for key, runs in lib.split_methods(lib.completed_runs(df), split_by=split_by):
        best = lib.best_config(lib.heatmap_table(runs, column), lib.higher_is_better(metric))
        if best is None:
            continue
        lr, wd = best
        out.append((key, lr, wd, runs[(runs["lr"] == lr) & (runs["weight_decay"] == wd)]))
    return out


def missing_curves(df: pd.DataFrame, curves: pd.DataFrame | None, metric: str = "test_acc",
                   split_by: tuple[str, ...] = ()) -> list[str]:
    """A line per run of a best configuration whose curves are missing or lack a plotted metric."""
    lines = []
    for key, _, _, runs in best_configs(df, metric, split_by):
        for run_dir in runs["run_dir"]:
            rows = curves[curves["run_dir"] == run_dir] if curves is not None else pd.DataFrame()
            lacking = [name for name, _ in CURVE_METRICS if rows.empty or name not in rows or rows[name].isna().all()]
            if lacking:
                lines.append(f"{lib.method_label(key)}: {run_dir} has no {', '.join(lacking)} curve")
    return lines


def method_styles(keys: list[dict]) -> list[dict]:
    """A line style per method key, in order: the optimizer's colour (there are fewer optimizers than tab10's
    colours), and for the settings that vary besides it (BN, c) a dash pattern, then a marker, so that no two
    methods look alike (matplotlib's own cycle repeats its ten colours: a scale-free sweep has twelve methods)."""
    colours = matplotlib.colormaps["tab10"].colors
    optimizers = list(dict.fromkeys(key["optimizer"] for key in keys))
    variants: dict[str, list[str]] = {}
    styles = []
    for key in keys:
        seen = variants.setdefault(key["optimizer"], [])
        rest = repr(sorted((c, str(v)) for c, v in key.items() if c != "optimizer"))  # str: NaN equals itself
        if rest not in seen:
            seen.append(rest)
        v = seen.index(rest)
        style = {"color": colours[optimizers.index(key["optimizer"]) % len(colours)],
                 "linestyle": LINESTYLES[v % len(LINESTYLES)]}
        if v >= len(LINESTYLES):  # past the dash patterns, a marker tells the variants apart
            style["marker"] = MARKERS[(v // len(LINESTYLES) - 1) % len(MARKERS)]
        styles.append(style)
    return styles


def plot_best_curves(df: pd.DataFrame, curves: pd.DataFrame, metric: str = "test_acc",
                     split_by: tuple[str, ...] = ()) -> Figure | None:
    """Test accuracy and train loss per epoch of each method's best configuration (mean ± std)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, len(CURVE_METRICS))
    drawn, seeds_drawn = 0, []
    best = best_configs(df, metric, split_by)
    for (key, lr, wd, runs), style in zip(best, method_styles([key for key, *_ in best])):
        rows = curves[curves["run_dir"].isin(runs["run_dir"])]
        if rows.empty:
            continue
        seeds_drawn.append(rows["run_dir"].nunique())
        label = f"{lib.method_label(key)} (lr {lib.format_hparam(lr)}, wd {lib.format_hparam(wd)})"
        for ax, (name, _) in zip(axes, CURVE_METRICS):
            if name not in rows.columns:
                continue
            stats = rows.groupby("epoch")[name].agg(["mean", "std"]).sort_index()
            scale = _scale(name)
            mean, std = stats["mean"] * scale, stats["std"].fillna(0) * scale
            (line,) = ax.plot(stats.index, mean, label=label, **style)
            ax.fill_between(stats.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        return None
    for ax, (name, ylabel) in zip(axes, CURVE_METRICS):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if name.endswith("loss"):
            ax.set_yscale("log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    title = lib.setting_title(df)
    fig.suptitle(f"Best configuration of each method (by {_metric_title(lib.metric_column(df, metric))}, "
                 f"mean ± std over {seed_phrase(seeds_drawn)})" + (f" — {title}" if title else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------- scale-freeness

def scale_free_table(df: pd.DataFrame, metric: str = "test_acc", report: str | None = None) -> pd.DataFrame:
    """Per method and loss multiplier c: mean/std over seeds of `report` (default: `metric`) at the
    method's best (lr, wd) by `metric` at the reference c (1 when swept, else the smallest c).
    Empty unless c varies."""
    column = lib.metric_column(df, metric)
    reported = lib.metric_column(df, report) if report else column
    done = lib.completed_runs(df)
    if "loss_multiplier" not in done.columns or done["loss_multiplier"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for key, runs in lib.split_methods(done, exclude=("loss_multiplier",)):
        cs = sorted(runs["loss_multiplier"].dropna().unique())
        reference = 1.0 if 1.0 in cs else cs[0]
        best = lib.best_config(lib.heatmap_table(runs[runs["loss_multiplier"] == reference], column),
                               lib.higher_is_better(metric))
        if best is None:
            continue
        lr, wd = best
        at_best = runs[(runs["lr"] == lr) & (runs["weight_decay"] == wd)]
        for c in cs:
            seeds = at_best[at_best["loss_multiplier"] == c]
            ok = seeds.loc[seeds["status"] == "finished", reported]
            rows.append({"method": lib.method_label(key), **key, "lr": lr, "weight_decay": wd,
                         "loss_multiplier": c, "mean": ok.mean(), "std": ok.std(),
                         "n_runs": len(seeds), "n_finished": len(ok),
                         "n_diverged": int((seeds["status"] == "diverged").sum())})
    return pd.DataFrame(rows)


def plot_scale_free(df: pd.DataFrame, metric: str = "test_acc") -> Figure | None:
    """Final metric vs loss multiplier c (log x), one line per method, at each method's best (lr, wd)
    by `metric`; a second panel shows the final model norm there, where the iterates themselves
    show whether a method is scale-free. None unless c varies."""
    table = scale_free_table(df, metric)
    if table.empty:
        return None
    panels = [(lib.metric_column(df, metric), table)]
    if metric != "model_norm" and "final_model_norm" in df.columns and df["final_model_norm"].notna().any():
        panels.append(("final_model_norm", scale_free_table(df, metric, report="model_norm")))
    fig = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for ax, (column, rows_of) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        scale = _scale(column)
        for method, rows in rows_of.groupby("method", sort=False):
            r0 = rows.iloc[0]
            ax.errorbar(rows["loss_multiplier"], rows["mean"] * scale, yerr=rows["std"].fillna(0) * scale,
                        marker="o", capsize=3,
                        label=f"{method} (lr {lib.format_hparam(r0.lr)}, wd {lib.format_hparam(r0.weight_decay)})")
        ax.set_xscale("log")
        ax.set_xlabel("loss multiplier c")
        ax.set_ylabel(_metric_title(column))
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    title = lib.setting_title(df.drop(columns="loss_multiplier"))
    fig.suptitle("Scale-freeness: same hyperparameters, loss x c (flat = scale-free); "
                 f"mean ± std over {seed_phrase(table['n_finished'])}"
                 + (f"\n{title}" if title else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------- magnitudes and step sizes

MAGNITUDE_METHODS = ("adaml2", "adamw", "decoupled_adamw", "proxadam", "adamp")
QUANTITY_TITLES = {"param": "|w|", "grad": "|g| (of c x loss)", "update": "|w_t - w_{t-1}|",
                   "update_per_lr": "|w_t - w_{t-1}| / (alpha eta_t)"}


def _best_runs(df: pd.DataFrame, metric: str) -> dict[tuple, pd.DataFrame]:
    """{(optimizer, batch_norm): the completed runs of its best (lr, wd) by seed-mean final `metric`}, among the
    configurations with weight decay > 0 where the grid has them: at wd 0 every decay rule is the same update,
    and these figures are about how the rules differ."""
    column = lib.metric_column(df, metric)
    done = lib.completed_runs(df)
    done = done[done["optimizer"].isin(MAGNITUDE_METHODS)]
    if (done["weight_decay"] > 0).any():
        done = done[done["weight_decay"] > 0]
    out = {}
    bn = done["batch_norm"] if "batch_norm" in done.columns else pd.Series(None, index=done.index)
    for (opt, batch_norm), runs in done.groupby([done["optimizer"], bn], dropna=False, sort=False):
        means = runs.groupby(["lr", "weight_decay"])[column].mean().dropna()
        if means.empty:
            continue
        lr, wd = means.idxmax() if lib.higher_is_better(metric) else means.idxmin()
        out[opt, batch_norm] = runs[(runs["lr"] == lr) & (runs["weight_decay"] == wd)]
    order = {name: i for i, name in enumerate(MAGNITUDE_METHODS)}
    return dict(sorted(out.items(), key=lambda item: (str(item[0][1]), order[item[0][0]])))


def _bn_label(value) -> str:
    return "" if pd.isna(value) else ("BN on" if lib.as_bool(value) else "BN off")


def _best_run_styles(best: dict[tuple, pd.DataFrame]) -> list[dict]:
    """Line label and colour of each method's best runs, in best's order: the label names its own (lr, wd), which
    can differ with BN on and off, so each BN panel carries its own legend; the colour is the optimizer's
    (method_styles) in every panel."""
    styles = method_styles([{"optimizer": opt} for opt, _ in best])
    return [{"label": f"{lib.display_name(opt)} (lr {lib.format_hparam(runs.iloc[0].lr)}, "
                      f"wd {lib.format_hparam(runs.iloc[0].weight_decay)})", "color": style["color"]}
            for ((opt, _), runs), style in zip(best.items(), styles)]


def plot_magnitudes(df: pd.DataFrame, magnitudes: pd.DataFrame, quantity: str = "update",
                    metric: str = "test_acc") -> Figure | None:
    """Zhuang et al.'s histograms: the share of a quantity's entries by power-of-2 bin, whole model, each method at
    its best (lr, wd), at the first, middle and last recorded epoch (columns), BN off / on (rows); the mean share
    over seeds. None when the runs recorded no magnitudes (trainer.magnitude_stats_every=0)."""
    rows = magnitudes[magnitudes["quantity"] == quantity]
    best = {key: runs for key, runs in _best_runs(df, metric).items() if runs["run_dir"].isin(rows["run_dir"]).any()}
    if rows.empty or not best:
        return None
    epochs = sorted(rows["epoch"].unique())
    chosen = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
    bns = list(dict.fromkeys(key[1] for key in best))
    bins = sorted((c for c in rows.columns if c.lstrip("-").isdigit()), key=int)
    fig = Figure(figsize=(4.2 * len(chosen), 3.2 * len(bns)), layout="constrained")
    axes = fig.subplots(len(bns), len(chosen), squeeze=False, sharex=True)
    seeds = []
    for ((opt, bn), runs), style in zip(best.items(), _best_run_styles(best)):
        mine = rows[rows["run_dir"].isin(runs["run_dir"])]
        seeds.append(mine["run_dir"].nunique())
        for j, epoch in enumerate(chosen):
            ax = axes[bns.index(bn), j]
            counts = mine[mine["epoch"] == epoch][["zero", *bins] if "zero" in mine.columns else bins]
            if counts.empty:
                continue
            share = counts.div(counts.sum(axis=1), axis=0).mean(axis=0)
            ax.step([int(b) for b in bins], share[bins].to_numpy(), where="mid", **style)
            ax.set_title(f"{_bn_label(bn)}, epoch {epoch}".strip(", "), fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("log2 of the magnitude")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of entries")
    for row in axes:
        row[-1].legend(fontsize=7)
    fig.suptitle(f"Orders of magnitude of {QUANTITY_TITLES.get(quantity, quantity)}, whole model, each method at its "
                 f"best (lr, wd > 0); mean over {seed_phrase(seeds)}", fontsize=10)
    return fig


def plot_step_sizes(df: pd.DataFrame, step_sizes: pd.DataFrame, metric: str = "test_acc") -> Figure | None:
    """Relative update size ||w_t - w_{t-1}|| / ||w_{t-1}|| per epoch (log y): the median over the convolution and
    linear weights and, shaded, their spread (min to max), for each method at its best (lr, wd); BN off / on as
    panels. With BN the scale-invariant weights shrink under decay and their relative steps grow (Zhang et al.
    2019's effective learning rate). None when the runs recorded no step sizes."""
    best = {key: runs for key, runs in _best_runs(df, metric).items()
            if runs["run_dir"].isin(step_sizes["run_dir"]).any()}
    if step_sizes.empty or not best:
        return None
    weights = [c for c in step_sizes.columns if c.startswith("relative_update/") and c.endswith(".weight")
               and ".bn" not in c and not c.startswith("relative_update/bn")]
    bns = list(dict.fromkeys(key[1] for key in best))
    fig = Figure(figsize=(5.5 * len(bns), 3.8), layout="constrained")
    axes = fig.subplots(1, len(bns), squeeze=False, sharey=True)[0]
    seeds = []
    for ((opt, bn), runs), style in zip(best.items(), _best_run_styles(best)):
        mine = step_sizes[step_sizes["run_dir"].isin(runs["run_dir"])]
        seeds.append(mine["run_dir"].nunique())
        per_epoch = mine.groupby("epoch")[weights].mean()  # mean over seeds, per layer
        ax = axes[bns.index(bn)]
        ax.plot(per_epoch.index, per_epoch.median(axis=1), marker="o", **style)
        ax.fill_between(per_epoch.index, per_epoch.min(axis=1), per_epoch.max(axis=1), alpha=0.15,
                        color=style["color"])
        ax.set_title(_bn_label(bn) or "all runs", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative update size per step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Relative update size of the convolution and linear weights (median, min-max shaded), each method "
                 f"at its best (lr, wd > 0); mean over {seed_phrase(seeds)}", fontsize=10)
    return fig


def load_layer_table(results_csv: str | os.PathLike, table: str) -> pd.DataFrame | None:
    """NAME_magnitudes.csv / NAME_step_sizes.csv beside results_csv (collect.py), or None when absent."""
    path = layer_table_path_for(results_csv, table)
    if not path.is_file():
        return None
    frame = read_csv_exact(path)
    if "run_dir" not in frame.columns or "epoch" not in frame.columns:
        raise ValueError(f"{path} lacks run_dir or epoch; is it a {table} CSV from scripts/collect.py?")
    return frame


# ---------------------------------------------------------------- output

def save_figure(fig: Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Saves fig as out_dir/stem.png and .pdf, each through a temp file in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("png", "pdf"):
        path = out_dir / f"{stem}.{fmt}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150)
        data = _palette_png(buffer.getvalue()) if fmt == "png" else buffer.getvalue()
        run_files.atomic_write_bytes(path, data)
        written.append(path)
    return written


def _palette_png(rgba_png: bytes) -> bytes:
    """matplotlib's RGBA PNG as an optimised palette PNG (PNG_COLOURS colours, opaque: figures have a white face)."""
    with Image.open(io.BytesIO(rgba_png)) as image:
        palette = image.convert("RGB").quantize(PNG_COLOURS)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


class IncompleteResults(Exception):
    """The figures were written, but some of their cells or curves rest on runs that did not complete."""


def incomplete_report(df: pd.DataFrame, curves: pd.DataFrame | None, metric: str,
                      split_by: tuple[str, ...] = ()) -> list[str]:
    """One line per thing the figures cannot show whole: cells with runs that did not complete, runs that
    belong in no cell (unreadable without a config), curves missing from a best configuration."""
    column = lib.metric_column(df, metric)
    lines = []
    for key, table in heatmap_tables(df, column, split_by):
        for lr, wd in table.incomplete.stack()[lambda v: v].index:
            where = f"{lib.method_label(key)}, lr {lib.format_hparam(lr)}, wd {lib.format_hparam(wd)}"
            if n := int(table.n_incomplete.loc[lr, wd]):
                lines.append(f"{where}: {n} run(s) did not complete")
            if seeds := table.absent.loc[lr, wd]:
                lines.append(f"{where}: no run of seed {', '.join(f'{s:g}' for s in seeds)} (the method's other "
                             "cells have one): a run folder never written, removed, or not brought home")
    unplaced = df[df[["optimizer", "lr", "weight_decay"]].isna().any(axis=1)]
    for row in unplaced.itertuples():
        lines.append(f"{row.run_dir}: {row.status} and in no cell ({getattr(row, 'error', '')})")
    return lines + missing_curves(df, curves, metric, split_by)


def make_figures(results_csv: str | os.PathLike, out_dir: str | os.PathLike, *, wd_convention: str = "native",
                 metric: str = "test_acc", split_by: tuple[str, ...] = (), allow_incomplete: bool = False) -> list[Path]:
    """Every figure of a results CSV plus decoupling.csv in out_dir; returns the paths written.

    MixedCell (nothing written) when runs that differ in more than the seed would share a cell;
    IncompleteResults (after writing) when something is incomplete, unless allow_incomplete.
    """
    df = load_results(results_csv)
    lib.metric_column(df, metric)
    if lib.completed_runs(df).empty:
        raise ValueError(f"{results_csv} has no finished or diverged run; nothing to draw yet")
    lib.check_cells(df, split_by)
    if "config_id" not in df.columns:
        print(f"figures: {results_csv} has no config_id column (an older collect.py): runs are told apart by its "
              "columns only", file=sys.stderr)
    scores = decoupling_table(df, metric, split_by=split_by)
    written = save_figure(plot_heatmaps(df, metric, wd_convention=wd_convention, scores=scores, split_by=split_by),
                          out_dir, f"heatmap_{metric}")
    if "final_model_norm" in df.columns and df["final_model_norm"].notna().any():
        written += save_figure(plot_heatmaps(df, "model_norm", wd_convention=wd_convention, split_by=split_by),
                               out_dir, "heatmap_model_norm")
    curves = load_curves(results_csv)
    if curves is None:
        print(f"figures: no {curves_path_for(results_csv)}; skipping the training curves", file=sys.stderr)
    elif (fig := plot_best_curves(df, curves, metric, split_by)) is not None:
        written += save_figure(fig, out_dir, "curves_best")
    if (fig := plot_scale_free(df, metric)) is not None:
        written += save_figure(fig, out_dir, "scale_free")
    if (magnitudes := load_layer_table(results_csv, "magnitudes")) is not None:
        for quantity in QUANTITY_TITLES:
            if (fig := plot_magnitudes(df, magnitudes, quantity, metric)) is not None:
                written += save_figure(fig, out_dir, f"magnitudes_{quantity}")
    if (step_sizes := load_layer_table(results_csv, "step_sizes")) is not None:
        if (fig := plot_step_sizes(df, step_sizes, metric)) is not None:
            written += save_figure(fig, out_dir, "step_sizes")
    written.append(write_csv_atomically(scores, Path(out_dir) / "decoupling.csv"))
    print(f"Decoupling of {metric} (lr_shift_std = std of log10 best lr across wd; lower = more decoupled):")
    print(scores[["method", "wd_convention", "lr_shift_std", "lr_shift_range", "region_fill", "incomplete_cells",
                  "best_lr_per_wd"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    problems = incomplete_report(df, curves, metric, split_by)
    if problems:
        for line in problems:
            print(f"figures: incomplete: {line}", file=sys.stderr)
        message = (f"{len(problems)} cell(s) or curve(s) rest on runs that did not complete (drawn framed in red); "
                   "rerun or repair those runs, or pass --allow-incomplete")
        if not allow_incomplete:
            for path in written:
                print(path)
            raise IncompleteResults(message)
        print(f"figures: {message}", file=sys.stderr)
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_csv", help="results CSV written by scripts/collect.py")
    parser.add_argument("-o", "--output", required=True, help="folder for the figures")
    parser.add_argument("--wd-convention", choices=lib.WD_CONVENTIONS, default="native",
                        help="also show weight decay in this convention (native = as swept)")
    parser.add_argument("--metric", choices=lib.METRIC_CHOICES, default="test_acc",
                        help="metric of the main heatmap, best configurations and decoupling")
    parser.add_argument("--split-by", default="", metavar="KEY,...",
                        help="draw runs that differ in these results columns as separate methods")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="exit 0 although some cells or curves rest on runs that did not complete")
    args = parser.parse_args(argv)
    args.split_by = tuple(k.strip() for k in args.split_by.split(",") if k.strip())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    matplotlib.use("Agg")
    try:
        written = make_figures(args.results_csv, args.output, wd_convention=args.wd_convention,
                               metric=args.metric, split_by=args.split_by, allow_incomplete=args.allow_incomplete)
    except (ValueError, FileNotFoundError, IncompleteResults) as e:
        print(f"figures: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
