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
  --route auto runs a pack as launcher=packed does: vmap on CUDA for K >= 4, loop (members in turn)
  otherwise.
- K sequential single runs: K runs one after another process images at the single-run rate, so
  their aggregate is the measured single-run images/s; packing speed-up = packed aggregate / that.
Each pipeline first runs --warmup untimed steps. Then, --rounds times, every pipeline in turn
(interleaved, so that load changes hit all alike) is timed over repeats of --steps steps lasting
at least --min-time seconds; the table reports the median and the range over rounds.

On CPU the trainer also sets glibc's malloc to keep freed memory (trainer.keep_freed_memory). That
setting is process-wide and cannot be undone, so a CPU benchmark runs in two phases: first reference
and single run with the C library's default malloc (as a plain script runs), then every pipeline
after the trainer's setting. The table gives the ratio within a phase (the pipelines alone) and
single run (phase 2) over reference (phase 1): the trainer as run against the plain script.

Roofline: the FLOPs of one training step (torch.utils.flop_counter) and the device's measured
2048x2048 matmul rate bound any pipeline's images/s; the table shows that bound and how much of it
each pipeline reaches.
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
from experiments.cpu_memory import keep_freed_memory  # noqa: E402
from experiments.epoch import train_epoch  # noqa: E402
from experiments.packed_epoch import train_packed_epoch  # noqa: E402
from experiments.packed_models import ROUTES, ModelPack, default_route  # noqa: E402
from experiments.run_files import write_json  # noqa: E402
from experiments.run_info import git_commit  # noqa: E402


def _trainer_default(key: str) -> bool:
    from omegaconf import OmegaConf

    return bool(OmegaConf.load(REPO / "configs" / "trainer" / "default.yaml").get(key, False))


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
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=_trainer_default("channels_last"),
                   help="single and packed in channels_last (default: trainer.channels_last of "
                        "configs/trainer/default.yaml); the reference stays NCHW")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction,
                   default=_trainer_default("keep_freed_memory"),
                   help="on CPU, measure a second phase with the trainer's malloc setting (default: "
                        "trainer.keep_freed_memory of configs/trainer/default.yaml)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the single run's model, as trainer.compile=true (compiles in the warmup)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ks", default="1,4,12", help="pack sizes to measure, comma-separated")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-norm", action="store_true", help="ResNet with BatchNorm (default: off, as the post)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--route", choices=("auto",) + ROUTES, default="auto",
                   help="how a pack runs its members (auto: vmap on CUDA for K >= 4, loop otherwise)")
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

    forward = torch.compile(model) if args.compile else model  # as trainer.compile=true does

    def steps(n: int) -> tuple[float, float]:
        row = train_epoch(forward, stream.take(n), opt, sched, loss_multiplier=1.0, autocast=autocast,
                          progress=False)
        return images_and_seconds(row)

    return steps


def pack_route(args, device, k: int) -> str:
    return default_route(device, k) if args.route == "auto" else args.route


def packed_pipeline(args, ds, device, autocast, k: int):
    stream = device_loader(args, ds, device)
    nets = [trainer_net(args, device, seed) for seed in range(k)]
    pack = ModelPack(nets, route=pack_route(args, device, k))
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


def step_flops(args, device, autocast) -> float:
    """FLOPs of one training step (forward and backward) of the benchmarked model at --batch-size."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(args, device, 0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.zeros(args.batch_size, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
    return float(counter.get_total_flops())


def matmul_flops_per_s(device, autocast, n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` timings of n x n matmuls in the benchmark's precision: what this device sustains."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    calls = 4 if device.type == "cpu" else 50
    best = 0.0
    with autocast:
        a @ b
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                a @ b
            synchronize(device)
            best = max(best, 2 * n**3 * calls / (time.perf_counter() - start))
    return best


def minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_rounds(pipelines: dict, *, rounds: int, warmup: int, steps: int, min_time: float, phase: str,
                   warmed: set) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Interleaved rounds; returns images/s per round and page faults per step (medians) of each pipeline."""
    samples: dict[str, list[float]] = {name: [] for name in pipelines}
    faults: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(rounds):
        for name, measure in pipelines.items():
            if warmup and name not in warmed:  # each pipeline keeps its model, loader and caches between rounds
                measure(warmup)
                warmed.add(name)
            images = seconds = 0.0
            calls, faults_before = 0, minor_faults()
            while seconds == 0 or seconds < min_time:
                more_images, more_seconds = measure(steps)
                images, seconds, calls = images + more_images, seconds + more_seconds, calls + 1
            samples[name].append(images / seconds)
            if faults_before is not None:
                faults[name].append((minor_faults() - faults_before) / (calls * steps))
            print(f"{phase}round {r + 1}/{rounds} {name}: {samples[name][-1]:.1f} images/s", file=sys.stderr,
                  flush=True)
    return samples, {name: statistics.median(v) if v else None for name, v in faults.items()}


def summarize_samples(samples: dict[str, list[float]], faults: dict[str, float | None]) -> dict:
    return {name: {"median": statistics.median(values), "samples": values, "faults_per_step": faults[name]}
            for name, values in samples.items()}


def run(args) -> dict:
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
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
    timing = dict(rounds=rounds, warmup=warmup, steps=steps, min_time=min_time, warmed=set())
    # Phase 1 only where the trainer would change the process's malloc: CPU runs with the setting on.
    two_phase = device.type == "cpu" and args.keep_freed_memory
    default_malloc = None
    if two_phase:
        plain = {name: pipelines[name] for name in ("reference", "single")}
        default_malloc = summarize_samples(*measure_rounds(plain, phase="default malloc: ", **timing))
        if not keep_freed_memory():
            print("this C library is not glibc: phase 2 runs with the same malloc as phase 1", file=sys.stderr)
    measured = summarize_samples(*measure_rounds(pipelines, phase="trainer malloc: " if two_phase else "", **timing))

    median = {name: m["median"] for name, m in measured.items()}
    single = median["single"]
    plain_reference = default_malloc["reference"]["median"] if default_malloc else median["reference"]
    flops = step_flops(args, device, autocast)
    peak = matmul_flops_per_s(device, autocast)
    bound = args.batch_size * peak / flops
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "hardware": hardware(device), "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": git_commit(),
        "settings": {"data": args.data, "batch_size": args.batch_size, "depth": args.depth,
                     "batch_norm": args.batch_norm, "precision": args.precision, "steps": steps, "warmup": warmup,
                     "rounds": rounds, "min_time_s": min_time, "ks": args.ks, "reference_workers": args.workers,
                     "channels_last": args.channels_last, "route": args.route,
                     "routes": {str(k): pack_route(args, device, k) for k in args.ks},
                     "threads": torch.get_num_threads(),
                     "keep_freed_memory": two_phase, "compile": args.compile},
        "images_per_s": measured,
        "images_per_s_default_malloc": default_malloc,
        "single_vs_reference": single / median["reference"],
        "trainer_vs_plain_reference": single / plain_reference,
        "sequential_images_per_s": {str(k): single for k in args.ks},
        "packing_speedup": {str(k): median[f"packed_{k}"] / single for k in args.ks},
        "roofline": {"step_flops": flops, "matmul_flops_per_s": peak, "images_per_s_bound": bound,
                     "bound_vs_reference": bound / plain_reference,
                     "fraction_of_bound": {name: m / bound for name, m in median.items()}},
    }
    return results


def table(results: dict) -> str:
    measured, plain = results["images_per_s"], results["images_per_s_default_malloc"]
    ref = measured["reference"]["median"]

    def spread(values: list[float]) -> str:
        return f"{min(values):.0f}-{max(values):.0f}"

    def faults(entry: dict) -> str:
        return "" if entry.get("faults_per_step") is None else f"{entry['faults_per_step']:.0f}"

    rows = []
    if plain:
        rows += [("reference, default malloc", 1, plain["reference"], None),
                 ("single run, default malloc", 1, plain["single"], None)]
    rows += [("reference (DataLoader+PIL, AdamW foreach=False)", 1, measured["reference"], None),
             ("single run (DeviceLoader, AdamW foreach)", 1, measured["single"], None)]
    for k in results["settings"]["ks"]:
        rows.append((f"{k} sequential single runs", k, measured["single"], 1.0))
        rows.append((f"packed K={k}", k, measured[f"packed_{k}"], results["packing_speedup"][str(k)]))
    s = results["settings"]
    routes = ", ".join(f"K={k} {r}" for k, r in s["routes"].items())
    lines = [f"device: {results['device']} ({results['hardware']}), torch {results['torch']}",
             f"ResNet{s['depth']} batch_norm={s['batch_norm']} batch {s['batch_size']} {s['precision']}, data "
             f"{s['data']}, channels_last={s['channels_last']} (ours), pack route {routes}"
             f"{', single run torch.compile-d' if s.get('compile') else ''}; {s['warmup']} "
             "warmup steps, then per round "
             f">= {s['min_time_s']:g} s of {s['steps']}-step measurements; median of {s['rounds']} rounds",
             "",
             f"{'pipeline':<50} {'models':>6} {'aggregate img/s':>16} {'(range)':>11} {'per model':>10} "
             f"{'vs ref':>7} {'vs seq':>7} {'faults/step':>12}"]
    for name, k, entry, vs_seq in rows:
        agg = entry["median"]
        lines.append(f"{name:<50} {k:>6} {agg:>16.1f} {spread(entry['samples']):>11} {agg / k:>10.1f} "
                     f"{agg / ref:>6.2f}x {'' if vs_seq is None else f'{vs_seq:.2f}x':>7} {faults(entry):>12}")
    lines += ["", f"single run vs reference, same process settings: {results['single_vs_reference']:.2f}x"]
    if plain:
        lines.append(f"single run (trainer malloc) vs reference (default malloc), i.e. trainer vs plain script: "
                     f"{results['trainer_vs_plain_reference']:.2f}x (across the two phases)")
    lines += [f"packing speed-up K={k} vs {k} sequential runs: {v:.2f}x" for k, v in results["packing_speedup"].items()]
    roof = results["roofline"]
    lines += ["", f"roofline: {roof['step_flops'] / 1e9:.1f} GFLOP per step; this device's 2048x2048 matmul runs at "
              f"{roof['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, so no pipeline can pass "
              f"{roof['images_per_s_bound']:.0f} img/s = {roof['bound_vs_reference']:.2f}x the plain reference",
              "share of that bound reached: " + ", ".join(f"{name} {v:.0%}" for name, v in
                                                          roof["fraction_of_bound"].items())]
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
