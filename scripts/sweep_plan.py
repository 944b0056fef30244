"""The runs a sweep folder was launched to hold, read back from the multirun.yaml Hydra wrote when it started.

A job that never started (a sweep killed, a SLURM array still queued, a folder never brought home) leaves no
folder, so nothing in the sweep folder would say it is missing. Hydra's basic sweeper saves the sweep's
config, its swept params and command-line overrides, before it launches anything; expanding them with the
sweeper's own functions gives every job and the folder Hydra names for it (hydra.sweep.subdir is the job's
override_dirname in configs/train.yaml). collect.py marks the jobs without a folder "missing".

Only the latest launch into a folder is read back (Hydra rewrites multirun.yaml each time): runs of earlier
launches are still collected from their folders, they are just not expected.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run in place, installed or not
    sys.path.insert(0, str(_REPO))

import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

PLAN_FILE = "multirun.yaml"
# The sweep subdir configs/train.yaml sets: a run folder named by its job's override_dirname.
RUN_SUBDIR = "${run_dirname:${hydra:job.override_dirname}}"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class PlanError(ValueError):
    """A multirun.yaml that cannot be expanded into its jobs; the message says why, in one line."""


@dataclass(frozen=True)
class PlannedRun:
    name: str  # its folder under the sweep folder
    overrides: tuple[str, ...]  # the job's overrides, as the sweeper passed them (hydra.* ones left out)


@dataclass(frozen=True)
class Plan:
    sweep_id: str | None
    experiment: str | None
    runs: list[PlannedRun]  # in launch order


def planned_runs(sweep_dir: Path) -> Plan | None:
    """Every job of the sweep's latest launch; None when the folder has no multirun.yaml of a basic-sweeper
    sweep with this repo's run-folder names (nothing to expect). PlanError when it has one that cannot be read."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise PlanError(f"{path} cannot be read ({type(e).__name__}); move it away to collect the runs there") from None
    hydra = plan.get("hydra") if isinstance(plan, dict) else None
    if not isinstance(hydra, dict) or not isinstance(hydra.get("sweeper"), dict):
        return None  # not a file Hydra's sweeper wrote
    try:
        sweeper, sweep, naming = hydra["sweeper"], hydra["sweep"], hydra["job"]["config"]["override_dirname"]
        task = list(hydra["overrides"]["task"])
    except (KeyError, TypeError) as e:
        raise PlanError(f"{path} is not the multirun.yaml of a sweep of this repo ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); move it away to collect the runs there") from None
    if sweeper.get("_target_") != BASIC_SWEEPER or sweep.get("subdir") != RUN_SUBDIR:
        return None  # another sweeper (jobs chosen as it goes) or other folder names: nothing to expect
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    try:
        parser = OverridesParser.create()
        (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)
        runs = []
        for job in jobs:
            app = [o for o in parser.parse_overrides(job) if not o.is_hydra_override()]
            name = get_overrides_dirname(app, list(naming["exclude_keys"]), naming["item_sep"], naming["kv_sep"])
            runs.append(PlannedRun(name or "default", tuple(o.input_line for o in app)))
    except (HydraException, KeyError, TypeError) as e:
        raise PlanError(f"{path}: its overrides cannot be expanded ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}); move it away to collect the runs there") from None
    task_config = OmegaConf.create({k: v for k, v in plan.items() if k != "hydra"})
    ids = []
    for key in ("sweep_id", "name"):
        try:
            ids.append(str(OmegaConf.select(task_config, key)))
        except OmegaConfBaseException:  # an interpolation only Hydra resolves: the id stays unknown
            ids.append(None)
    return Plan(*ids, runs)


def compose(override_lists: list[list[str]], hydra_config: bool = False) -> list:
    """configs/train.yaml composed with each list of overrides, under one Hydra initialisation."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(_REPO / "configs"), version_base="1.3"):
        return [hydra_compose("train", overrides=o, return_hydra_config=hydra_config) for o in override_lists]


def planned_hparams(runs: list[PlannedRun]) -> list[dict | None]:
    """What collect.py's row of each run would say it is (run_info.hparams of its config, composed with today's
    configs); None for all when they no longer compose (a config renamed since): their rows then hold only
    their names."""
    from hydra.errors import HydraException

    from experiments import run_info

    try:
        return [run_info.hparams(cfg) for cfg in compose([list(run.overrides) for run in runs])]
    except (HydraException, OmegaConfBaseException, ValueError, KeyError):
        return [None] * len(runs)
