"""The one engine keeps a single run exactly what it was: the metrics.csv of the single-run loop that came before it.

`reference_run` is that loop (experiments/trainer.py and experiments/epoch.py at commit 1c49528, before single
runs became packs of one), op for op, on the same building blocks: the model with its own parameters, the
optimizer class from optimizers/ with torch's LambdaLR, the same loaders. The engine's run must write the
very same numbers (timings aside) for the same config and seed, on whatever CPU the test runs.
"""
from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from cli import REPO
from hydra import compose, initialize_config_dir

from experiments.builders import build_model, build_optimizer, load_data
from experiments.engine import make_loaders
from experiments.schedules import build_scheduler
from experiments.trainer import train_run

TINY = ["data=synthetic", "data.train_size=192", "data.test_size=100", "trainer.batch_size=32", "trainer.epochs=3",
        "logger=none", "trainer.device=cpu"]
TIMINGS = ("epoch_time_s", "images_per_s")


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def reference_run(cfg) -> list[dict[str, float]]:
    """The single run before the engine, with its metrics as metrics.csv held them."""
    device = torch.device("cpu")
    dataset = load_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(dataset.classes), device)
    optimizer = build_optimizer(cfg.optimizer, model)
    train_loader, test_loader = make_loaders(cfg, dataset, device)
    scheduler = build_scheduler(optimizer, cfg.schedule, len(train_loader), cfg.trainer.epochs)
    c = float(cfg.loss_multiplier)
    history = []
    for epoch in range(1, cfg.trainer.epochs + 1):
        train_loader.set_epoch(epoch)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        grad_norm_sum = torch.zeros((), dtype=torch.float64)
        seen = steps = 0
        for x, y in train_loader:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            (loss * c if c != 1 else loss).backward()
            with torch.no_grad():
                grads = [p.grad for p in params if p.grad is not None]
                grad_norm_sum += torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) / c
                loss_sum += loss.detach() * y.shape[0]
                correct += (logits.argmax(1) == y).sum()
            optimizer.step()
            scheduler.step()
            seen += y.shape[0]
            steps += 1
        row = {"epoch": epoch, "train_loss": (loss_sum / seen).item(), "train_acc": (correct.double() / seen).item(),
               "grad_norm": (grad_norm_sum / steps).item()}
        model.eval()
        with torch.no_grad():
            test_loss = torch.zeros((), dtype=torch.float64)
            test_correct = torch.zeros((), dtype=torch.int64)
            test_seen = 0
            for x, y in test_loader:
                logits = model(x)
                test_loss += F.cross_entropy(logits.float(), y, reduction="sum")
                test_correct += (logits.argmax(1) == y).sum()
                test_seen += y.shape[0]
            row["test_loss"] = (test_loss / test_seen).item()
            row["test_acc"] = (test_correct.double() / test_seen).item()
            row["model_norm"] = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm([p.detach() for p in model.parameters()]))).item()
        row["lr"] = optimizer.param_groups[0]["lr"]
        history.append(row)
    return history


def written_metrics(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.mark.parametrize("overrides", [
    ["optimizer=adamw", "optimizer.lr=3e-3", "model.batch_norm=false"],
    ["optimizer=adamp", "optimizer.lr=2e-3", "optimizer.weight_decay=1e-2", "schedule=cosine",
     "schedule.warmup_epochs=1", "loss_multiplier=100"],
    ["optimizer=adaml2", "optimizer.exclude_norm_and_bias=true", "schedule=multistep", "loss_multiplier=0.01"],
    ["optimizer=proxadam", "schedule=cosine", "model.batch_norm=false"],
    ["optimizer=sgdw", "optimizer.lr=0.05", "schedule=multistep"],
], ids=["adamw", "adamp_cosine_warmup_c100", "adaml2_exclude_multistep", "proxadam_cosine", "sgdw_multistep"])
def test_a_single_run_writes_exactly_the_metrics_of_the_loop_before_the_engine(tmp_path, overrides):
    cfg = config(*overrides)
    train_run(cfg, tmp_path / "run", "run")
    assert written_metrics(tmp_path / "run") == reference_run(cfg)
