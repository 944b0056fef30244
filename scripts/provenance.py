"""How a sweep's runs were made, as the lines to put next to its results: data, seeds, epochs, hardware, dates,
commit, versions, precision, and the training time and aggregate images/s.

    python scripts/provenance.py SWEEP_DIR... [-o FILE]

Everything comes from the run folders (summary.json, metrics.csv) and, for packed sweeps, from the packs'
pack.json (route, compile mode, per-epoch throughput): nothing is typed in by hand. The aggregate rate is
the training images of every model over the seconds spent training them (packs: their epochs' time, all
members at once; single runs: each one's own epochs), test passes and start-up left out. Packed runs are
told apart by their pack's pack.json, so bring the sweep's .packs/ folder along with its run folders.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run in place as `python scripts/provenance.py`, installed or not
    sys.path.insert(0, str(_REPO))

from collect import EXPECTED_FILE  # noqa: E402 - written by full_scale.py, read by collect.py

from experiments import run_files  # noqa: E402


class ProvenanceError(ValueError):
    """Bad input; the message says what to do, in one line."""


def _counts(values) -> str:
    counter = Counter(str(v) for v in values)
    return ", ".join(f"{v} ({n})" if len(counter) > 1 else v for v, n in sorted(counter.items()))


def _epoch_seconds_and_images(run_dir: Path, train_images: int) -> tuple[float, float]:
    """A single run's training seconds and images, from its metrics.csv."""
    try:
        with open(run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return 0.0, 0.0
    seconds = sum(float(r["epoch_time_s"]) for r in rows)
    return seconds, float(len(rows) * train_images)


def provenance(sweep_dirs: list[Path]) -> str:
    summaries: dict[Path, dict] = {}
    packs: list[dict] = []
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise ProvenanceError(f"{sweep} is not a folder; pass the sweep folder that holds the run folders")
        for path in sorted(sweep.glob("*/summary.json")):
            summary = run_files.read_json(path)
            summaries[path.parent] = summary if isinstance(summary, dict) else {"status": "unreadable"}
        packs += [p for p in (run_files.read_json(f) for f in sorted(sweep.glob(".packs/*/pack.json"))) if p]
    if not summaries:
        raise ProvenanceError(f"no run folder with a summary.json in {', '.join(map(str, sweep_dirs))}")
    runs = list(summaries.values())

    def config(s: dict, dotted: str):
        node = s.get("config") or {}
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    data = [s.get("data") or {} for s in runs]
    def each(dotted: str) -> str:
        return _counts(config(s, dotted) for s in runs)

    lines = [
        f"- runs: {len(runs)} ({_counts(s.get('status') for s in runs)}); seeds {each('seed')}; "
        f"epochs {each('trainer.epochs')}; batch {each('trainer.batch_size')}",
        f"- data: {each('data.name')}, "
        f"{_counts(d.get('train_images') for d in data)} training / {_counts(d.get('test_images') for d in data)} "
        f"test images (fingerprint {_counts(str(d.get('fingerprint'))[:12] for d in data)})",
        f"- hardware: {_counts(s.get('hardware') or s.get('device') for s in runs)}; "
        f"hosts {_counts(s.get('hostname') for s in runs)}",
        f"- software: torch {_counts((s.get('versions') or {}).get('torch') for s in runs)}, Python "
        f"{_counts((s.get('versions') or {}).get('python') for s in runs)}",
        f"- code: commit {_counts(s.get('git_commit') for s in runs)}",
    ]
    written = sorted(str(s["written_at"]) for s in runs if s.get("written_at"))
    if written:
        partial = f"; {len(written)} of {len(runs)} runs record it" if len(written) < len(runs) else ""
        lines.append(f"- written: {written[0]} to {written[-1]} (UTC, each run's last summary{partial})")
    lines.append(f"- precision {each('trainer.precision')}; trainer.compile {each('trainer.compile')}")
    for sweep in sweep_dirs:  # full-scale windows some of whose runs are here (scripts/full_scale.py)
        expected = run_files.read_json(sweep / EXPECTED_FILE)
        if isinstance(expected, dict) and isinstance(expected.get("runs"), list):
            here = sum(1 for run in summaries if run.parent == sweep)
            lines.append(f"- {sweep.name}: windows {', '.join(expected.get('windows') or [])} started, "
                         f"{len(expected['runs'])} runs expected, {here} run folders here (collect.py marks "
                         "the others missing)")
    seconds = images = 0.0
    if packs:
        lines.append(f"- packs: {len(packs)}; members {_counts(p.get('size') for p in packs)}; route "
                     f"{_counts(p.get('route') for p in packs)}")
        for pack in packs:
            for epoch in pack.get("throughput") or []:
                seconds += float(epoch["epoch_time_s"])
                images += float(epoch["model_images_per_s"]) * float(epoch["epoch_time_s"])
    packed = {str(Path(d).name) for p in packs for d in p.get("run_dirs") or []}
    for run_dir, summary in summaries.items():
        if run_dir.name not in packed:  # a single run: its own epochs
            more_seconds, more_images = _epoch_seconds_and_images(run_dir, int((summary.get("data") or {})
                                                                               .get("train_images") or 0))
            seconds, images = seconds + more_seconds, images + more_images
    if seconds > 0:
        lines.append(f"- training time {seconds:,.0f} s ({seconds / 60:.1f} min) summed over packs and single runs "
                     f"(test passes and start-up excluded; runs that trained at once, e.g. under launcher=joblib, "
                     f"add up); aggregate {images / seconds:,.0f} images/s over {images / 1e6:,.1f} M model images")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="also write the lines here")
    args = parser.parse_args(argv)
    try:
        text = provenance(args.sweeps)
    except ProvenanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.output:
        run_files.atomic_write_text(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
