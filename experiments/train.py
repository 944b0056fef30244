"""`python -m experiments.train [overrides]`: one run, or a sweep with -m. See configs/train.yaml."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import run_files
from experiments.trainer import DONE_STATUSES, summarize, train_run

log = logging.getLogger("experiments.train")

# Hydra instantiates launchers only from the `hydra_plugins` namespace package; this folder holds
# ours (launcher=packed), so it must be importable before Hydra scans for plugins.
_PLUGINS = str(Path(__file__).resolve().parent / "launcher_plugins")
if _PLUGINS not in sys.path:
    sys.path.append(_PLUGINS)

# An empty override list would give an empty folder name.
OmegaConf.register_new_resolver("run_dirname", lambda overrides: overrides or "default", replace=True)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _record_failure(cfg: DictConfig, run_dir: Path, run_name: str, message: str) -> None:
    """Marks the run failed, keeping whatever its summary already recorded."""
    path = run_dir / "summary.json"
    summary = run_files.read_json(path)
    if summary is None:
        try:
            summary = summarize(cfg, run_dir, run_name, [], "failed", wall_time_s=0.0, device="")
        except Exception:  # the config itself may be what failed
            summary = {"run_dir": str(run_dir), "run_name": run_name}
    if summary.get("status") in DONE_STATUSES:
        return
    summary.update(status="failed", error=message)
    run_files.write_json(path, summary)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    run_name = hc.job.override_dirname or "default"
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = train_run(cfg, run_dir, run_name, base_dir=hc.runtime.cwd)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing run must never take down a sweep
        message = _one_line(exc)
        log.debug("traceback:\n%s", traceback.format_exc())
        _record_failure(cfg, run_dir, run_name, message)
        log.error("%s failed: %s", run_name, message)
        if not multirun:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        return None
    acc = summary["final"]["test_acc"]
    return acc


if __name__ == "__main__":
    main()
