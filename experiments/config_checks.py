"""Checks a run's config before any training starts, with one-line errors that say what to do."""
from __future__ import annotations

import importlib
import inspect
import math

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.builders import optimizer_constructor_cfg
from models import blocks_per_stage
from optimizers import OPTIMIZERS

PRECISIONS = ("fp32", "tf32", "bf16")
# trainer.compile: false, or a torch.compile mode (true is taken as "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line and names the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_number(value) -> bool:
    # YAML's true/false are not numbers here, although Python's bool is an int.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(key: str, value, rule: str, ok, example: str) -> None:
    _require(_is_number(value), f"{key} must be a number {rule} (got {value!r}); e.g. {example}")
    _require(ok(value), f"{key} must be {rule} (got {value}); e.g. {example}")


def _integer(key: str, value, least: int, example: str) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= least,
             f"{key} must be an integer >= {least} (got {value!r}); e.g. {example}")


def _locate(path) -> object | None:
    """module.attribute, or None (hydra.utils.get_class would log its failure as an ERROR first)."""
    module, _, name = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _check_optimizer(opt: DictConfig) -> None:
    """optimizer._target_ is an optimizer class that takes every other key, and is the class its name says."""
    kwargs = optimizer_constructor_cfg(opt)
    target = kwargs.pop("_target_", None)
    cls = _locate(target)
    _require(isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer),
             f"optimizer._target_={target} is not an importable optimizer class; "
             f"use optimizer=<one of {', '.join(OPTIMIZERS)}> or a torch.optim.Optimizer subclass")
    known = OPTIMIZERS.get(opt.name)
    _require(known is None or known is cls,
             f"optimizer.name={opt.name} but optimizer._target_={target}; results would be labelled with the wrong "
             f"method: choose the optimizer by its config group (optimizer={opt.name}) or give it a new name")
    try:
        inspect.signature(cls).bind(None, **kwargs)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p != "params"]
        raise ConfigError(f"optimizer keys do not fit {cls.__name__}({', '.join(accepted)}): {exc}") from None
    with_decay = [name for name, c in OPTIMIZERS.items() if c.weight_decay_convention is not None]
    _require(getattr(cls, "weight_decay_convention", "unknown") is not None or opt.weight_decay == 0,
             f"optimizer={opt.name} has no weight decay; use one of {', '.join(with_decay)}, "
             "or set optimizer.weight_decay=0")


def check_config(cfg: DictConfig) -> None:
    opt, tr, data, sched = cfg.optimizer, cfg.trainer, cfg.data, cfg.schedule
    _number("optimizer.lr", opt.lr, "> 0", lambda v: v > 0, "optimizer.lr=1e-3")
    _number("optimizer.weight_decay", opt.weight_decay, ">= 0", lambda v: v >= 0, "optimizer.weight_decay=1e-4")
    _check_optimizer(opt)
    _integer("trainer.epochs", tr.epochs, 1, "trainer.epochs=50")
    _integer("trainer.batch_size", tr.batch_size, 1, "trainer.batch_size=128")
    _integer("trainer.magnitude_stats_every", tr.get("magnitude_stats_every", 0), 0,
             "trainer.magnitude_stats_every=100 (0 = off)")
    _require(tr.precision in PRECISIONS,
             f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {tr.precision})")
    compile_setting = tr.get("compile", False)
    _require(isinstance(compile_setting, bool) or compile_setting in COMPILE_MODES,
             f"trainer.compile must be false or one of {', '.join(COMPILE_MODES)} (got {compile_setting}); "
             "e.g. trainer.compile=reduce-overhead")
    flags = {f"trainer.{key}": tr.get(key, False) for key in ("channels_last", "keep_freed_memory", "checkpoint",
                                                              "cudnn_benchmark")}
    flags["model.batch_norm"] = cfg.model.batch_norm
    if "exclude_norm_and_bias" in opt:  # a string such as 'false' would count as true and change the update
        flags["optimizer.exclude_norm_and_bias"] = opt.exclude_norm_and_bias
    for key, value in flags.items():
        _require(isinstance(value, bool), f"{key} must be true or false (got {value!r})")
    progress = tr.get("progress", "auto")
    _require(isinstance(progress, bool) or progress == "auto",
             f"trainer.progress must be true, false or auto (got {progress!r}); auto shows a bar on a terminal")
    _check_device(tr.get("device", "auto"))
    # The seed trains through int(): 1.5 would train as seed 1 and be recorded as another run.
    _integer("seed", cfg.seed, 0, "seed=0")
    for key, least, example in (("subset_seed", 0, 0), ("train_size", 1, 2048), ("test_size", 1, 512)):
        if data.get(key) is not None:
            _integer(f"data.{key}", data[key], least, f"data.{key}={example}")
    try:
        blocks_per_stage(cfg.model.depth)
    except ValueError:
        raise ConfigError(f"model.depth must be 6n+2 with n >= 1, e.g. 20, 32, 44, 56, 110 (got {cfg.model.depth})") \
            from None
    _number("loss_multiplier", cfg.loss_multiplier, "> 0 and finite", lambda v: 0 < v < math.inf,
            "loss_multiplier=1.0 (the plain loss)")
    _check_schedule(sched, tr.epochs)
    for key in ("subset", "test_subset"):
        value = data.get(key)
        _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                 f"data.{key} must be null or an integer >= 1 (got {value!r})")
    if data.name != "synthetic":
        _require(data.root is not None and str(data.root) != "",
                 f"data.root is not set; pass data.root=/path/to/{data.name} or set DNM_DATA_ROOT")
        # A root that does not exist yet is left to the data loader: it downloads there when the network
        # allows, and otherwise fails with the one line that names the layouts and where to get the files.


def _check_schedule(sched: DictConfig, epochs: int) -> None:
    warmup = sched.get("warmup_epochs", 0)
    _number("schedule.warmup_epochs", warmup, ">= 0", lambda v: v >= 0, "schedule.warmup_epochs=1")
    _require(warmup < epochs or warmup == 0,
             f"schedule.warmup_epochs={warmup} is not shorter than trainer.epochs={epochs}, so the schedule would "
             "never leave its warmup; use fewer warmup epochs or more epochs")
    if sched.name == "cosine":
        _number("schedule.min_factor", sched.min_factor, "in [0, 1]", lambda v: 0 <= v <= 1, "schedule.min_factor=0")
    if sched.name == "multistep":
        _number("schedule.gamma", sched.gamma, "> 0", lambda v: v > 0, "schedule.gamma=0.1")
        _require(OmegaConf.is_list(sched.milestones),
                 f"schedule.milestones must be a list of fractions of the run (got {sched.milestones!r}); "
                 "e.g. schedule.milestones=[0.5,0.75]")
        for m in sched.milestones:
            _number("schedule.milestones", m, "in (0, 1) (fractions of the run)", lambda v: 0 < v < 1,
                    "schedule.milestones=[0.5,0.75]")


def _check_device(name) -> None:
    """trainer.device names a device torch knows (whether one is there is builders.pick_device's check)."""
    if name == "auto":
        return
    try:
        device = torch.device(name) if isinstance(name, str) and name else None
    except RuntimeError:
        device = None
    _require(device is not None and device.type in ("cpu", "cuda"),
             f"trainer.device must be auto, cpu, cuda or cuda:N (got {name!r})")


def check_data_fits(cfg: DictConfig, train_images: int) -> None:
    """After the data is loaded: every epoch needs one full batch (the loader drops a partial last one)."""
    batch = cfg.trainer.batch_size
    _require(batch <= train_images,
             f"trainer.batch_size={batch} is larger than the {train_images} training images, so an epoch would have "
             f"no batch; use trainer.batch_size <= {train_images}, or more images (data.subset)")


def compile_mode(trainer_cfg: DictConfig) -> str | None:
    """The torch.compile mode trainer.compile asks for, None for eager (false)."""
    setting = trainer_cfg.get("compile", False)
    if setting is False:
        return None
    return "default" if setting is True else str(setting)
