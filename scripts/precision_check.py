"""How far tf32 and bf16 move a run from fp32, set against seed-to-seed spread (experiment=precision_check).

    python scripts/precision_check.py SWEEP_DIR [-o results/precision_check.md] [--json results/precision_check.json]

Reads the sweep's run folders (summary.json). A run and its twin in another precision share method,
seed (init) and data order (experiment precision_check packs every seed of a precision together with
packed_init=own), so their difference is the precision's effect alone: the paired difference. For
each method and precision the table gives the final test accuracy and model norm (mean and std over
seeds) and the mean paired difference from fp32 with its std. Rule: a precision is acceptable for
full-scale grids when, for every method, |mean paired difference| is at most half the fp32
seed-to-seed std, for the accuracy and for the model norm alike (1-sigma seeds would hide it); of
the acceptable ones the script names the cheapest (bf16, then tf32, then fp32).
Every run must be finished: a missing, failed, diverged or cut-short run is listed, the script exits
1, and no precision missing a run (or its fp32 twin) is acceptable.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
from experiments import run_files  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
CHEAPEST_FIRST = ("bf16", "tf32", "fp32")
METRICS = ("test_acc", "model_norm")


def _key(cfg: dict) -> tuple[str, str, int] | None:
    try:
        return cfg["optimizer"]["name"], cfg["trainer"]["precision"], int(cfg["seed"])
    except (KeyError, TypeError, ValueError):
        return None


def read_runs(sweep_dir: Path) -> tuple[dict, list[str], set]:
    """{(method, precision, seed): final metrics} of finished runs, a line per run that is not usable, and the
    (method, precision, seed) of every run folder seen, usable or not."""
    runs, problems, seen = {}, [], set()
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = run_files.read_json(path)
        if summary is None:
            problems.append(f"{path.parent.name}: summary.json unreadable")
            continue
        cfg = summary.get("config", {})
        if (key := _key(cfg)) is not None:
            seen.add(key)
        if summary.get("status") != "finished" or summary.get("epochs_completed") != cfg.get("trainer", {}).get("epochs"):
            problems.append(f"{path.parent.name}: status {summary.get('status')}, "
                            f"{summary.get('epochs_completed')} epochs")
            continue
        runs[key] = {m: summary["final"][m] for m in METRICS}
    return runs, problems, seen


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def analyse(runs: dict, seen: set = frozenset()) -> dict:
    """The table and the verdicts. Every method and seed of any run seen is expected in every precision: a
    precision with one of them, or its fp32 twin, missing or unfinished is not acceptable (its table rows
    still show the seeds there are), so that a run that diverged in bf16 cannot let bf16 through."""
    keys = set(runs) | set(seen)
    methods = sorted({m for m, _, _ in keys})
    seeds = sorted({s for _, _, s in keys})
    report: dict = {"methods": methods, "seeds": seeds, "rows": [], "acceptable": {}, "incomplete": {}}
    for precision in PRECISIONS:
        absent = [f"{m} seed {s}" + ("" if (m, precision, s) in runs else f" ({precision})")
                  + ("" if (m, "fp32", s) in runs else " (its fp32 twin)")
                  for m in methods for s in seeds if (m, precision, s) not in runs or (m, "fp32", s) not in runs]
        report["incomplete"][precision] = absent
        ok = not absent
        for method in methods:
            row = {"method": method, "precision": precision}
            for metric in METRICS:
                values = [runs[method, precision, s][metric] for s in seeds if (method, precision, s) in runs]
                fp32 = [runs[method, "fp32", s][metric] for s in seeds if (method, "fp32", s) in runs]
                paired = [runs[method, precision, s][metric] - runs[method, "fp32", s][metric] for s in seeds
                          if (method, precision, s) in runs and (method, "fp32", s) in runs]
                if len(values) < 2 or len(paired) < 2:
                    row[metric] = None
                    ok = False
                    continue
                mean, std = _mean_std(values)
                diff, diff_std = _mean_std(paired)
                seed_std = _mean_std(fp32)[1]
                row[metric] = {"mean": mean, "std": std, "n": len(values), "paired_diff": diff,
                               "paired_diff_std": diff_std, "fp32_seed_std": seed_std,
                               "within_half_seed_std": seed_std is not None and abs(diff) <= 0.5 * seed_std}
                ok = ok and row[metric]["within_half_seed_std"]
            report["rows"].append(row)
        report["acceptable"][precision] = ok
    report["choice"] = next((p for p in CHEAPEST_FIRST if report["acceptable"].get(p)), None)
    return report


def markdown(report: dict, problems: list[str]) -> str:
    lines = [f"Seeds {', '.join(map(str, report['seeds']))}; paired difference = the run minus its fp32 twin "
             "(same method, seed and batches).", "",
             "| method | precision | test acc % (mean ± std) | Δ acc vs fp32 (paired) | model norm (mean ± std) | "
             "Δ norm vs fp32 (paired) |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        cells = [row["method"], row["precision"]]
        for metric, scale in (("test_acc", 100), ("model_norm", 1)):
            m = row[metric]
            if m is None:
                cells += ["cannot be judged (fewer than 2 seeds)", ""]
                continue
            cells.append(f"{m['mean'] * scale:.2f} ± {m['std'] * scale:.2f}")
            cells.append(f"{m['paired_diff'] * scale:+.3f} ± {m['paired_diff_std'] * scale:.3f}"
                         + ("" if m["within_half_seed_std"] or row["precision"] == "fp32" else " **> ½ seed std**"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Acceptable (every run and its fp32 twin finished, every |paired Δ| ≤ ½ the fp32 seed-to-seed "
              "std): " + ", ".join(f"{p} {'yes' if ok else 'no'}" for p, ok in report["acceptable"].items())]
    lines += [f"- {p} cannot be accepted: not finished: {', '.join(absent)}"
              for p, absent in report["incomplete"].items() if absent]
    lines.append(f"Cheapest acceptable precision: **{report['choice'] or 'none'}**")
    if problems:
        lines += ["", "Runs left out (not finished):"] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder; pass the sweep folder of experiment=precision_check",
              file=sys.stderr)
        return 2
    runs, problems, seen = read_runs(args.sweep_dir)
    if not runs:
        print(f"error: no finished run in {args.sweep_dir}", file=sys.stderr)
        return 2
    report = analyse(runs, seen)
    text = markdown(report, problems)
    print(text, end="")
    if args.output:
        run_files.atomic_write_text(args.output, text)
    if args.json:
        run_files.write_json(args.json, {**report, "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
