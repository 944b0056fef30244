"""trainer.magnitude_stats_every=N: per layer, every N-th step, what Zhuang et al. (2022) plot and what the
effective-learning-rate argument (Zhang et al. 2019) is about, for every member of a pack alike.

On a recorded step, on the device and with no host sync: before the optimizer step the weights are
copied; after it,
- the counts of |w|, |g|, |u| and |u| / (alpha eta_t) by power-of-2 bin, per layer (u = w_t - w_{t-1},
  the whole update with its decay; divided by the step size alpha eta_t it is the update "without
  alpha"). Bin e holds 2^e <= |x| < 2^(e+1); exact zeros have their own bin; values beyond the
  range are counted in its first or last bin. g is the gradient of c * loss, as the optimizer sees it.
- the relative update size ||w_t - w_{t-1}|| / ||w_{t-1}|| per layer, averaged over the recorded
  steps of the epoch.
The sums come back once per epoch with the metrics, and each member writes them to its run folder:
magnitudes.csv (epoch, layer, quantity, exponent, count; layer "all" is the whole model) and
step_sizes.csv (epoch, layer, relative update size, weight norm at the end of the epoch).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

QUANTITIES = ("param", "grad", "update", "update_per_lr")
LOWEST, HIGHEST = -40, 8  # exponents of the bins; 2^-40 ~ 1e-12, 2^8 = 256
ZERO = "zero"
EXPONENTS = list(range(LOWEST, HIGHEST + 1))
MAGNITUDE_COLUMNS = ["epoch", "layer", "quantity", "exponent", "count"]
STEP_SIZE_COLUMNS = ["epoch", "layer", "relative_update", "weight_norm", "recorded_steps"]


def power_of_two_bins(x: torch.Tensor) -> torch.Tensor:
    """Bin index of each |x|: 0 for exact zeros, 1 + (e - LOWEST) for 2^e <= |x| < 2^(e+1), clamped."""
    exponent = torch.frexp(x.abs()).exponent - 1  # frexp: |x| = m 2^E with m in [0.5, 1)
    index = exponent.clamp(LOWEST, HIGHEST) - LOWEST + 1
    return torch.where(x == 0, torch.zeros_like(index), index)


class LayerStats:
    """The sums of one epoch for the K members of a pack (experiments/packed_models.ModelPack)."""

    def __init__(self, pack, every: int) -> None:
        self.pack, self.every = pack, every
        device = pack.flat_params.device
        self.layers = list(pack.names)
        layer_of_column = torch.empty(pack.width, dtype=torch.long)
        for i, name in enumerate(self.layers):
            start, stop = pack.columns[name]
            layer_of_column[start:stop] = i
        self.layer_of_column = layer_of_column.to(device)
        self.n_bins = len(EXPONENTS) + 1
        K, L, Q = pack.size, len(self.layers), len(QUANTITIES)
        # flat index of (member, layer, quantity, bin) = ((k * L + layer) * Q + q) * n_bins + bin
        self._base = ((torch.arange(K, device=device)[:, None] * L + self.layer_of_column[None, :]) * Q) * self.n_bins
        self.counts = torch.zeros(K * L * Q * self.n_bins, dtype=torch.int64, device=device)
        self.relative_update_sum = torch.zeros(K, L, dtype=torch.float64, device=device)
        self._previous = torch.empty_like(pack.flat_params)
        self.steps_seen = 0
        self.recorded = 0

    def reset(self) -> None:
        self.counts.zero_()
        self.relative_update_sum.zero_()
        self.recorded = 0

    def due(self) -> bool:
        """Counts the steps of the run; True on every `every`-th (host-side counter, no device read)."""
        self.steps_seen += 1
        return self.steps_seen % self.every == 0

    @torch.no_grad()
    def before_step(self, step_sizes: torch.Tensor) -> None:
        """step_sizes: [K], each member's alpha * eta_t for the step about to be taken, on the pack's device
        (experiments.pack_optimizer.PackOptimizer.step_sizes)."""
        self._previous.copy_(self.pack.flat_params)
        self._step_sizes = step_sizes.to(self._previous.dtype)

    def _layer_sums(self, values: torch.Tensor) -> torch.Tensor:
        """[K, width] -> [K, layers] sums over each layer's columns."""
        out = torch.zeros(values.shape[0], len(self.layers), dtype=torch.float64, device=values.device)
        return out.index_add_(1, self.layer_of_column, values.double())

    @torch.no_grad()
    def after_step(self) -> None:
        w, g = self.pack.flat_params, self.pack.flat_grads
        update = w - self._previous
        per_lr = update / self._step_sizes[:, None]
        for q, values in enumerate((w, g, update, per_lr)):
            index = self._base + q * self.n_bins + power_of_two_bins(values)
            self.counts.index_add_(0, index.view(-1), torch.ones_like(index.view(-1)))
        relative = (self._layer_sums(update * update) / self._layer_sums(self._previous * self._previous)).sqrt()
        self.relative_update_sum += relative
        self.recorded += 1

    def member_rows(self, epoch: int) -> list[tuple[list[dict], list[dict]]]:
        """Per member: (magnitudes.csv rows, step_sizes.csv rows) of this epoch; one device read for all."""
        K, L, Q = self.pack.size, len(self.layers), len(QUANTITIES)
        counts = self.counts.view(K, L, Q, self.n_bins).cpu()
        relative = (self.relative_update_sum / max(self.recorded, 1)).cpu()
        norms = self._layer_sums(self.pack.flat_params * self.pack.flat_params).sqrt().cpu()
        labels = [ZERO] + EXPONENTS
        out = []
        for k in range(K):
            magnitudes = []
            for layer, per_layer in [("all", counts[k].sum(0)), *zip(self.layers, counts[k])]:
                for q, name in enumerate(QUANTITIES):
                    for label, count in zip(labels, per_layer[q].tolist()):
                        if count:
                            magnitudes.append({"epoch": epoch, "layer": layer, "quantity": name, "exponent": label,
                                               "count": count})
            steps = [{"epoch": epoch, "layer": layer, "relative_update": float(relative[k, i]),
                      "weight_norm": float(norms[k, i]), "recorded_steps": self.recorded}
                     for i, layer in enumerate(self.layers)]
            out.append((magnitudes, steps))
        return out


def read_rows(path: Path, before_epoch: int) -> list[dict]:
    """The rows of an earlier process's file for epochs before `before_epoch` (a resumed run keeps them)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) < before_epoch]


def wandb_histograms(magnitudes: list[dict]) -> dict:
    """W&B histograms of the whole model's counts per quantity, bins as log2 edges (zeros at the lowest edge)."""
    import numpy as np
    import wandb

    out = {}
    edges = np.arange(LOWEST - 1, HIGHEST + 2, dtype=float)  # the zero bin sits just below 2^LOWEST
    for name in QUANTITIES:
        counts = dict.fromkeys([ZERO] + EXPONENTS, 0)
        for row in magnitudes:
            if row["layer"] == "all" and row["quantity"] == name:
                counts[row["exponent"]] = row["count"]
        out[f"magnitudes/{name}"] = wandb.Histogram(np_histogram=(np.array(list(counts.values())), edges))
    return out
