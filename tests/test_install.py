"""The packed launcher is found where Hydra looks for it: from a regular (non-editable) install, and from a plain
checkout run in place."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from cli import REPO, cli_env

DISTRIBUTED = ["pyproject.toml", "README.md", "optimizers", "models", "data", "experiments"]

DISCOVER = """
import json, hydra_plugins.dnm_packed_launcher as ours
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
print(json.dumps({"launchers": [c.__module__ + "." + c.__name__ for c in Plugins.instance().discover(Launcher)],
                  "file": ours.__file__}))
"""


def _venv(root: Path) -> Path:
    """A fresh virtual environment whose dependencies (torch, Hydra, ...) come from the test's own environment
    through a .pth line, so nothing is downloaded or built twice. The line puts that site-packages folder on
    sys.path without running its .pth files, so the test environment's editable install of the repo stays out."""
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a venv holding a regular install of the repo."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build's build/ and *.egg-info never touch the checkout
    source.mkdir()
    for name in DISTRIBUTED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    python = _venv(root)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(source)], check=True, capture_output=True, text=True)
    shutil.rmtree(source)  # the install must not lean on the copy
    return python


@pytest.fixture(scope="module")
def not_installed(tmp_path_factory) -> Path:
    """The python of a venv with the dependencies only: the repo runs in place from its root."""
    python = _venv(tmp_path_factory.mktemp("in_place"))
    probe = subprocess.run([python, "-c", "import hydra_plugins.dnm_packed_launcher"], cwd=REPO, capture_output=True)
    assert probe.returncode != 0, "the repo's launcher is importable in the bare venv: the test would prove nothing"
    return python


def _in_place_env(tmp_path: Path) -> dict[str, str]:
    env = cli_env(tmp_path)
    env.pop("PYTHONPATH", None)  # the repo must find its launcher itself
    return env


def test_hydra_discovers_the_installed_launcher(installed):
    proc = subprocess.run([installed, "-c", DISCOVER], cwd=installed.parents[2], capture_output=True, text=True,
                          check=True)
    found = json.loads(proc.stdout)
    assert "hydra_plugins.dnm_packed_launcher.PackedLauncher" in found["launchers"]
    assert Path(found["file"]).is_relative_to(installed.parents[1]), found["file"]  # the venv's, not the repo's


def test_the_installed_engine_carries_route_autos_measurements(installed):
    probe = ("import json, experiments.route_table as t; "
             "print(json.dumps({'file': t.__file__, 'cpu': sorted(json.loads(t.TABLE.read_text())['cpu'])}))")
    found = json.loads(subprocess.run([installed, "-c", probe], cwd=installed.parents[2], capture_output=True,
                                      text=True, check=True).stdout)
    assert Path(found["file"]).is_relative_to(installed.parents[1]), found["file"]
    assert "fastest" in found["cpu"]


@pytest.mark.parametrize("python", ["installed", "not_installed"])
def test_a_packed_sweep_runs_from_the_repo_root_installed_or_not(python, request, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [request.getfixturevalue(python), "-m", "experiments.train", "-m", "data=synthetic", "data.train_size=64",
         "data.test_size=32", "trainer.batch_size=16", "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,2e-3",
         "launcher=packed", f"hydra.sweep.dir={sweep}"], cwd=REPO, env=_in_place_env(tmp_path), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((sweep / ".packs").iterdir())) == 1  # both runs went through the packed launcher, as one pack
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["hparams"]["lr"] for s in summaries) == [1e-3, 2e-3]
    assert all(s["status"] == "finished" for s in summaries)


@pytest.mark.slow
def test_packs_as_submitit_jobs_run_in_place_without_an_install(not_installed, tmp_path):
    """Each pack's job is a new process that unpickles the packed launcher: it must find it too."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [not_installed, "-m", "experiments.train", "-m", "data=synthetic", "data.train_size=64", "data.test_size=32",
         "trainer.batch_size=16", "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,2e-3",
         "launcher=packed_submitit_local", f"hydra.sweep.dir={sweep}"], cwd=REPO, env=_in_place_env(tmp_path),
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((sweep / ".submitit").glob("*/*_0_log.err"))) == 1  # one pack, one submitit job
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["hparams"]["lr"] for s in summaries) == [1e-3, 2e-3]
    assert all(s["status"] == "finished" for s in summaries), [s.get("error") for s in summaries]
