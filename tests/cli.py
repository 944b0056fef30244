"""Runs the real command line of the repo in a subprocess, as a user would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def wait_for(condition, timeout: float, what: str, poll: float = 0.05) -> None:
    """Waits until condition() is true; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def sbatch_script(args: list[str], tmp_path: Path, timeout: float = 120) -> tuple[str, str]:
    """The real submitit SLURM path of `python -m experiments.train ARGS` up to sbatch, with a stand-in sbatch
    that keeps the script it was given; returns (that script, the driver's output)."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "kept.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" {kept}\n'
                                    'echo "Submitted batch job 4242"\n')
    # submitit only checks that srun exists on the submitting side; the job script calls it.
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = cli_env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: kept.exists() or proc.poll() is not None, timeout, "sbatch", poll=0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # the driver would now wait for the cluster
    output = proc.communicate()[0]
    assert kept.exists(), output[-3000:]
    return kept.read_text(), output
