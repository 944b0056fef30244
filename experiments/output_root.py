"""A command whose outputs cannot go where output_root says stops before anything starts, in one line.

Hydra makes the run or sweep folder itself, before any job: a path through a file would end in its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def blocked_by(path: Path) -> Path | None:
    """The file that stands where path, or a folder above it, would be; None when the folders can be made."""
    for place in (path, *path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


class OutputRootCheck(Callback):
    def _check(self, config: DictConfig) -> None:
        root = Path(str(config.output_root)).absolute()
        if (file := blocked_by(root)) is not None:
            print(f"error: output_root={config.output_root} cannot hold the run folders: {file} is a file; "
                  "choose another output_root", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
