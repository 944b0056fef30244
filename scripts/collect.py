"""Gather the runs of one or more sweeps into one tidy results CSV plus a long-form curves CSV.

    python scripts/collect.py SWEEP_DIR... -o results/NAME.csv [--wandb-project ENTITY/PROJECT]
    python scripts/collect.py SWEEP_DIR... -o results/NAME.csv --join results/NAME.csv

Writes results/NAME.csv (one row per run) and results/NAME_curves.csv (one row per run and epoch),
so that figures and notebooks never need the run folders. --join adds the runs to those of a results CSV
collected before (with its curves and layer tables), for runs whose folders are gone: the new runs must
not repeat a run of the old CSV (same run folder, or same settings and seed). Importable: `collect_runs`,
`write_results`, `main(argv)`. A run folder is laid out as in the README's "Run outputs"
(summary.json, metrics.csv, config.yaml).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # run in place as `python scripts/collect.py`, installed or not
    sys.path.insert(0, _REPO)
import yaml  # noqa: E402

import sweep_plan  # noqa: E402

from experiments import run_files, run_info  # noqa: E402
from experiments.run_identity import config_id, same_value  # noqa: E402

HPARAM_COLUMNS = [
    "optimizer", "lr", "weight_decay", "depth", "batch_norm", "dataset", "subset", "test_subset",
    "epochs", "batch_size", "schedule", "seed", "loss_multiplier",
]
FINAL_METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "model_norm"]
RESULT_COLUMNS = (
    ["run_dir", "run_name", "sweep_id", "experiment", "status"]
    + HPARAM_COLUMNS
    + [f"final_{m}" for m in FINAL_METRICS]
    + ["best_test_acc", "best_epoch", "epochs_completed", "diverged_epoch", "wall_time_s",
       "git_commit", "hardware", "torch", "written_at", "error", "curves", "config_id"]
)
# A run folder collect could not read: its row says so (with the hyperparameters its config.yaml gives,
# when it has one), so that figures mark its cell instead of drawing it as "no run".
UNREADABLE = "unreadable"
# A run a sweep folder's expected_runs.json lists (scripts/full_scale.py: every run of a full-scale window
# some of whose runs came home) and no run folder holds: its row says so, so that the window never draws
# as whole while part of it is still to run.
MISSING = "missing"
EXPECTED_FILE = "expected_runs.json"
# What tells an expected run and a collected row for the same run (the grid point and its scale).
EXPECTED_MATCH = ("optimizer", "lr", "weight_decay", "seed", "batch_norm", "loss_multiplier", "depth", "dataset",
                  "subset", "epochs", "batch_size", "schedule")
CURVE_COLUMNS = ("epoch", "test_acc", "train_loss")
# run_dir comes first because run names repeat across sweeps; it is the key that joins both CSVs.
CURVE_ID_COLUMNS = ["run_dir", "run_name", "optimizer", "lr", "weight_decay", "seed",
                    "loss_multiplier", "batch_norm"]
RUN_DIR_MARKERS = ("summary.json", "metrics.csv", "config.yaml")
REQUIRED_SUMMARY_KEYS = ("status", "hparams", "final")
REQUIRED_HPARAMS = ("optimizer", "lr", "weight_decay")


class NoRunsFound(ValueError):
    """No usable run was found in any of the given places."""


class JoinError(ValueError):
    """A results CSV that --join cannot add runs to; the message says why, in one line."""


class SkippedRun(ValueError):
    """A run folder that cannot be used; the message says why, in one line."""


# ---------------------------------------------------------------- output

# pandas before 3.0 parses floats with a fast parser that can be off in the last bit (0.002178950145685785, as a run
# wrote it, came back as 0.0021789501456857); 3.0 reads them exactly by default and deprecates the option.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def read_csv_exact(path: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """pd.read_csv with every float read back as the very double that was written, whatever the pandas version."""
    return pd.read_csv(path, **_EXACT_FLOATS, **kwargs)


def write_csv_atomically(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Writes df to path through a temp file in the same folder, so readers never see half a file."""
    return run_files.atomic_write_text(path, df.to_csv(index=False))


def curves_path_for(results_csv: str | os.PathLike) -> Path:
    """results/NAME.csv -> results/NAME_curves.csv."""
    p = Path(results_csv)
    return p.with_name(f"{p.stem}_curves.csv")


# ---------------------------------------------------------------- finding run folders

def empty_run_dirs(roots: Iterable[str | os.PathLike], found: list[Path]) -> list[Path]:
    """Folders right under a sweep folder that hold no run at all (a job that never started writing)."""
    found_set = {p.resolve() for p in found}
    empty = []
    for root in roots:
        for child in sorted(Path(root).iterdir()):
            if child.is_dir() and not child.name.startswith(".") and not any(
                    f == child.resolve() or child.resolve() in f.parents for f in found_set):
                empty.append(child)
    return empty


def find_run_dirs(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders under roots that hold summary.json, metrics.csv, config.yaml or .hydra/config.yaml.

    Hidden folders (.hydra, .submitit) are never run folders, and a run folder's own sub-folders
    (e.g. a wandb/ folder with its own config.yaml) are not searched.
    """
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise NoRunsFound(f"sweep directory {root} does not exist; pass a folder holding run folders")
        for dirpath, dirnames, filenames in os.walk(root):
            started = ".hydra" in dirnames and Path(dirpath, ".hydra", "config.yaml").is_file()
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if started or any(m in filenames for m in RUN_DIR_MARKERS):
                found.append(Path(dirpath))
                dirnames[:] = []
    return sorted(dict.fromkeys(found))


def display_path(path: Path) -> str:
    """path relative to the working directory when it lies below it, else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


# ---------------------------------------------------------------- one run -> one row

def _number(value: Any) -> Any:
    """JSON null -> NaN, so numeric columns stay numeric."""
    return math.nan if value is None else value


def row_from_summary(summary: dict, run_dir: str) -> dict:
    """The results row of one run summary (the summary.json layout in the README's "Run outputs")."""
    if not isinstance(summary, dict):
        raise SkippedRun("summary.json does not hold a JSON object")
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
    hparams = summary.get("hparams")
    if isinstance(hparams, dict):
        missing += [f"hparams.{k}" for k in REQUIRED_HPARAMS if k not in hparams]
    elif "hparams" in summary:
        missing.append("hparams (not an object)")
    if missing:
        raise SkippedRun(f"summary.json lacks {', '.join(missing)}")
    final = summary.get("final") or {}
    best = summary.get("best") or {}
    config = summary.get("config")
    if isinstance(config, dict) and isinstance(config.get("optimizer"), dict):
        # Derived from the resolved config too, so that every key that changes a run's result is a column, also
        # for runs whose summary predates some of them.
        hparams = {**run_info.hparams(config, (summary.get("data") or {}).get("fingerprint")), **hparams}
    row: dict[str, Any] = {
        "run_dir": run_dir,
        "run_name": summary.get("run_name") or Path(run_dir).name,
        "sweep_id": summary.get("sweep_id"),
        "experiment": summary.get("experiment"),
        "status": summary["status"],
    }
    for key in HPARAM_COLUMNS:
        row[key] = _number(hparams.get(key))
    for key in FINAL_METRICS:
        row[f"final_{key}"] = _number(final.get(key))
    row.update(
        best_test_acc=_number(best.get("test_acc")),
        best_epoch=_number(best.get("epoch")),
        epochs_completed=_number(summary.get("epochs_completed")),
        diverged_epoch=_number(summary.get("diverged_epoch")),
        wall_time_s=_number(summary.get("wall_time_s")),
        git_commit=summary.get("git_commit"),
        hardware=summary.get("hardware") or summary.get("device"),
        torch=(summary.get("versions") or {}).get("torch"),
        written_at=summary.get("written_at"),
        error=summary.get("error"),
    )
    # Hyperparameters beyond the standard ones still get a column rather than being dropped.
    for key in sorted(set(hparams) - set(HPARAM_COLUMNS)):
        row[key] = _cell(hparams[key])
    row["config_id"] = config_id(hparams)
    return row


def _cell(value: Any) -> Any:
    """A CSV cell: lists (e.g. betas) as their JSON text, so that they compare as one value."""
    return json.dumps(value) if isinstance(value, (list, dict)) else _number(value)


def unreadable_row(run_dir: Path, reason: str) -> dict:
    """The row of a run folder that could not be read: status "unreadable", its reason, and what its resolved
    config.yaml says about the run (nothing when there is none)."""
    row: dict[str, Any] = {"run_dir": display_path(run_dir), "run_name": run_dir.name, "status": UNREADABLE,
                           "error": reason}
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    if isinstance(config, dict):
        try:
            hparams = run_info.hparams(config)
        except Exception:  # noqa: BLE001 - a damaged config: the row keeps what it knows
            hparams = {}
        for key, value in hparams.items():
            row[key] = _cell(value)
        row["sweep_id"], row["experiment"] = config.get("sweep_id"), config.get("name")
        if hparams:
            row["config_id"] = config_id(hparams)
    return row


def _same_run(expected: dict, row: dict) -> bool:
    return all(same_value(row.get(k), expected.get(k)) for k in EXPECTED_MATCH)


def missing_rows(sweep_dir: Path, rows: list[dict]) -> list[dict]:
    """Rows (status "missing") for the runs sweep_dir/expected_runs.json lists that no row is; without that file,
    for the jobs its multirun.yaml plans that have no folder (planned_rows)."""
    path = sweep_dir / EXPECTED_FILE
    if not path.exists():
        return planned_rows(sweep_dir, rows)
    expected = run_files.read_json(path)
    if not isinstance(expected, dict) or not isinstance(expected.get("runs"), list):
        raise NoRunsFound(f"{display_path(path)} is unreadable; write it again with python scripts/full_scale.py "
                          f"expect {display_path(sweep_dir)}")
    out = []
    for run in expected["runs"]:
        hparams = run.get("hparams") or {}
        if any(_same_run(hparams, row) for row in rows):
            continue
        row = {"run_dir": display_path(sweep_dir / run["run_name"]), "run_name": run["run_name"],
               "sweep_id": expected.get("sweep_id"), "experiment": expected.get("sweep_id"), "status": MISSING,
               "error": f"not run yet: no run folder holds this run of window {run.get('window')}",
               "curves": "none (not run)", **{k: _cell(v) for k, v in hparams.items()}}
        row["config_id"] = config_id(hparams)
        out.append(row)
    if out:
        _warn(f"collect: {len(out)} of the {len(expected['runs'])} runs of {', '.join(expected.get('windows', []))} "
              f"that {display_path(path)} lists have no run folder; marked {MISSING}")
    return out


def planned_rows(sweep_dir: Path, rows: list[dict]) -> list[dict]:
    """Rows (status "missing") for the jobs of the sweep's latest launch (sweep_plan.py) that have no run folder:
    never started, still queued, or removed. A folder of a job that never started writing (unreadable, in no
    cell) gets the job's settings, so that its cell shows it too. [] without a plan."""
    try:
        plan = sweep_plan.planned_runs(sweep_dir)
    except sweep_plan.PlanError as e:
        _warn(f"collect: {e}")
        return []
    if plan is None:
        return []
    unplaced = {Path(r["run_dir"]).resolve(): r for r in rows if r["status"] == UNREADABLE and pd.isna(r.get("lr"))}
    absent = [run for run in plan.runs if not (sweep_dir / run.name).is_dir()]
    started = [run for run in plan.runs if (sweep_dir / run.name).resolve() in unplaced]
    settings = sweep_plan.planned_hparams(absent + started)
    for run, hparams in zip(started, settings[len(absent):]):
        if hparams:
            unplaced[(sweep_dir / run.name).resolve()].update({k: _cell(v) for k, v in hparams.items()},
                                                              config_id=config_id(hparams))
    out = []
    for run, hparams in zip(absent, settings):
        row = {"run_dir": display_path(sweep_dir / run.name), "run_name": run.name, "sweep_id": plan.sweep_id,
               "experiment": plan.experiment, "status": MISSING, "curves": "none (not run)",
               "error": f"not run: {sweep_plan.PLAN_FILE} plans it and no run folder holds it (a job never started "
                        "or still queued, or its folder was removed)"}
        if hparams:
            row.update({k: _cell(v) for k, v in hparams.items()}, config_id=config_id(hparams))
        out.append(row)
    if out:
        _warn(f"collect: {len(out)} of the {len(plan.runs)} runs that {display_path(sweep_dir / sweep_plan.PLAN_FILE)} "
              f"plans have no run folder; marked {MISSING}")
    return out


def read_run(run_dir: Path) -> dict:
    """The results row of one run folder; raises SkippedRun with the reason when it is unusable."""
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        if (run_dir / "metrics.csv").exists():
            raise SkippedRun("metrics.csv but no summary.json (partial run)")
        raise SkippedRun("no summary.json (run never finished an epoch)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as e:
        raise SkippedRun(f"summary.json is not valid JSON ({type(e).__name__})") from None
    return row_from_summary(summary, display_path(run_dir))


def read_curves(run_dir: Path, row: dict) -> pd.DataFrame | None:
    """metrics.csv of a run with the run's identifying columns in front; None when absent."""
    metrics_file = run_dir / "metrics.csv"
    if not metrics_file.exists():
        return None
    try:
        metrics = read_csv_exact(metrics_file)
    except (OSError, ValueError) as e:
        raise SkippedRun(f"metrics.csv is unreadable ({type(e).__name__})") from None
    missing = [c for c in CURVE_COLUMNS if c not in metrics.columns]
    if missing:
        raise SkippedRun(f"metrics.csv lacks {', '.join(missing)}")
    if problem := curves_problem(metrics, row):
        raise SkippedRun(f"metrics.csv {problem}")
    # metrics.csv has its own per-epoch "lr" (the scheduled lr); keep it apart from the swept lr.
    metrics = metrics.rename(columns={c: f"epoch_{c}" for c in metrics.columns if c in CURVE_ID_COLUMNS})
    ids = pd.DataFrame({c: [row.get(c)] * len(metrics) for c in CURVE_ID_COLUMNS}, index=metrics.index)
    return pd.concat([ids, metrics], axis=1)


def curves_problem(metrics: pd.DataFrame, row: dict) -> str | None:
    """Why a run's metrics.csv is not its whole history (None when it is): epochs not 1, 2, ..., another number
    of epochs than its summary.json says for a run that ended, or a row with empty fields (a file cut off
    mid-row). The trainer writes a row for every epoch with every field; only a diverged run's last may hold
    non-finite values."""
    epochs = pd.to_numeric(metrics["epoch"], errors="coerce")
    if not epochs.tolist() == list(range(1, len(metrics) + 1)):
        return "does not hold epochs 1, 2, ... in order"
    done = row.get("epochs_completed")
    if row.get("status") in ("finished", "diverged") and isinstance(done, (int, float)) and not math.isnan(done) \
            and len(metrics) != int(done):
        return f"holds {len(metrics)} epochs, summary.json {int(done)}"
    whole = metrics.iloc[:-1] if row.get("status") == "diverged" else metrics
    empty = whole[whole.isna().any(axis=1)]
    if len(empty):
        fields = [c for c in metrics.columns if empty[c].isna().any()]
        return f"has empty fields at epoch {int(empty['epoch'].iloc[0])} ({', '.join(fields)}): cut off mid-row?"
    return None


def record_problem(row: dict) -> str | None:
    """Why a summary.json that says "finished" cannot be the end of its run (None when it can): fewer epochs
    than configured, or a final metric missing. The trainer never writes such a record; a damaged, stale or
    hand-edited one would stand in a figure as a whole run."""
    if row["status"] != "finished":
        return None
    done, epochs = row.get("epochs_completed"), row.get("epochs")
    if isinstance(done, (int, float)) and isinstance(epochs, (int, float)) and done < epochs:
        return f"summary.json says finished after {done:g} of {epochs:g} epochs"
    lacking = [m for m in FINAL_METRICS if not isinstance(row.get(f"final_{m}"), (int, float))
               or math.isnan(row[f"final_{m}"])]
    if lacking:
        return f"summary.json says finished but has no final {', '.join(lacking)}"
    return None


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def collect_runs(sweep_dirs: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves) of every usable run under sweep_dirs.

    Unusable run folders are reported on stderr, one line each, and skipped. Runs with status
    "running" are kept. Raises NoRunsFound when no usable run is left.
    """
    sweep_dirs = list(sweep_dirs)
    rows, curves = [], []
    found = find_run_dirs(sweep_dirs)
    for run_dir in found:
        try:
            row = read_run(run_dir)
        except SkippedRun as e:
            _warn(f"collect: cannot read {display_path(run_dir)}: {e}; marked {UNREADABLE}")
            rows.append(unreadable_row(run_dir, str(e)))
            continue
        if problem := record_problem(row):
            _warn(f"collect: {row['run_dir']}: {problem}; marked {UNREADABLE} (move the folder away and run the "
                  "sweep again to redo it)")
            row.update(status=UNREADABLE, error=problem, curves="not read (damaged record)")
            rows.append(row)
            continue
        rows.append(row)
        try:
            run_curves = read_curves(run_dir, row)
        except SkippedRun as e:
            _warn(f"collect: no curves for {row['run_dir']}: {e}")
            row["curves"] = str(e)
            continue
        row["curves"] = "ok" if run_curves is not None and len(run_curves) else "no metrics.csv"
        if row["curves"] == "ok":
            curves.append(run_curves)
    for run_dir in empty_run_dirs(sweep_dirs, found):
        _warn(f"collect: {display_path(run_dir)} is an empty run folder; marked {UNREADABLE}")
        rows.append(unreadable_row(run_dir, "empty run folder"))
    for sweep_dir in sweep_dirs:
        rows += missing_rows(Path(sweep_dir), rows)
    if not any(r["status"] not in (UNREADABLE, MISSING) for r in rows):
        where = ", ".join(str(d) for d in sweep_dirs)
        raise NoRunsFound(f"no run with a usable summary.json under {where}; check the sweep directory")
    return results_frame(rows), curves_frame(curves)


# trainer.magnitude_stats_every's per-run tables (experiments/layer_stats.py), collected beside the results.
LAYER_TABLES = ("magnitudes", "step_sizes")


def layer_table_path_for(results_csv: str | os.PathLike, table: str) -> Path:
    """results/NAME.csv -> results/NAME_magnitudes.csv / NAME_step_sizes.csv."""
    p = Path(results_csv)
    return p.with_name(f"{p.stem}_{table}.csv")


def _wide_layer_table(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch (and quantity): magnitudes of the whole model as one column per power-of-2 bin,
    step sizes as one column per layer. The per-layer counts stay in each run folder's magnitudes.csv."""
    if table == "magnitudes":
        whole = frame[frame["layer"] == "all"]
        wide = whole.pivot_table(index=["epoch", "quantity"], columns="exponent", values="count", aggfunc="sum",
                                 fill_value=0)
        bins = sorted((c for c in wide.columns if str(c) != "zero"), key=int)
        return wide.reindex(columns=[c for c in ["zero"] if c in wide.columns] + bins).reset_index()
    out = []
    for column in ("relative_update", "weight_norm"):
        wide = frame.pivot_table(index="epoch", columns="layer", values=column, aggfunc="first", sort=False)
        out.append(wide.rename(columns=lambda layer: f"{column}/{layer}"))
    return pd.concat(out, axis=1).reset_index()


def collect_layer_tables(sweep_dirs: Iterable[str | os.PathLike], results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every run's magnitudes.csv and step_sizes.csv (wide, see _wide_layer_table) with its identifying columns
    in front; only the tables that some run has (runs recorded without trainer.magnitude_stats_every have none)."""
    rows = {r["run_dir"]: r for r in results.to_dict("records")}
    found: dict[str, list[pd.DataFrame]] = {table: [] for table in LAYER_TABLES}
    for run_dir in find_run_dirs(sweep_dirs):
        row = rows.get(display_path(run_dir))
        if row is None or row.get("status") == UNREADABLE:
            continue
        for table in LAYER_TABLES:
            path = run_dir / f"{table}.csv"
            if not path.exists():
                continue
            try:
                frame = _wide_layer_table(table, read_csv_exact(path, dtype={"exponent": str}))
            except (OSError, ValueError, KeyError) as e:
                _warn(f"collect: {display_path(path)} is unreadable ({type(e).__name__}); left out of {table}")
                continue
            ids = pd.DataFrame({c: [row.get(c)] * len(frame) for c in CURVE_ID_COLUMNS if c != "run_name"},
                               index=frame.index)
            found[table].append(pd.concat([ids, frame], axis=1))
    out = {table: pd.concat(frames, ignore_index=True) for table, frames in found.items() if frames}
    if "magnitudes" in out:  # runs differ in which bins they reach: absent = no value there
        frame = out["magnitudes"]
        bins = sorted((c for c in frame.columns if c.lstrip("-").isdigit()), key=int)
        counts = frame[["zero", *bins] if "zero" in frame.columns else bins].fillna(0).astype("int64")
        out["magnitudes"] = pd.concat([frame[[c for c in frame.columns if c not in counts.columns]], counts], axis=1)
    return out


def results_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in RESULT_COLUMNS]
    return df.reindex(columns=RESULT_COLUMNS + extra)


def curves_frame(curves: list[pd.DataFrame]) -> pd.DataFrame:
    if not curves:
        return pd.DataFrame(columns=CURVE_ID_COLUMNS + ["epoch"])
    return pd.concat(curves, ignore_index=True)


def write_results(results: pd.DataFrame, curves: pd.DataFrame, out_csv: str | os.PathLike) -> list[Path]:
    """Writes results to out_csv and curves beside it (NAME_curves.csv); returns both paths."""
    return [write_csv_atomically(results, out_csv),
            write_csv_atomically(curves, curves_path_for(out_csv))]


# ---------------------------------------------------------------- joining a CSV collected before

def _read_previous(path: Path, what_to_do: str) -> pd.DataFrame:
    if not path.is_file():
        raise JoinError(f"--join: {path} does not exist; {what_to_do}")
    try:
        return read_csv_exact(path)
    except (OSError, ValueError) as e:
        raise JoinError(f"--join: {path} is not a readable CSV ({type(e).__name__}); collect its runs again") from e


def _run_label(row: dict) -> str:
    return (f"{row.get('optimizer')} lr={row.get('lr')} wd={row.get('weight_decay')} seed={row.get('seed')} "
            f"(run {row.get('run_dir')})")


def join_previous(previous_csv: str | os.PathLike, results: pd.DataFrame, curves: pd.DataFrame,
                  tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """The runs of previous_csv (and its curves and layer tables) followed by the newly collected ones.

    JoinError when the old CSV or its curves are missing or unreadable, when it has no config_id (an older
    collect.py could not tell runs apart), or when a new run repeats an old one: the same run folder, or the
    same settings (config_id) and seed, which figures would otherwise count as two seeds.
    """
    previous_csv = Path(previous_csv)
    old = _read_previous(previous_csv, "pass a results CSV that collect.py wrote")
    old_curves = _read_previous(curves_path_for(previous_csv), f"--join needs the curves CSV that collect.py "
                                                               f"wrote beside {previous_csv.name}")
    lacking = [c for c in ("run_dir", "config_id", "seed", "status") if c not in old.columns]
    if lacking:
        raise JoinError(f"--join: {previous_csv} has no {', '.join(lacking)} column; collect its runs again "
                        "with this collect.py")
    runs = [r for r in results.to_dict("records") if r["status"] not in (UNREADABLE, MISSING)]
    old_records = old.to_dict("records")
    old_dirs = {r["run_dir"]: r for r in old_records if r["status"] != MISSING}
    old_ids = {(r["config_id"], r["seed"]): r for r in old_records
               if r["status"] not in (UNREADABLE, MISSING) and pd.notna(r["config_id"])}
    for row in runs:
        again = old_dirs.get(row["run_dir"]) or old_ids.get((row["config_id"], row["seed"]))
        if again is not None:
            raise JoinError(f"--join: {_run_label(row)} repeats {_run_label(again)} of {previous_csv}; collect "
                            "the new runs without it, or collect all runs from their folders without --join")
    # An old "missing" row (a run still to do when it was collected) that a new run now holds is done. Matched on
    # the grid point and its scale, as collect matches them: a missing row's settings were composed, so they lack
    # what only the run itself knows (its data's fingerprint), and its config_id is not the run's.
    old = old[[not (r["status"] == MISSING and any(_same_run(r, new) for new in runs)) for r in old_records]]
    columns = list(dict.fromkeys([*old.columns, *results.columns]))
    joined = results_frame(pd.concat([old, results], ignore_index=True).reindex(columns=columns).to_dict("records"))
    joined_curves = pd.concat([old_curves, curves], ignore_index=True) if len(curves) else old_curves
    for table in LAYER_TABLES:
        path = layer_table_path_for(previous_csv, table)
        if path.is_file():
            old_table = _read_previous(path, "collect its runs again")
            tables[table] = pd.concat([old_table, tables[table]], ignore_index=True) if table in tables else old_table
    return joined, joined_curves, tables


# ---------------------------------------------------------------- Weights & Biases

# W&B run states that are not summary.json statuses.
WANDB_STATES = {"crashed": "failed", "killed": "failed"}


def _wandb_summary(run: Any) -> dict:
    """A W&B run as a summary.json-shaped dict: the trainer logs summary.json's fields into the run's summary
    when it ends (experiments/run_record.py), and its hyperparameters into the config when it starts."""
    summary = dict(run.summary_metrics)
    config = dict(run.config)
    hparams = summary.get("hparams") or config.get("hparams")
    if not hparams:
        raise SkippedRun("the W&B run logged no hparams (a run logged before this repo recorded them); collect it "
                         "from its run folder instead")
    final = summary.get("final") or {m: summary.get(f"final/{m}") for m in FINAL_METRICS}
    best = summary.get("best") or {"test_acc": summary.get("best/test_acc"), "epoch": summary.get("best/epoch")}
    return {
        "status": summary.get("status") or WANDB_STATES.get(run.state, run.state),
        "run_name": summary.get("run_name") or run.name,
        "sweep_id": summary.get("sweep_id") or run.group,
        "experiment": summary.get("experiment") or config.get("name"),
        "hparams": hparams, "final": final, "best": best, "data": summary.get("data"),
        "epochs_completed": summary.get("epochs_completed"), "diverged_epoch": summary.get("diverged_epoch"),
        "wall_time_s": summary.get("wall_time_s", summary.get("_runtime")),
        "git_commit": summary.get("git_commit"), "error": summary.get("error"),
        "hardware": summary.get("hardware"), "written_at": summary.get("written_at"),
        "versions": summary.get("versions"),
    }


def rows_from_wandb_runs(runs: Iterable[Any], source: str) -> tuple[list[dict], list[pd.DataFrame]]:
    """Results rows and curves of W&B runs (API runs, or OfflineRun read from .wandb files)."""
    rows, curves = [], []
    for run in runs:
        try:
            row = row_from_summary(_wandb_summary(run), f"{source}/{run.id}")
        except SkippedRun as e:
            _warn(f"collect: skipping W&B run {run.id}: {e}")
            continue
        if problem := record_problem(row):
            _warn(f"collect: W&B run {run.id}: {problem}; marked {UNREADABLE}")
            row.update(status=UNREADABLE, error=problem, curves="not read (damaged record)")
            rows.append(row)
            continue
        history = run.history(pandas=True)
        if len(history) and "epoch" in history:
            history = history.dropna(subset=["epoch"]).drop(columns=[c for c in history if c.startswith("_")])
            history = history.rename(columns={c: f"epoch_{c}" for c in history if c in CURVE_ID_COLUMNS})
            for c in reversed(CURVE_ID_COLUMNS):
                history.insert(0, c, row.get(c))
            curves.append(history.reset_index(drop=True))
        row["curves"] = "ok" if len(history) else "no history"
        rows.append(row)
    return rows, curves


def collect_wandb(project: str, sweep_ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves) of the W&B runs of project whose group is one of sweep_ids."""
    try:
        import wandb

        runs = list(wandb.Api(timeout=30).runs(project, filters={"group": {"$in": sweep_ids}}))
    except Exception as e:  # wandb raises its own error types for auth, network and lookup failures
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NoRunsFound(f"cannot read W&B project {project} ({type(e).__name__}: {first_line}); "
                          "check the network, `wandb login` and the project name") from None
    rows, curves = rows_from_wandb_runs(runs, f"wandb:{project}")
    if not rows:
        raise NoRunsFound(f"no W&B run in {project} with group in {sweep_ids}")
    return results_frame(rows), curves_frame(curves)


# A .wandb file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log records
# (blocks of 32 KiB; each record a crc32, a length and a type: full, first, middle, last) of protobuf Records.
_WANDB_IDENT, _WANDB_BLOCK, _WANDB_HEADER = b":W&B", 32768, 7


def wandb_file_records(path: str | os.PathLike) -> list:
    """The protobuf Records of one run's .wandb file, in order; a damaged file is a SkippedRun."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != _WANDB_IDENT:
        raise SkippedRun(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", _WANDB_HEADER
    while pos + _WANDB_HEADER <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + _WANDB_HEADER])
        chunk = data[pos + _WANDB_HEADER:pos + _WANDB_HEADER + length]
        pos += _WANDB_HEADER + length
        if kind == 0 and length == 0:
            continue
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != checksum:
            raise SkippedRun(f"{path} is damaged (a record's checksum fails)")
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _json_items(items) -> dict:
    out = {}
    for item in items:
        key = item.key or ".".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


class OfflineRun:
    """A W&B run read from its .wandb files, with the attributes of an API run that collect reads.

    A run resumed in a later process (same run id, resume="allow") gets one more file per process; they
    are read in order, and a step logged again (a run that started over) keeps its latest values.
    """

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> None:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.config, self.summary_metrics, steps = {}, {}, {}
        self.state, self.id, self.name, self.group = "running", Path(paths[0]).stem.removeprefix("run-"), None, None
        for path in paths:
            for record in wandb_file_records(path):
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    self.id, self.name, self.group = record.run.run_id, record.run.display_name, record.run.run_group
                    self.config.update(_json_items(record.run.config.update))
                elif kind == "config":
                    self.config.update(_json_items(record.config.update))
                elif kind == "summary":
                    self.summary_metrics.update(_json_items(record.summary.update))
                elif kind == "history":
                    row = _json_items(record.history.item)
                    steps.pop(row.get("_step"), None)  # re-inserted last: rows stay in the order they were logged
                    steps[row.get("_step", len(steps))] = row
                elif kind == "exit":
                    self.state = "finished" if record.exit.exit_code == 0 else "failed"
        self._history = list(steps.values())

    def history(self, pandas: bool = True) -> pd.DataFrame:
        return pd.DataFrame(self._history)


def wandb_run_files(run_dir: Path) -> list[Path]:
    """A run folder's .wandb files, oldest first: one per process that logged it (a resumed run adds one)."""
    return sorted((run_dir / "wandb").glob("*run-*/run-*.wandb"), key=lambda p: (p.stat().st_mtime, p.parent.name))


def collect_wandb_files(sweep_dirs: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves) from the W&B run files in the run folders (offline runs, or online ones not synced)."""
    files = []
    for run_dir in find_run_dirs(sweep_dirs):
        found = wandb_run_files(run_dir)
        if not found:
            _warn(f"collect: {display_path(run_dir)} has no W&B run file; marked {UNREADABLE}")
            continue
        files.append(found)
    runs = []
    for paths in files:
        try:
            runs.append(OfflineRun(paths))
        except SkippedRun as e:
            _warn(f"collect: skipping {display_path(paths[0].parents[2])}: {e}")
    rows, curves = rows_from_wandb_runs(runs, "wandb-file")
    if not rows:
        raise NoRunsFound(f"no readable W&B run file under {', '.join(map(str, sweep_dirs))}")
    return results_frame(rows), curves_frame(curves)


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR",
                        help="sweep folders to search for run folders (with --wandb-project: sweep ids)")
    parser.add_argument("-o", "--output", required=True, help="results CSV to write, e.g. results/NAME.csv")
    parser.add_argument("--wandb-project", metavar="ENTITY/PROJECT",
                        help="read the runs from W&B instead of the local folders")
    parser.add_argument("--from-wandb-files", action="store_true",
                        help="read each run from the W&B run file in its folder (wandb/*run-*/run-*.wandb) instead "
                             "of its summary.json and metrics.csv: what W&B recorded, without syncing")
    parser.add_argument("--join", metavar="RESULTS_CSV",
                        help="add the runs to those of a results CSV collected before (its _curves.csv and layer "
                             "tables too), for runs whose folders are gone; -o may name the same CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.wandb_project:
            results, curves = collect_wandb(args.wandb_project, [Path(d).name for d in args.sweep_dirs])
        elif args.from_wandb_files:
            results, curves = collect_wandb_files(args.sweep_dirs)
        else:
            results, curves = collect_runs(args.sweep_dirs)
        tables = {} if args.wandb_project or args.from_wandb_files else collect_layer_tables(args.sweep_dirs, results)
        if args.join:
            results, curves, tables = join_previous(args.join, results, curves, tables)
    except (NoRunsFound, JoinError) as e:
        _warn(f"collect: error: {e}")
        return 1
    for path in write_results(results, curves, args.output):
        print(path)
    for table, frame in tables.items():
        print(write_csv_atomically(frame, layer_table_path_for(args.output, table)))
    counts = results["status"].value_counts().to_dict()
    _warn(f"collect: {len(results)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
