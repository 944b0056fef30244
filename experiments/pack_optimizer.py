"""A pack's optimizers as fused updates over its [K, P] buffers, with eta_t computed on the device.

Every member first gets the optimizer its single run would get (experiments.builders.build_optimizer:
class, validation, param groups). It stays the reference for what the member's update is and the
format of its state in checkpoints, but members whose optimizers have a fused form
(optimizers.fused: this package's Adam variants, SGD, SGDW) do not step through it: runs of
consecutive members with equal fused forms are row blocks of the pack's buffers, and one update per
block steps all of them. A member with any other optimizer class steps through its own optimizer and
LambdaLR, as a single run would.

What differs between members is a [K, 2] float64 device tensor: base lr alpha and weight decay for
the decayed and the undecayed columns (ModelPack puts ndim > 1 parameters first). All active members
of a pack step together, so the step count t is one one-element float64 device tensor (not 0-dim:
torch 2.11 compiles an in-place update of a 0-dim CPU tensor into nothing), and eta_t =
schedule(t - 1) is computed from it on the device (experiments.schedules.eta_on_device): a step
reads nothing from the host, and a compiled step does not recompile when the lr changes. The host
keeps the same count (`steps`) for what it writes: the lr column, checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from experiments.packed_models import ModelPack
from experiments.schedules import ScheduleSpec, build_scheduler, eta, eta_on_device
from optimizers.fused import FusedAdam, FusedSGD, fused_form


@dataclass
class _Block:
    """Rows start:stop of the pack, all stepped by `update`; `runs` are the active rows' contiguous slices,
    each with, per column segment, whether any of its rows has weight decay there."""

    update: FusedAdam | FusedSGD
    start: int
    stop: int
    runs: list[tuple[slice, tuple[bool, ...]]] = field(default_factory=list)


class CheckpointMismatch(ValueError):
    """A member's saved optimizer state does not belong to this run's optimizer settings."""


class PackOptimizer:
    def __init__(self, pack: ModelPack, optimizers: list[torch.optim.Optimizer], schedule_cfg,
                 steps_per_epoch: int, epochs: int) -> None:
        self.pack = pack
        self.optimizers = optimizers
        self.spec = ScheduleSpec.of(schedule_cfg)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        # Every member keeps a LambdaLR: the fallback members step it, the fused ones use it for the
        # format of their scheduler state in checkpoints.
        self.schedulers = [build_scheduler(opt, schedule_cfg, steps_per_epoch, epochs) for opt in optimizers]
        device = pack.flat_params.device
        self.segments = [(a, b) for a, b in ((0, pack.decayed_width), (pack.decayed_width, pack.width)) if b > a]
        alpha = torch.zeros(pack.size, len(self.segments), dtype=torch.float64)
        wd = torch.zeros_like(alpha)
        updates: list[FusedAdam | FusedSGD | None] = []
        for k, opt in enumerate(optimizers):
            form = fused_form(opt)
            hypers = self._segment_hyperparameters(form[1]) if form is not None else None
            updates.append(form[0] if hypers is not None else None)
            for s, (a, w) in enumerate(hypers or []):
                alpha[k, s], wd[k, s] = a, w
        self.blocks: list[_Block] = []
        for k, update in enumerate(updates):
            if update is None:
                continue
            if self.blocks and self.blocks[-1].update == update and self.blocks[-1].stop == k:
                self.blocks[-1].stop = k + 1
            else:
                self.blocks.append(_Block(update, k, k + 1))
        self.fallback = [k for k, update in enumerate(updates) if update is None]
        slots = max((len(b.update.state_keys) for b in self.blocks), default=0)
        self.state = [torch.zeros_like(pack.flat_params) for _ in range(slots)]
        self._host_wd = wd.tolist()
        self.alpha = alpha.to(device)
        self.wd = wd.to(device)
        self.t = torch.zeros(1, dtype=torch.float64, device=device)
        self._first_lr = torch.tensor([opt.param_groups[0]["initial_lr"] for opt in optimizers], dtype=torch.float64,
                                      device=device)
        self.steps = 0
        self._stopped_at: dict[int, int] = {}
        self.active = [True] * pack.size
        self._update = self._update_eager
        self.set_active(self.active)

    def _segment_hyperparameters(self, groups) -> list[tuple[float, float]] | None:
        """(alpha, weight decay) per column segment, or None when the groups do not map onto the segments."""
        by_start = {}
        for group in groups:
            for param in group.params:
                start, stop, _ = self.pack.member_columns(param)
                by_start[start] = (stop, group.alpha, group.weight_decay)
        if sum(stop - start for start, (stop, _, _) in by_start.items()) != self.pack.width:
            return None  # some parameter is not optimized: only the member's own optimizer knows how to skip it
        hypers = []
        for a, b in self.segments:
            values = {(alpha, w) for start, (_, alpha, w) in by_start.items() if a <= start < b}
            if len(values) != 1:
                return None
            hypers.append(values.pop())
        return hypers

    # ---------------------------------------------------------------- stepping

    def set_active(self, active: list[bool]) -> None:
        """Which members step from now on; a stopped member's weights and state stay as they are."""
        for k, (was, now) in enumerate(zip(self.active, active)):
            if was and not now:
                self._stopped_at[k] = self.steps
        self.active = list(active)
        for block in self.blocks:
            block.runs = []
            k = block.start
            while k < block.stop:
                if not active[k]:
                    k += 1
                    continue
                first = k
                while k < block.stop and active[k]:
                    k += 1
                decays = tuple(any(self._host_wd[r][s] != 0 for r in range(first, k)) for s in range(len(self.segments)))
                block.runs.append((slice(first, k), decays))

    def _update_eager(self) -> None:
        """The fused updates of every active member: all on the device, nothing read back."""
        t = self.t
        t.add_(1)
        lr = self.alpha * eta_on_device(t - 1, self.total_steps, self.steps_per_epoch, self.spec)
        # optimizers.base.ScheduledOptimizer.schedule_multiplier: lr / initial_lr, 1 where the base lr is 0.
        eta_t = torch.where(self.alpha != 0, lr / self.alpha, torch.ones_like(lr))
        params, grads = self.pack.flat_params, self.pack.flat_grads
        for block in self.blocks:
            slots = len(block.update.state_keys)
            for rows, decays in block.runs:
                for s, (a, b) in enumerate(self.segments):
                    block.update.update(params[rows, a:b], grads[rows, a:b], [st[rows, a:b] for st in self.state[:slots]],
                                        t=t, lr=lr[rows, s:s + 1], eta=eta_t[rows, s:s + 1], wd=self.wd[rows, s:s + 1],
                                        decays=decays[s])

    def step(self) -> None:
        """One optimizer step of every active member; the schedules advance with it."""
        self._update()
        for k in self.fallback:
            if self.active[k]:
                self.optimizers[k].step()
                self.schedulers[k].step()
        self.steps += 1

    def compile(self, mode: str) -> None:
        """torch.compile the fused updates as one graph (fullgraph: nothing in them can sync with the host)."""
        if mode == "reduce-overhead":
            # CUDA graphs replay fixed addresses: the buffers the update mutates must be the graph's own.
            for tensor in (self.pack.flat_params, self.pack.flat_grads, *self.state, self.t, self.alpha, self.wd):
                torch._dynamo.mark_static_address(tensor, guard=False)
        self._update = torch.compile(self._update_eager, fullgraph=True, dynamic=False,  # static: see ModelPack.compile
                                     mode=None if mode == "default" else mode)

    # ---------------------------------------------------------------- what the host writes

    def steps_of(self, k: int) -> int:
        return self._stopped_at.get(k, self.steps)

    def lr(self, k: int) -> float:
        """Member k's lr for its next step (its first group's), as its LambdaLR would hold it now."""
        group = self.optimizers[k].param_groups[0]
        if k in self.fallback:
            return group["lr"]
        return group["initial_lr"] * eta(self.steps_of(k), self.total_steps, self.steps_per_epoch, self.spec)

    def step_sizes(self) -> torch.Tensor:
        """Every member's `lr(k)` as one [K] float64 device tensor, made on the device from the step count t:
        trainer.magnitude_stats_every reads it each recorded step, which then sends nothing host to device. A
        pack with a fallback member (whose LambdaLR holds its lr on the host) sends its K values instead; a stopped
        member gets the lr of the pack's next step (it takes none, so its update is 0 either way)."""
        if self.fallback:
            return torch.tensor([self.lr(k) for k in range(self.pack.size)], dtype=torch.float64).to(self.t.device)
        return self._first_lr * eta_on_device(self.t, self.total_steps, self.steps_per_epoch, self.spec)

    def _params_in_state_order(self, k: int) -> list[torch.Tensor]:
        return [p for group in self.optimizers[k].param_groups for p in group["params"]]

    def _block_of(self, k: int) -> _Block:
        return next(b for b in self.blocks if b.start <= k < b.stop)

    def member_state_dict(self, k: int) -> tuple[dict, dict]:
        """Member k's (optimizer, scheduler) state_dicts, as its own optimizer and LambdaLR would write them."""
        opt, sched = self.optimizers[k], self.schedulers[k]
        if k in self.fallback:
            return opt.state_dict(), sched.state_dict()
        steps = self.steps_of(k)
        update = self._block_of(k).update
        # Put opt and sched where `steps` steps would have left them; neither ever steps itself.
        sched.last_epoch = steps
        sched._step_count = steps + 1
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * eta(steps, self.total_steps, self.steps_per_epoch, self.spec)
        sched._last_lr = [group["lr"] for group in opt.param_groups]
        optimizer_state = opt.state_dict()
        if steps > 0 and (update.counts_steps or update.state_keys):  # SGD without momentum keeps no state
            for i, param in enumerate(self._params_in_state_order(k)):
                _, _, name = self.pack.member_columns(param)
                entry = {"step": float(steps)} if update.counts_steps else {}
                for key, buffer in zip(update.state_keys, self.state):
                    entry[key] = self.pack._view(buffer, name, param)[k].clone()
                optimizer_state["state"][i] = entry
        return optimizer_state, sched.state_dict()

    def load_member_state_dict(self, k: int, optimizer_state: dict, scheduler_state: dict, *, active: bool,
                               where: str) -> None:
        """Restores member k from state_dicts that its own optimizer and LambdaLR wrote (or member_state_dict).

        An active member must have taken `steps` steps (set_steps first). `where` names the checkpoint.
        """
        opt, sched = self.optimizers[k], self.schedulers[k]
        steps = int(scheduler_state.get("last_epoch", -1))
        self._check_groups(k, optimizer_state, where)
        if active and steps != self.steps:
            raise CheckpointMismatch(f"checkpoint {where}: a member has taken {steps} steps, its pack {self.steps}; "
                                     "move the checkpoint away to restart")
        if k in self.fallback:
            opt.load_state_dict(optimizer_state)
            sched.load_state_dict(scheduler_state)
            return
        if not active:
            self._stopped_at[k] = steps
        update = self._block_of(k).update
        saved = optimizer_state.get("state", {})
        with torch.no_grad():
            for i, param in enumerate(self._params_in_state_order(k)):
                entry = saved.get(i)
                if entry is None:
                    continue
                _, _, name = self.pack.member_columns(param)
                for key, buffer in zip(update.state_keys, self.state):
                    self.pack._view(buffer, name, param)[k].copy_(entry[key])

    def _check_groups(self, k: int, optimizer_state: dict, where: str) -> None:
        own = self.optimizers[k].param_groups
        saved = optimizer_state.get("param_groups", [])
        keys = ("initial_lr", "weight_decay", "betas", "eps", "momentum")
        if len(saved) != len(own) or any(len(s["params"]) != len(o["params"]) for s, o in zip(saved, own)):
            raise CheckpointMismatch(f"checkpoint {where} holds another model's or another optimizer's state; "
                                     "move it away to restart")
        for s, o in zip(saved, own):
            for key in keys:
                if key in o and key in s and tuple(_as_tuple(s[key])) != tuple(_as_tuple(o[key])):
                    raise CheckpointMismatch(f"checkpoint {where} was written with {key}={s[key]}, this run has "
                                             f"{o[key]}; move the checkpoint away to restart, or use the old setting")

    def set_steps(self, steps: int) -> None:
        """The count of steps the active members have taken (on resume)."""
        self.steps = steps
        self.t.fill_(float(steps))


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (float(value),)
