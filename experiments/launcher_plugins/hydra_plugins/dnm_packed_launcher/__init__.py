"""Hydra launchers `packed` (trains a sweep's grid points in packs, in this process or one submitit job per pack)
and `joblib` (hydra-joblib-launcher's, surviving a killed worker: joblib_jobs.py).

Hydra only instantiates launchers defined under the `hydra_plugins` namespace package. The
distribution installs this folder as `hydra_plugins.dnm_packed_launcher` (pyproject.toml maps it;
editable and regular installs alike), so Hydra's plugin discovery finds it. The class lives in this
module because Hydra registers plugins by their defining module, which is what `_target_`
(configs/hydra/launcher/packed.yaml) names. Kept free of torch imports: every
`python -m experiments.train` scans plugins.
"""
from __future__ import annotations

from typing import Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _HydraJoblibLauncher
from omegaconf import DictConfig


class PackedLauncher(Launcher):
    """Composes every job like Hydra's basic launcher, then trains jobs that can share a pack together.

    pack_size: most runs per pack (null: every compatible run of the sweep in one pack).
    packed_init: shared (a pack holds one seed: members start alike, as their single runs) or
    own (seeds mix in a pack; each member starts from its own seed).
    route: auto (the route measured fastest for this device type, pack size and compile mode:
    experiments/route_table.py), loop, streams, vmap or grouped (experiments/packed_models.py).
    submitit: null (packs train one after another in this process), or hydra-submitit-launcher's
    own launcher, configured as for launcher=slurm / submitit_local: each pack is then one submitit
    job with those settings (configs/launcher/packed_slurm.yaml).
    """

    def __init__(self, pack_size: Optional[int] = None, packed_init: str = "shared", route: str = "auto",
                 submitit: Optional[Launcher] = None) -> None:
        self.pack_size = pack_size
        self.packed_init = packed_init
        self.route = route
        self.submitit = submitit
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.dnm_packed_launcher import jobs

        return jobs.launch(self, job_overrides, initial_job_idx)


class JoblibLauncher(_HydraJoblibLauncher):
    """launcher=joblib: hydra-joblib-launcher with its settings, except that a worker killed mid-run (out of
    memory, kill -9) leaves its run marked failed and the rest of the sweep goes on (joblib_jobs.py)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.dnm_packed_launcher import joblib_jobs

        return joblib_jobs.launch(self, job_overrides, initial_job_idx)
