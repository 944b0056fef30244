"""The full-scale experiments as GPU windows: what each window trains, which are done, and bringing one home.

A GPU comes 15 minutes at a time, one command of at most 10 minutes, on a bare machine that keeps
nothing. So the full-scale experiments (50 epochs on all of CIFAR-10) are cut into windows of whole
runs, each small enough for one device command at the fast engine's target rate (24 runs x 50 epochs =
60 M images in at most 9 minutes), none resuming from another window's checkpoint. A window's runs
come back as one tarball of run folders, and `merge` adds them to the sweep folder that collect.py
reads, so every window of an experiment joins one sweep.

    python scripts/full_scale.py plan [--sweeps outputs/sweeps] [--bench BENCH_JSON] [--seconds 480]
    python scripts/full_scale.py overrides WINDOW                   # its Hydra overrides
    python scripts/full_scale.py images WINDOW                      # training images it trains, all runs
    python scripts/full_scale.py sweep WINDOW                       # the sweep folder its runs go to
    python scripts/full_scale.py device-plan WINDOW [--bench BENCH_JSON] [--seconds S]   # for device_check.sh
    python scripts/full_scale.py merge TARBALL... [--into outputs/sweeps]
    python scripts/full_scale.py expect SWEEP_DIR...                # rewrite its expected_runs.json
    python scripts/full_scale.py publish SWEEP_DIR... [--results results]   # its CSVs, figures, claims, provenance

A window too big for the rate the device measured is run in parts: WINDOW.IofN is part I of N, the
window's runs cut along some of its swept axes (blog-s0.1of2: AdamW's 12 runs of seed 0), each part
whole runs still. `plan --bench` sizes the parts from a benchmark's rates and names the next one;
`device-plan` does the same on the device with the rates measured there, and splits a window that
does not fit in the seconds left.

After a merge, the sweep folder's expected_runs.json lists every run of each window some of whose
runs are home; collect.py gives each one no run folder holds a row with status "missing", so the
figures mark those cells incomplete instead of drawing a smaller grid as whole.

On the device: GRID_WINDOW=WINDOW bash scripts/device_check.sh env grid (results/benchmarks.md).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import re
import shlex
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

from collect import EXPECTED_FILE  # noqa: E402 - the file collect.py reads the missing runs from
from sweep_plan import compose  # noqa: E402

from experiments import run_files  # noqa: E402
from experiments.run_identity import differences, same_value  # noqa: E402
from experiments.run_record import is_done, one_line  # noqa: E402

CIFAR10_TRAIN_IMAGES = 50_000
# What a pack's time is estimated as, in device_check.sh and here: its training images at the measured
# aggregate rate, plus a test pass per epoch (a tenth of the images, a third of the cost), plus its
# start-up: a minute eager, two and a half compiled (its training and test graphs compile first, and under
# reduce-overhead the CUDA graphs are recorded). A part must fit in FIT_SHARE of the time left: a pack cut
# off by the deadline finishes none of its runs, so a margin costs less than a miss.
EVAL_OVERHEAD = 1.1
PACK_START_S = 60
COMPILED_PACK_START_S = 150
FIT_SHARE = 0.9
# Keys a pack's members may differ in (experiments/packed.py MEMBER_KEYS, with packed_init=shared):
# runs that differ in any other swept key train in separate packs, one after another.
MEMBER_KEY_PREFIXES = ("optimizer", "loss_multiplier")
PART = re.compile(r"^(?P<window>.+)\.(?P<index>\d+)of(?P<count>\d+)$")


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
    axes: dict[str, list[str]]  # each swept key with more than one value: its values as the sweeper writes them
    names: list[str]  # each run's folder name, as the window's sweep names it (no further overrides)

    @property
    def images(self) -> int:
        return len(self.runs) * self.epochs * self.train_images

    def pack_sizes(self, packed_init: str = "shared") -> list[int]:
        """Members of each pack launcher=packed makes of these runs, in order (packed_init=own: seeds share too)."""
        member_keys = MEMBER_KEY_PREFIXES + (("seed",) if packed_init == "own" else ())
        packs: dict[tuple, int] = {}
        for run in self.runs:
            key = tuple((k, str(v)) for k, v in run.items()
                        if not any(k == p or k.startswith(p + ".") for p in member_keys))
            packs[key] = packs.get(key, 0) + 1
        return list(packs.values())


@functools.lru_cache(maxsize=None)
def _experiment(experiment: str) -> tuple[str, tuple[tuple[str, str], ...], int, Any, str]:
    """(sweep id, sweeper axes, epochs, data subset, data name) of an experiment config (composed once)."""
    (cfg,) = compose([[f"experiment={experiment}"]], hydra_config=True)
    axes = tuple((str(k), str(v)) for k, v in cfg.hydra.sweeper.params.items())
    return str(cfg.name), axes, int(cfg.trainer.epochs), cfg.data.subset, str(cfg.data.name)


def grid(w: Window) -> Grid:
    """The window's runs: the experiment's sweep with the window's axes in place of the experiment's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep_id, sweeper_axes, epochs, subset, data_name = _experiment(w.experiment)
    axes = dict(sweeper_axes)
    for override in w.overrides:
        key, value = override.split("=", 1)
        axes[key] = value
    parser = OverridesParser.create()
    values, strings = {}, {}
    for parsed in parser.parse_overrides([f"{k}={v}" for k, v in axes.items()]):
        key = parsed.get_key_element()
        values[key] = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
        # The strings the sweeper puts in run folder names (1e-3 as 0.001).
        strings[key] = (list(parsed.sweep_string_iterator()) if parsed.is_sweep_override()
                        else [parsed.get_value_element_as_str()])
    swept = {k: v for k, v in strings.items() if len(v) > 1}
    # Hydra's override_dirname: the job's overrides, sorted, comma-joined (none of these keys is excluded).
    names = [",".join(sorted(f"{k}={v}" for k, v in zip(strings, combo)))
             for combo in itertools.product(*strings.values())]
    # Runs of the same sweep made at another scale (a data subset, fewer epochs) are not this window's runs.
    values.update({"trainer.epochs": [epochs], "data.subset": [subset], "data.name": [data_name]})
    runs = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    if data_name != "cifar10":
        raise WindowError(f"window {w.name}: experiment {w.experiment} is not on CIFAR-10; full-scale windows are")
    return Grid(sweep_id, runs, epochs, int(subset or CIFAR10_TRAIN_IMAGES), swept, names)


# ------------------------------------------------------------------------------------------- parts

def _split_keys(g: Grid, count: int) -> list[str] | None:
    """The swept keys whose values cut the window into `count` parts: fewest keys first, then sweep order."""
    keys = list(g.axes)
    for size in range(1, len(keys) + 1):
        for chosen in itertools.combinations(keys, size):
            if math.prod(len(g.axes[k]) for k in chosen) == count:
                return list(chosen)
    return None


def part_counts(g: Grid) -> list[int]:
    """Every number of parts the window can be cut into along its swept axes (1: whole)."""
    keys = list(g.axes)
    return sorted({math.prod(len(g.axes[k]) for k in chosen)
                   for size in range(len(keys) + 1) for chosen in itertools.combinations(keys, size)})


def parts(w: Window, count: int) -> list[Window]:
    """The window cut into `count` parts of whole runs, WINDOW.1ofN ... WINDOW.NofN."""
    if count == 1:
        return [w]
    g = grid(w)
    keys = _split_keys(g, count)
    if keys is None:
        raise WindowError(f"window {w.name} ({len(g.runs)} runs) cannot be cut into {count} parts along its "
                          f"axes; choose from {', '.join(map(str, part_counts(g)))}")
    cut = []
    for i, combo in enumerate(itertools.product(*(g.axes[k] for k in keys)), 1):
        overrides = dict(o.split("=", 1) for o in w.overrides)  # a cut axis the window set replaces its value
        overrides.update(zip(keys, combo))
        cut.append(Window(f"{w.name}.{i}of{count}", w.chunk, w.experiment,
                          tuple(f"{k}={v}" for k, v in overrides.items())))
    return cut


def resolve(name: str) -> Window:
    """A window by name, or one part of it (WINDOW.IofN)."""
    match = PART.match(name)
    if not match:
        return window(name)
    index, count = int(match["index"]), int(match["count"])
    if not 1 <= index <= count:
        raise WindowError(f"part {name}: I in WINDOW.IofN runs from 1 to N")
    return parts(window(match["window"]), count)[index - 1]


# ------------------------------------------------------------------------------------------- rates

@dataclass(frozen=True)
class Rate:
    members: int  # the pack size it was measured at
    images_per_s: float  # aggregate
    route: str
    compile: str  # false, default, reduce-overhead, max-autotune


def bench_rates(path: Path) -> dict[int, Rate]:
    """The fastest measured pipeline of each pack size in a scripts/benchmark.py JSON (the single run is 1)."""
    bench = run_files.read_json(path)
    if not isinstance(bench, dict) or not isinstance(bench.get("pipelines"), dict):
        raise WindowError(f"{path} is not a scripts/benchmark.py JSON (no pipelines); give the bench.json a "
                          "device check wrote")
    best: dict[int, Rate] = {}
    for name, p in bench["pipelines"].items():
        rate = (bench.get("images_per_s", {}).get(name) or {}).get("median")
        if p.get("kind") not in ("pack", "single") or not isinstance(rate, (int, float)) or not rate > 0:
            continue
        if p.get("stats_every"):  # with layer statistics: not what a grid run does
            continue
        k = int(p.get("members") or 1)
        if k not in best or rate > best[k].images_per_s:
            best[k] = Rate(k, float(rate), str(p.get("route") or "loop"), str(p.get("compile") or "false"))
    return best


def rate_for(rates: dict[int, Rate], members: int) -> Rate | None:
    """The rate a pack of `members` is planned at: measured at that size; between two measured sizes, the
    straight line between their rates (aggregate rates grow ever slower with the pack, so the line errs
    long), with the route and compile mode of the nearer size; beyond the largest, the largest's rate;
    below the smallest, none."""
    if members in rates:
        return rates[members]
    below = [k for k in rates if k < members]
    above = [k for k in rates if k > members]
    if not below:
        return None
    lo = rates[max(below)]
    if not above:
        return Rate(members, lo.images_per_s, lo.route, lo.compile)
    hi = rates[min(above)]
    share = (members - lo.members) / (hi.members - lo.members)
    near = hi if math.log(hi.members / members) <= math.log(members / lo.members) else lo
    return Rate(members, lo.images_per_s + share * (hi.images_per_s - lo.images_per_s), near.route, near.compile)


def estimate_s(g: Grid, rates: dict[int, Rate], packed_init: str = "shared",
               start_s: float | None = None) -> int | None:
    """Seconds the window's packs take one after another at the measured rates (start_s: each pack's start-up,
    by default by its compile mode); None if a pack size has no rate."""
    total = 0.0
    for size in g.pack_sizes(packed_init):
        rate = rate_for(rates, size)
        if rate is None:
            return None
        start = start_s if start_s is not None else (PACK_START_S if rate.compile == "false" else COMPILED_PACK_START_S)
        total += size * g.epochs * g.train_images * EVAL_OVERHEAD / rate.images_per_s + start
    return math.ceil(round(total, 6))  # 1.1 is no float: 30 M x 1.1 / 60,000 is 550, not 550.0000001


def fitting_parts(w: Window, rates: dict[int, Rate], seconds: float) -> list[tuple[int, list[Window]]]:
    """Each part count whose every part fits in FIT_SHARE of `seconds` at the rates, fewest parts first."""
    fitting = []
    for count in part_counts(grid(w)):
        cut = parts(w, count)
        estimates = [estimate_s(grid(p), rates) for p in cut]
        if all(e is not None and e <= FIT_SHARE * seconds for e in estimates):
            fitting.append((count, cut))
    return fitting


def _setting(config: dict, key: str) -> Any:
    """A run's value of a swept key, from the resolved config in its summary.json."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):  # a config group: its choice is the config's name
        return node.get("name")
    return node


def read_summaries(sweep_dir: Path) -> dict[Path, dict]:
    found = {}
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = run_files.read_json(path)
        found[path.parent] = summary if isinstance(summary, dict) else {"status": "unreadable"}
    return found


def run_statuses(g: Grid, summaries: dict[Path, dict]) -> list[str]:
    """Each of the window's runs as the sweep folder holds it: 'done', another status, or 'missing' (none)."""
    statuses = []
    for run in g.runs:
        matches = [s for s in summaries.values() if isinstance(s.get("config"), dict)
                   and all(same_value(_setting(s["config"], k), v) for k, v in run.items())]
        statuses.append("missing" if not matches else ("done" if any(is_done(s) for s in matches)
                                                       else matches[0]["status"]))
    return statuses


def window_status(g: Grid, summaries: dict[Path, dict]) -> dict[str, int]:
    """How many of the window's runs the sweep folder holds, by status ('missing' for none)."""
    counts: dict[str, int] = {}
    for status in run_statuses(g, summaries):
        counts[status] = counts.get(status, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------- expected runs

def _runs_hparams(w: Window, g: Grid) -> list[dict]:
    """What collect.py's row of each run of the window says it is (run_info.hparams of its composed config)."""
    from experiments import run_info

    return [run_info.hparams(cfg) for cfg in compose([[f"experiment={w.experiment}", *name.split(",")]
                                                       for name in g.names])]


def expected_runs(sweep_dir: Path) -> dict | None:
    """Every run of each window of which the sweep folder holds at least one run, with its hparams; None when
    it holds none (or is no full-scale experiment's sweep)."""
    summaries = read_summaries(sweep_dir)
    started, runs = [], []
    for w in WINDOWS:
        g = grid(w)
        if g.sweep_id != sweep_dir.name or set(run_statuses(g, summaries)) == {"missing"}:
            continue
        started.append(w.name)
        runs += [{"window": w.name, "run_name": name, "hparams": hparams}
                 for name, hparams in zip(g.names, _runs_hparams(w, g))]
    if not started:
        return None
    return {"written_by": "scripts/full_scale.py", "sweep_id": sweep_dir.name, "windows": started, "runs": runs}


def write_expected(sweep_dir: Path) -> Path | None:
    """<sweep>/expected_runs.json: the runs collect.py marks 'missing' when their folder is not there, so a
    window whose runs came home only in part never draws as whole. Rewritten from the folder on every merge."""
    expected = expected_runs(sweep_dir)
    if expected is None:
        return None
    return run_files.atomic_write_text(sweep_dir / EXPECTED_FILE, json.dumps(expected, indent=1, default=str) + "\n")


def _device_call(name: str) -> str:
    return (f"run(command=\"GRID_WINDOW={name} bash scripts/device_check.sh env grid\", "
            "carry=[\"datasets/cifar10-jpeg.tar.gz\", \".whl\"], timeout_s=590) after scripts/device_bundle.sh")


def next_part(w: Window, summaries: dict[Path, dict], rates: dict[int, Rate], seconds: float) -> Window | None:
    """The part of an unfinished window to run next in `seconds`: of the fewest parts that fit, one none of
    whose runs is there yet (else one that has runs still to do); None when no part fits."""
    fitting = fitting_parts(w, rates, seconds)
    for _, cut in fitting:
        for p in cut:
            if set(run_statuses(grid(p), summaries)) == {"missing"}:
                return p
    fewest = fitting[0][1] if fitting else []
    return next((p for p in fewest if set(run_statuses(grid(p), summaries)) != {"done"}), None)


def plan(sweeps: Path, rates: dict[int, Rate] | None = None, seconds: float = 480) -> str:
    sized = f" | parts in {seconds:.0f} s" if rates else ""
    lines = [f"| window | chunk | experiment | runs | images | in {sweeps}{sized} |",
             "|---|---:|---|---:|---:|---|" + ("---:|" if rates else "")]
    next_window = None
    for w in WINDOWS:
        g = grid(w)
        summaries = read_summaries(sweeps / g.sweep_id)
        counts = window_status(g, summaries)
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if next_window is None and counts.get("done", 0) < len(g.runs):
            next_window = (w, summaries)
        if rates:
            fitting = fitting_parts(w, rates, seconds)
            shown += f" | {fitting[0][0] if fitting else 'none fits'}"
        lines.append(f"| {w.name} | {w.chunk} | {w.experiment} {' '.join(w.overrides)} | {len(g.runs)} | "
                     f"{g.images / 1e6:.0f} M | {shown} |")
    if next_window is None:
        lines.append("\nEvery window is done.")
        return "\n".join(lines)
    w, summaries = next_window
    if rates:
        p = next_part(w, summaries, rates, seconds)
        if p is None:
            lines.append(f"\nNo part of {w.name}, not even one run, fits in {seconds:.0f} s at these rates.")
            return "\n".join(lines)
        lines.append(f"\nNext: {p.name} ({' '.join(p.overrides)}; {len(grid(p).runs)} runs, about "
                     f"{estimate_s(grid(p), rates)} s): " + _device_call(p.name))
    else:
        lines.append("\nNext: " + _device_call(w.name))
    return "\n".join(lines)


def device_plan(name: str, rates: dict[int, Rate], seconds: float) -> dict[str, str]:
    """What device_check.sh's grid stage runs: the window (or, if it does not fit in `seconds` at the measured
    rates, part 1 of the fewest parts that fit), its overrides, sweep, route and compile mode, and the estimate."""
    w = resolve(name)
    g = grid(w)
    need = estimate_s(g, rates)
    if need is not None and need > FIT_SHARE * seconds and not PART.match(name):
        fitting = fitting_parts(w, rates, seconds)
        if fitting:
            w = fitting[0][1][0]
            g = grid(w)
            need = estimate_s(g, rates)
    rate = rate_for(rates, max(g.pack_sizes()))
    return {"window": w.name, "overrides": " ".join((f"experiment={w.experiment}", *w.overrides)),
            "sweep": g.sweep_id, "images": str(g.images), "runs": str(len(g.runs)),
            "route": rate.route if rate else "", "mode": rate.compile if rate else "",
            "rate": str(int(rate.images_per_s)) if rate else "", "need": "" if need is None else str(need)}


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
                elif not (target / path.name).exists() and path.name != EXPECTED_FILE:
                    shutil.copy2(path, target / path.name)
    for name in sorted({sweep.name for sweep in sweeps}):
        write_expected(into / name)
    return [move for move, _, _ in plans]


def publish(sweep_dir: Path, results: Path) -> list[str]:
    """What issue 15 commits for an experiment, from its sweep folder: results/NAME.csv and NAME_curves.csv
    (collect.py), results/figures/NAME/ (figures.py; cells of runs not home drawn framed as incomplete),
    results/claims/NAME.md (claims.py) and results/provenance/NAME.md (provenance.py). Returns the steps
    that failed; each step's own messages say why."""
    import claims
    import collect
    import figures
    import provenance

    name = sweep_dir.name
    csv = results / f"{name}.csv"
    steps = [("collect", collect.main, [str(sweep_dir), "-o", str(csv)]),
             ("figures", figures.main, [str(csv), "-o", str(results / "figures" / name), "--allow-incomplete"]),
             ("claims", claims.main, [str(csv), "-o", str(results / "claims" / f"{name}.md")]),
             ("provenance", provenance.main, [str(sweep_dir), "-o", str(results / "provenance" / f"{name}.md")])]
    failed = []
    for step, run, args in steps:
        if run(args) != 0:
            failed.append(f"{name}: {step}")
            if step == "collect":  # nothing to draw or judge
                break
    if not failed:
        statuses = collect.read_csv_exact(csv)["status"].value_counts()
        print(f"{name}: {int(statuses.sum())} runs (" + ", ".join(f"{n} {s}" for s, n in statuses.items())
              + f") in {csv}, its curves, {results / 'figures' / name}/, claims and provenance")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("plan", help="every window, its size, and how much of it the sweep folders hold")
    p.add_argument("--sweeps", type=Path, default=Path("outputs/sweeps"))
    for q in (p, sub.add_parser("device-plan", help="what device_check.sh's grid stage runs, as shell assignments")):
        q.add_argument("--bench", type=Path, help="a scripts/benchmark.py JSON whose rates size the parts")
        q.add_argument("--seconds", type=float, default=480, help="what one part may take (default 480)")
        if q is not p:
            q.add_argument("window")
    for action in ("overrides", "images", "sweep"):
        sub.add_parser(action).add_argument("window")
    t = sub.add_parser("estimate", help="seconds an experiment's sweep takes packed, at a benchmark's rates")
    t.add_argument("experiment")
    t.add_argument("--bench", type=Path, required=True)
    t.add_argument("--packed-init", choices=("shared", "own"), default="shared")
    t.add_argument("--start-s", type=float, default=None,
                   help=f"start-up per pack (default {PACK_START_S} s eager, {COMPILED_PACK_START_S} s compiled)")
    e = sub.add_parser("expect", help=f"(re)write SWEEP_DIR/{EXPECTED_FILE} (merge does this itself)")
    e.add_argument("sweep_dirs", nargs="+", type=Path)
    u = sub.add_parser("publish", help="a sweep folder's results CSVs, figures, claims and provenance")
    u.add_argument("sweep_dirs", nargs="+", type=Path)
    u.add_argument("--results", type=Path, default=Path("results"))
    m = sub.add_parser("merge", help="add brought-back run folders to the sweep folders")
    m.add_argument("tarballs", nargs="+", type=Path)
    m.add_argument("--into", type=Path, default=Path("outputs/sweeps"))
    args = parser.parse_args(argv)
    try:
        rates = bench_rates(args.bench) if getattr(args, "bench", None) else {}
        if args.action == "plan":
            print(plan(args.sweeps, rates or None, args.seconds))
        elif args.action == "device-plan":
            print("\n".join(f"{k}={shlex.quote(v)}" for k, v in device_plan(args.window, rates, args.seconds).items()))
        elif args.action == "estimate":
            g = grid(Window(args.experiment, 0, args.experiment, ()))
            seconds = estimate_s(g, rates, args.packed_init, args.start_s)
            if seconds is None:
                raise WindowError(f"{args.bench} has no rate for packs of {min(g.pack_sizes(args.packed_init))} or "
                                  "fewer members")
            print(seconds)
        elif args.action == "expect":
            for sweep_dir in args.sweep_dirs:
                path = write_expected(sweep_dir)
                if path is None:
                    raise WindowError(f"{sweep_dir} holds no run of a full-scale window; nothing to expect")
                expected = run_files.read_json(path)
                print(f"{path}: {len(expected['runs'])} runs of {', '.join(expected['windows'])}")
        elif args.action == "publish":
            failed = [f for sweep_dir in args.sweep_dirs for f in publish(sweep_dir, args.results)]
            if failed:
                print(f"error: publish failed at {'; '.join(failed)} (the messages above say why)", file=sys.stderr)
                return 1
        elif args.action in ("overrides", "images", "sweep"):
            w = resolve(args.window)
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
            print(f"{added} of {len(moves)} run folders added or replaced in {args.into}; next: python "
                  f"scripts/full_scale.py publish {' '.join(str(args.into / s) for s in sweeps)}")
    except WindowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
