"""Tests for the CIFAR ResNet family in models/."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.utils.flop_counter import FlopCounterMode

from models import CifarResNet, ShortcutA, build_model, count_parameters, resnet20, resnet32, resnet44, resnet56, resnet110

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def expected_parameter_count(depth: int, batch_norm: bool, num_classes: int) -> int:
    """Closed-form count: bias-free 3x3 convs, BN (gamma, beta) after every conv, linear head."""
    n = (depth - 2) // 6
    widths = [16, 32, 64]
    convs = 3 * 16 * 9
    norm_channels = 16
    in_ch = 16
    for width in widths:
        for _ in range(n):
            convs += in_ch * width * 9 + width * width * 9
            norm_channels += 2 * width
            in_ch = width
    head = 64 * num_classes + num_classes
    return convs + head + (2 * norm_channels if batch_norm else 0)


def test_resnet20_parameter_counts_match_published_numbers():
    assert sum(p.numel() for p in resnet20(batch_norm=True).parameters()) == 269_722
    assert sum(p.numel() for p in resnet20(batch_norm=False).parameters()) == 268_346


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_parameter_count_matches_closed_form(depth, batch_norm):
    model = build_model(depth, batch_norm, 100)
    assert count_parameters(model) == expected_parameter_count(depth, batch_norm, 100)


def test_without_batch_norm_has_no_normalisation_modules_or_buffers():
    model = resnet20(batch_norm=False)
    assert not [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert list(model.buffers()) == []
    # Only conv weights and the linear head remain.
    for name, p in model.named_parameters():
        assert name.endswith("conv1.weight") or name.endswith("conv2.weight") or name.startswith("fc."), name


def test_with_batch_norm_has_one_norm_per_conv():
    model = resnet20(batch_norm=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert n_conv == 19 and n_bn == n_conv


def test_convs_have_no_bias():
    for m in resnet20().modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None and m.kernel_size == (3, 3)


@pytest.mark.parametrize(
    "factory,depth", [(resnet20, 20), (resnet32, 32), (resnet44, 44), (resnet56, 56), (resnet110, 110)]
)
def test_named_constructors_build_and_give_logits(factory, depth):
    torch.manual_seed(0)
    model = factory(batch_norm=False, num_classes=7)
    assert model.depth == depth
    n_blocks = sum(len(stage) for stage in (model.layer1, model.layer2, model.layer3))
    assert 6 * n_blocks // 3 + 2 == depth
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


@pytest.mark.parametrize("depth", [0, 8 - 6, 19, 21, 100, -4])
def test_invalid_depth_raises_and_names_valid_depths(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*20, 32, 44, 56, 110"):
        CifarResNet(depth=depth)


def test_build_model_rejects_invalid_depth():
    with pytest.raises(ValueError, match="depth"):
        build_model(18, True, 10)


def test_option_a_shortcut_has_no_parameters_and_zero_pads_channels():
    shortcut = ShortcutA(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()


def test_option_a_shortcut_gradient_is_the_strided_slices_gradient():
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    g = torch.randn(2, 32, 4, 4)
    (grad,) = torch.autograd.grad(ShortcutA(16, 32, stride=2)(x), x, g)
    x_ref = x.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(F.pad(x_ref[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)), x_ref, g)
    assert torch.equal(grad, grad_ref)


def test_head_is_the_mean_over_positions_bit_for_bit():
    torch.manual_seed(0)
    model = resnet20(batch_norm=False)
    x = torch.randn(4, 3, 32, 32)
    features = model.layer3(model.layer2(model.layer1(F.relu(model.conv1(x)))))
    assert torch.equal(model(x), model.fc(features.mean(dim=(2, 3))))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_channels_last_gradients_stay_channels_last(batch_norm):
    # An NCHW gradient meeting channels_last activations makes ReLU backward and the gradient sums run
    # strided, several times slower on CPU: every activation gradient must keep the forward's format.
    torch.manual_seed(0)
    model = resnet20(batch_norm=batch_norm).to(memory_format=torch.channels_last)
    grads: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            for label, t in (("in", args[0]), ("out", output)):
                if t.requires_grad:
                    t.register_hook(lambda g, key=f"{name}.{label}": grads.__setitem__(key, g))
        return hook

    for name, block in model.named_modules():
        if isinstance(block, nn.Sequential):
            for i, sub in enumerate(block):
                sub.register_forward_hook(keep(f"{name}.{i}"))
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert len(grads) == 2 * 9  # every block's input and output
    # The head's gradient may be a broadcast view (zero strides): nothing is materialised in the wrong format.
    bad = sorted(k for k, g in grads.items() if not (g.is_contiguous(memory_format=torch.channels_last) or 0 in g.stride()))
    assert bad == []


def test_downsampling_blocks_use_option_a_shortcuts():
    model = resnet20()
    assert isinstance(model.layer2[0].shortcut, ShortcutA)
    assert isinstance(model.layer3[0].shortcut, ShortcutA)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert all(list(b.shortcut.parameters()) == [] for s in (model.layer1, model.layer2, model.layer3) for b in s)


def _within_one_std_fraction(w: torch.Tensor) -> float:
    return (w.abs() <= w.std()).float().mean().item()


def test_conv_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    model = resnet20(batch_norm=False)
    # layer2[0].conv1 is 16->32, where fan_in (144) and fan_out (288) differ by a factor 2.
    for conv in (model.layer2[0].conv1, model.layer3[0].conv1, model.layer3[2].conv2):
        w = conv.weight.detach()
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        target = math.sqrt(2.0 / fan_in)
        assert w.std().item() == pytest.approx(target, rel=0.05)
        assert abs(w.mean().item()) < 4 * target / math.sqrt(w.numel())
        # Normal: ~68.3% of mass within one std (a uniform law would give 57.7%).
        assert _within_one_std_fraction(w) == pytest.approx(0.6827, abs=0.03)


def test_linear_init_is_kaiming_normal():
    torch.manual_seed(0)
    weights = torch.cat([resnet20(num_classes=100).fc.weight.detach().flatten() for _ in range(3)])
    assert weights.std().item() == pytest.approx(math.sqrt(2.0 / 64), rel=0.05)
    assert _within_one_std_fraction(weights) == pytest.approx(0.6827, abs=0.03)


def test_batch_norm_init_is_identity_affine():
    for m in resnet20().modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_forward_multiply_adds_match_published_figure():
    model = resnet20(batch_norm=False).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    macs = counter.get_total_flops() / 2
    # Convs + head: exactly 40,551,040; He et al. quote 40.8M (they also count additions of the residual sum).
    assert macs == 40_551_040
    assert macs == pytest.approx(40.8e6, rel=0.01)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_channels_last_input_gives_same_logits(batch_norm):
    torch.manual_seed(0)
    model = resnet20(batch_norm=batch_norm).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vmap_over_stacked_models_matches_individual_models(batch_norm):
    torch.manual_seed(0)
    models = [resnet20(batch_norm=batch_norm) for _ in range(3)]
    originals = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 4, 3, 32, 32)

    def run(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    out = torch.vmap(run)(params, buffers, x)
    assert out.shape == (3, 4, 10)
    for i, model in enumerate(originals):
        torch.testing.assert_close(out[i], model(x[i]), rtol=1e-4, atol=1e-5)
        if batch_norm:
            # Training-mode BN updated each model's own running statistics inside vmap.
            torch.testing.assert_close(buffers["bn1.running_mean"][i], model.bn1.running_mean)


def test_vmap_gradients_match_individual_models():
    torch.manual_seed(0)
    models = [resnet20(batch_norm=False) for _ in range(2)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(2, 4, 3, 32, 32)
    y = torch.randint(0, 10, (2, 4))

    def loss_fn(p, b, xb, yb):
        return nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    grads = torch.vmap(torch.func.grad(loss_fn))(params, buffers, x, y)
    for i, model in enumerate(models):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        torch.testing.assert_close(grads["fc.weight"][i], model.fc.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads["conv1.weight"][i], model.conv1.weight.grad, rtol=1e-4, atol=1e-6)
