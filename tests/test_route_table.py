"""route=auto follows the measurements: scripts/route_table.py writes a benchmark's ranking of the routes into
experiments/route_table.json, and experiments/route_table.py picks from it by device type, pack size and compile
mode."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO, cli_env, run_cli

sys.path.insert(0, str(REPO / "scripts"))
import route_table as writer  # noqa: E402

from experiments.route_table import TABLE, auto_route  # noqa: E402


def _bench(path: Path, device: str, measured: dict[tuple[int, str, str | None], float | None]) -> Path:
    """A scripts/benchmark.py JSON: (members, route, compile mode) -> median images/s (None: the pipeline failed)."""
    pipelines = {"single": {"kind": "single", "members": 1, "route": "loop", "compile": None}}
    rates = {"single": {"median": 1.0, "samples": [1.0]}}
    for (k, route, mode), rate in measured.items():
        name = f"packed_{k}_{route}" + (f"_{mode}" if mode else "")
        pipelines[name] = {"kind": "pack", "members": k, "route": route, "compile": mode, "asked": route}
        if rate is not None:
            rates[name] = {"median": rate, "samples": [rate]}
    path.write_text(json.dumps({"device": device, "hardware": "a test GPU", "torch": "x", "git_commit": "c" * 40,
                                "date": "2026-12-02", "complete": False, "settings": {"batch_size": 128},
                                "pipelines": pipelines, "images_per_s": rates}))
    return path


MEASURED = {(4, "loop", None): 5.0, (4, "vmap", None): 10.0, (4, "grouped", None): None,  # grouped failed at 4
            (12, "vmap", None): 20.0, (12, "grouped", None): 30.0,
            (12, "loop", "reduce-overhead"): 50.0, (12, "grouped", "reduce-overhead"): 40.0}


def test_auto_takes_the_fastest_route_measured_at_the_largest_size_up_to_the_pack(tmp_path):
    table = tmp_path / "table.json"
    assert writer.main([str(_bench(tmp_path / "bench.json", "cuda:0", MEASURED)), "--table", str(table)]) == 0
    entry = json.loads(table.read_text())["cuda"]
    assert entry["fastest"]["eager"]["4"] == {"route": "vmap", "images_per_s": {"loop": 5.0, "vmap": 10.0}}
    assert entry["hardware"] == "a test GPU" and entry["git_commit"] == "c" * 40

    def route(members: int, mode: str | None = None, device: str = "cuda") -> str:
        return auto_route(device, members, mode, table)[0]

    assert [route(k) for k in (1, 2, 3, 4, 11, 12, 40)] == ["loop"] * 3 + ["vmap"] * 2 + ["grouped"] * 2
    # Compiled: its own ranking where it measured a size up to the pack, else the eager one.
    assert [route(k, "reduce-overhead") for k in (1, 4, 12, 40)] == ["loop", "vmap", "loop", "loop"]
    assert route(12, "max-autotune") == "grouped"
    assert route(12, device="cpu") == "loop"  # no cpu entry in this table, and no rule for cpu but the loop
    why = auto_route("cuda:1", 12, None, table)[1]
    assert "packs of 12" in why and "a test GPU" in why


def test_a_device_type_without_measurements_keeps_the_rule_measured_before_the_engine(tmp_path):
    table = tmp_path / "none.json"
    assert [auto_route("cuda", k, None, table)[0] for k in (1, 3, 4, 24)] == ["loop", "loop", "vmap", "vmap"]
    assert auto_route("cuda", 24, "reduce-overhead", table)[0] == "vmap"
    assert auto_route("cpu", 24, None, table)[0] == "loop"


def test_a_rewritten_table_is_read_again_and_other_device_types_keep_their_entries(tmp_path):
    table = tmp_path / "table.json"
    writer.main([str(_bench(tmp_path / "cpu.json", "cpu", {(2, "grouped", None): 9.0, (2, "loop", None): 1.0})),
                 "--table", str(table)])
    assert auto_route("cpu", 2, None, table)[0] == "grouped"
    writer.main([str(_bench(tmp_path / "gpu.json", "cuda", MEASURED)), "--table", str(table)])
    writer.main([str(_bench(tmp_path / "cpu.json", "cpu", {(2, "grouped", None): 1.0, (2, "loop", None): 9.0})),
                 "--table", str(table)])
    assert auto_route("cpu", 2, None, table)[0] == "loop"  # not the first table's answer, cached
    assert auto_route("cuda", 12, None, table)[0] == "grouped"
    assert sorted(json.loads(table.read_text())) == ["cpu", "cuda"]


@pytest.mark.parametrize("bad, says", [
    ("not json", "cannot be read as JSON"),
    (json.dumps({"device": "cpu", "images_per_s": {}}), "is not a scripts/benchmark.py JSON of the engine"),
    (json.dumps({"device": "nonsense", "pipelines": {}, "images_per_s": {}}), "is not a scripts/benchmark.py JSON"),
    (json.dumps({"device": "cpu", "pipelines": {"single": {"kind": "single", "members": 1}},
                 "images_per_s": {"single": {"median": 1.0}}}), "measured no pack"),
])
def test_a_file_that_is_no_engine_benchmark_is_a_one_line_error_and_the_table_stays(tmp_path, capsys, bad, says):
    table = tmp_path / "table.json"
    table.write_text('{"cpu": {}}\n')
    (tmp_path / "bad.json").write_text(bad)
    assert writer.main([str(tmp_path / "bad.json"), "--table", str(table)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert table.read_text() == '{"cpu": {}}\n'


def test_a_corrupt_table_is_an_error_that_says_how_to_mend_it(tmp_path):
    table = tmp_path / "table.json"
    table.write_text('{"cpu": ')
    with pytest.raises(ValueError, match="write it again with scripts/route_table.py"):
        auto_route("cpu", 4, None, table)
    proc = subprocess.run([sys.executable, "scripts/route_table.py", str(_bench(tmp_path / "b.json", "cpu", MEASURED)),
                           "--table", str(table)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "delete it to start a new table" in proc.stderr


def test_the_committed_table_is_exactly_what_its_benchmark_files_measured():
    table = json.loads(TABLE.read_text())
    assert "cpu" in table
    for device, entry in table.items():
        bench = json.loads((REPO / entry["source"]).read_text())
        assert writer.device_type(bench) == device
        assert writer.entry_from_benchmark(bench, entry["source"]) == entry, f"{device}: edited by hand?"


def test_a_pack_on_route_auto_trains_on_the_tables_route_and_says_why(tmp_path):
    table = tmp_path / "table.json"
    writer.main([str(_bench(tmp_path / "cpu.json", "cpu", {(2, "grouped", None): 9.0, (2, "loop", None): 1.0})),
                 "--table", str(table)])
    sweep = tmp_path / "sweep"
    run_cli(["-m", "data=synthetic", "data.train_size=32", "data.test_size=16", "trainer.batch_size=16",
             "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,2e-3", "launcher=packed",
             f"hydra.sweep.dir={sweep}"], env=cli_env(tmp_path, DNM_ROUTE_TABLE=str(table)))
    (pack,) = (sweep / ".packs").glob("*/pack.json")
    info = json.loads(pack.read_text())
    assert info["size"] == 2 and info["route"] == "grouped", info
    assert "fastest measured for packs of 2" in info["route_reason"] and str(tmp_path / "cpu.json") in info["route_reason"]


@pytest.mark.parametrize("text", ["[1, 2]", '{"cuda": [1]}'])
def test_a_table_that_is_json_but_no_route_table_is_a_one_line_error(tmp_path, text):
    (tmp_path / "table.json").write_text(text)
    with pytest.raises(ValueError, match=r"^\S+table.json is not a route table .*scripts/route_table.py") as e:
        auto_route("cuda", 4, table=tmp_path / "table.json")
    assert "\n" not in str(e.value)
