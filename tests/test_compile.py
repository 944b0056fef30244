"""trainer.compile: the training step compiles whole (fullgraph, so nothing in it syncs), never recompiles while
the lr moves, evaluates a padded last batch with the same graph, and matches the eager step.

Float64, because in float32 the compiled and eager steps round differently and a ReLU whose input sits at
zero can then flip in one and not the other: after a few steps a member's weights differ by ~1e-3 for
that reason alone. In float64 they agree to ~1e-15.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from cli import cli_env, run_cli
from omegaconf import OmegaConf

import data as datasets
import models
import optimizers
from experiments.epoch import TrainStep, evaluate, train_epoch
from experiments.pack_optimizer import PackOptimizer
from experiments.packed_models import ModelPack

COSINE = OmegaConf.create({"name": "cosine", "warmup_epochs": 0, "min_factor": 0.1})
STEPS, BATCH, SIZE = 5, 8, 16


def batches(n: int, seed: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
             .contiguous(memory_format=torch.channels_last).to(device),
             torch.randint(0, 10, (BATCH,), generator=g).to(device))
            for _ in range(n)]


def eval_loader(seed: int, device: str = "cpu") -> datasets.DeviceLoader:
    """12 test images in batches of 8: the second batch is padded to 8 (labels -100) when pad_last is on."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (12, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return datasets.DeviceLoader(images, torch.randint(0, 10, (12,), generator=g), batch_size=BATCH, train=False,
                                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device=device, channels_last=True,
                                 dtype=torch.float64, pad_last=True)


def make_step(route: str, members: int, mode: str | None, device: str = "cpu") -> TrainStep:
    nets = []
    for k in range(members):
        torch.manual_seed(k)
        nets.append(models.build_model(8, True, 10).to(device, torch.float64).to(memory_format=torch.channels_last))
    pack = ModelPack(nets, route=route)
    kinds = [optimizers.AdamW, optimizers.AdamP]
    opts = [kinds[k % 2](optimizers.param_groups(net, 1e-2), lr=1e-3 * (k + 1), weight_decay=1e-2)
            for k, net in enumerate(nets)]
    step = TrainStep(pack, PackOptimizer(pack, opts, COSINE, STEPS, 1), [1.0, 10.0][:members])
    if mode is not None:
        step.compile(mode)
    return step


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30)).item()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


# On a GPU only the CUDA-graph case (what the full-scale grid may run on): each compile costs tens of seconds there.
COMPILED_CASES = [("loop", 1, "default", "cpu"), ("grouped", 2, "default", "cpu"), ("grouped", 2, "reduce-overhead", "cpu")]
COMPILED_IDS = ["single_run", "pack_grouped", "pack_grouped_reduce_overhead"]
if torch.cuda.is_available():
    COMPILED_CASES.append(("grouped", 2, "reduce-overhead", "cuda"))
    COMPILED_IDS.append("cuda_pack_grouped_reduce_overhead")


@pytest.mark.parametrize("route, members, mode, device", COMPILED_CASES, ids=COMPILED_IDS)
def test_the_compiled_step_is_one_graph_that_matches_eager(route, members, mode, device, fresh_dynamo):
    # reduce-overhead on a CPU records no CUDA graphs, but runs what sets them up: the static addresses, the
    # step boundaries, static shapes. On a GPU it records and replays them.
    data = batches(STEPS, seed=0, device=device)
    eager = make_step(route, members, None, device)
    eager_rows = train_epoch(eager, data)
    compiled = make_step(route, members, mode, device)  # every part with fullgraph=True: a graph break is an error
    first = train_epoch(compiled, data[:1])
    # Steps 2-5 move eta_t (cosine) and must replay the graphs compiled in step 1.
    torch._dynamo.config.error_on_recompile = True
    rest = train_epoch(compiled, data[1:])
    torch._dynamo.config.error_on_recompile = False
    want_eval = evaluate(eager.pack, eval_loader(1, device))
    got_eval = evaluate(compiled.pack, eval_loader(1, device))  # the padded last batch reuses the full batch's graph
    evaluate(compiled.pack, eval_loader(2, device))
    # Forward-and-loss for training and for evaluation (grad mode differs), metric sums, optimizer update.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 4
    for k in range(members):
        assert relative_error(compiled.pack.flat_params[k], eager.pack.flat_params[k]) <= 1e-10, k
    for name, want in eager.pack.buffers.items():
        assert relative_error(compiled.pack.buffers[name].double(), want.double()) <= 1e-10, name
    for k in range(members):
        train_loss = (first[k]["train_loss"] * 1 + rest[k]["train_loss"] * (STEPS - 1)) / STEPS
        assert train_loss == pytest.approx(eager_rows[k]["train_loss"], rel=1e-10)
        assert got_eval[k]["test_loss"] == pytest.approx(want_eval[k]["test_loss"], rel=1e-10)
        assert got_eval[k]["test_acc"] == want_eval[k]["test_acc"]
    assert compiled.optimizer.lr(0) == eager.optimizer.lr(0) and compiled.optimizer.steps == STEPS


def test_each_batch_shape_gets_its_own_static_graph(fresh_dynamo):
    """dynamic=False: a second shape compiles a second static graph. Left to torch.compile's default, the second
    shape would compile one symbolic-shape graph (slower for every later call), and a third would reuse it."""
    pack = make_step("grouped", 2, "default").pack
    images = torch.randint(0, 256, (8, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    new_graphs = []
    for batch in (8, 4, 2):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        evaluate(pack, datasets.DeviceLoader(images, torch.zeros(8, dtype=torch.int64), batch_size=batch, train=False,
                                             mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", channels_last=True,
                                             dtype=torch.float64))
        new_graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
    assert new_graphs == [1, 1, 1]


def test_reduce_overhead_marks_the_weights_state_and_gradients_static_at_fixed_addresses(fresh_dynamo):
    """Under reduce-overhead, what the compiled step reads or writes in place is marked static (CUDA graphs would
    copy an unmarked input into their own memory on every replay), and each gradient stays the same view of the
    pack's one gradient buffer step after step: the addresses the graphs recorded are the ones written."""
    step = make_step("grouped", 2, "reduce-overhead")
    pack, optimizer = step.pack, step.optimizer
    views = {id(g): g.data_ptr() for g in pack._grad_views}
    train_epoch(step, batches(2, seed=5))
    marked = [*pack.params.values(), *pack.buffers.values(), *pack._grad_views, pack.flat_params, pack.flat_grads,
              *optimizer.state]
    # Unguarded: a guard on each address would recompile for every other tensor the function sees.
    assert {getattr(t, "_dynamo_static_input_type", None) for t in marked} == {"unguarded"}
    assert {getattr(t, "_dynamo_static_input_type", None)
            for t in (step.loss_sum, step.correct, step.grad_norm_sum, step.multiplier_tensor)} == {"unguarded"}
    grads = [p.grad for member in pack.members for p in member.parameters()]
    assert {id(g): g.data_ptr() for g in grads} == views
    assert all(g.untyped_storage().data_ptr() == pack.flat_grads.untyped_storage().data_ptr() for g in grads)
    assert pack.flat_grads.abs().sum() > 0  # the backward passes wrote into that buffer


def test_a_padded_batch_counts_only_its_real_images():
    loader = eval_loader(3)
    batches_seen = list(loader)
    assert [x.shape[0] for x, _ in batches_seen] == [8, 8] and (batches_seen[1][1][4:] == -100).all()
    unpadded = datasets.DeviceLoader(loader.images, loader.labels, batch_size=BATCH, train=False, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, device="cpu", channels_last=True, dtype=torch.float64)
    torch.manual_seed(0)
    pack = ModelPack([models.build_model(8, True, 10).to(torch.float64).to(memory_format=torch.channels_last)])
    (padded,), (plain,) = evaluate(pack, loader), evaluate(pack, unpadded)
    assert padded["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-12) and padded["test_acc"] == plain["test_acc"]


def test_a_compiled_packed_sweep_runs_from_the_command_line(tmp_path):
    """trainer.compile for packs, through launcher=packed, in float32 as a user runs it."""
    sweep = tmp_path / "sweep"
    run_cli(["-m", "data=synthetic", "data.train_size=64", "data.test_size=20", "trainer.batch_size=16",
             "trainer.epochs=2", "logger=none", "trainer.compile=default", "model.depth=20", "optimizer=adamw,adamp",
             "launcher=packed", "hydra.launcher.route=loop", f"hydra.sweep.dir={sweep}"],
            env=cli_env(tmp_path, OMP_NUM_THREADS="2"), timeout=1200)
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 2 and all(s["status"] == "finished" and s["epochs_completed"] == 2 for s in summaries)
    info = json.loads(next((sweep / ".packs").glob("*/pack.json")).read_text())
    assert info["compile"] == "default" and info["route"] == "loop"


def test_a_bad_compile_mode_is_a_one_line_error(tmp_path):
    proc = run_cli(["data=synthetic", "logger=none", "trainer.compile=fastest", f"hydra.run.dir={tmp_path / 'run'}"],
                   env=cli_env(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ConfigError: trainer.compile must be false or one "
                                                           "of default, reduce-overhead, max-autotune")


@pytest.mark.parametrize("route, mode, refused", [("streams", "reduce-overhead", True), ("streams", "default", False),
                                                  ("loop", "reduce-overhead", False)])
def test_cuda_graphs_are_refused_on_the_streams_route(route, mode, refused):
    """CUDA graph trees plan one memory pool for graphs replayed in turn on one stream, not at once on K streams."""
    from experiments.config_checks import ConfigError

    pack = ModelPack([models.CifarResNet(depth=8, batch_norm=False) for _ in range(2)], route=route)
    if refused:
        with pytest.raises(ConfigError, match="route=streams cannot run CUDA graphs .*use hydra.launcher.route=loop"):
            pack.compile(mode)
        assert pack.compile_mode is None
    else:
        pack.compile(mode)
        assert pack.compile_mode == mode
