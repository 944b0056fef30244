"""Training throughput, side by side on one device: reference pipeline, single runs, packs per route, processes.

    python scripts/benchmark.py [--device auto|cpu|cuda] [--data synthetic|cifar10 --data-root PATH]
                                [--steps N] [--ks 4,12,24] [--routes loop,vmap,grouped] [--packs K:ROUTE[:MODE],...]
                                [--compile default,reduce-overhead] [--processes 2,4] [--json results/bench.json]

Pipelines, all ResNet20 (BatchNorm off, as in the post's experiment; --batch-norm for on):
- reference: torchvision DataLoader over PIL images (RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize), the model in NCHW, torch.optim.AdamW(foreach=False).
- single: what `python -m experiments.train` runs: a pack of one (experiments/engine.py) with
  data.DeviceLoader, the fused optimizer (optimizers.AdamW's update) and experiments.epoch.train_epoch;
  single_<mode>: the same with trainer.compile=<mode>, for each mode of --compile.
- packed_<K>_<route>[_<mode>]: K grid points (AdamW, different lr and weight decay) in one pack on the
  same batches, as launcher=packed runs them; aggregate images/s = K x batch images/s. --ks x --routes
  give the eager packs (route auto: what launcher=packed picks); --packs adds any K:route:mode.
- processes_<N>: N single runs at once in N processes on the one device, as launcher=joblib with
  n_jobs=N runs them (the baseline a user tries first); aggregate = the sum of their images/s.
- K sequential single runs: K runs one after another process images at the single-run rate, so
  their aggregate is the measured single-run images/s; packing speed-up = packed aggregate / that.
Each pipeline first runs --warmup untimed steps (a compiled one compiles there). Then, --rounds times,
every in-process pipeline in turn (interleaved, so that load changes hit all alike) is timed over
repeats of --steps steps lasting at least --min-time seconds; the table reports the median and the
range over rounds. Process pipelines need the device to themselves, so they run after those rounds
(their processes start once, then train --rounds rounds together).

On CPU the trainer also sets glibc's malloc to keep freed memory (trainer.keep_freed_memory). That
setting is process-wide and cannot be undone, so a CPU benchmark runs in two phases: first reference
and single run with the C library's default malloc (as a plain script runs), then every pipeline
after the trainer's setting. The table gives the ratio within a phase (the pipelines alone) and
single run (phase 2) over reference (phase 1): the trainer as run against the plain script.

Profile (--profile): after the rounds, each in-process pipeline trains --profile-steps more steps under
torch.profiler. Per step: the device's busy time (the union of its kernels' intervals, against the
unprofiled step time from the rounds: how much of a step the GPU computes at all), the kernels
launched, the aten ops Python and autograd call (host ops), and the ops that take the most device time (CPU time on a CPU). A
step that keeps the GPU busy a small share of its time is bound by launches and Python, not
arithmetic, which is what CUDA graphs and packing are for.

Roofline: the FLOPs of one training step (torch.utils.flop_counter) and the device's measured
2048x2048 matmul rate bound any pipeline's images/s; the table shows that bound and how much of it
each pipeline reaches.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
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
from experiments import run_info  # noqa: E402
from experiments.builders import pick_device, setup_precision  # noqa: E402
from experiments.config_checks import COMPILE_MODES  # noqa: E402
from experiments.cpu_memory import keep_freed_memory  # noqa: E402
from experiments.epoch import TrainStep, train_epoch  # noqa: E402
from experiments.layer_stats import LayerStats  # noqa: E402
from experiments.pack_optimizer import PackOptimizer  # noqa: E402
from experiments.packed_models import ROUTES, ModelPack  # noqa: E402
from experiments.route_table import auto_route  # noqa: E402
from experiments.run_files import write_json  # noqa: E402
from experiments.run_info import git_commit  # noqa: E402
from experiments.run_record import one_line  # noqa: E402
from experiments.schedules import ScheduleSpec  # noqa: E402

CONSTANT = ScheduleSpec("constant")


def _trainer_default(key: str) -> bool:
    from omegaconf import OmegaConf

    return bool(OmegaConf.load(REPO / "configs" / "trainer" / "default.yaml").get(key, False))


class BenchmarkError(ValueError):
    """A benchmark option that cannot work; the message says what to pass instead."""


def _int_list(text: str, option: str, example: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BenchmarkError(f"{option} must be comma-separated integers, e.g. {example} (got {text!r})") from None
    if not values or min(values) < 1:
        raise BenchmarkError(f"{option} needs integers >= 1, e.g. {example} (got {values})")
    return values


def _pack_specs(args) -> list[tuple[int, str, str | None]]:
    """(K, route, compile mode or None) of every pack pipeline: --ks x --routes eager, then --packs."""
    specs = [(k, route, None) for route in args.routes for k in args.ks]
    for item in filter(None, (x.strip() for x in (args.packs or "").split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0].isdigit() or int(parts[0]) < 1:
            raise BenchmarkError(f"--packs takes K:ROUTE[:MODE] items, e.g. 24:grouped:reduce-overhead (got {item!r})")
        route, mode = parts[1], parts[2] if len(parts) == 3 else None
        if route not in ("auto",) + ROUTES:
            raise BenchmarkError(f"--packs route must be auto or one of {', '.join(ROUTES)} (got {route!r})")
        if mode is not None and mode not in COMPILE_MODES:
            raise BenchmarkError(f"--packs mode must be one of {', '.join(COMPILE_MODES)} (got {mode!r})")
        specs.append((int(parts[0]), route, mode))
    return list(dict.fromkeys(specs))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    p.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic")
    p.add_argument("--data-root", default=os.environ.get("DNM_DATA_ROOT"),
                   help="CIFAR-10 folder for --data cifar10 (default $DNM_DATA_ROOT)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: cpu 1, cuda 50)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before a pipeline's first measurement (default: cpu 1, cuda 10; "
                        "compiled pipelines at least 3)")
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
    p.add_argument("--compile", default="",
                   help=f"also time the single run compiled in these modes ({', '.join(COMPILE_MODES)}), "
                        "as trainer.compile=MODE; comma-separated")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ks", default=None, help="pack sizes to measure, comma-separated (default: cpu 1,4,12; cuda "
                                              "4,12,24)")
    p.add_argument("--routes", default=None,
                   help=f"routes of the --ks packs: auto (as launcher=packed picks) or {', '.join(ROUTES)}, "
                        "comma-separated (default: cpu auto; cuda all four)")
    p.add_argument("--route", default=None, help="one route for the --ks packs (same as --routes ROUTE)")
    p.add_argument("--packs", default="", help="more packs as K:ROUTE[:MODE], e.g. 24:grouped:reduce-overhead")
    p.add_argument("--processes", default="", help="also time N concurrent single-run processes, for each N given")
    p.add_argument("--magnitude-stats-every", default="",
                   help="also time the single run with trainer.magnitude_stats_every=N, for each N given (e.g. 100)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, profile --profile-steps steps of every in-process pipeline "
                        "(torch.profiler): device busy share, kernels and host ops per step, the costliest ops")
    p.add_argument("--profile-steps", type=int, default=5, help="steps profiled per pipeline (default 5)")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-norm", action="store_true", help="ResNet with BatchNorm (default: off, as the post)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--no-reference", action="store_true", help="skip the reference pipeline (ratios are then to "
                                                               "the single run only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = p.parse_args(argv)
    on_gpu = pick_device(args.device).type == "cuda"
    args.ks = _int_list(args.ks or ("4,12,24" if on_gpu else "1,4,12"), "--ks", "1,4,12")
    routes = args.route or args.routes or (",".join(ROUTES) if on_gpu else "auto")
    args.routes = [r.strip() for r in routes.split(",") if r.strip()]
    bad = [r for r in args.routes if r not in ("auto",) + ROUTES]
    if bad or not args.routes:
        raise BenchmarkError(f"--routes takes auto or {', '.join(ROUTES)} (got {routes!r})")
    args.compile = [m.strip() for m in args.compile.split(",") if m.strip()]
    bad = [m for m in args.compile if m not in COMPILE_MODES]
    if bad:
        raise BenchmarkError(f"--compile takes {', '.join(COMPILE_MODES)} (got {bad[0]!r})")
    args.processes = _int_list(args.processes, "--processes", "2,4") if args.processes.strip() else []
    args.magnitude_stats_every = (_int_list(args.magnitude_stats_every, "--magnitude-stats-every", "100")
                                  if args.magnitude_stats_every.strip() else [])
    args.pack_specs = _pack_specs(args)
    if args.min_time is not None and args.min_time < 0:
        raise BenchmarkError(f"--min-time must be >= 0 seconds (got {args.min_time})")
    for name in ("steps", "warmup", "rounds", "batch_size", "threads", "profile_steps"):
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


# Small learning rates: a diverging member would time NaN arithmetic instead of training.
GRID = list(itertools.product((1e-4, 3e-4, 1e-3), (1e-5, 1e-4, 1e-3, 1e-2)))


def engine_pipeline(args, ds, device, autocast, *, members: int, route: str, mode: str | None,
                    stats_every: int = 0):
    """What the engine trains (experiments/engine.py): a pack of `members` on one shared loader; K = 1 on the
    loop route is exactly a single run."""
    stream = device_loader(args, ds, device)
    nets = [trainer_net(args, device, seed) for seed in range(members)]
    pack = ModelPack(nets, route=route)
    opts = [optimizers.AdamW(optimizers.param_groups(net, wd), lr=lr, weight_decay=wd)
            for net, (lr, wd) in zip(nets, itertools.cycle(GRID))]
    # A constant schedule over a horizon the benchmark never reaches.
    step = TrainStep(pack, PackOptimizer(pack, opts, CONSTANT, 10**9, 1), [1.0] * members, autocast)
    if mode is not None:
        step.compile(mode)
    stats = LayerStats(pack, stats_every) if stats_every else None  # trainer.magnitude_stats_every

    def steps(n: int) -> tuple[float, float]:
        if stats is not None:
            stats.reset()
        rows = train_epoch(step, stream.take(n), stats=stats)
        return images_and_seconds(rows[0], members)  # aggregate: every member trained on every image

    return steps


def pack_route(device, k: int, route: str, mode: str | None) -> str:
    return auto_route(device, k, mode)[0] if route == "auto" else route


def pack_pipeline_name(k: int, route: str, mode: str | None) -> str:
    return f"packed_{k}_{route}" + (f"_{mode}" if mode else "")


def _process_worker(args, device_name: str, messages, rounds, stop) -> None:
    """One of N concurrent single runs: builds and warms up, says so, then for each round waits for the
    round's start (all start together) and trains >= --min-time seconds. One start-up for all rounds."""
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = pick_device(device_name)
        autocast = setup_precision(args.precision, device)
        torch.backends.cudnn.benchmark = device.type == "cuda" and _trainer_default("cudnn_benchmark")
        ds = synthetic_data(args, args.warmup_steps + args.timed_steps)
        measure = engine_pipeline(args, ds, device, autocast, members=1, route="loop", mode=None)
        measure(max(args.warmup_steps, 1))
        messages.put(("ready", None))
        for go in rounds:
            if not go.wait(timeout=PROCESS_WAIT_S) or stop.is_set():
                return
            images = seconds = 0.0
            while seconds == 0 or seconds < args.min_time_s:
                more_images, more_seconds = measure(args.timed_steps)
                images, seconds = images + more_images, seconds + more_seconds
            messages.put(("done", (images, seconds)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, as text (a CUDA error may not pickle)
        messages.put(("error", one_line(exc)))


# How long the parent waits for its processes' next message: a process that fails says so at once and one
# that dies is seen by its exit code, so this only bounds one that hangs.
PROCESS_WAIT_S = 300


def _gather(messages, procs, n: int, tag: str) -> list:
    """n messages `tag` from the processes; RuntimeError as soon as one fails or dies, or all fall silent."""
    import queue

    got, silent_since = [], time.monotonic()
    while len(got) < n:
        try:
            kind, value = messages.get(timeout=1)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a benchmark process died (exit code {dead[0]})") from None
            if time.monotonic() - silent_since > PROCESS_WAIT_S:
                raise RuntimeError(f"the benchmark processes sent nothing for {PROCESS_WAIT_S} s") from None
            continue
        if kind == "error":
            raise RuntimeError(f"a benchmark process failed: {value}")
        if kind == tag:
            got.append(value)
            silent_since = time.monotonic()
    return got


def processes_pipeline(args, device: torch.device, n: int, rounds: int = 1):
    """Aggregate images/s of n single runs training at the same time in n processes (as launcher=joblib), for
    each round: yields (aggregate, [each process's images/s]). The processes start once and stay for every round."""
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    messages, starts, stop = ctx.Queue(), [ctx.Event() for _ in range(rounds)], ctx.Event()
    procs = [ctx.Process(target=_process_worker, args=(args, str(device), messages, starts, stop)) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        _gather(messages, procs, n, "ready")
        for go in starts:
            go.set()
            rates = [images / seconds for images, seconds in _gather(messages, procs, n, "done")]
            yield sum(rates), rates
    finally:
        stop.set()
        for go in starts:  # rounds not reached: the processes return instead of waiting for them
            go.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def synthetic_data(args, steps: int):
    if args.data == "synthetic":
        return datasets.load_dataset("synthetic", None, synthetic_size=(max(args.batch_size * steps, 2048), 16))
    return datasets.load_dataset("cifar10", args.data_root)


def hardware(device: torch.device) -> str:
    """The device's name as runs record it (experiments.run_info.hardware), with torch's threads on a CPU."""
    name = run_info.hardware(str(device))
    return name if device.type == "cuda" else f"{name}, {torch.get_num_threads()} torch threads"


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


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: the time at least one kernel ran (streams overlap)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def _self_us(row, on_gpu: bool) -> float:
    if on_gpu:
        return float(getattr(row, "self_device_time_total", None) or getattr(row, "self_cuda_time_total", 0.0))
    return float(row.self_cpu_time_total)


def _is_kernel(event) -> bool:
    """A kernel, memcpy or memset on the GPU's timeline. Not a record_function range that the profiler also draws
    there ("Torch-Compiled Region", "Optimizer.step#AdamW.step"): such a range spans the gaps between kernels, so
    counting it would make idle time look busy and double the time the kernels inside it took."""
    from torch.autograd import DeviceType

    return event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)


def profile_summary(events, averages, steps: int, step_ms: float, on_gpu: bool, top: int = 8) -> dict:
    """What profile_pipeline reports, from the profiler's events and key averages.

    On a GPU each kernel's time appears twice among the key averages, on the kernel's own row and as the self
    device time of the aten op that launched it, so shares are taken over the kernel rows only: `costliest` lists
    kernels, `costliest_ops` the ops by the device time of the kernels they launched, both as shares of all kernel
    time. On a CPU `costliest` lists ops by their self CPU time."""
    from torch.autograd import DeviceType

    kernels = [e for e in events if _is_kernel(e)] if on_gpu else []
    # What Python and autograd call per step: aten ops not called by another aten op (conv2d, not the
    # convolution -> _convolution -> mkldnn_convolution under it); each costs host time on every launch.
    host_ops = sum(1 for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")
                   and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    if on_gpu:
        rows = [a for a in averages if _is_kernel(a) and _self_us(a, True) > 0]
        ops = [a for a in averages if a.device_type == DeviceType.CPU and not getattr(a, "is_user_annotation", False)
               and _self_us(a, True) > 0]
    else:
        rows, ops = [a for a in averages if _self_us(a, False) > 0], []
    total = sum(_self_us(a, on_gpu) for a in rows) or 1.0

    def table(chosen) -> list[dict]:
        return [{"op": a.key[:160], "calls_per_step": a.count / steps, "ms_per_step": _self_us(a, on_gpu) / 1000 / steps,
                 "share": _self_us(a, on_gpu) / total}
                for a in sorted(chosen, key=lambda a: _self_us(a, on_gpu), reverse=True)[:top]]

    busy_ms = busy_time([(e.time_range.start, e.time_range.end) for e in kernels]) / 1000 / steps if on_gpu else None
    return {
        "steps": steps,
        "step_ms": step_ms,
        "device_busy_ms_per_step": busy_ms,
        "device_busy_share": busy_ms / step_ms if busy_ms is not None and step_ms > 0 else None,
        "kernels_per_step": len(kernels) / steps if on_gpu else None,
        "host_ops_per_step": host_ops / steps,
        "costliest": table(rows),
        "costliest_ops": table(ops) if on_gpu else None,
        "time_of": "device" if on_gpu else "cpu",
    }


def profile_pipeline(measure, steps: int, device: torch.device, step_ms: float, top: int = 8) -> dict:
    """torch.profiler over `steps` more steps of a warmed pipeline; step_ms: its unprofiled time per step."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        measure(steps)
    return profile_summary(prof.events(), prof.key_averages(), steps, step_ms, on_gpu, top)


def _recover(device: torch.device) -> None:
    """After a pipeline fails: free what it held, so that the next ones get the device's memory."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_rounds(pipelines: dict, *, rounds: int, warmups: dict[str, int], steps: int, min_time: float, phase: str,
                   warmed: set, samples: dict[str, list[float]], faults: dict[str, list[float]],
                   failures: dict[str, str], device: torch.device) -> None:
    """Interleaved rounds, filling samples (images/s per round) and faults (page faults per step) as they come,
    so that an interrupted benchmark keeps every round it finished. A pipeline that raises is recorded in
    failures and left out of the later rounds; the others go on."""
    for name in pipelines:
        samples.setdefault(name, [])
        faults.setdefault(name, [])
    for r in range(rounds):
        for name, measure in pipelines.items():
            if name in failures:
                continue
            try:
                if warmups[name] and name not in warmed:  # each keeps its model, loader and caches between rounds
                    measure(warmups[name])
                    warmed.add(name)
                images = seconds = 0.0
                calls, faults_before = 0, minor_faults()
                while seconds == 0 or seconds < min_time:
                    more_images, more_seconds = measure(steps)
                    images, seconds, calls = images + more_images, seconds + more_seconds, calls + 1
            except Exception as exc:  # noqa: BLE001 - one pipeline's fault must not cost the others' numbers
                failures[name] = one_line(exc)
                print(f"{phase}round {r + 1}/{rounds} {name}: failed ({failures[name]})", file=sys.stderr, flush=True)
                _recover(device)
                continue
            samples[name].append(images / seconds)
            if faults_before is not None:
                faults[name].append((minor_faults() - faults_before) / (calls * steps))
            print(f"{phase}round {r + 1}/{rounds} {name}: {samples[name][-1]:.1f} images/s", file=sys.stderr,
                  flush=True)


def summarize_samples(samples: dict[str, list[float]], faults: dict[str, list[float]]) -> dict:
    """Median images/s and page faults per step of each pipeline with at least one round measured."""
    return {name: {"median": statistics.median(values), "samples": values,
                   "faults_per_step": statistics.median(faults[name]) if faults.get(name) else None}
            for name, values in samples.items() if values}


def run(args) -> dict:
    """Every pipeline measured; with --json the results are written after each phase, so that a pipeline that
    fails (recorded in "failures") or an interruption (Ctrl-C, the device check's timeout: "interrupted")
    keeps what was measured before it."""
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (50 if on_gpu else 1)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    rounds = args.rounds or 3
    min_time = args.min_time if args.min_time is not None else (2.0 if on_gpu else 3.0)
    args.warmup_steps, args.timed_steps, args.min_time_s = warmup, steps, min_time
    autocast = setup_precision(args.precision, device)
    # As trainer.cudnn_benchmark does (process-wide, so for the reference too, as a tuned plain script would).
    torch.backends.cudnn.benchmark = on_gpu and _trainer_default("cudnn_benchmark")
    ds = synthetic_data(args, warmup + steps)
    # Phase 1 only where the trainer would change the process's malloc: CPU runs with the setting on.
    two_phase = device.type == "cpu" and args.keep_freed_memory and not args.no_reference
    state = {"kinds": {}, "samples": {}, "faults": {}, "plain_samples": {}, "plain_faults": {}, "failures": {},
             "profiles": {}, "interrupted": None, "roofline": None}
    kinds, failures = state["kinds"], state["failures"]
    settings = {"steps": steps, "warmup": warmup, "rounds": rounds, "min_time_s": min_time, "two_phase": two_phase}

    def checkpoint(phase: str) -> dict:
        results = assemble(args, device, state, settings, phase)
        if args.json:
            write_json(args.json, results)
        return results

    pipelines = {}

    def add(name: str, kind: dict, build) -> None:
        kinds[name] = kind
        try:
            pipelines[name] = build()
        except Exception as exc:  # noqa: BLE001 - recorded; the other pipelines are still measured
            failures[name] = one_line(exc)
            print(f"{name}: failed to build ({failures[name]})", file=sys.stderr, flush=True)
            _recover(device)

    phase = "build"
    try:
        if not args.no_reference:
            add("reference", {"kind": "reference", "members": 1},
                lambda: reference_pipeline(args, ds, device, autocast))
        add("single", {"kind": "single", "members": 1, "route": "loop", "compile": None},
            lambda: engine_pipeline(args, ds, device, autocast, members=1, route="loop", mode=None))
        for mode in args.compile:
            add(f"single_{mode}", {"kind": "single", "members": 1, "route": "loop", "compile": mode},
                lambda mode=mode: engine_pipeline(args, ds, device, autocast, members=1, route="loop", mode=mode))
        for every in args.magnitude_stats_every:
            add(f"single_stats_{every}",
                {"kind": "single", "members": 1, "route": "loop", "compile": None, "stats_every": every},
                lambda every=every: engine_pipeline(args, ds, device, autocast, members=1, route="loop", mode=None,
                                                    stats_every=every))
        for k, route, mode in args.pack_specs:
            resolved = pack_route(device, k, route, mode)
            name = pack_pipeline_name(k, resolved, mode)
            if name not in kinds:
                add(name, {"kind": "pack", "members": k, "route": resolved, "compile": mode, "asked": route},
                    lambda k=k, resolved=resolved, mode=mode: engine_pipeline(args, ds, device, autocast, members=k,
                                                                              route=resolved, mode=mode))
        # Compiled pipelines compile in their warmup and need a few steps for CUDA graphs to be recorded.
        warmups = {name: max(warmup, 3) if kinds[name].get("compile") else warmup for name in pipelines}
        timing = dict(rounds=rounds, warmups=warmups, steps=steps, min_time=min_time, warmed=set(),
                      failures=failures, device=device)
        if two_phase:
            phase = "default malloc rounds"
            plain = {name: pipelines[name] for name in ("reference", "single") if name in pipelines}
            measure_rounds(plain, phase="default malloc: ", samples=state["plain_samples"],
                           faults=state["plain_faults"], **timing)
            if not keep_freed_memory():
                print("this C library is not glibc: phase 2 runs with the same malloc as phase 1", file=sys.stderr)
        phase = "rounds"
        measure_rounds(pipelines, phase="trainer malloc: " if two_phase else "", samples=state["samples"],
                       faults=state["faults"], **timing)
        state["roofline"] = roofline(args, device, autocast)
        checkpoint("rounds")
        if args.profile:
            phase = "profile"
            measured = summarize_samples(state["samples"], state["faults"])
            for name, measure in pipelines.items():
                if name not in measured:
                    continue
                per_step_images = args.batch_size * (kinds[name]["members"] if kinds[name]["kind"] == "pack" else 1)
                step_ms = 1000 * per_step_images / measured[name]["median"]
                try:
                    state["profiles"][name] = profile_pipeline(measure, args.profile_steps, device, step_ms)
                except Exception as exc:  # noqa: BLE001 - a profiler fault must not cost the measurements above
                    state["profiles"][name] = {"error": one_line(exc)}
                    _recover(device)
                print(f"profiled {name}" + (f": {state['profiles'][name]['error']}" if "error" in state["profiles"][name]
                                            else ""), file=sys.stderr, flush=True)
            checkpoint("profile")
        pipelines.clear()  # the processes need the device's memory
        _recover(device)
        for n in args.processes:
            phase = f"processes_{n}"
            name = f"processes_{n}"
            kinds[name] = {"kind": "processes", "members": n}
            state["samples"][name], state["faults"][name] = [], []
            try:
                for r, (total, rates) in enumerate(processes_pipeline(args, device, n, rounds)):
                    state["samples"][name].append(total)
                    print(f"round {r + 1}/{rounds} {name}: {total:.1f} images/s "
                          f"({', '.join(f'{x:.0f}' for x in rates)})", file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001 - recorded; the rounds measured stay
                failures[name] = one_line(exc)
                print(f"{name}: failed ({failures[name]})", file=sys.stderr, flush=True)
            checkpoint(phase)
    except KeyboardInterrupt:
        state["interrupted"] = phase
        print(f"interrupted during {phase}: writing what was measured", file=sys.stderr, flush=True)
    return checkpoint("done" if state["interrupted"] is None else phase)


def roofline(args, device: torch.device, autocast) -> dict:
    """The step's FLOPs and the device's matmul rate, and the images/s they bound (measured outside any timing)."""
    try:
        flops = step_flops(args, device, autocast)
        peak = matmul_flops_per_s(device, autocast)
    except Exception as exc:  # noqa: BLE001 - the rates stand without it
        return {"error": one_line(exc)}
    return {"step_flops": flops, "matmul_flops_per_s": peak, "images_per_s_bound": args.batch_size * peak / flops}


def assemble(args, device: torch.device, state: dict, settings: dict, phase: str) -> dict:
    """The results JSON from what has been measured so far (pipelines not measured are absent from its rates)."""
    kinds = state["kinds"]
    measured = summarize_samples(state["samples"], state["faults"])
    default_malloc = summarize_samples(state["plain_samples"], state["plain_faults"]) or None
    median = {name: m["median"] for name, m in measured.items()}
    single = median.get("single")
    reference = median.get("reference")
    plain_reference = (default_malloc or {}).get("reference", {}).get("median") if settings["two_phase"] else reference
    roofline = state["roofline"]
    if roofline and "images_per_s_bound" in roofline:
        bound = roofline["images_per_s_bound"]
        roofline = {**roofline, "bound_vs_reference": bound / plain_reference if plain_reference else None,
                    "fraction_of_bound": {name: m / bound for name, m in median.items()}}
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "hardware": hardware(device), "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": git_commit(),
        "complete": phase == "done" and not state["failures"] and state["interrupted"] is None,
        "written_after": phase, "interrupted": state["interrupted"], "failures": state["failures"],
        "settings": {"data": args.data, "batch_size": args.batch_size, "depth": args.depth,
                     "batch_norm": args.batch_norm, "precision": args.precision, "steps": settings["steps"],
                     "warmup": settings["warmup"], "rounds": settings["rounds"], "min_time_s": settings["min_time_s"],
                     "ks": args.ks, "reference_workers": args.workers, "channels_last": args.channels_last,
                     "routes": args.routes, "compile": args.compile, "processes": args.processes,
                     "threads": torch.get_num_threads(), "keep_freed_memory": settings["two_phase"],
                     "cudnn_benchmark": torch.backends.cudnn.benchmark},
        "pipelines": kinds,
        "images_per_s": measured,
        "images_per_s_default_malloc": default_malloc,
        "single_vs_reference": single / reference if single and reference else None,
        "trainer_vs_plain_reference": single / plain_reference if single and plain_reference else None,
        # K sequential single runs train at the single run's rate; a pack or N processes against that.
        "speedup_vs_sequential": {name: m / single for name, m in median.items()
                                  if single and kinds[name]["kind"] in ("pack", "processes")},
        "compile_speedup": {kinds[name]["compile"]: m / single for name, m in median.items()
                            if single and kinds[name]["kind"] == "single" and kinds[name]["compile"]},
        # trainer.magnitude_stats_every=N: the single run's images/s lost to recording, 0.03 = 3%.
        "magnitude_stats_cost": {str(kinds[name]["stats_every"]): 1 - m / single for name, m in median.items()
                                 if single and kinds[name].get("stats_every")},
        "profile": state["profiles"] or None,
        "roofline": roofline,
    }
    results["best_route"] = best_routes(results)
    return results


def best_routes(results: dict) -> dict[str, dict]:
    """Per pack size, the fastest pack pipeline measured (what route=auto should follow)."""
    best: dict[str, dict] = {}
    for name, kind in results["pipelines"].items():
        if kind["kind"] != "pack" or name not in results["images_per_s"]:
            continue
        rate = results["images_per_s"][name]["median"]
        key = str(kind["members"])
        if key not in best or rate > best[key]["images_per_s"]:
            best[key] = {"route": kind["route"], "compile": kind["compile"], "images_per_s": rate, "pipeline": name}
    return best


def table(results: dict) -> str:
    measured, plain, kinds = results["images_per_s"], results["images_per_s_default_malloc"], results["pipelines"]
    single = measured["single"]["median"] if "single" in measured else None
    ref = measured["reference"]["median"] if "reference" in measured else None

    def spread(values: list[float]) -> str:
        return f"{min(values):.0f}-{max(values):.0f}"

    def faults(entry: dict) -> str:
        return "" if entry.get("faults_per_step") is None else f"{entry['faults_per_step']:.0f}"

    def label(name: str) -> str:
        kind = kinds[name]
        mode = f", compile {kind['compile']}" if kind.get("compile") else ""
        if kind["kind"] == "reference":
            return "reference (DataLoader+PIL, AdamW foreach=False)"
        if kind["kind"] == "single":
            stats = f", magnitude stats every {kind['stats_every']} steps" if kind.get("stats_every") else ""
            return f"single run (DeviceLoader, fused AdamW{mode}{stats})"
        if kind["kind"] == "processes":
            return f"{kind['members']} single-run processes at once"
        return f"packed K={kind['members']} ({kind['route']}{mode})"

    rows = []
    if plain:
        rows += [(f"{name}, default malloc", 1, plain[name]) for name in ("reference", "single") if name in plain]
    rows += [(label(name), kinds[name]["members"], entry) for name, entry in measured.items()]
    s = results["settings"]
    lines = [f"device: {results['device']} ({results['hardware']}), torch {results['torch']}",
             f"ResNet{s['depth']} batch_norm={s['batch_norm']} batch {s['batch_size']} {s['precision']}, data "
             f"{s['data']}, channels_last={s['channels_last']} (ours); {s['warmup']} warmup steps, then per round "
             f">= {s['min_time_s']:g} s of {s['steps']}-step measurements; median of {s['rounds']} rounds",
             "",
             f"{'pipeline':<52} {'models':>6} {'aggregate img/s':>16} {'(range)':>13} {'per model':>10} "
             f"{'vs ref':>7} {'vs seq':>7} {'faults/step':>12}"]
    for name, k, entry in rows:
        agg = entry["median"]
        vs_ref = f"{agg / ref:.2f}x" if ref else ""
        vs_seq = f"{agg / single:.2f}x" if single and (k > 1 or "K=1 " in name) else ""
        lines.append(f"{name:<52} {k:>6} {agg:>16.1f} {spread(entry['samples']):>13} {agg / k:>10.1f} "
                     f"{vs_ref:>7} {vs_seq:>7} {faults(entry):>12}")
    lines.append("")
    if results["single_vs_reference"]:
        lines.append(f"single run vs reference, same process settings: {results['single_vs_reference']:.2f}x")
    if results["trainer_vs_plain_reference"] and plain:
        lines.append(f"single run (trainer malloc) vs reference (default malloc), i.e. trainer vs plain script: "
                     f"{results['trainer_vs_plain_reference']:.2f}x (across the two phases)")
    for mode, v in results["compile_speedup"].items():
        lines.append(f"single run compiled ({mode}) vs eager: {v:.2f}x")
    for name, v in results["speedup_vs_sequential"].items():
        lines.append(f"{label(name)} vs {kinds[name]['members']} sequential single runs: {v:.2f}x")
    for k, b in results["best_route"].items():
        lines.append(f"fastest pack of {k}: {b['pipeline']} ({b['images_per_s']:.0f} img/s)")
    for name, prof in (results.get("profile") or {}).items():
        if "error" in prof:
            lines.append(f"profile {name}: failed ({prof['error']})")
            continue
        busy = (f"device busy {prof['device_busy_ms_per_step']:.2f} ms ({prof['device_busy_share']:.0%}), "
                f"{prof['kernels_per_step']:.0f} kernels, " if prof["device_busy_ms_per_step"] is not None else "")
        named = prof.get("costliest_ops") or prof["costliest"]  # on a GPU, ops: kernel names run to hundreds of characters
        costliest = ", ".join(f"{c['op']} {c['share']:.0%}" for c in named[:4])
        lines.append(f"profile {name}: {prof['step_ms']:.2f} ms per step, {busy}{prof['host_ops_per_step']:.0f} host ops; "
                     f"most {prof['time_of']} time: {costliest}")
    roof = results["roofline"] or {}
    if "images_per_s_bound" in roof:
        bound_vs = f" = {roof['bound_vs_reference']:.2f}x the plain reference" if roof["bound_vs_reference"] else ""
        lines += ["", f"roofline: {roof['step_flops'] / 1e9:.1f} GFLOP per step; this device's 2048x2048 matmul runs "
                  f"at {roof['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, so no single model can pass "
                  f"{roof['images_per_s_bound']:.0f} img/s{bound_vs}",
                  "share of that bound reached (aggregate): " + ", ".join(f"{name} {v:.0%}" for name, v in
                                                                          roof["fraction_of_bound"].items())]
    elif "error" in roof:
        lines += ["", f"roofline: failed ({roof['error']})"]
    for name, error in results["failures"].items():
        lines.append(f"FAILED {name}: {error}")
    if results["interrupted"]:
        lines.append(f"INTERRUPTED during {results['interrupted']}: the numbers above are what was measured before")
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
        print(f"wrote {args.json}")
    if results["interrupted"]:
        return 130
    return 0 if results["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
