"""A regular (non-editable) install ships the packed launcher where Hydra's plugin discovery finds it."""
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment holding a regular install of the repo; the dependencies (torch, Hydra, ...)
    come from the test's own environment through a .pth line, so nothing is downloaded or built twice."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build's build/ and *.egg-info never touch the checkout
    source.mkdir()
    for name in DISTRIBUTED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(source)], check=True, capture_output=True, text=True)
    shutil.rmtree(source)  # the install must not lean on the copy
    return python


def test_hydra_discovers_the_installed_launcher(installed):
    proc = subprocess.run([installed, "-c", DISCOVER], cwd=installed.parents[2], capture_output=True, text=True,
                          check=True)
    found = json.loads(proc.stdout)
    assert "hydra_plugins.dnm_packed_launcher.PackedLauncher" in found["launchers"]
    assert Path(found["file"]).is_relative_to(installed.parents[1]), found["file"]  # the venv's, not the repo's


def test_a_packed_sweep_runs_from_the_repo_root_with_the_installed_launcher(installed, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [installed, "-m", "experiments.train", "-m", "data=synthetic", "data.train_size=64", "data.test_size=32",
         "trainer.batch_size=16", "trainer.epochs=1", "logger=none", "optimizer.lr=1e-3,2e-3", "launcher=packed",
         f"hydra.sweep.dir={sweep}"], cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((sweep / ".packs").iterdir())) == 1  # both runs went through the packed launcher, as one pack
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["hparams"]["lr"] for s in summaries) == [1e-3, 2e-3]
    assert all(s["status"] == "finished" for s in summaries)
