"""Optimizers against independent float64 closed forms of SPEC.md, against torch.optim, and their API."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import optimizers
from optimizers import (
    OPTIMIZERS,
    SGD,
    SGDW,
    Adam,
    AdamL2,
    AdamP,
    AdamW,
    DecoupledAdamW,
    ProxAdam,
    param_groups,
    wd_paper_to_torch,
    wd_torch_to_paper,
)

ADAM_NAMES = ["adam", "adaml2", "adamw", "decoupled_adamw", "proxadam", "adamp"]
ALL_NAMES = ADAM_NAMES + ["sgd", "sgdw"]
SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]
GROUP_OF = [0, 0, 1, 1]  # tensor i -> group
GROUP_HPARAMS = [dict(lr=1e-2, weight_decay=0.05), dict(lr=3e-3, weight_decay=0.02)]
SGD_GROUP_HPARAMS = [dict(lr=0.1, weight_decay=0.05), dict(lr=0.03, weight_decay=0.02)]
BETAS, EPS, MOMENTUM, GAMMA = (0.9, 0.99), 1e-8, 0.9, 0.95
STEPS = 35
EXACT = dict(rtol=1e-13, atol=1e-15)
# Every accelerator the machine has, besides the CPU: CI runs the CPU cases, a GPU machine the CUDA ones too.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def initial_params(dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]


def gradients(ws: list[torch.Tensor], t: int) -> list[torch.Tensor]:
    """g_t(w) = 0.5*w + noise_t: depends on the iterate, so any update error propagates."""
    gen = torch.Generator().manual_seed(1000 + t)
    return [0.5 * w + torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype) for w in ws]


def hparams_for(name: str) -> list[dict]:
    return SGD_GROUP_HPARAMS if name.startswith("sgd") else GROUP_HPARAMS


def build(name_or_cls, params: list[torch.Tensor], decay: bool = True, **kwargs) -> torch.optim.Optimizer:
    """Our optimizer (registry name) or a torch.optim class over the two test groups; decay=False drops wd."""
    cls = OPTIMIZERS[name_or_cls] if isinstance(name_or_cls, str) else name_or_cls
    is_sgd = cls in (SGD, SGDW, torch.optim.SGD)
    hp = SGD_GROUP_HPARAMS if is_sgd else GROUP_HPARAMS
    groups = [{"params": [p for p, g in zip(params, GROUP_OF) if g == k], **hp[k]} for k in range(2)]
    if cls is Adam or not decay:
        for group in groups:
            group.pop("weight_decay")
    extra = dict(momentum=MOMENTUM) if is_sgd else dict(betas=BETAS, eps=EPS)
    return cls(groups, **{**extra, **kwargs})


def run(name_or_cls, steps: int = STEPS, dtype=torch.float64, decay: bool = True, device: str = "cpu", **kwargs):
    """Trajectory (list of per-step parameter lists, on the CPU) of an optimizer with an ExponentialLR schedule."""
    params = [w.to(device).requires_grad_() for w in initial_params(dtype)]
    opt = build(name_or_cls, params, decay, **kwargs)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, GAMMA)
    trajectory = []
    for t in range(1, steps + 1):
        for p, g in zip(params, gradients([p.detach().cpu() for p in params], t)):
            p.grad = g.to(device)
        opt.step()
        sched.step()
        trajectory.append([p.detach().cpu().clone() for p in params])
    return trajectory


def reference(name: str, steps: int = STEPS) -> list[list[torch.Tensor]]:
    """SPEC.md's update rules, written out per tensor in float64, independently of the package."""
    ws = initial_params()
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    hp = hparams_for(name)
    b1, b2 = BETAS
    trajectory = []
    for t in range(1, steps + 1):
        eta = GAMMA ** (t - 1)
        gs = gradients(ws, t)
        new = []
        for i, (w, g) in enumerate(zip(ws, gs)):
            alpha, lam = hp[GROUP_OF[i]]["lr"], hp[GROUP_OF[i]]["weight_decay"]
            lr = alpha * eta
            if name == "sgd":
                ms[i] = MOMENTUM * ms[i] + (g + lam * w)
                new.append(w - lr * ms[i])
                continue
            if name == "sgdw":
                ms[i] = MOMENTUM * ms[i] + g
                new.append((1 - eta * lam) * w - lr * ms[i])
                continue
            if name == "adaml2":
                g = g + lam * w
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat, v_hat = ms[i] / (1 - b1**t), vs[i] / (1 - b2**t)
            d = EPS + torch.sqrt(v_hat)
            new.append(reference_decay(name, w, u=lr * m_hat / d, d=d, lr=lr, eta=eta, lam=lam))
        ws = new
        trajectory.append([w.clone() for w in ws])
    return trajectory


def reference_decay(name: str, w, u, d, lr: float, eta: float, lam: float):
    """The SPEC.md table: new w from w, the Adam direction u_t and D_t."""
    if name in ("adam", "adaml2"):
        return w - u
    if name == "adamw":
        return (1 - lr * lam) * w - u
    if name == "decoupled_adamw":
        return (1 - eta * lam) * w - u
    if name == "proxadam":
        return (w - u) / (1 + lam * eta)
    if name == "adamp":
        return (w - u) / (1 + lr * lam / d)
    raise KeyError(name)


def last_bits(dtype: torch.dtype, ulps: int = 64) -> dict[str, float]:
    """Tolerance of some units in the last place of `dtype` (float64: 1.4e-14), for values of order one."""
    eps = torch.finfo(dtype).eps
    return dict(rtol=ulps * eps, atol=ulps * eps)


def assert_trajectories(actual, expected, exact: bool = False, tol: dict | None = None) -> None:
    assert len(actual) == len(expected)
    for t, (a_ws, e_ws) in enumerate(zip(actual, expected), start=1):
        for a, e in zip(a_ws, e_ws):
            if exact:
                assert torch.equal(a, e), f"step {t}: max diff {(a - e).abs().max().item():.3e}"
            else:
                torch.testing.assert_close(a, e, **(tol or EXACT), msg=lambda m, t=t: f"step {t}: {m}")


# ---- update rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_matches_closed_form_reference(name, foreach, device):
    assert_trajectories(run(name, foreach=foreach, device=device), reference(name))


def test_variants_differ_from_each_other():
    finals = {name: torch.cat([w.flatten() for w in run(name, steps=10)[-1]]) for name in ADAM_NAMES}
    for a in ADAM_NAMES:
        for b in ADAM_NAMES:
            if a < b:
                assert not torch.allclose(finals[a], finals[b], rtol=1e-9, atol=0), (a, b)


@pytest.mark.parametrize("ours_foreach", [True, False])
@pytest.mark.parametrize("torch_foreach", [True, False])
@pytest.mark.parametrize("ours, theirs, decay", [
    (AdamW, torch.optim.AdamW, True), (AdamL2, torch.optim.Adam, True), (Adam, torch.optim.Adam, False),
    (SGD, torch.optim.SGD, True), (SGDW, torch.optim.SGD, False),
])
@pytest.mark.parametrize("device", DEVICES)
def test_equals_torch_bitwise(ours, theirs, decay, ours_foreach, torch_foreach, device):
    # On CUDA torch's own foreach Adam rounds differently from its per-tensor Adam (on an H200, torch 2.11:
    # 5.6e-17 apart after 14 float64 steps), so against it the bar there is 64 units in the last place.
    # Everywhere else, including torch's per-tensor path on CUDA, the trajectories must be identical.
    bitwise = not (device == "cuda" and torch_foreach and theirs is not torch.optim.SGD)
    for dtype in (torch.float64, torch.float32):
        expected = run(theirs, dtype=dtype, decay=decay, foreach=torch_foreach, device=device)
        assert_trajectories(run(ours, dtype=dtype, decay=decay, foreach=ours_foreach, device=device), expected,
                            exact=bitwise, tol=last_bits(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_foreach_and_per_tensor_paths_agree_bitwise(name, device):
    for dtype in (torch.float64, torch.float32):
        assert_trajectories(run(name, dtype=dtype, foreach=True, device=device),
                            run(name, dtype=dtype, foreach=False, device=device), exact=True)


def run_intermittent(name_or_cls, foreach: bool, decay: bool = True) -> list[list[torch.Tensor]]:
    """Tensors 1 and 3 get gradients only every third step, so step counts differ within each group."""
    params = [w.clone().requires_grad_() for w in initial_params()]
    opt = build(name_or_cls, params, decay, foreach=foreach)
    trajectory = []
    for t in range(1, 16):
        for i, (p, g) in enumerate(zip(params, gradients([p.detach() for p in params], t))):
            p.grad = g if i % 2 == 0 or t % 3 == 0 else None
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


@pytest.mark.parametrize("name", ALL_NAMES)
def test_uneven_step_counts_foreach_matches_per_tensor(name):
    assert_trajectories(run_intermittent(name, foreach=True), run_intermittent(name, foreach=False), exact=True)


@pytest.mark.parametrize("ours, theirs, decay", [(AdamW, torch.optim.AdamW, True), (AdamL2, torch.optim.Adam, True)])
@pytest.mark.parametrize("foreach", [True, False])
def test_uneven_step_counts_equal_torch(ours, theirs, decay, foreach):
    expected = run_intermittent(theirs, foreach=True, decay=decay)
    assert_trajectories(run_intermittent(ours, foreach=foreach, decay=decay), expected, exact=True)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_foreach_groups_mixed_dtypes(name):
    """One group holding float32 and float64 tensors: the foreach path splits it and still matches."""
    trajectories = []
    for foreach in (True, False):
        params = [w.to(torch.float32 if i % 2 else torch.float64).requires_grad_()
                  for i, w in enumerate(initial_params())]
        opt = OPTIMIZERS[name]([{"params": params, "lr": 1e-2}], foreach=foreach,
                               **({} if name == "adam" else {"weight_decay": 0.05}))
        for t in range(1, 6):
            for p, g in zip(params, gradients([p.detach() for p in params], t)):
                p.grad = g
            opt.step()
        trajectories.append([[p.detach().clone() for p in params]])
    assert_trajectories(*trajectories, exact=True)


def test_paper_form_equals_torch_form_at_converted_decay():
    """lambda_paper = lr * lambda_torch makes the decay factors bit-identical at a constant lr."""
    lr, wd_torch = 1e-2, 0.05
    trajectories = []
    for cls, wd in ((AdamW, wd_torch), (DecoupledAdamW, wd_torch_to_paper(wd_torch, lr))):
        params = [w.clone().requires_grad_() for w in initial_params()]
        opt = cls(params, lr=lr, weight_decay=wd)
        trajectory = []
        for t in range(1, STEPS + 1):
            for p, g in zip(params, gradients([p.detach() for p in params], t)):
                p.grad = g
            opt.step()
            trajectory.append([p.detach().clone() for p in params])
        trajectories.append(trajectory)
    assert_trajectories(*trajectories, exact=True)


# ---- schedule -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shrink", [
    ("adamw", lambda lr, eta, lam: 1 - lr * lam),
    ("decoupled_adamw", lambda lr, eta, lam: 1 - eta * lam),
    ("proxadam", lambda lr, eta, lam: 1 / (1 + lam * eta)),
    ("sgdw", lambda lr, eta, lam: 1 - eta * lam),
])
def test_decay_follows_scheduler(name, shrink):
    """With zero gradients only the decay acts: w_t = w_{t-1} * factor(lr_t, eta_t = lr_t / alpha)."""
    alpha, lam = 0.5, 0.3
    w = torch.full((4,), 2.0, dtype=torch.float64, requires_grad=True)
    opt = OPTIMIZERS[name]([w], lr=alpha, weight_decay=lam)
    assert opt.param_groups[0]["initial_lr"] == alpha
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    expected = 2.0
    for _ in range(10):
        lr = opt.param_groups[0]["lr"]
        expected *= shrink(lr, lr / alpha, lam)
        w.grad = torch.zeros_like(w)
        opt.step()
        sched.step()
        torch.testing.assert_close(w.detach(), torch.full_like(w, expected), **EXACT)
    assert opt.param_groups[0]["lr"] < 0.1 * alpha  # the schedule really decayed


def test_adamp_decay_uses_lr_and_denominator():
    """Zero gradients: D_t = eps, so AdamP divides by 1 + lr_t*lambda/eps each step."""
    alpha, lam, eps = 0.1, 1e-3, 1e-2
    w = torch.full((3,), 1.5, dtype=torch.float64, requires_grad=True)
    opt = AdamP([w], lr=alpha, weight_decay=lam, eps=eps)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    expected = 1.5
    for _ in range(6):
        expected /= 1 + opt.param_groups[0]["lr"] * lam / eps
        w.grad = torch.zeros_like(w)
        opt.step()
        sched.step()
        torch.testing.assert_close(w.detach(), torch.full_like(w, expected), **EXACT)


def test_initial_lr_set_at_construction_and_kept_by_scheduler():
    w = torch.zeros(2, requires_grad=True)
    opt = DecoupledAdamW([{"params": [w], "lr": 0.2}, {"params": [torch.zeros(1, requires_grad=True)]}], lr=0.1)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.2, 0.1]
    torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.2, 0.1]


# ---- state_dict -----------------------------------------------------------------------------------

@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_dict_round_trip_continues_bitwise(name, foreach):
    stop, total = 12, 30
    uninterrupted = run(name, steps=total, foreach=foreach)

    params = [w.clone().requires_grad_() for w in initial_params()]
    opt = build(name, params, foreach=foreach)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, GAMMA)
    for t in range(1, stop + 1):
        for p, g in zip(params, gradients([p.detach() for p in params], t)):
            p.grad = g
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    del params, opt, sched

    fresh = [w.clone().requires_grad_() for w in saved["params"]]
    opt = build(name, fresh, foreach=foreach)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, GAMMA)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    resumed = []
    for t in range(stop + 1, total + 1):
        for p, g in zip(fresh, gradients([p.detach() for p in fresh], t)):
            p.grad = g
        opt.step()
        sched.step()
        resumed.append([p.detach().clone() for p in fresh])
    assert_trajectories(resumed, uninterrupted[stop:], exact=True)


@pytest.mark.parametrize("name", ADAM_NAMES)
def test_adam_state_is_lazy(name):
    w = torch.ones(3, requires_grad=True)
    opt = OPTIMIZERS[name]([w])
    assert len(opt.state) == 0
    w.grad = torch.ones(3)
    opt.step()
    opt.step()
    assert set(opt.state[w]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[w]["step"] == 2


# ---- scale-freeness -------------------------------------------------------------------------------

def scaled_run(name: str, loss_scale: float, steps: int = 30) -> torch.Tensor:
    """Least squares with the loss multiplied by loss_scale; eps = 0 so Adam's direction is exactly scale-free."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(32, generator=gen, dtype=torch.float64)
    w = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    wd = {"adaml2": 0.1, "adamw": 0.1, "adamp": 0.1, "decoupled_adamw": 1e-3, "proxadam": 1e-3}.get(name)
    opt = OPTIMIZERS[name]([w], lr=1e-2, eps=0.0, **({} if wd is None else {"weight_decay": wd}))
    for _ in range(steps):
        opt.zero_grad()
        (loss_scale * ((x @ w - y) ** 2).mean()).backward()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("loss_scale", [1e-2, 1e2])
@pytest.mark.parametrize("name", ["adam", "adamw", "decoupled_adamw", "proxadam"])
def test_scale_free_variants_ignore_loss_scale(name, loss_scale):
    torch.testing.assert_close(scaled_run(name, loss_scale), scaled_run(name, 1.0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("loss_scale", [1e-2, 1e2])
@pytest.mark.parametrize("name", ["adaml2", "adamp"])
def test_l2_and_adamp_depend_on_loss_scale(name, loss_scale):
    base, scaled = scaled_run(name, 1.0), scaled_run(name, loss_scale)
    assert ((scaled - base).norm() / base.norm()).item() > 1e-3


# ---- inputs and API -------------------------------------------------------------------------------

BAD_ADAM_KWARGS = [
    ("lr", dict(lr=-1e-3)), ("lr", dict(lr=float("nan"))),
    (r"betas\[0\]", dict(betas=(1.0, 0.999))), (r"betas\[0\]", dict(betas=(-0.1, 0.999))),
    (r"betas\[1\]", dict(betas=(0.9, 1.0))), (r"betas\[1\]", dict(betas=(0.9, 1.5))),
    ("betas", dict(betas=(0.9,))), ("eps", dict(eps=-1e-8)),
]


@pytest.mark.parametrize("field, kwargs", BAD_ADAM_KWARGS + [("weight_decay", dict(weight_decay=-1e-4))])
@pytest.mark.parametrize("cls", [AdamL2, AdamW, DecoupledAdamW, ProxAdam, AdamP])
def test_invalid_adam_hyperparameters_raise(cls, field, kwargs):
    with pytest.raises(ValueError, match=field):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("field, kwargs", BAD_ADAM_KWARGS)
def test_invalid_plain_adam_hyperparameters_raise(field, kwargs):
    with pytest.raises(ValueError, match=field):
        Adam([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("field, kwargs", [
    ("lr", dict(lr=-0.1)), ("momentum", dict(momentum=-0.9)), ("weight_decay", dict(weight_decay=-5e-4)),
])
@pytest.mark.parametrize("cls", [SGD, SGDW])
def test_invalid_sgd_hyperparameters_raise(cls, field, kwargs):
    with pytest.raises(ValueError, match=field):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("cls", [AdamW, SGD])
def test_invalid_group_hyperparameter_raises(cls):
    good, bad = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="weight_decay"):
        cls([{"params": [good]}, {"params": [bad], "weight_decay": -1.0}])


@pytest.mark.parametrize("name", ALL_NAMES)
def test_sparse_gradient_raises(name):
    w = torch.zeros(4, requires_grad=True)
    w.grad = torch.zeros(4).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        OPTIMIZERS[name]([w]).step()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_params_without_grad_are_skipped(name, foreach):
    with_grad, without_grad = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = OPTIMIZERS[name]([with_grad, without_grad], foreach=foreach,
                           **({} if name == "adam" else {"weight_decay": 0.1}))
    for _ in range(3):
        with_grad.grad = torch.full((3,), 0.5)
        opt.step()
    assert torch.equal(without_grad.detach(), torch.ones(2))
    assert without_grad not in opt.state
    assert not torch.equal(with_grad.detach(), torch.ones(3))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_step_runs_closure_with_grad_and_returns_its_loss(name):
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = OPTIMIZERS[name]([w])

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.item() == 5.0
    assert w.grad is not None and torch.equal(w.grad, torch.tensor([2.0, -4.0]))
    assert not torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    assert opt.step() is None


def test_registry_and_exports():
    assert OPTIMIZERS == {"adam": Adam, "adaml2": AdamL2, "adamw": AdamW, "decoupled_adamw": DecoupledAdamW,
                          "proxadam": ProxAdam, "adamp": AdamP, "sgd": SGD, "sgdw": SGDW}
    for name in optimizers.__all__:
        assert hasattr(optimizers, name)
    assert all(issubclass(cls, torch.optim.Optimizer) for cls in OPTIMIZERS.values())
    with pytest.raises(ValueError, match="Adam has no weight decay"):
        Adam([torch.zeros(1, requires_grad=True)], weight_decay=0.1)
    Adam([torch.zeros(1, requires_grad=True)], weight_decay=0.0)  # what configs/optimizer/adam.yaml passes


def test_wd_conversion():
    assert wd_torch_to_paper(0.05, 1e-3) == pytest.approx(5e-5, rel=1e-15)
    assert wd_paper_to_torch(5e-5, 1e-3) == pytest.approx(0.05, rel=1e-15)
    assert math.isclose(wd_paper_to_torch(wd_torch_to_paper(0.3, 0.02), 0.02), 0.3, rel_tol=1e-15)
    for bad_lr in (0.0, -1e-3):
        with pytest.raises(ValueError, match="lr"):
            wd_paper_to_torch(1e-4, bad_lr)
    with pytest.raises(ValueError, match="weight_decay"):
        wd_torch_to_paper(-1.0, 1e-3)


# ---- param groups ---------------------------------------------------------------------------------

def small_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model.append(nn.Linear(2, 2))
    model[4].requires_grad_(False)  # frozen: belongs to no group
    return model


def test_param_groups_default_decays_everything():
    model = small_model()
    groups = param_groups(model, 5e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in trainable]


def test_param_groups_exclusion_puts_1d_params_in_no_decay_group():
    model = small_model()
    decayed, undecayed = param_groups(model, 5e-4, exclude_norm_and_bias=True)
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in undecayed["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}


def test_param_groups_drive_decay_in_optimizer():
    """Zero gradients: AdamW shrinks exactly the decayed group and leaves 1-D params alone."""
    model = small_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = AdamW(param_groups(model, 0.5, exclude_norm_and_bias=True), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if p.requires_grad and p.ndim > 1:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5), rtol=0, atol=0)
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_param_groups_rejects_negative_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(small_model(), -1.0)
