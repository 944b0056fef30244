"""Training throughput, side by side on one device: reference pipeline, single-run trainer, packed grids.

    python scripts/benchmark.py [--device auto|cpu|cuda] [--data synthetic|cifar10 --data-root PATH]
                                [--steps N] [--ks 1,4,12] [--batch-size 128] [--json results/bench.json]

Pipelines, all ResNet20 (BatchNorm off, as in the post's experiment; --batch-norm for on), fp32:
- reference: torchvision DataLoader over PIL images (RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize), the model in NCHW, torch.optim.AdamW(foreach=False).
- single: the trainer's own path: data.DeviceLoader, optimizers.AdamW (foreach) and
  experiments.epoch.train_epoch.
- packed K: K grid points (AdamW, different lr and weight decay) in one ModelPack on the same
  batches, experiments.packed_epoch.train_packed_epoch; aggregate images/s = K x batch images/s.
  --route auto runs a pack as launcher=packed does: vmap on CUDA, loop (members in turn) on CPU.
- K sequential single runs: K runs one after another process images at the single-run rate, so
  their aggregate is the measured single-run images/s; packing speed-up = packed aggregate / that.
Each pipeline first runs --warmup untimed steps. Then, --rounds times, every pipeline in turn
(interleaved, so that load changes hit all alike) is timed over repeats of --steps steps lasting
at least --min-time seconds; the table reports the median and the range over rounds.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data as datasets  # noqa: E402
import models  # noqa: E402
import optimizers  # noqa: E402
from experiments.builders import pick_device, setup_precision  # noqa: E402
from experiments.epoch import train_epoch  # noqa: E402
from experiments.packed_epoch import train_packed_epoch  # noqa: E402
from experiments.packed_models import ROUTES, ModelPack, default_route  # noqa: E402
from experiments.run_files import write_json  # noqa: E402


def _trainer_channels_last() -> bool:
    from omegaconf import OmegaConf

    return bool(OmegaConf.load(REPO / "configs" / "trainer" / "default.yaml").get("channels_last", False))


class BenchmarkError(ValueError):
    """A benchmark option that cannot work; the message says what to pass instead."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    p.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic")
    p.add_argument("--data-root", default=os.environ.get("DNM_DATA_ROOT"),
                   help="CIFAR-10 folder for --data cifar10 (default $DNM_DATA_ROOT)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: cpu 1, cuda 50)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before a pipeline's first measurement (default: cpu 1, cuda 10)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved repeats of every measurement; medians reported (default: 3)")
    p.add_argument("--min-time", type=float, default=None,
                   help="a measurement repeats --steps until this many seconds have passed (default: cpu 3, cuda 2)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=_trainer_channels_last(),
                   help="single and packed in channels_last (default: trainer.channels_last of "
                        "configs/trainer/default.yaml); the reference stays NCHW")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ks", default="1,4,12", help="pack sizes to measure, comma-separated")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-norm", action="store_true", help="ResNet with BatchNorm (default: off, as the post)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--route", choices=("auto",) + ROUTES, default="auto",
                   help="how a pack runs its members (auto: vmap on CUDA, loop elsewhere)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = p.parse_args(argv)
    try:
        args.ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        raise BenchmarkError(f"--ks must be comma-separated integers, e.g. 1,4,12 (got {args.ks!r})") from None
    if not args.ks or min(args.ks) < 1:
        raise BenchmarkError(f"--ks needs pack sizes >= 1, e.g. 1,4,12 (got {args.ks})")
    if args.min_time is not None and args.min_time < 0:
        raise BenchmarkError(f"--min-time must be >= 0 seconds (got {args.min_time})")
    for name in ("steps", "warmup", "rounds", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise BenchmarkError(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1} (got {value})")
    if args.data == "cifar10" and not (args.data_root and os.path.isdir(args.data_root)):
        raise BenchmarkError(f"--data cifar10 needs --data-root pointing at CIFAR-10 (got {args.data_root}); "
                             "or use --data synthetic")
    return args


class Stream:
    """Batches of a loader, epoch after epoch; take(n) iterates the next n of them."""

    def __init__(self, loader) -> None:
        self._it = itertools.chain.from_iterable(itertools.repeat(loader))

    def take(self, n: int):
        return itertools.islice(self._it, n)


class PILImages(torch.utils.data.Dataset):
    """torchvision's CIFAR10 access pattern: HWC uint8 arrays, one PIL image per __getitem__."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.array = images_u8.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.array[i])), self.labels[i]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def constant_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def build_net(args, device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model(args.depth, args.batch_norm, 10).to(device)


def reference_pipeline(args, ds, device, autocast):
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(ds.mean, ds.std)])
    loader = torch.utils.data.DataLoader(
        PILImages(ds.train_x, ds.train_y, tf), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    stream = Stream(loader)
    model = build_net(args, device, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, foreach=False)

    def steps(n: int) -> tuple[float, float]:
        model.train()
        synchronize(device)
        start = time.perf_counter()
        seen = 0
        for x, y in stream.take(n):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += y.shape[0]
        synchronize(device)
        return seen, time.perf_counter() - start

    return steps


def device_loader(args, ds, device) -> Stream:
    return Stream(datasets.DeviceLoader(ds.train_x, ds.train_y, batch_size=args.batch_size, train=True,
                                        mean=ds.mean, std=ds.std, device=device, seed=0,
                                        channels_last=args.channels_last))


def trainer_net(args, device, seed: int) -> torch.nn.Module:
    """A model as experiments.builders.build_model places it (memory format included)."""
    net = build_net(args, device, seed)
    return net.to(memory_format=torch.channels_last) if args.channels_last else net


def images_and_seconds(row: dict, models_trained: int = 1) -> tuple[float, float]:
    return row["images_per_s"] * row["epoch_time_s"] * models_trained, row["epoch_time_s"]


def single_pipeline(args, ds, device, autocast):
    stream = device_loader(args, ds, device)
    model = trainer_net(args, device, 0)
    opt = optimizers.AdamW(optimizers.param_groups(model, 1e-4), lr=1e-3, weight_decay=1e-4)
    sched = constant_scheduler(opt)

    def steps(n: int) -> tuple[float, float]:
        row = train_epoch(model, stream.take(n), opt, sched, loss_multiplier=1.0, autocast=autocast, progress=False)
        return images_and_seconds(row)

    return steps


def packed_pipeline(args, ds, device, autocast, k: int):
    stream = device_loader(args, ds, device)
    nets = [trainer_net(args, device, seed) for seed in range(k)]
    pack = ModelPack(nets, route=args.route)
    # Small learning rates: a diverging member would time NaN arithmetic instead of training.
    grid = list(itertools.product((1e-4, 3e-4, 1e-3), (1e-5, 1e-4, 1e-3, 1e-2)))
    opts = [optimizers.AdamW(optimizers.param_groups(net, wd), lr=lr, weight_decay=wd)
            for net, (lr, wd) in zip(nets, itertools.cycle(grid))]
    scheds = [constant_scheduler(o) for o in opts]

    def steps(n: int) -> tuple[float, float]:
        rows = train_packed_epoch(pack, stream.take(n), opts, scheds, loss_multipliers=[1.0] * k, active=[True] * k,
                                  autocast=autocast)
        return images_and_seconds(rows[0], k)  # aggregate: every member trained on every image

    return steps


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def run(args) -> dict:
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.route == "auto":
        args.route = default_route(device)
    steps = args.steps or (50 if on_gpu else 1)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    rounds = args.rounds or 3
    min_time = args.min_time if args.min_time is not None else (2.0 if on_gpu else 3.0)
    autocast = setup_precision(args.precision, device)
    need = args.batch_size * (warmup + steps)
    if args.data == "synthetic":
        ds = datasets.load_dataset("synthetic", None, synthetic_size=(max(need, 2048), 16))
    else:
        ds = datasets.load_dataset("cifar10", args.data_root)

    pipelines = {"reference": reference_pipeline(args, ds, device, autocast),
                 "single": single_pipeline(args, ds, device, autocast)}
    for k in args.ks:
        pipelines[f"packed_{k}"] = packed_pipeline(args, ds, device, autocast, k)
    samples: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(rounds):
        for name, measure in pipelines.items():
            if warmup and r == 0:  # each pipeline keeps its model, loader and caches between rounds
                measure(warmup)
            images = seconds = 0.0
            while seconds == 0 or seconds < min_time:
                more_images, more_seconds = measure(steps)
                images, seconds = images + more_images, seconds + more_seconds
            samples[name].append(images / seconds)
            print(f"round {r + 1}/{rounds} {name}: {samples[name][-1]:.1f} images/s", file=sys.stderr, flush=True)

    median = {name: statistics.median(values) for name, values in samples.items()}
    single = median["single"]
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "hardware": hardware(device), "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {"data": args.data, "batch_size": args.batch_size, "depth": args.depth,
                     "batch_norm": args.batch_norm, "precision": args.precision, "steps": steps, "warmup": warmup,
                     "rounds": rounds, "min_time_s": min_time, "ks": args.ks, "reference_workers": args.workers,
                     "channels_last": args.channels_last, "route": args.route, "threads": torch.get_num_threads()},
        "images_per_s": {name: {"median": median[name], "samples": samples[name]} for name in samples},
        "single_vs_reference": single / median["reference"],
        "sequential_images_per_s": {str(k): single for k in args.ks},
        "packing_speedup": {str(k): median[f"packed_{k}"] / single for k in args.ks},
    }
    return results


def table(results: dict) -> str:
    ref = results["images_per_s"]["reference"]["median"]
    single = results["images_per_s"]["single"]["median"]
    def spread(name: str) -> str:
        values = results["images_per_s"][name]["samples"]
        return f"{min(values):.0f}-{max(values):.0f}"

    rows = [("reference (DataLoader+PIL, AdamW foreach=False)", 1, ref, spread("reference"), None),
            ("single run (DeviceLoader, AdamW foreach)", 1, single, spread("single"), None)]
    for k in results["settings"]["ks"]:
        rows.append((f"{k} sequential single runs", k, single, spread("single"), 1.0))
        rows.append((f"packed K={k}", k, results["images_per_s"][f"packed_{k}"]["median"], spread(f"packed_{k}"),
                     results["packing_speedup"][str(k)]))
    s = results["settings"]
    lines = [f"device: {results['device']} ({results['hardware']}), torch {results['torch']}",
             f"ResNet{s['depth']} batch_norm={s['batch_norm']} batch {s['batch_size']} {s['precision']}, data "
             f"{s['data']}, channels_last={s['channels_last']} (ours), pack route {s['route']}; {s['warmup']} "
             "warmup steps, then per round "
             f">= {s['min_time_s']:g} s of {s['steps']}-step measurements; median of {s['rounds']} rounds",
             "",
             f"{'pipeline':<50} {'models':>6} {'aggregate img/s':>16} {'(range)':>11} {'per model':>10} "
             f"{'vs ref':>7} {'vs seq':>7}"]
    for name, k, agg, rng, vs_seq in rows:
        lines.append(f"{name:<50} {k:>6} {agg:>16.1f} {rng:>11} {agg / k:>10.1f} {agg / ref:>6.2f}x "
                     f"{'' if vs_seq is None else f'{vs_seq:.2f}x':>7}")
    lines += ["", f"single run vs reference: {results['single_vs_reference']:.2f}x"]
    lines += [f"packing speed-up K={k} vs {k} sequential runs: {v:.2f}x" for k, v in results["packing_speedup"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        results = run(args)
    except (BenchmarkError, ValueError, FileNotFoundError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(results))
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
