"""One training epoch and one evaluation pass, with metrics kept on the device until the end."""
from __future__ import annotations

import math
import sys
import time
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def model_norm(model: torch.nn.Module) -> torch.Tensor:
    """Euclidean norm of all parameters, as in the post's figure."""
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in model.parameters()])))


def train_epoch(model, loader, optimizer, scheduler, *, loss_multiplier: float, autocast: AbstractContextManager,
                progress: bool, desc: str = "") -> dict[str, float]:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    grad_norm_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen = steps = 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, file=sys.stderr):
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_multiplier if loss_multiplier != 1 else loss).backward()
        with torch.no_grad():
            # Gradient norm of the plain loss: the c*loss gradient divided by c.
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm_sum += torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) / loss_multiplier
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
        optimizer.step()
        scheduler.step()
        seen += y.shape[0]
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "train_loss": (loss_sum / max(seen, 1)).item(),
        "train_acc": (correct.double() / max(seen, 1)).item(),
        "grad_norm": (grad_norm_sum / max(steps, 1)).item(),
        "epoch_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
    }


@torch.no_grad()
def evaluate(model, loader, *, autocast: AbstractContextManager) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return {"test_loss": (loss_sum / max(seen, 1)).item(), "test_acc": (correct.double() / max(seen, 1)).item()}
