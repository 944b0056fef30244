"""Write route=auto's measurements (experiments/route_table.json) from a scripts/benchmark.py JSON.

    python scripts/route_table.py BENCH.json [--table experiments/route_table.json]

The benchmark's device type (cpu, cuda) gets its entry replaced; other device types keep theirs. For each
compile mode and pack size the benchmark measured, the entry keeps every route's aggregate images/s (the
median of its rounds) and names the fastest. Only one benchmark run feeds an entry: its pipelines ran side by
side, in interleaved rounds, so their rates compare; two runs' rates do not (machines are noisy). Run it on
your own hardware's benchmark to make route=auto follow your machine (experiments/route_table.py says how
the table is read).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run in place as `python scripts/route_table.py`, installed or not
    sys.path.insert(0, str(_REPO))

from experiments import run_files  # noqa: E402
from experiments.route_table import EAGER, TABLE  # noqa: E402


class RouteTableError(ValueError):
    """Bad input; the message says what to do, in one line."""


def device_type(bench: dict) -> str:
    return torch.device(bench["device"]).type


def entry_from_benchmark(bench: dict, source: str) -> dict:
    """The route table's entry for the benchmark's device type."""
    try:
        pipelines, rates = bench["pipelines"], bench["images_per_s"]
        device_type(bench)
    except (KeyError, TypeError, RuntimeError) as exc:  # RuntimeError: torch.device of an unknown device
        raise RouteTableError(f"{source} is not a scripts/benchmark.py JSON of the engine (no {exc}); "
                              "measure with scripts/benchmark.py --json FILE") from exc
    fastest: dict[str, dict[str, dict]] = {}
    for name, kind in pipelines.items():
        if kind.get("kind") != "pack" or name not in rates:  # a pipeline that failed has no rate
            continue
        size = fastest.setdefault(kind.get("compile") or EAGER, {}).setdefault(str(kind["members"]), {})
        size[kind["route"]] = float(rates[name]["median"])
    if not fastest:
        raise RouteTableError(f"{source} measured no pack; run scripts/benchmark.py with --ks and --routes")
    for by_size in fastest.values():
        for k, measured in by_size.items():
            by_size[k] = {"route": max(measured, key=measured.get), "images_per_s": measured}
    settings = bench.get("settings") or {}
    return {
        "source": source,
        "hardware": bench.get("hardware", bench["device"]),
        "torch": bench.get("torch"),
        "git_commit": bench.get("git_commit"),
        "date": bench.get("date"),
        "complete": bench.get("complete"),  # false: interrupted or a pipeline failed (the benchmark says which)
        "settings": {k: settings.get(k) for k in ("data", "depth", "batch_norm", "batch_size", "precision")},
        "fastest": {mode: dict(sorted(by_size.items(), key=lambda kv: int(kv[0])))
                    for mode, by_size in sorted(fastest.items())},
    }


def summary(device: str, entry: dict) -> str:
    lines = [f"{device}: {entry['hardware']}, torch {entry['torch']}, {entry['source']}"]
    for mode, by_size in entry["fastest"].items():
        for size, measured in by_size.items():
            others = ", ".join(f"{r} {v:,.0f}" for r, v in sorted(measured["images_per_s"].items(),
                                                                   key=lambda kv: -kv[1]))
            alone = " (the only route measured)" if len(measured["images_per_s"]) == 1 else ""
            lines.append(f"  {mode:<16} K={size:<4} {measured['route']:<8} images/s: {others}{alone}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    try:
        try:
            bench = json.loads(args.bench.read_text())
        except (OSError, ValueError) as exc:
            raise RouteTableError(f"{args.bench} cannot be read as JSON ({exc})") from exc
        try:
            source = str(args.bench.resolve().relative_to(_REPO))
        except ValueError:
            source = str(args.bench)
        entry = entry_from_benchmark(bench, source)
        try:
            table = json.loads(args.table.read_text()) if args.table.exists() else {}
        except ValueError as exc:
            raise RouteTableError(f"{args.table} is not JSON ({exc}); delete it to start a new table") from exc
    except RouteTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table[device_type(bench)] = entry
    run_files.atomic_write_text(args.table, json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    print(summary(device_type(bench), entry))
    print(f"written: {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
