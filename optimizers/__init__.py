"""Adam with five weight-decay treatments (SPEC.md), momentum-SGD baselines, and helpers."""
from .adam_core import AdamCore
from .convert import convert_weight_decay, wd_paper_to_torch, wd_torch_to_paper
from .param_groups import param_groups
from .sgd import SGD, SGDW
from .variants import Adam, AdamL2, AdamP, AdamW, DecoupledAdamW, ProxAdam

# The config names (configs/optimizer/<name>.yaml), in the order figures show them.
OPTIMIZERS = {
    "adam": Adam,
    "adaml2": AdamL2,
    "adamw": AdamW,
    "decoupled_adamw": DecoupledAdamW,
    "proxadam": ProxAdam,
    "adamp": AdamP,
    "sgd": SGD,
    "sgdw": SGDW,
}

__all__ = [
    "OPTIMIZERS", "AdamCore", "Adam", "AdamL2", "AdamW", "DecoupledAdamW", "ProxAdam", "AdamP", "SGD", "SGDW",
    "param_groups", "wd_torch_to_paper", "wd_paper_to_torch", "convert_weight_decay",
]
