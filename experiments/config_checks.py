"""Checks a run's config before any training starts, with one-line errors that say what to do."""
from __future__ import annotations

from omegaconf import DictConfig

VALID_DEPTHS = (20, 32, 44, 56, 110)
PRECISIONS = ("fp32", "tf32", "bf16")
# trainer.compile: false, or a torch.compile mode (true is taken as "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line and names the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_config(cfg: DictConfig) -> None:
    opt, tr, data = cfg.optimizer, cfg.trainer, cfg.data
    _require(isinstance(opt.lr, (int, float)) and opt.lr > 0,
             f"optimizer.lr must be > 0 (got {opt.lr}); e.g. optimizer.lr=1e-3")
    _require(isinstance(opt.weight_decay, (int, float)) and opt.weight_decay >= 0,
             f"optimizer.weight_decay must be >= 0 (got {opt.weight_decay}); e.g. optimizer.weight_decay=1e-4")
    _require(opt.name != "adam" or opt.weight_decay == 0,
             "optimizer=adam has no weight decay; use adaml2, adamw, decoupled_adamw, proxadam or adamp, "
             "or set optimizer.weight_decay=0")
    _require(isinstance(tr.epochs, int) and tr.epochs >= 1,
             f"trainer.epochs must be an integer >= 1 (got {tr.epochs})")
    _require(isinstance(tr.batch_size, int) and tr.batch_size >= 1,
             f"trainer.batch_size must be an integer >= 1 (got {tr.batch_size})")
    _require(tr.precision in PRECISIONS,
             f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {tr.precision})")
    compile_setting = tr.get("compile", False)
    _require(isinstance(compile_setting, bool) or compile_setting in COMPILE_MODES,
             f"trainer.compile must be false or one of {', '.join(COMPILE_MODES)} (got {compile_setting}); "
             "e.g. trainer.compile=reduce-overhead")
    flags = {f"trainer.{key}": tr.get(key, False) for key in ("channels_last", "keep_freed_memory", "checkpoint",
                                                              "cudnn_benchmark")}
    flags["model.batch_norm"] = cfg.model.batch_norm
    for key, value in flags.items():
        _require(isinstance(value, bool), f"{key} must be true or false (got {value})")
    _require(cfg.model.depth in VALID_DEPTHS,
             f"model.depth must be one of {', '.join(map(str, VALID_DEPTHS))} (got {cfg.model.depth})")
    _require(isinstance(cfg.loss_multiplier, (int, float)) and cfg.loss_multiplier > 0,
             f"loss_multiplier must be > 0 (got {cfg.loss_multiplier}); 1.0 trains on the plain loss")
    for key in ("subset", "test_subset"):
        value = data.get(key)
        _require(value is None or (isinstance(value, int) and value >= 1),
                 f"data.{key} must be null or an integer >= 1 (got {value})")
    if data.name != "synthetic":
        _require(data.root is not None and str(data.root) != "",
                 f"data.root is not set; pass data.root=/path/to/{data.name} or set DNM_DATA_ROOT")
        # A root that does not exist yet is left to the data loader: it downloads there when the network
        # allows, and otherwise fails with the one line that names the layouts and where to get the files.


def compile_mode(trainer_cfg: DictConfig) -> str | None:
    """The torch.compile mode trainer.compile asks for, None for eager (false)."""
    setting = trainer_cfg.get("compile", False)
    if setting is False:
        return None
    return "default" if setting is True else str(setting)
