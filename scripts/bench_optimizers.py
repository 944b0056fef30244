"""Mean optimizer step time on ResNet20-shaped parameters, side by side with torch.optim.AdamW(foreach=True).

Every optimizer gets its own copy of the same parameters and fixed gradients. Measurements are
interleaved (each repeat times every optimizer once, in a rotated order) and the median over
repeats is reported, so machine-load drift hits all optimizers alike.
`--packs 12,24` adds, for each K, `fused_adamw_x{K}`: the fused update of a pack of K AdamW members
(experiments/pack_optimizer.py) timed per step, and `fused_adamw_x{K}_per_member`: that over K,
against one torch.optim.AdamW step (K separate foreach optimizers would take K of those).

    python scripts/bench_optimizers.py --device cpu --steps 50 --repeats 15 --json results/bench_optimizers.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere
import models  # noqa: E402
import optimizers  # noqa: E402
from experiments import run_files, run_info  # noqa: E402
from experiments.builders import pick_device  # noqa: E402
from experiments.run_info import git_commit  # noqa: E402

BASELINE = "torch_adamw"


def resnet20_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of the CIFAR ResNet20 with BatchNorm (59 tensors, 269,722 values)."""
    return [tuple(p.shape) for p in models.resnet20(batch_norm=True, num_classes=num_classes).parameters()]


def optimizer_factories() -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    lr, wd_torch, wd_paper = 1e-3, 1e-2, 1e-5  # wd_paper = lr * wd_torch
    return {
        BASELINE: lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd_torch, foreach=True),
        "torch_adam_l2": lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd_torch, foreach=True),
        "torch_sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True),
        "adam": lambda ps: optimizers.Adam(ps, lr=lr),
        "adaml2": lambda ps: optimizers.AdamL2(ps, lr=lr, weight_decay=wd_torch),
        "adamw": lambda ps: optimizers.AdamW(ps, lr=lr, weight_decay=wd_torch),
        "decoupled_adamw": lambda ps: optimizers.DecoupledAdamW(ps, lr=lr, weight_decay=wd_paper),
        "proxadam": lambda ps: optimizers.ProxAdam(ps, lr=lr, weight_decay=wd_paper),
        "adamp": lambda ps: optimizers.AdamP(ps, lr=lr, weight_decay=wd_torch),
        "sgd": lambda ps: optimizers.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
        "sgdw": lambda ps: optimizers.SGDW(ps, lr=0.1, momentum=0.9, weight_decay=5e-5),
    }


def make_params(shapes, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Mean seconds per step over `steps` consecutive steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def fused_pack(members: int, device: torch.device):
    """The fused optimizer of a pack of `members` ResNet20s (AdamW, lr and wd differing), with fixed gradients."""
    from experiments.pack_optimizer import PackOptimizer
    from experiments.packed_models import ModelPack
    from experiments.schedules import ScheduleSpec

    nets = []
    for k in range(members):
        torch.manual_seed(k)
        nets.append(models.resnet20(batch_norm=True).to(device))
    pack = ModelPack(nets)
    pack.flat_grads.copy_(torch.randn_like(pack.flat_grads))
    opts = [optimizers.AdamW(net.parameters(), lr=1e-3 * (1 + k % 3), weight_decay=1e-2) for k, net in enumerate(nets)]
    return PackOptimizer(pack, opts, ScheduleSpec("constant"), 10**9, 1)


def run(device: torch.device, steps: int, repeats: int, warmup: int, packs: tuple[int, ...] = ()
        ) -> dict[str, dict[str, float]]:
    shapes = resnet20_shapes()
    opts = {name: make(make_params(shapes, device)) for name, make in optimizer_factories().items()}
    opts.update({f"fused_adamw_x{k}": fused_pack(k, device) for k in packs})
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    names = list(opts)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_steps(opts[name], steps, device))
    base = statistics.median(samples[BASELINE])
    results = {
        name: {"ms_per_step": 1e3 * statistics.median(s), "ratio_to_torch_adamw": statistics.median(s) / base}
        for name, s in samples.items()
    }
    for k in packs:
        per_member = statistics.median(samples[f"fused_adamw_x{k}"]) / k
        results[f"fused_adamw_x{k}_per_member"] = {"ms_per_step": 1e3 * per_member,
                                                   "ratio_to_torch_adamw": per_member / base}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per optimizer first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--packs", default="", help="also time the fused update of packs of these sizes, e.g. 12,24")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    args = parser.parse_args(argv)
    try:
        packs = tuple(int(k) for k in args.packs.split(",") if k.strip())
    except ValueError:
        parser.error(f"--packs must be comma-separated integers, e.g. 12,24 (got {args.packs!r})")
    if any(k < 1 for k in packs):
        parser.error(f"--packs must be >= 1 (got {args.packs})")
    for name, least in (("steps", 1), ("repeats", 1), ("warmup", 0), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} must be >= {least} (got {value})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    shapes = resnet20_shapes()
    results = run(device, args.steps, args.repeats, args.warmup, packs)
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"tensors={len(shapes)} values={numel:,} steps={args.steps} repeats={args.repeats}")
    print(f"{'optimizer':<18}{'ms/step':>10}{'x torch AdamW':>15}")
    for name, r in results.items():
        print(f"{name:<18}{r['ms_per_step']:>10.3f}{r['ratio_to_torch_adamw']:>15.3f}")
    payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
               "device": str(device), "hardware": run_info.hardware(str(device)), "torch": torch.__version__,
               "threads": torch.get_num_threads(),
               "tensors": len(shapes), "values": numel, "steps": args.steps, "repeats": args.repeats, "packs": list(packs),
               "results": results}
    if args.json is not None:
        run_files.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
