"""One training epoch and one evaluation pass of a ModelPack: epoch.py's metrics, one per member."""
from __future__ import annotations

import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from experiments.packed_models import ModelPack, member_cross_entropy


def _loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go up to float32 for the loss, as in epoch.py; float64 stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _vmap_step(pack: ModelPack, x, y, multipliers, mask, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast:
        logits = pack(x)
        losses = member_cross_entropy(_loss_precision(logits), y)
    # A stopped member's loss may be NaN: torch.where keeps it out of the sum (and out of every
    # other member's gradient, which never depends on it anyway: slices are independent).
    torch.where(mask, losses * multipliers, torch.zeros_like(losses)).sum().backward()
    return losses.detach(), (logits.detach().argmax(-1) == y).sum(-1)


def _loop_step(pack: ModelPack, x, y, loss_multipliers, active, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    losses, correct = [], []
    for member, c, on in zip(pack.members, loss_multipliers, active):
        if not on:  # a stopped member does no work; its metrics are not recorded
            losses.append(torch.full((), float("nan"), device=y.device, dtype=torch.float64))
            correct.append(torch.zeros((), device=y.device, dtype=torch.int64))
            continue
        with autocast:
            logits = member(x)
            loss = F.cross_entropy(_loss_precision(logits), y)
        (loss * c if c != 1 else loss).backward()
        losses.append(loss.detach().double())
        correct.append((logits.detach().argmax(1) == y).sum())
    return torch.stack(losses), torch.stack(correct)


def train_packed_epoch(pack: ModelPack, loader, optimizers: list, schedulers: list, *,
                       loss_multipliers: list[float], active: list[bool],
                       autocast: AbstractContextManager = nullcontext(), progress: bool = False,
                       desc: str = "") -> list[dict[str, float]]:
    """Trains every active member on each batch of `loader`; inactive members take no step.

    vmap route: one backward of sum_k c_k * CE_k gives each member the gradient of its own
    c_k * CE_k in its own slice. loop route: each active member's forward and backward in turn.
    Returns one dict per member, with train_epoch's keys (images_per_s = images of the shared
    batches per second, i.e. each member's own throughput; the pack's aggregate is K times it).
    """
    pack.train()
    size = pack.size
    first = next(iter(pack.params.values()))
    device = first.device
    multipliers = torch.tensor(loss_multipliers, device=device, dtype=torch.promote_types(first.dtype, torch.float32))
    mask = torch.tensor(active, device=device)
    stepping = [k for k in range(size) if active[k]]
    loss_sum = torch.zeros(size, device=device, dtype=torch.float64)
    correct = torch.zeros(size, device=device, dtype=torch.int64)
    grad_norm_sum = torch.zeros(size, device=device, dtype=torch.float64)
    seen = steps = 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, file=sys.stderr):
        pack.zero_grad()
        if pack.route == "vmap":
            losses, hits = _vmap_step(pack, x, y, multipliers, mask, autocast)
        else:
            losses, hits = _loop_step(pack, x, y, loss_multipliers, active, autocast)
        with torch.no_grad():
            # Gradient norm of the plain loss: the c*loss gradient divided by c.
            grad_norm_sum += pack.grad_norms() / multipliers
            loss_sum += losses * y.shape[0]
            correct += hits
        for k in stepping:
            optimizers[k].step()
            schedulers[k].step()
        seen += y.shape[0]
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    train_loss = (loss_sum / max(seen, 1)).tolist()
    train_acc = (correct.double() / max(seen, 1)).tolist()
    grad_norm = (grad_norm_sum / max(steps, 1)).tolist()
    images_per_s = seen / elapsed if elapsed > 0 else math.nan
    return [{"train_loss": train_loss[k], "train_acc": train_acc[k], "grad_norm": grad_norm[k],
             "epoch_time_s": elapsed, "images_per_s": images_per_s} for k in range(size)]


@torch.no_grad()
def evaluate_packed(pack: ModelPack, loader, *,
                    autocast: AbstractContextManager = nullcontext()) -> list[dict[str, float]]:
    pack.eval()
    size = pack.size
    device = next(iter(pack.params.values())).device
    loss_sum = torch.zeros(size, device=device, dtype=torch.float64)
    correct = torch.zeros(size, device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        if pack.route == "vmap":
            with autocast:
                logits = pack(x)
            loss_sum += member_cross_entropy(_loss_precision(logits), y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum(-1)
        else:  # epoch.evaluate's own ops, member by member
            for k, member in enumerate(pack.members):
                with autocast:
                    logits = member(x)
                loss_sum[k] += F.cross_entropy(_loss_precision(logits), y, reduction="sum")
                correct[k] += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    test_loss = (loss_sum / max(seen, 1)).tolist()
    test_acc = (correct.double() / max(seen, 1)).tolist()
    return [{"test_loss": test_loss[k], "test_acc": test_acc[k]} for k in range(size)]
