"""The full-scale experiments as GPU windows: what each window trains, which are done, and bringing one home.

A GPU comes 15 minutes at a time, one command of at most 10 minutes, on a bare machine that keeps
nothing. So the full-scale experiments (50 epochs on all of CIFAR-10) are cut into windows of whole
runs, each small enough for one device command at the fast engine's target rate (24 runs x 50 epochs =
60 M images in at most 9 minutes), none resuming from another window's checkpoint. A window's runs
come back as one tarball of run folders, and `merge` adds them to the sweep folder that collect.py
reads, so every window of an experiment joins one sweep.

    python scripts/full_scale.py plan [--sweeps outputs/sweeps]    # every window: runs, images, what is done
    python scripts/full_scale.py overrides WINDOW                   # its Hydra overrides (device_check.sh)
    python scripts/full_scale.py images WINDOW                      # training images it trains, all runs
    python scripts/full_scale.py sweep WINDOW                       # the sweep folder its runs go to
    python scripts/full_scale.py merge TARBALL... [--into outputs/sweeps]

On the device: GRID_WINDOW=WINDOW bash scripts/device_check.sh env grid (results/benchmarks.md).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run in place as `python scripts/full_scale.py`, installed or not
    sys.path.insert(0, str(_REPO))

from experiments import run_files  # noqa: E402
from experiments.run_identity import differences  # noqa: E402
from experiments.run_record import is_done, one_line  # noqa: E402

CIFAR10_TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class Window:
    name: str
    chunk: int  # issue 15's chunk order
    experiment: str
    overrides: tuple[str, ...]  # on top of the experiment's own sweep (same key: this axis replaces its)


# In the order the windows are to be run. Each trains at most 24 runs (one pack of 24, or two of 12
# where BN on and off or two seeds cannot share a pack).
WINDOWS = (
    Window("blog-s0", 1, "blog_adamw_vs_adamp", ("seed=0",)),
    Window("blog-s1", 2, "blog_adamw_vs_adamp", ("seed=1",)),
    Window("blog-s2", 2, "blog_adamw_vs_adamp", ("seed=2",)),
    Window("scale_free-s01", 3, "scale_free", ("seed=0,1",)),
    Window("scale_free-s2", 3, "scale_free", ("seed=2",)),
    Window("blog_bn-s0", 4, "blog_bn", ("seed=0",)),
    Window("blog_bn-s1", 4, "blog_bn", ("seed=1",)),
    Window("blog_bn-s2", 4, "blog_bn", ("seed=2",)),
    Window("zhuang-s0-bn_off", 5, "l2_vs_decoupled_near", ("model.batch_norm=false", "optimizer=adaml2,decoupled_adamw")),
    Window("zhuang-s0-bn_on", 5, "l2_vs_decoupled_near", ("model.batch_norm=true", "optimizer=adaml2,decoupled_adamw")),
    Window("zhuang-s0-proxadam", 5, "l2_vs_decoupled_near", ("optimizer=proxadam",)),
)


class WindowError(ValueError):
    """Bad input: the message says what to do, in one line."""


def window(name: str) -> Window:
    for w in WINDOWS:
        if w.name == name:
            return w
    raise WindowError(f"unknown window {name!r}; choose from {', '.join(w.name for w in WINDOWS)}")


@dataclass
class Grid:
    sweep_id: str
    runs: list[dict[str, Any]]  # each run's value of every swept key (config group choices by name) and its scale
    epochs: int
    train_images: int

    @property
    def images(self) -> int:
        return len(self.runs) * self.epochs * self.train_images


def grid(w: Window) -> Grid:
    """The window's runs: the experiment's sweep with the window's axes in place of the experiment's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(_REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={w.experiment}"], return_hydra_config=True)
    axes = {str(k): str(v) for k, v in cfg.hydra.sweeper.params.items()}
    for override in w.overrides:
        key, value = override.split("=", 1)
        axes[key] = value
    parser = OverridesParser.create()
    values = {}
    for parsed in parser.parse_overrides([f"{k}={v}" for k, v in axes.items()]):
        key = parsed.get_key_element()
        values[key] = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
    # Runs of the same sweep made at another scale (a data subset, fewer epochs) are not this window's runs.
    values.update({"trainer.epochs": [int(cfg.trainer.epochs)], "data.subset": [cfg.data.subset],
                   "data.name": [str(cfg.data.name)]})
    runs = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    if cfg.data.name != "cifar10":
        raise WindowError(f"window {w.name}: experiment {w.experiment} is not on CIFAR-10; full-scale windows are")
    return Grid(str(cfg.name), runs, int(cfg.trainer.epochs), int(cfg.data.subset or CIFAR10_TRAIN_IMAGES))


def _setting(config: dict, key: str) -> Any:
    """A run's value of a swept key, from the resolved config in its summary.json."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):  # a config group: its choice is the config's name
        return node.get("name")
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0) or a == b
    return a == b


def read_summaries(sweep_dir: Path) -> dict[Path, dict]:
    found = {}
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = run_files.read_json(path)
        found[path.parent] = summary if isinstance(summary, dict) else {"status": "unreadable"}
    return found


def window_status(g: Grid, summaries: dict[Path, dict]) -> dict[str, int]:
    """How many of the window's runs the sweep folder holds, by status ('missing' for none)."""
    counts: dict[str, int] = {}
    for run in g.runs:
        matches = [s for s in summaries.values() if isinstance(s.get("config"), dict)
                   and all(_same(_setting(s["config"], k), v) for k, v in run.items())]
        status = "missing" if not matches else ("done" if any(is_done(s) for s in matches) else matches[0]["status"])
        counts[status] = counts.get(status, 0) + 1
    return counts


def plan(sweeps: Path) -> str:
    lines = ["| window | chunk | experiment | runs | images | in " + str(sweeps) + " |", "|---|---:|---|---:|---:|---|"]
    next_window = None
    for w in WINDOWS:
        g = grid(w)
        counts = window_status(g, read_summaries(sweeps / g.sweep_id))
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if next_window is None and counts.get("done", 0) < len(g.runs):
            next_window = w.name
        lines.append(f"| {w.name} | {w.chunk} | {w.experiment} {' '.join(w.overrides)} | {len(g.runs)} | "
                     f"{g.images / 1e6:.0f} M | {shown} |")
    if next_window is None:
        lines.append("\nEvery window is done.")
    else:
        lines.append(f"\nNext: run(command=\"GRID_WINDOW={next_window} bash scripts/device_check.sh env grid\", "
                     "carry=[\"datasets/cifar10-jpeg\", \".whl\"], timeout_s=590) after scripts/device_bundle.sh")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- merge

@dataclass
class Move:
    run: str  # sweep_id/run folder
    action: str  # add, replace, keep
    why: str


def _decide(name: str, new: dict, old: dict | None) -> Move:
    if old is None:
        return Move(name, "add", new.get("status", "?"))
    if "hparams" in old and "hparams" in new:
        changed = differences(old["hparams"], new["hparams"])
        if changed:
            raise WindowError(f"{name} holds another run than the tarball's ({'; '.join(changed)}); "
                              "move one of them away before merging")
    if is_done(old):
        return Move(name, "keep", f"already {old['status']} here (the tarball's is {new.get('status')})")
    if is_done(new) or int(new.get("epochs_completed") or 0) > int(old.get("epochs_completed") or 0):
        return Move(name, "replace", f"{old.get('status')} here, {new.get('status')} in the tarball")
    return Move(name, "keep", f"{old.get('status')} here, {new.get('status')} in the tarball")


def _copy_missing(src: Path, dst: Path) -> int:
    """Files of src that dst lacks (sweep-level files, pack logs), copied; the ones dst has are kept."""
    copied = 0
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    return copied


def merge(tarballs: list[Path], into: Path) -> list[Move]:
    """Adds each tarball's run folders to the sweep folders under `into`.

    A run folder that is new is added; one that is here unfinished (interrupted, failed) is replaced by a
    tarball's run that got further; a done one (finished, diverged) stays. A run folder holding a run of
    other settings than the tarball's (another data fingerprint, another config) stops the merge before
    anything is written. Run folders move in by rename, so none is ever half there.
    """
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into, prefix=".merge-") as tmp:
        staged = Path(tmp)
        plans: list[tuple[Move, Path, Path]] = []
        sweeps: list[Path] = []
        for i, tarball in enumerate(tarballs):
            unpacked = staged / str(i)
            try:
                with tarfile.open(tarball) as tar:
                    tar.extractall(unpacked, filter="data")
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise WindowError(f"cannot unpack {tarball} ({one_line(exc)}); bring it back from the device "
                                  "again") from None
            found = [p for p in unpacked.iterdir() if p.is_dir()]
            for sweep in found:
                summaries = read_summaries(sweep)
                if not summaries:
                    raise WindowError(f"{tarball}: {sweep.name}/ holds no run folder with a summary.json "
                                      "(expected SWEEP_ID/RUN/summary.json)")
                for run_dir, new in summaries.items():
                    name = f"{sweep.name}/{run_dir.name}"
                    if any(move.run == name for move, _, _ in plans):
                        raise WindowError(f"{name} is in more than one of the tarballs; merge them one at a time")
                    here = into / name
                    old = run_files.read_json(here / "summary.json")
                    if here.exists() and old is None:
                        raise WindowError(f"{here} has no readable summary.json; move it away before merging")
                    plans.append((_decide(name, new, old), run_dir, here))
            if not found:
                raise WindowError(f"{tarball} holds no sweep folder (expected SWEEP_ID/RUN/summary.json)")
            sweeps += found
        for i, (move, source, here) in enumerate(plans):
            if move.action == "add":
                here.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, here)
            elif move.action == "replace":
                os.replace(here, staged / f"replaced-{i}")
                os.replace(source, here)
        for sweep in sweeps:  # what is left: sweep-level files (multirun.yaml, .packs/ logs), where missing
            target = into / sweep.name
            for path in sweep.iterdir():
                if (path / "summary.json").exists():
                    continue
                if path.is_dir():
                    _copy_missing(path, target / path.name)
                elif not (target / path.name).exists():
                    shutil.copy2(path, target / path.name)
    return [move for move, _, _ in plans]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("plan", help="every window, its size, and how much of it the sweep folders hold")
    p.add_argument("--sweeps", type=Path, default=Path("outputs/sweeps"))
    for action in ("overrides", "images", "sweep"):
        sub.add_parser(action).add_argument("window")
    m = sub.add_parser("merge", help="add brought-back run folders to the sweep folders")
    m.add_argument("tarballs", nargs="+", type=Path)
    m.add_argument("--into", type=Path, default=Path("outputs/sweeps"))
    args = parser.parse_args(argv)
    try:
        if args.action == "plan":
            print(plan(args.sweeps))
        elif args.action in ("overrides", "images", "sweep"):
            w = window(args.window)
            if args.action == "overrides":
                print(" ".join((f"experiment={w.experiment}", *w.overrides)))
            else:
                g = grid(w)
                print(g.images if args.action == "images" else g.sweep_id)
        else:
            moves = merge(args.tarballs, args.into)
            for move in moves:
                print(f"{move.action:<8} {move.run}  ({move.why})")
            added = sum(m.action != "keep" for m in moves)
            sweeps = sorted({m.run.split("/")[0] for m in moves})
            print(f"{added} of {len(moves)} run folders added or replaced in {args.into}; next: "
                  + "; ".join(f"python scripts/collect.py {args.into / s} -o results/{s}.csv, then "
                              f"python scripts/provenance.py {args.into / s}" for s in sweeps))
    except WindowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
