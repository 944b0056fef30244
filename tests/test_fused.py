"""The fused pack optimizer (optimizers/fused.py, experiments/pack_optimizer.py) against separate optimizers.

Each member of a pack must end where its own optimizer from optimizers/ ends: in float64 to 1e-12
relative over 30+ steps of a decaying schedule, in float32 to the rounding of the foreach path (on
a CPU that is the very same bits, since every row gets the same operations in the same order).
No hydra here, so that these run on a bare GPU machine too (scripts/device_check.sh).
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import models
import optimizers
from experiments.pack_optimizer import CheckpointMismatch, PackOptimizer
from experiments.packed_models import ModelPack
from experiments.schedules import ScheduleSpec, build_scheduler, eta, eta_on_device
from optimizers.fused import fused_form

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEVICE = pytest.mark.parametrize("device", DEVICES)
# Warmup, then cosine down to 0.1: eta_t moves every step.
SCHEDULE = OmegaConf.create({"name": "cosine", "warmup_epochs": 1, "min_factor": 0.1})
STEPS_PER_EPOCH, EPOCHS = 8, 4  # 32 steps

# Every optimizer of the package, with lr, weight decay and exclude_norm_and_bias differing between members of
# one kind; equal kinds sit next to each other so that they share a fused update, except the last AdamW, which
# a different kind separates from the first (its own block).
MEMBERS = [
    (optimizers.AdamW, dict(lr=1e-3, weight_decay=5e-2), False),
    (optimizers.AdamW, dict(lr=3e-3, weight_decay=1e-2), True),
    (optimizers.AdamP, dict(lr=2e-3, weight_decay=1e-3), False),
    (optimizers.AdamP, dict(lr=1e-2, weight_decay=1e-4), True),
    (optimizers.AdamL2, dict(lr=1e-3, weight_decay=5e-4), False),
    (optimizers.ProxAdam, dict(lr=1e-3, weight_decay=5e-5), True),
    (optimizers.DecoupledAdamW, dict(lr=2e-3, weight_decay=1e-4), False),
    (optimizers.Adam, dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6), False),
    (optimizers.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4), False),
    (optimizers.SGDW, dict(lr=0.05, momentum=0.5, weight_decay=5e-4), True),
    (optimizers.SGD, dict(lr=0.1, momentum=0.0, weight_decay=0.0), False),
    (optimizers.AdamW, dict(lr=5e-4, weight_decay=1e-1), False),
]


def build(seed: int, device: str, dtype: torch.dtype, batch_norm: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model(8, batch_norm, 10).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)


def make_optimizer(cls, kwargs, exclude, model):
    return cls(optimizers.param_groups(model, kwargs.get("weight_decay", 0.0), exclude_norm_and_bias=exclude),
               **kwargs)


def gradients(model: torch.nn.Module, steps: int, seed: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in model.parameters()]
            for _ in range(steps)]


def separate_run(seed, cls, kwargs, exclude, grads, device, dtype):
    """The member as its own model, optimizer and LambdaLR: the reference."""
    model = build(seed, device, dtype)
    opt = make_optimizer(cls, kwargs, exclude, model)
    sched = build_scheduler(opt, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
    return model, opt, sched


def fused_run(members, grads_per_member, device, dtype, steps=None):
    nets = [build(k, device, dtype) for k in range(len(members))]
    pack = ModelPack(nets, route="loop")
    opts = [make_optimizer(cls, kw, ex, net) for net, (cls, kw, ex) in zip(nets, members)]
    pack_opt = PackOptimizer(pack, opts, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    for step in range(steps if steps is not None else len(grads_per_member[0])):
        for net, grads in zip(nets, grads_per_member):
            for p, g in zip(net.parameters(), grads[step]):
                p.grad.copy_(g)  # the member's .grad is its view of the pack's gradient buffer
        assert_step_sizes_are_the_lrs(pack_opt)
        pack_opt.step()
    return pack, pack_opt


def assert_step_sizes_are_the_lrs(pack_opt: PackOptimizer) -> None:
    """The device-made step sizes (trainer.magnitude_stats_every) are each member's lr for the next step."""
    got = pack_opt.step_sizes()
    assert got.device == pack_opt.t.device and got.dtype == torch.float64
    want = torch.tensor([pack_opt.lr(k) for k in range(pack_opt.pack.size)], dtype=torch.float64)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-15, atol=0)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.vector_norm((got - want).double()) / torch.linalg.vector_norm(want.double())).item()


def max_ulps(got: torch.Tensor, want: torch.Tensor) -> int:
    """Largest distance in units in the last place (float32) between two tensors."""
    a, b = got.float().contiguous().view(torch.int32).long(), want.float().contiguous().view(torch.int32).long()
    a = torch.where(a < 0, -(2**31) - a, a)
    b = torch.where(b < 0, -(2**31) - b, b)
    return int((a - b).abs().max())


def test_every_optimizer_of_the_package_has_a_fused_form_and_kinds_share_it():
    nets = [build(0, "cpu", torch.float32) for _ in range(3)]
    forms = [fused_form(make_optimizer(cls, kw, ex, n)) for n, (cls, kw, ex) in zip(nets, MEMBERS[:3])]
    assert all(f is not None for f in forms)
    assert forms[0][0] == forms[1][0] != forms[2][0]  # AdamW and AdamW share one update; AdamP has its own
    assert fused_form(torch.optim.Adam(nets[0].parameters())) is None  # a foreign class steps by itself


def every_member_both_ways(device, dtype, seed):
    """Every member of MEMBERS on its own (the references) and all of them as one fused pack, on the same gradients."""
    steps = STEPS_PER_EPOCH * EPOCHS
    refs, grads = [], []
    for k, (cls, kwargs, exclude) in enumerate(MEMBERS):
        grads.append(gradients(build(k, device, dtype), steps, seed=seed + k))
        refs.append(separate_run(k, cls, kwargs, exclude, grads[-1], device, dtype))
    return refs, *fused_run(MEMBERS, grads, device, dtype)


@DEVICE
def test_fused_members_equal_their_own_optimizers_in_float64(device):
    refs, pack, pack_opt = every_member_both_ways(device, torch.float64, seed=100)
    assert len(pack_opt.blocks) == 10 and not pack_opt.fallback  # runs of equal kinds fused, nothing left over
    for k, (model, opt, sched) in enumerate(refs):
        for (name, want), got in zip(model.named_parameters(), pack.members[k].parameters()):
            assert relative_error(got.detach(), want.detach()) <= 1e-12, (k, MEMBERS[k][0].__name__, name)
        assert pack_opt.lr(k) == opt.param_groups[0]["lr"]  # what metrics.csv's lr column reads


@DEVICE
def test_fused_members_equal_their_own_optimizers_in_float32(device):
    refs, pack, _ = every_member_both_ways(device, torch.float32, seed=200)
    for k, (model, _, _) in enumerate(refs):
        want = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        got = torch.cat([p.detach().reshape(-1) for p in pack.members[k].parameters()])
        if device == "cpu":
            assert torch.equal(got, want), (k, MEMBERS[k][0].__name__, max_ulps(got, want))
        else:
            # CUDA's foreach kernels and the broadcast ones round differently (a multiply by the reciprocal of a
            # scalar against a true division by a [K] tensor; a fused multiply-add or two roundings), which moves a
            # weight by a few units of its last place per step. Measured against the whole member, not value by
            # value: near zero a 1e-10 difference is thousands of ulps of the value. 64 eps is 7.6e-6 of the norm; a
            # member stepped with another member's lr or weight decay is off by far more (decoupled decay alone moves
            # it by about lr x wd x 32 steps, 1.6e-3 for the first member).
            assert relative_error(got, want) <= 64 * torch.finfo(torch.float32).eps, (k, MEMBERS[k][0].__name__)


def test_a_single_fused_adamw_is_torch_adamw():
    """K = 1 on a plain model: the fused AdamW step is torch.optim.AdamW's, to the bit."""
    steps = 30
    grads = gradients(build(0, "cpu", torch.float32), steps, seed=7)
    model = build(0, "cpu", torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2, foreach=False)
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
    constant = OmegaConf.create({"name": "constant", "warmup_epochs": 0})
    net = build(0, "cpu", torch.float32)
    pack = ModelPack([net])
    pack_opt = PackOptimizer(pack, [optimizers.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)], constant,
                             steps, 1)
    for step_grads in grads:
        for p, g in zip(net.parameters(), step_grads):
            p.grad.copy_(g)
        pack_opt.step()
    for got, want in zip(net.parameters(), model.parameters()):
        assert torch.equal(got, want)


def test_schedules_on_the_device_are_the_host_schedules_exactly():
    total, per_epoch = 300, 37
    for cfg in [dict(name="constant", warmup_epochs=0), dict(name="constant", warmup_epochs=1.5),
                dict(name="cosine", warmup_epochs=0, min_factor=0.1), dict(name="cosine", warmup_epochs=2, min_factor=0),
                dict(name="multistep", warmup_epochs=0, milestones=[0.5, 0.75], gamma=0.1),
                dict(name="multistep", warmup_epochs=1, milestones=[0.3], gamma=0.5)]:
        spec = ScheduleSpec.of(OmegaConf.create(cfg))
        on_device = [eta_on_device(torch.tensor([float(t)], dtype=torch.float64), total, per_epoch, spec).item()
                     for t in range(total + 5)]
        assert on_device == [eta(t, total, per_epoch, spec) for t in range(total + 5)], cfg


@DEVICE
def test_member_state_dicts_are_what_their_own_optimizers_write(device):
    steps = 11
    grads = [gradients(build(k, device, torch.float32), steps, seed=300 + k) for k in range(len(MEMBERS))]
    pack, pack_opt = fused_run(MEMBERS, grads, device, torch.float32)
    for k, (cls, kwargs, exclude) in enumerate(MEMBERS):
        _, opt, sched = separate_run(k, cls, kwargs, exclude, grads[k], device, torch.float32)
        got_opt, got_sched = pack_opt.member_state_dict(k)
        want_opt = opt.state_dict()
        assert got_opt["param_groups"] == want_opt["param_groups"], k
        assert got_sched == sched.state_dict(), k
        assert got_opt["state"].keys() == want_opt["state"].keys(), k
        for i, want in want_opt["state"].items():
            assert got_opt["state"][i].keys() == want.keys(), (k, i)
            for key, value in want.items():
                got = got_opt["state"][i][key]
                if torch.is_tensor(value):
                    assert got.stride() == value.stride() and torch.allclose(got, value, rtol=1e-5, atol=1e-7), (k, key)
                else:
                    assert got == value, (k, key)


@DEVICE
def test_a_member_restored_from_its_state_dict_goes_on_as_if_never_stopped(device):
    steps, cut = 20, 9
    grads = [gradients(build(k, device, torch.float64), steps, seed=400 + k) for k in range(len(MEMBERS))]
    straight, _ = fused_run(MEMBERS, grads, device, torch.float64)
    first, first_opt = fused_run(MEMBERS, grads, device, torch.float64, steps=cut)
    saved = [first_opt.member_state_dict(k) for k in range(len(MEMBERS))]
    model_states = [{n: t.clone() for n, t in m.state_dict().items()} for m in first.members]

    nets = [build(50 + k, device, torch.float64) for k in range(len(MEMBERS))]  # other weights, overwritten below
    pack = ModelPack(nets)
    opts = [make_optimizer(cls, kw, ex, net) for net, (cls, kw, ex) in zip(nets, MEMBERS)]
    resumed = PackOptimizer(pack, opts, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    resumed.set_steps(cut)
    for k, (opt_state, sched_state) in enumerate(saved):
        nets[k].load_state_dict(model_states[k])
        resumed.load_member_state_dict(k, opt_state, sched_state, active=True, where="test")
    for step in range(cut, steps):
        for net, g in zip(nets, grads):
            for p, gk in zip(net.parameters(), g[step]):
                p.grad.copy_(gk)
        resumed.step()
    assert torch.equal(pack.flat_params, straight.flat_params)


def test_a_stopped_member_keeps_its_weights_and_state_and_the_others_go_on():
    steps = 12
    grads = [gradients(build(k, "cpu", torch.float64), steps, seed=500 + k) for k in range(3)]
    members = MEMBERS[:3]
    nets = [build(k, "cpu", torch.float64) for k in range(3)]
    pack = ModelPack(nets)
    opts = [make_optimizer(cls, kw, ex, net) for net, (cls, kw, ex) in zip(nets, members)]
    pack_opt = PackOptimizer(pack, opts, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    frozen = None
    for step in range(steps):
        if step == 5:
            pack_opt.set_active([True, False, True])
            frozen = pack.flat_params[1].clone(), [s[1].clone() for s in pack_opt.state]
        for net, g in zip(nets, grads):
            for p, gk in zip(net.parameters(), g[step]):
                p.grad.copy_(gk)
        pack_opt.step()
    assert torch.equal(pack.flat_params[1], frozen[0])
    assert all(torch.equal(s[1], f) for s, f in zip(pack_opt.state, frozen[1]))
    opt_state, sched_state = pack_opt.member_state_dict(1)
    assert sched_state["last_epoch"] == 5 and opt_state["state"][0]["step"] == 5.0
    for k in (0, 2):
        model, _, _ = separate_run(k, *members[k], grads[k], "cpu", torch.float64)
        for got, want in zip(pack.members[k].parameters(), model.parameters()):
            assert torch.equal(got, want), k


def test_a_foreign_optimizer_class_steps_on_its_own_beside_fused_members():
    steps = 10
    grads = [gradients(build(k, "cpu", torch.float64), steps, seed=600 + k) for k in range(2)]
    nets = [build(k, "cpu", torch.float64) for k in range(2)]
    pack = ModelPack(nets)
    opts = [optimizers.AdamW(nets[0].parameters(), lr=1e-3, weight_decay=1e-2),
            torch.optim.Adam(nets[1].parameters(), lr=1e-3)]
    pack_opt = PackOptimizer(pack, opts, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    assert pack_opt.fallback == [1]
    for step in range(steps):
        for net, g in zip(nets, grads):
            for p, gk in zip(net.parameters(), g[step]):
                p.grad.copy_(gk)
        assert_step_sizes_are_the_lrs(pack_opt)
        pack_opt.step()
    model = build(1, "cpu", torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = build_scheduler(opt, SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
    for step_grads in grads[1]:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
    for got, want in zip(nets[1].parameters(), model.parameters()):
        assert torch.equal(got, want)
    assert pack_opt.lr(1) == opt.param_groups[0]["lr"]


def test_a_state_dict_of_other_hyperparameters_or_another_step_is_refused():
    grads = [gradients(build(0, "cpu", torch.float32), 3, seed=1)]
    _, pack_opt = fused_run(MEMBERS[:1], grads, "cpu", torch.float32)  # AdamW lr 1e-3, three steps
    opt_state, sched_state = pack_opt.member_state_dict(0)

    def fresh(lr: float, steps: int) -> PackOptimizer:
        net = build(0, "cpu", torch.float32)
        pack = ModelPack([net])  # first: the pack puts views of its buffer in place of the net's parameters
        opt = optimizers.AdamW(optimizers.param_groups(net, 5e-2), lr=lr, weight_decay=5e-2)
        fresh_opt = PackOptimizer(pack, [opt], SCHEDULE, STEPS_PER_EPOCH, EPOCHS)
        fresh_opt.set_steps(steps)
        return fresh_opt

    with pytest.raises(CheckpointMismatch, match="initial_lr=0.001, this run has 0.002"):
        fresh(2e-3, 3).load_member_state_dict(0, opt_state, sched_state, active=True, where="x.pt")
    with pytest.raises(CheckpointMismatch, match="taken 3 steps, its pack 4"):
        fresh(1e-3, 4).load_member_state_dict(0, opt_state, sched_state, active=True, where="x.pt")
    fresh(1e-3, 3).load_member_state_dict(0, opt_state, sched_state, active=True, where="x.pt")  # its own: fine
