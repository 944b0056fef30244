"""Packed training (experiments/packed*.py, launcher=packed): members equal their single runs."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli import REPO, cli_env, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import experiments.engine
import models
import optimizers
from experiments import run_files
from experiments.epoch import TrainStep, train_epoch
from experiments.pack_optimizer import PackOptimizer
from experiments.packed import PackMember, group_into_packs, pack_key, train_pack
from experiments.packed_models import ROUTES, ModelPack
from experiments.run_files import CheckpointError
from experiments.run_info import git_commit
from experiments.schedules import build_scheduler


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on shared cores a second thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (optimizer class, kwargs, loss multiplier): variants, lr, wd and c all differ between members.
MEMBERS = [
    (optimizers.AdamW, dict(lr=1e-3, weight_decay=5e-2), 1.0),
    (optimizers.AdamP, dict(lr=3e-3, weight_decay=1e-3), 10.0),
    (optimizers.SGD, dict(lr=0.01, weight_decay=5e-4, momentum=0.9), 0.5),
]
COSINE = OmegaConf.create({"name": "cosine", "warmup_epochs": 0, "min_factor": 0.1})
# ResNet8 on 16x16 images: every block type of ResNet20 (BN, stride-2 option-A shortcuts) at a
# tenth of the cost; the model is fully convolutional, so smaller images change nothing else.
STEPS, BATCH, DEPTH, SIZE = 20, 8, 8, 16


def batches(steps: int, seed: int = 0, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=dtype), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(steps)]


def build(seed: int, batch_norm: bool, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model(DEPTH, batch_norm, 10).to(dtype)


def single_run(seed, batch_norm, cls, kwargs, c, data, memory_format=torch.preserve_format):
    """The plain per-model loop: forward, c * CE backward, the same optimizer class and schedule."""
    model = build(seed, batch_norm, data[0][0].dtype).to(data[0][0].device, memory_format=memory_format)
    opt = cls(optimizers.param_groups(model, kwargs["weight_decay"]), **kwargs)
    sched = build_scheduler(opt, COSINE, len(data), 1)
    model.train()
    loss_sum = 0.0
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        (loss * c).backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * y.shape[0]
    return model, loss_sum / (len(data) * BATCH)


def packed_run(seeds, batch_norm, members, data, route, active=None, memory_format=torch.preserve_format):
    """The members trained as one pack: ModelPack, the fused PackOptimizer, the engine's TrainStep and epoch."""
    nets = [build(seed, batch_norm, data[0][0].dtype).to(data[0][0].device, memory_format=memory_format)
            for seed in seeds]
    pack = ModelPack(nets, route=route)
    opts = [cls(optimizers.param_groups(net, kw["weight_decay"]), **kw) for net, (cls, kw, _) in zip(nets, members)]
    pack_opt = PackOptimizer(pack, opts, COSINE, len(data), 1)
    step = TrainStep(pack, pack_opt, [c for _, _, c in members])
    step.set_active(active or [True] * len(nets))
    rows = train_epoch(step, data)
    return pack, rows, pack_opt


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30)).item()


def state_errors(packed: torch.nn.Module, single: torch.nn.Module) -> dict[str, float]:
    """Relative error per tensor; num_batches_tracked must match exactly."""
    got, want = packed.state_dict(), single.state_dict()
    assert got.keys() == want.keys()
    errors = {}
    for name, w in want.items():
        if w.is_floating_point():
            errors[name] = relative_error(got[name], w)
        else:
            assert torch.equal(got[name], w), name
    return errors


def flat(module: torch.nn.Module, buffers: bool) -> torch.Tensor:
    tensors = module.buffers() if buffers else module.parameters()
    return torch.cat([t.detach().reshape(-1).double() for t in tensors if t.is_floating_point()])


ROUTE = pytest.mark.parametrize("route", ROUTES)
# On a GPU the routes run different kernels (grouped convolutions, vmap's batched ones, members on their own CUDA
# streams), so the float64 equality is checked there too: the device check's tests stage runs the cuda cases.
DEVICE = pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
BATCH_NORM = pytest.mark.parametrize("batch_norm", [False, True], ids=["bn_off", "bn_on"])
# On a CPU the streams route is the loop route: both run the single run's own kernels.
SAME_KERNELS = ("loop", "streams")


@DEVICE
@ROUTE
@BATCH_NORM
def test_members_match_their_single_runs_in_float64(batch_norm, route, device):
    """In float64 rounding is invisible, so every tensor must agree: the packed step is the single step."""
    data = [(x.to(device), y.to(device)) for x, y in batches(STEPS, dtype=torch.float64)]
    seeds = [0, 1, 2]
    pack, rows, _ = packed_run(seeds, batch_norm, MEMBERS, data, route)
    for k, (seed, (cls, kwargs, c)) in enumerate(zip(seeds, MEMBERS)):
        single, train_loss = single_run(seed, batch_norm, cls, kwargs, c, data)
        worst = max(state_errors(pack.members[k], single).items(), key=lambda kv: kv[1])
        assert worst[1] <= 1e-10, f"member {k} ({cls.__name__}): {worst}"
        assert rows[k]["train_loss"] == pytest.approx(train_loss, rel=1e-12)
    if batch_norm:
        assert (pack.buffers["bn1.num_batches_tracked"] == STEPS).all()
    # The members really trained apart: different weights, all moved from their init.
    w = pack.params["fc.weight"].detach()
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


FLOAT32_FLOOR = 5e-5


@ROUTE
@BATCH_NORM
def test_members_match_their_single_runs_in_float32(batch_norm, route):
    """In float32, packing adds no more error than float32 rounding already puts into a single run.

    The exact trajectory is the float64 run on the same batches (the float64 test shows the pack equals it there).
    A single float32 run departs from it by d: 1e-7 to 5e-4 of the weights' norm after 20 steps, the most for
    AdamP, whose normalised steps amplify rounding. A route whose kernels sum in another order (grouped, vmap) is
    another float32 rounding of the same trajectory, and how far that lands depends on the CPU's kernels: on an
    AVX-512 (Zen 4) machine the grouped route's AdamP member with BN ended 4e-4 from its single run (d = 7e-3
    there); on a Zen 3 machine the SGD member without BN ended 8.9e-6 from the float64 run on the grouped and vmap
    routes, while its single run happened to round almost as float64 does (d = 1.1e-7). So each member must stay
    within 2 d + FLOAT32_FLOOR of the float64 run, in weights, BN statistics and training loss. The floor, 5e-5 of
    the norm, is under a quarter of what a 1% error in a member's lr moves it (2.3e-4 at the least, measured on
    every case): that error still fails every case. The loop and streams routes run the single run's very
    kernels: there every tensor is equal.
    """
    data = batches(STEPS)
    exact_data = [(x.double(), y) for x, y in data]
    seeds = [0, 1, 2]
    pack, rows, _ = packed_run(seeds, batch_norm, MEMBERS, data, route)
    for k, (seed, (cls, kwargs, c)) in enumerate(zip(seeds, MEMBERS)):
        single, train_loss = single_run(seed, batch_norm, cls, kwargs, c, data)
        exact, exact_loss = single_run(seed, batch_norm, cls, kwargs, c, exact_data)
        if route in SAME_KERNELS:  # the very kernels of the single run, and a fused step that rounds as its own
            errors = state_errors(pack.members[k], single)
            assert max(errors.values()) == 0, max(errors.items(), key=lambda kv: kv[1])
        for buffers in (False, True) if batch_norm else (False,):
            d = relative_error(flat(single, buffers), flat(exact, buffers))
            got = relative_error(flat(pack.members[k], buffers), flat(exact, buffers))
            assert got <= 2 * d + FLOAT32_FLOOR, (k, buffers, got, d)
        d_loss = abs(train_loss - exact_loss)
        assert abs(rows[k]["train_loss"] - exact_loss) <= 2 * d_loss + FLOAT32_FLOOR * exact_loss, (k, d_loss)
        assert rows[k]["grad_norm"] > 0


@ROUTE
@BATCH_NORM
def test_a_stopped_nan_member_neither_steps_nor_leaks(batch_norm, route):
    data = batches(5, seed=1, dtype=torch.float64)
    nets = [build(0, batch_norm, torch.float64), build(1, batch_norm, torch.float64)]
    pack = ModelPack(nets, route=route)
    with torch.no_grad():
        for p in nets[1].parameters():
            p.fill_(float("nan"))
    opts = [optimizers.AdamW(optimizers.param_groups(n, 1e-2), lr=1e-3, weight_decay=1e-2) for n in nets]
    pack_opt = PackOptimizer(pack, opts, COSINE, len(data), 1)
    step = TrainStep(pack, pack_opt, [1.0, 1.0])
    step.set_active([True, False])
    rows = train_epoch(step, data)
    assert math.isnan(rows[1]["train_loss"])  # vmap, grouped: its NaN weights still run forward; loop: not run at all
    single, train_loss = single_run(0, batch_norm, optimizers.AdamW, dict(lr=1e-3, weight_decay=1e-2), 1.0, data)
    assert max(state_errors(nets[0], single).values()) <= 1e-10
    assert rows[0]["train_loss"] == pytest.approx(train_loss, rel=1e-12)
    opt_state, sched_state = pack_opt.member_state_dict(1)
    assert not opt_state["state"] and sched_state["last_epoch"] == 0, "a stopped member took an optimizer step"
    assert all(s[1].abs().sum() == 0 for s in pack_opt.state)
    assert pack_opt.member_state_dict(0)[1]["last_epoch"] == len(data)


@pytest.mark.parametrize("route", SAME_KERNELS)
def test_loop_routes_keep_channels_last_members_bit_exact(route):
    data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches(3)]
    cls, kwargs, c = MEMBERS[1]
    pack, _, _ = packed_run([0], True, [MEMBERS[1]], data, route, memory_format=torch.channels_last)
    assert pack.members[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    single, _ = single_run(0, True, cls, kwargs, c, data, memory_format=torch.channels_last)
    assert max(state_errors(pack.members[0], single).values()) == 0


def test_the_grouped_network_is_its_members():
    """models.CifarResNet(members=K) with the members' weights: each member's logits, and the same gradients."""
    torch.manual_seed(0)
    nets = [build(seed, True, torch.float64) for seed in (0, 1, 2)]
    pack = ModelPack(nets, route="grouped")
    assert models.count_parameters(models.build_model(DEPTH, True, 10, members=3)) == \
        sum(models.count_parameters(n) for n in nets)
    x, y = batches(1, dtype=torch.float64)[0]
    for net in nets:
        net.train()
    pack.train()
    logits = pack(x)
    singles = [build(seed, True, torch.float64) for seed in (0, 1, 2)]
    for k, single in enumerate(singles):
        single.train()
        want = single(x)
        assert relative_error(logits[k], want) <= 1e-12
        F.cross_entropy(want, y).backward()
    F.cross_entropy(logits.reshape(-1, 10), y.repeat(3), reduction="sum").div(BATCH).backward()
    for k, single in enumerate(singles):
        for (name, p), q in zip(single.named_parameters(), pack.members[k].parameters()):
            assert relative_error(q.grad, p.grad) <= 1e-10, (k, name)
    # The running statistics the grouped network updated are each member's own.
    for k, single in enumerate(singles):
        assert relative_error(pack.members[k].bn1.running_mean, single.bn1.running_mean) <= 1e-12


def test_grouping_keeps_only_shareable_runs_together():
    base = OmegaConf.create({"seed": 0, "loss_multiplier": 1.0, "optimizer": {"name": "adamw", "lr": 1e-3},
                             "model": {"depth": 20, "batch_norm": False}, "trainer": {"epochs": 3}})

    def cfg(**changes):
        c = base.copy()
        for key, value in changes.items():
            OmegaConf.update(c, key, value)
        return c

    cfgs = [cfg(), cfg(**{"optimizer.name": "adamp", "optimizer.lr": 1e-2}), cfg(loss_multiplier=100.0),
            cfg(**{"model.batch_norm": True}), cfg(seed=1), cfg(**{"trainer.epochs": 4})]
    shared = group_into_packs([pack_key(c, "shared") for c in cfgs], None)
    assert shared == [[0, 1, 2], [3], [4], [5]]
    own = group_into_packs([pack_key(c, "own") for c in cfgs], None)
    assert own == [[0, 1, 2, 4], [3], [5]]
    assert group_into_packs([pack_key(c, "own") for c in cfgs], 2) == [[0, 1], [2, 4], [3], [5]]


# ---------------------------------------------------------------- the pack trainer (train_pack)

TINY = ["data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=16", "logger=none",
        "trainer.device=cpu"]


def member(tmp_path: Path, *overrides: str) -> PackMember:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    name = ",".join(overrides)
    return PackMember(cfg, tmp_path / "runs" / name, name)


def tiny_pack(tmp_path: Path, epochs: int) -> list[PackMember]:
    return [member(tmp_path, f"trainer.epochs={epochs}", "optimizer=adamw", "optimizer.lr=1e-3"),
            member(tmp_path, f"trainer.epochs={epochs}", "optimizer=adamp", "optimizer.lr=2e-3",
                   "loss_multiplier=100")]


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # timings differ between any two runs
        del row["epoch_time_s"], row["images_per_s"]
    return rows


class FakeWandbRun:
    """Records what packed training sends to W&B, per run folder."""

    logged: dict[str, dict] = {}

    def __init__(self, run_dir: Path) -> None:
        self.record = FakeWandbRun.logged.setdefault(str(run_dir), {"steps": [], "summary": {}, "opened": 0})
        self.record["opened"] += 1
        self.summary = self.record["summary"]

    def log(self, row: dict, step: int) -> None:
        assert row["epoch"] == step
        self.record["steps"].append(step)


def test_an_interrupted_pack_resumes_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments.engine, "start_wandb",
                        lambda cfg, run_dir, run_name: contextlib.nullcontext(FakeWandbRun(run_dir)))
    FakeWandbRun.logged = {}
    straight = tiny_pack(tmp_path / "straight", epochs=2)
    train_pack(straight, tmp_path / "straight" / "pack", route="vmap")

    resumed = tiny_pack(tmp_path / "resumed", epochs=2)
    pack_dir = tmp_path / "resumed" / "pack"
    real_save = run_files.save_checkpoint

    def save_then_interrupt(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_pack(resumed, pack_dir, route="vmap")
    monkeypatch.setattr(run_files, "save_checkpoint", real_save)
    for m in resumed:  # each member's live W&B run has its epoch already
        assert FakeWandbRun.logged[str(m.run_dir)]["steps"] == [1]
    for m in resumed:
        s = json.loads((m.run_dir / "summary.json").read_text())
        assert s["status"] == "interrupted" and s["epochs_completed"] == 1
    summaries = train_pack(resumed, pack_dir, route="vmap")

    assert [s["status"] for s in summaries] == ["finished", "finished"]
    for a, b in zip(straight, resumed):
        assert metrics(a.run_dir) == metrics(b.run_dir)
        assert len(metrics(b.run_dir)) == 2
    want = torch.load(tmp_path / "straight" / "pack" / "checkpoint.pt", weights_only=True)
    got = torch.load(pack_dir / "checkpoint.pt", weights_only=True)
    for kind in ("params", "buffers"):
        for name, tensor in want["model"][kind].items():
            assert torch.equal(tensor, got["model"][kind][name]), name
    assert got["optimizers"][1]["state"][0]["step"] == want["optimizers"][1]["state"][0]["step"] == 8.0
    # Each member's W&B run gets each epoch once, interrupted or not; the resumed pack opens it again.
    for m in straight + resumed:
        record = FakeWandbRun.logged[str(m.run_dir)]
        assert record["opened"] == (2 if m in resumed else 1) and record["steps"] == [1, 2]
        assert record["summary"]["status"] == "finished" and record["summary"]["final/test_acc"] is not None


def test_a_corrupt_pack_checkpoint_is_a_clear_error(tmp_path):
    members = tiny_pack(tmp_path, epochs=1)
    pack_dir = tmp_path / "pack"
    pack_dir.mkdir()
    (pack_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.*move it away"):
        train_pack(members, pack_dir)
    assert not any(m.run_dir.exists() for m in members), "nothing may be written before the checkpoint is read"


def init_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(models.build_model(20, False, 10).named_parameters())


def test_packed_init_own_starts_each_member_from_its_own_seed(tmp_path):
    # lr 1e-12 leaves the weights at their init (to ~1e-12), so the checkpoint shows each member's init.
    seeds = [member(tmp_path, "trainer.epochs=1", "optimizer.lr=1e-12", "optimizer.weight_decay=0",
                    "model.batch_norm=false", f"seed={s}") for s in (0, 1)]
    with pytest.raises(ValueError, match="packed_init=own"):
        train_pack(seeds, tmp_path / "shared", packed_init="shared")
    summaries = train_pack(seeds, tmp_path / "own", packed_init="own")
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    params = torch.load(tmp_path / "own" / "checkpoint.pt", weights_only=True)["model"]["params"]
    for k, seed in enumerate((0, 1)):
        for name, want in init_weights(seed).items():
            assert relative_error(params[name][k], want.detach()) < 1e-6, (seed, name)
    assert relative_error(params["conv1.weight"][0], params["conv1.weight"][1]) > 0.5
    info = json.loads((tmp_path / "own" / "pack.json").read_text())
    assert info["init_seeds"] == [0, 1] and info["loader_seed"] == 0


# ---------------------------------------------------------------- the real command line

GRID = ["-m", "data=synthetic", "data.train_size=64", "data.test_size=32", "trainer.batch_size=16",
        "trainer.epochs=1", "logger=none", "optimizer=adamw,sgd", "optimizer.lr=1e-3,1e5"]


def run_files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def keys_of(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys_of(v, prefix + k + ".")
    return out


def test_a_packed_sweep_writes_what_single_runs_write(tmp_path):
    single, packed = tmp_path / "single", tmp_path / "packed"
    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    run_cli([*GRID, "launcher=local", f"hydra.sweep.dir={single}"], env=env)
    proc = run_cli([*GRID, "launcher=packed", f"hydra.sweep.dir={packed}"], env=env)
    runs = sorted(p.parent.name for p in single.glob("*/summary.json"))
    assert len(runs) == 4 and sorted(p.parent.name for p in packed.glob("*/summary.json")) == runs
    assert len(list((packed / ".packs").glob("pack-*/checkpoint.pt"))) == 1, proc.stdout[-2000:]

    status = {}
    for name in runs:
        a, b = single / name, packed / name
        # Single runs keep checkpoint.pt in the run folder; a pack keeps one checkpoint in .packs/.
        assert run_files_of(a) - {"checkpoint.pt"} == run_files_of(b)
        assert (a / ".hydra" / "config.yaml").read_text() == (b / ".hydra" / "config.yaml").read_text()
        assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert keys_of(sa) == keys_of(sb)
        assert sb["run_dir"] == str(b) and sb["run_name"] == name == sa["run_name"]
        assert sb["hparams"] == sa["hparams"]
        with open(a / "metrics.csv") as fa, open(b / "metrics.csv") as fb:
            ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
        assert list(ra[0]) == list(rb[0])
        status[name] = sb["status"]
        assert sb["status"] == sa["status"]
        # Same init, same batches, same optimizer, and on CPU (route loop) the same kernels: the
        # packed member is its single run, to the bit.
        for row in ra + rb:
            del row["epoch_time_s"], row["images_per_s"]
        assert ra == rb
        assert "epoch 1/1" in (b / "train.log").read_text()

    def status_of(opt, lr):
        return next(s for n, s in status.items() if f"optimizer={opt}" in n and f"optimizer.lr={lr}" in n)

    assert status_of("sgd", "100000.0") == "diverged"
    assert status_of("sgd", "0.001") == status_of("adamw", "0.001") == "finished"
    diverged = json.loads((packed / next(n for n in runs if "100000.0,optimizer=sgd" in n) / "summary.json")
                          .read_text())
    assert diverged["diverged_epoch"] == 1 and diverged["error"] is None

    # Re-launching skips every run that is done and rewrites nothing.
    outputs = ["*/metrics.csv", "*/summary.json", ".packs/*/checkpoint.pt"]
    before = {p: p.read_bytes() for pattern in outputs for p in packed.glob(pattern)}
    again = run_cli([*GRID, "launcher=packed", f"hydra.sweep.dir={packed}"], env=env)
    log = again.stdout + again.stderr
    for done in ("finished", "diverged"):
        assert log.count(f"already {done}") == list(status.values()).count(done), log[-3000:]
    assert before == {p: p.read_bytes() for pattern in outputs for p in packed.glob(pattern)}


def test_a_failing_pack_marks_its_runs_failed_and_the_other_packs_go_on(tmp_path):
    sweep = tmp_path / "sweep"
    env = cli_env(tmp_path, OMP_NUM_THREADS="1")
    grid = [*GRID[:6], "logger=none", "optimizer=adamw", "optimizer.lr=1e-3,1e-2", "model.batch_norm=true,false",
            "launcher=packed", f"hydra.sweep.dir={sweep}"]
    run_cli(grid, env=env)
    packs = {p.parent: json.loads(p.read_text())["members"] for p in (sweep / ".packs").glob("*/pack.json")}
    assert len(packs) == 2 and all(len(members) == 2 for members in packs.values())
    broken, intact = sorted(packs, key=lambda p: "batch_norm=false" in packs[p][0])
    (broken / "checkpoint.pt").write_bytes(b"\x00 damaged")
    for summary in sweep.glob("*/summary.json"):
        summary.unlink()  # so that the re-launch has to run every pack again

    proc = run_cli(grid, env=env, check=False)
    # Every pack ran; the sweep still says, in its exit code and on stderr, which runs failed and why.
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert errors[-1].startswith("error: 2 of 4 runs of this sweep failed")
    assert sum("CheckpointError" in line and "corrupt" in line for line in errors) == 2
    for pack_dir, members in packs.items():
        for name in members:
            s = json.loads((sweep / name / "summary.json").read_text())
            if pack_dir == broken:
                assert s["status"] == "failed" and "corrupt" in s["error"], s
            else:
                assert s["status"] == "finished" and s["epochs_completed"] == 1, s


# ---------------------------------------------------------------- scripts/benchmark.py

def load_script(name: str = "benchmark"):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark():
    return load_script("benchmark")


def test_benchmark_runs_every_pipeline_and_writes_its_json(tmp_path, capsys):
    benchmark = load_benchmark()
    out = tmp_path / "bench.json"
    code = benchmark.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "1", "--ks", "1,2",
                           "--routes", "auto,grouped", "--packs", "2:vmap", "--batch-size", "8", "--workers", "0",
                           "--min-time", "0", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    names = {"reference", "single", "packed_1_loop", "packed_2_loop", "packed_1_grouped", "packed_2_grouped",
             "packed_2_vmap"}
    assert set(results["images_per_s"]) == names
    assert all(v["median"] > 0 for v in results["images_per_s"].values())
    assert results["git_commit"] == git_commit() and results["git_commit"]  # which code made the numbers
    assert results["speedup_vs_sequential"]["packed_2_grouped"] == pytest.approx(
        results["images_per_s"]["packed_2_grouped"]["median"] / results["images_per_s"]["single"]["median"])
    # auto on CPU is the loop route; each pipeline records what it ran.
    assert results["pipelines"]["packed_2_loop"] == {"kind": "pack", "members": 2, "route": "loop", "compile": None,
                                                     "asked": "auto"}
    best = results["best_route"]["2"]
    assert best["images_per_s"] == max(results["images_per_s"][n]["median"]
                                       for n in ("packed_2_loop", "packed_2_grouped", "packed_2_vmap"))
    table = capsys.readouterr().out
    assert "packed K=2 (grouped)" in table and "vs 2 sequential single runs" in table and "single run vs reference" in table
    # CPU: a first phase with the C library's own malloc, then the trainer's (trainer.keep_freed_memory).
    plain = results["images_per_s_default_malloc"]
    assert set(plain) == {"reference", "single"} and results["settings"]["keep_freed_memory"] is True
    assert results["trainer_vs_plain_reference"] == pytest.approx(
        results["images_per_s"]["single"]["median"] / plain["reference"]["median"])
    assert all(v["faults_per_step"] >= 0 for v in [*plain.values(), *results["images_per_s"].values()])
    roof = results["roofline"]
    assert roof["images_per_s_bound"] == pytest.approx(8 * roof["matmul_flops_per_s"] / roof["step_flops"])
    assert roof["fraction_of_bound"]["single"] == pytest.approx(
        results["images_per_s"]["single"]["median"] / roof["images_per_s_bound"])
    assert "roofline" in table and "trainer vs plain script" in table


def test_benchmark_profiles_each_pipeline(tmp_path, capsys):
    benchmark = load_benchmark()
    out = tmp_path / "bench.json"
    assert benchmark.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--rounds", "1", "--ks", "2",
                           "--routes", "loop", "--batch-size", "8", "--min-time", "0", "--no-reference", "--profile",
                           "--profile-steps", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    profiles = results["profile"]
    assert set(profiles) == {"single", "packed_2_loop"}
    single, pack = profiles["single"], profiles["packed_2_loop"]
    for name, prof in profiles.items():
        members = results["pipelines"][name]["members"]
        assert prof["step_ms"] == pytest.approx(1000 * 8 * members / results["images_per_s"][name]["median"])
        assert prof["device_busy_ms_per_step"] is None and prof["kernels_per_step"] is None  # no GPU here
        shares = [c["share"] for c in prof["costliest"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        assert any(c["op"] == "aten::convolution_backward" for c in prof["costliest"]), prof["costliest"]
    # The loop route runs each member's own forward and backward: about twice the host ops of one run.
    assert 1.4 * single["host_ops_per_step"] < pack["host_ops_per_step"] < 2.2 * single["host_ops_per_step"]
    assert "profile packed_2_loop:" in capsys.readouterr().out


def test_a_gpu_profile_counts_each_kernel_once_and_no_annotated_range_as_busy():
    """The CUDA branch of the profile, on the rows torch.profiler gives there: a kernel's time is on its own row and
    again as its aten op's self device time; a record_function range drawn on the GPU timeline spans the gaps."""
    from types import SimpleNamespace as Row

    from torch.autograd import DeviceType

    benchmark = load_benchmark()
    cuda, cpu = DeviceType.CUDA, DeviceType.CPU

    def kernel(name, start, end, annotation=False):
        return Row(name=name, key=name, device_type=cuda, is_user_annotation=annotation, cpu_parent=None, count=1,
                   time_range=Row(start=start, end=end), self_device_time_total=float(end - start))

    conv = Row(name="aten::cudnn_convolution", key="aten::cudnn_convolution", device_type=cpu, is_user_annotation=False,
               cpu_parent=None, count=2, self_device_time_total=300.0)
    region = Row(name="Torch-Compiled Region", key="Torch-Compiled Region", device_type=cpu, is_user_annotation=True,
                 cpu_parent=None, count=1, self_device_time_total=0.0)
    events = [conv, region, kernel("sm90_conv_fprop", 0, 100), kernel("sm90_conv_dgrad", 400, 600),
              kernel("Torch-Compiled Region", 0, 1000, annotation=True)]
    prof = benchmark.profile_summary(events, events, steps=1, step_ms=1.0, on_gpu=True)
    assert prof["device_busy_ms_per_step"] == pytest.approx(0.3)  # the kernels' 300 us, not the range's 1000
    assert prof["device_busy_share"] == pytest.approx(0.3) and prof["kernels_per_step"] == 2
    assert [(c["op"], c["share"]) for c in prof["costliest"]] == [("sm90_conv_dgrad", pytest.approx(2 / 3)),
                                                                  ("sm90_conv_fprop", pytest.approx(1 / 3))]
    assert [(c["op"], c["share"]) for c in prof["costliest_ops"]] == [("aten::cudnn_convolution", pytest.approx(1.0))]
    assert prof["host_ops_per_step"] == 1 and prof["time_of"] == "device"


TINY_BENCH = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "2", "--ks", "2", "--routes", "loop",
              "--batch-size", "8", "--min-time", "0", "--no-reference"]


def _failing(benchmark, monkeypatch, members: int, on_call: int, exc: BaseException) -> None:
    """Packs of `members` raise `exc` on their `on_call`-th call (0: when built); the rest measure as always."""
    real = benchmark.engine_pipeline

    def engine_pipeline(*args, **kw):
        if kw["members"] != members:
            return real(*args, **kw)
        if on_call == 0:
            raise exc
        measure, calls = real(*args, **kw), []

        def flaky(n):
            calls.append(n)
            if len(calls) == on_call:
                raise exc
            return measure(n)
        return flaky

    monkeypatch.setattr(benchmark, "engine_pipeline", engine_pipeline)


@pytest.mark.parametrize("on_call", [0, 2])
def test_a_pipeline_that_fails_is_recorded_and_the_others_are_still_measured(tmp_path, capsys, monkeypatch, on_call):
    benchmark = load_benchmark()
    _failing(benchmark, monkeypatch, 2, on_call, RuntimeError("CUDA error: an illegal memory access\nmore"))
    out = tmp_path / "bench.json"
    assert benchmark.main([*TINY_BENCH, "--json", str(out)]) == 1
    results = json.loads(out.read_text())
    assert results["failures"] == {"packed_2_loop": "RuntimeError: CUDA error: an illegal memory access"}
    assert results["complete"] is False and results["interrupted"] is None
    assert len(results["images_per_s"]["single"]["samples"]) == 2  # both rounds of the others
    if on_call == 0:  # failed to build: no rate
        assert "packed_2_loop" not in results["images_per_s"] and "2" not in results["best_route"]
    else:  # failed in round 2 (no warmup: call n is round n): round 1's rate stays, marked by the failure
        assert len(results["images_per_s"]["packed_2_loop"]["samples"]) == 1
    assert "FAILED packed_2_loop: RuntimeError: CUDA error" in capsys.readouterr().out


def test_an_interrupted_benchmark_writes_the_rounds_it_finished(tmp_path, capsys, monkeypatch):
    """The device check's timeout stops the benchmark with SIGINT: bench.json keeps what was measured."""
    benchmark = load_benchmark()
    _failing(benchmark, monkeypatch, 2, 2, KeyboardInterrupt())  # round 2 (no warmup), after the single run's
    out = tmp_path / "bench.json"
    assert benchmark.main([*TINY_BENCH, "--json", str(out)]) == 130
    results = json.loads(out.read_text())
    assert results["interrupted"] == "rounds" and results["complete"] is False
    assert len(results["images_per_s"]["packed_2_loop"]["samples"]) == 1
    assert len(results["images_per_s"]["single"]["samples"]) == 2  # round 2 had measured it before
    assert results["best_route"]["2"]["pipeline"] == "packed_2_loop"
    assert "INTERRUPTED during rounds" in capsys.readouterr().out


def test_a_benchmark_process_that_fails_is_reported_at_once_not_waited_for(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # importable by name: spawned processes import it
    benchmark = importlib.import_module("benchmark")
    args = benchmark.parse_args([*TINY_BENCH, "--threads", "1"])
    args.warmup_steps, args.timed_steps, args.min_time_s = 1, 1, 0.0
    start = time.monotonic()
    # The processes are told to train on a GPU this machine lacks: each fails while building.
    with pytest.raises(RuntimeError, match="a benchmark process failed: .*"):
        list(benchmark.processes_pipeline(args, torch.device("cuda"), 2, rounds=2))
    assert time.monotonic() - start < benchmark.PROCESS_WAIT_S / 2


def test_busy_time_is_the_union_of_kernel_intervals():
    benchmark = load_benchmark()
    assert benchmark.busy_time([]) == 0
    # Two streams overlapping, one kernel inside another, a gap, a kernel that touches the last one's end.
    assert benchmark.busy_time([(0, 10), (5, 12), (6, 7), (20, 25), (25, 26)]) == 12 + 6


def test_benchmark_times_concurrent_single_run_processes(tmp_path):
    """launcher=joblib's way to share a device: N processes; the benchmark's aggregate is the sum of their rates."""
    out = tmp_path / "bench.json"
    run_cli(["scripts/benchmark.py", "--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--ks", "2",
             "--batch-size", "8", "--min-time", "0", "--no-reference", "--processes", "2", "--threads", "1",
             "--rounds", "2", "--json", str(out)], module="", env=cli_env(tmp_path))
    results = json.loads(out.read_text())
    assert results["pipelines"]["processes_2"] == {"kind": "processes", "members": 2}
    assert len(results["images_per_s"]["processes_2"]["samples"]) == 2  # one start-up, two rounds
    assert results["images_per_s"]["processes_2"]["median"] > 0
    assert results["speedup_vs_sequential"]["processes_2"] == pytest.approx(
        results["images_per_s"]["processes_2"]["median"] / results["images_per_s"]["single"]["median"])
    assert results["single_vs_reference"] is None and "reference" not in results["images_per_s"]


def test_benchmark_step_flops_are_forward_and_backward_of_every_conv():
    import torch

    benchmark = load_benchmark()
    args = benchmark.parse_args(["--batch-size", "4"])
    # ResNet20's forward is 40,551,040 MACs per image (tests/test_models.py). Backward costs as much again for the
    # weight gradients and again for the input gradients, except for the first conv's input: the image needs none.
    forward = 2 * 40_551_040
    stem_forward = 2 * 32 * 32 * 16 * 3 * 9
    flops = benchmark.step_flops(args, torch.device("cpu"), benchmark.setup_precision("fp32", torch.device("cpu")))
    assert flops == 4 * (3 * forward - stem_forward)


def test_benchmark_without_the_malloc_setting_has_one_phase(tmp_path):
    out = tmp_path / "bench.json"
    assert load_benchmark().main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "1", "--ks", "1",
                                  "--batch-size", "8", "--workers", "0", "--min-time", "0", "--no-keep-freed-memory",
                                  "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["images_per_s_default_malloc"] is None and results["settings"]["keep_freed_memory"] is False
    assert results["trainer_vs_plain_reference"] == results["single_vs_reference"]


@pytest.mark.parametrize("bad, start", [(["--ks", "4,x"], "error: --ks"), (["--routes", "vmap,fast"], "error: --routes"),
                                        (["--packs", "12:grouped:turbo"], "error: --packs mode"),
                                        (["--compile", "fast"], "error: --compile")])
def test_benchmark_bad_option_is_a_one_line_error(bad, start, capsys):
    assert load_benchmark().main(["--device", "cpu", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(start) and "\n" not in err


def test_a_bad_launcher_option_is_a_one_line_error(tmp_path):
    proc = run_cli([*GRID, "launcher=packed", "hydra.launcher.packed_init=mine", f"hydra.sweep.dir={tmp_path}"],
                   env=cli_env(tmp_path, OMP_NUM_THREADS="1"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: packed_init must be shared or own (got 'mine'); e.g. "
                                                    "hydra.launcher.packed_init=shared")
    assert not list(tmp_path.glob("*/summary.json"))


def test_optimizer_benchmark_times_every_variant_and_records_its_code(tmp_path):
    bench = load_script("bench_optimizers")
    out = tmp_path / "opt.json"
    payload = bench.main(["--device", "cpu", "--steps", "1", "--repeats", "1", "--warmup", "0", "--packs", "2",
                          "--json", str(out)])
    assert json.loads(out.read_text()) == payload
    assert payload["git_commit"] == git_commit() and payload["date"]
    assert {"adam", "adamw", "adamp", "torch_adamw", "fused_adamw_x2", "fused_adamw_x2_per_member"} <= set(
        payload["results"])
    fused = payload["results"]
    assert fused["fused_adamw_x2_per_member"]["ms_per_step"] == pytest.approx(fused["fused_adamw_x2"]["ms_per_step"] / 2)
    assert payload["results"]["torch_adamw"]["ratio_to_torch_adamw"] == pytest.approx(1.0)
    assert all(r["ms_per_step"] > 0 for r in payload["results"].values())


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--repeats", "0"], ["--warmup", "-1"], ["--threads", "0"]])
def test_optimizer_benchmark_rejects_counts_out_of_range(bad, capsys):
    bench = load_script("bench_optimizers")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", *bad])
    assert exit_info.value.code == 2 and f"{bad[0]} must be >=" in capsys.readouterr().err
