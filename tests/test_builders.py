"""Building a run's optimizer from configs/optimizer/*.yaml with Hydra's instantiate."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli import REPO, run_cli
from omegaconf import OmegaConf

import models
import optimizers
from experiments.builders import build_optimizer

OPTIMIZER_CONFIGS = sorted((REPO / "configs" / "optimizer").glob("*.yaml"))
TINY = ["data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64", "logger=none",
        "trainer.epochs=1"]


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("path", OPTIMIZER_CONFIGS, ids=lambda p: Path(p).stem)
def test_each_config_builds_its_class_with_its_hyperparameters(path, exclude):
    cfg = OmegaConf.load(path)
    cfg.exclude_norm_and_bias = exclude
    model = models.build_model(8, True, 10)
    opt = build_optimizer(cfg, model)
    assert type(opt) is optimizers.OPTIMIZERS[cfg.name] and cfg.name == path.stem
    for key in ("lr", "eps", "momentum"):
        if key in cfg:
            assert all(group[key] == cfg[key] for group in opt.param_groups), key
    if "betas" in cfg:
        assert all(group["betas"] == tuple(cfg.betas) for group in opt.param_groups)
    decays = [group["weight_decay"] for group in opt.param_groups]
    if exclude:
        assert decays == [cfg.weight_decay, 0.0]
        no_decay = {id(p) for p in opt.param_groups[1]["params"]}
        assert no_decay == {id(p) for p in model.parameters() if p.ndim == 1}
    else:
        assert decays == [cfg.weight_decay]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_a_target_outside_the_repo_gets_its_own_keyword_arguments():
    cfg = OmegaConf.create({"_target_": "torch.optim.AdamW", "name": "torch_adamw", "lr": 3e-3,
                            "weight_decay": 0.1, "amsgrad": True, "exclude_norm_and_bias": False})
    opt = build_optimizer(cfg, torch.nn.Linear(3, 2))
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["amsgrad"] is True and opt.defaults["lr"] == 3e-3
    assert opt.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("overrides, line", [
    (["optimizer._target_=optimizers.Nope"],
     "error: ConfigError: optimizer._target_=optimizers.Nope is not an importable optimizer class; use "
     "optimizer=<one of adam, adaml2, adamw, decoupled_adamw, proxadam, adamp, sgd, sgdw> or a torch.optim.Optimizer "
     "subclass"),
    (["optimizer=adamw", "+optimizer.momentum=0.9"],
     "error: ConfigError: optimizer keys do not fit AdamW(lr, betas, eps, weight_decay, foreach): got an unexpected "
     "keyword argument 'momentum'"),
    (["optimizer=adamw", "optimizer._target_=optimizers.AdamP"],
     "error: ConfigError: optimizer.name=adamw but optimizer._target_=optimizers.AdamP; results would be labelled "
     "with the wrong method: choose the optimizer by its config group (optimizer=adamw) or give it a new name"),
    (["optimizer=adam", "optimizer.weight_decay=0.1"],
     "error: ConfigError: optimizer=adam has no weight decay; use one of adaml2, adamw, decoupled_adamw, proxadam, "
     "adamp, sgd, sgdw, or set optimizer.weight_decay=0"),
], ids=["unimportable_target", "key_the_class_does_not_take", "name_and_target_disagree", "adam_with_decay"])
def test_optimizer_configs_that_cannot_be_built_fail_before_training(tmp_path, overrides, line):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == line
    assert not (run_dir / "metrics.csv").exists()
