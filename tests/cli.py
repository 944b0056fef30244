"""Runs the real command line of the repo in a subprocess, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env(tmp_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    env["WANDB_MODE"] = env.get("WANDB_MODE", "offline")
    env["PYTHONUNBUFFERED"] = "1"
    if tmp_path is not None:
        # No netrc with a W&B key, no writes into the user's home.
        env["HOME"] = str(tmp_path / "home")
        env["WANDB_CONFIG_DIR"] = str(tmp_path / "home" / ".config" / "wandb")
        env["WANDB_CACHE_DIR"] = str(tmp_path / "home" / ".cache" / "wandb")
    env.update(extra)
    return env


def run_cli(args: list[str], *, module: str = "experiments.train", env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc
