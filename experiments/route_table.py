"""route=auto: the pack route that a benchmark measured fastest on this kind of device, for this pack size.

The measurements live in experiments/route_table.json, one entry per device type (cpu, cuda), each made by
scripts/route_table.py from one scripts/benchmark.py JSON: rates of one benchmark's pipelines were measured side
by side, rates of different benchmark runs are not compared. Per compile mode (eager, default, reduce-overhead,
...) and pack size the entry names the fastest route and every route's rate. A pack of K members takes the route
measured for the largest measured size <= K (a compile mode measured at no such size: the eager ranking). A pack
smaller than every measured size, and every pack of one, takes the loop route, which runs a member with the
single run's own kernels, so a single run's numbers never depend on this table. A device type with no entry
takes FALLBACK's rule. DNM_ROUTE_TABLE names another table (e.g. your own machine's).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("route_table.json")
EAGER = "eager"

# With no measurement of the engine on a device type: on CUDA, vmap for packs of 4 or more. That is what the code
# before the engine measured on an H200 (results/benchmark_cuda/8b16015_default.json against _route_loop.json, two
# benchmark runs a minute apart: vmap 1.32x and 1.49x sequential at K=4 and 12, loop 1.14x and 1.17x, a vmap pack
# of one 0.50x). Everywhere else the loop route.
FALLBACK = {"cuda": {EAGER: {"4": {"route": "vmap"}}}}


def _load(path: Path) -> dict:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _parse(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _parse(path: str, mtime_ns: int, size: int) -> dict:  # a table rewritten since is read again
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); write it again with scripts/route_table.py BENCH.json "
                         "or check it out again") from exc
    if not isinstance(table, dict) or not all(isinstance(entry, dict) for entry in table.values()):
        raise ValueError(f"{path} is not a route table (a JSON object per device type); write it again with "
                         "scripts/route_table.py BENCH.json or check it out again")
    return table


def table_path() -> Path:
    """DNM_ROUTE_TABLE, a table of your own machine's measurements, else the committed one."""
    return Path(os.environ.get("DNM_ROUTE_TABLE") or TABLE)


def auto_route(device: torch.device | str, members: int, compile_mode: str | None = None,
               table: Path | str | None = None) -> tuple[str, str]:
    """The route for route=auto, and why (for the log): see the module's docstring."""
    table = Path(table) if table is not None else table_path()
    kind = torch.device(device).type
    if members <= 1:
        return "loop", "a pack of one trains on the single run's own kernels"
    entry = _load(table).get(kind)
    if entry is None and kind not in FALLBACK:
        return "loop", f"no measurement for {kind} in {table}"
    fastest = entry["fastest"] if entry else FALLBACK[kind]
    where = (f"on {entry['hardware']}, {entry['source']}" if entry
             else f"no measurement for {kind} in {table}: the rule measured before the engine")
    # A compile mode measured at no size up to this pack: its eager ranking.
    for mode in (compile_mode or EAGER, EAGER):
        measured = [int(k) for k in fastest.get(mode, {}) if int(k) <= members]
        if measured:
            size = max(measured)
            return fastest[mode][str(size)]["route"], f"fastest measured for packs of {size}, {mode} ({where})"
    return "loop", f"fewer members than any pack measured ({where})"
