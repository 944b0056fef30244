"""Everything a training step touches lives on the training device, and nothing in the step reads a value back.

On a CPU neither property shows: the host is the device. So these tests train on PyTorch's meta device,
whose tensors have shapes, dtypes and a device but no data. Every op of the data loader, the forward and
backward of each route, the fused updates of every optimizer kind, the metric sums and the layer statistics
runs there as it would on a GPU, and HostTensorCheck fails
- any value read back to the host (.item(), .tolist(), bool(), float(), .cpu()): a host synchronisation in
  the step;
- any op given a host tensor of one or more dimensions beside device tensors (the meta device's own checks
  miss in-place ops and indexing): on a GPU an error ("Expected all tensors to be on the same device") or a
  copy from the host on every step. A 0-dim host tensor is a scalar on a GPU too;
- any host tensor of one or more dimensions sent to the device (`.to(device)`): a copy from the host.
A GPU lease is 15 minutes (results/benchmarks.md); such a fault must show up here, not there. The last three
tests plant each fault and check that it is caught.
"""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf
from test_fused import MEMBERS, make_optimizer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import data.device_loader
import models
from data import DeviceLoader
from experiments.epoch import TrainStep
from experiments.layer_stats import LayerStats
from experiments.pack_optimizer import PackOptimizer
from experiments.packed_models import ROUTES, ModelPack

META = torch.device("meta")
SCHEDULE = OmegaConf.create({"name": "cosine", "warmup_epochs": 1, "min_factor": 0.1})
BATCH = 8


class HostTensorCheck(TorchDispatchMode):
    """Fails any op that reads a device value back (.item(), .tolist(), .cpu()), takes a host tensor of one or
    more dimensions together with a meta (device) tensor, or sends such a host tensor to the device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if kwargs.get("device") == META and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            raise RuntimeError(f"{func} sends a host tensor to the device")
        if any(t.device == META for t in tensors):
            if func is torch.ops.aten._local_scalar_dense.default or kwargs.get("device") == torch.device("cpu"):
                raise RuntimeError(f"{func} reads a device value back to the host")
            host = next((t for t in tensors if t.device.type == "cpu" and t.dim() > 0), None)
            if host is not None:
                raise RuntimeError(f"{func}: a host tensor of shape {tuple(host.shape)} beside device tensors")
        return func(*args, **kwargs)


@pytest.fixture(autouse=True)
def no_generator_on_meta(monkeypatch):
    """The meta device has no random generator: the loader draws its epoch plan without one there."""
    monkeypatch.setattr(data.device_loader, "make_generator", lambda *parts, device: None)


def loaders(channels_last: bool) -> tuple[DeviceLoader, DeviceLoader]:
    # 20 images: two training batches of 8 (the last 4 dropped), and a padded last test batch.
    images, labels = torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.zeros(20, dtype=torch.int64)
    common = dict(batch_size=BATCH, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device=META,
                  channels_last=channels_last)
    return (DeviceLoader(images, labels, train=True, **common),
            DeviceLoader(images, labels, train=False, pad_last=True, **common))


def meta_pack(route: str, batch_norm: bool, channels_last: bool, members=MEMBERS):
    layout = torch.channels_last if channels_last else torch.preserve_format
    nets = [models.build_model(8, batch_norm, 10).to(device=META, memory_format=layout) for _ in members]
    pack = ModelPack(nets, route=route)
    optimizer = PackOptimizer(pack, [make_optimizer(cls, kw, exclude, net) for (cls, kw, exclude), net
                                     in zip(members, nets)], SCHEDULE, steps_per_epoch=2, epochs=2)
    multipliers = [1.0, 0.01, 100.0] * (len(members) // 3) + [1.0] * (len(members) % 3)
    return pack, optimizer, TrainStep(pack, optimizer, multipliers)


def train_and_evaluate(pack: ModelPack, step: TrainStep, channels_last: bool) -> None:
    train, test = loaders(channels_last)
    stats = LayerStats(pack, every=1)
    batches = iter(train)
    for _ in range(len(train)):
        with HostTensorCheck():
            x, y = next(batches)
        # trainer.magnitude_stats_every: outside the step, on the device too (a fallback member's lr is the host's).
        with HostTensorCheck() if not step.optimizer.fallback else nullcontext():
            stats.before_step(step.optimizer.step_sizes())
        with HostTensorCheck():
            step(x, y)
            stats.after_step()
        step.set_active([k != 1 for k in range(pack.size)])  # a member stops (diverged) after the first step
    with HostTensorCheck():
        for x, y in test:
            sums, hits = pack.evaluate_batch(x, y)
    for total in (sums, hits, pack.model_norms(), step.loss_sum, step.correct, step.grad_norm_sum, stats.counts):
        assert total.device == META


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no_bn"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_step_of_every_optimizer_kind_stays_on_the_device_and_reads_nothing_back(route, batch_norm, channels_last):
    pack, optimizer, step = meta_pack(route, batch_norm, channels_last)
    assert len(optimizer.blocks) > 1 and not optimizer.fallback  # several fused updates, one per kind
    train_and_evaluate(pack, step, channels_last)
    assert optimizer.steps == 2


def test_a_foreign_optimizer_beside_fused_members_stays_on_the_device():
    pack, optimizer, step = meta_pack("vmap", True, True, MEMBERS[:2])
    foreign = torch.optim.AdamW(pack.members[1].parameters(), lr=1e-3)
    pack2 = PackOptimizer(pack, [optimizer.optimizers[0], foreign], SCHEDULE, steps_per_epoch=2, epochs=2)
    assert pack2.fallback == [1]
    train_and_evaluate(pack, TrainStep(pack, pack2, [1.0, 1.0]), True)


def test_a_tensor_made_on_the_host_inside_the_step_is_caught(monkeypatch):
    pack, _, step = meta_pack("grouped", True, True, MEMBERS[:3])
    planted = step._accumulate_eager

    def on_host(losses, hits, batch):
        planted(losses, hits, batch)
        step.loss_sum += torch.zeros(pack.size, dtype=torch.float64)  # no device=: a CPU tensor
    monkeypatch.setattr(step, "_accumulate", on_host)
    with pytest.raises(RuntimeError, match="host tensor of shape"):
        train_and_evaluate(pack, step, True)


def test_a_value_read_back_inside_the_step_is_caught(monkeypatch):
    pack, optimizer, step = meta_pack("loop", False, False, MEMBERS[:3])
    planted = optimizer._update_eager

    def reads_back():
        planted()
        if float(optimizer.t) > 1e9:  # a host sync: Python branching on a device value
            raise AssertionError("unreachable")
    monkeypatch.setattr(optimizer, "_update", reads_back)
    with pytest.raises(RuntimeError, match="reads a device value back to the host"):
        train_and_evaluate(pack, step, False)


def test_a_host_tensor_sent_to_the_device_is_caught(monkeypatch):
    pack, optimizer, step = meta_pack("loop", False, False, MEMBERS[:3])
    # What trainer.magnitude_stats_every did before PackOptimizer.step_sizes: K host values sent each recorded step.
    monkeypatch.setattr(optimizer, "step_sizes", lambda: torch.tensor([optimizer.lr(k) for k in range(pack.size)],
                                                                      dtype=torch.float64).to(META))
    with pytest.raises(RuntimeError, match="sends a host tensor to the device"):
        train_and_evaluate(pack, step, False)
