"""A data loader that keeps the whole uint8 dataset on the device and augments whole batches at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from data.augment import crop_flip, pad_images
from data.seeding import make_generator

PADDING = 4


class DeviceLoader:
    """Yields (x, y): x float [B, 3, 32, 32] normalised with mean/std, y int64 [B], both on `device`.

    Training order and augmentation for epoch e come from a generator seeded by (seed, e), so
    set_epoch(e) reproduces epoch e exactly (e.g. after resuming). Each iteration uses the current
    epoch and then advances it by one, so calling set_epoch is optional. Augmentation (default: on
    when train) is a 4-pixel zero-pad random 32x32 crop plus a random horizontal flip, done in uint8
    before normalisation. Eval (train=False) keeps the stored order. __iter__ never syncs with the host.
    pad_last: a partial last batch is filled up to batch_size with zero images labelled -100 (which
    cross_entropy ignores), so that every batch has one shape and a compiled model sees no new one.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        seed: int = 0,
        augment: bool | None = None,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        pad_last: bool = False,
    ):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[1] != 3:
            raise ValueError(f"images_u8 must be uint8 [N, 3, H, W]; got {images_u8.dtype} {tuple(images_u8.shape)}")
        if labels.shape != (images_u8.shape[0],):
            raise ValueError(f"labels must have shape [{images_u8.shape[0]}]; got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each with std > 0; got mean={mean}, std={std}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.channels_last = channels_last
        self.dtype = dtype
        self.pad_last = bool(pad_last)
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = images_u8.shape[0]
        self.image_size = tuple(images_u8.shape[2:])
        if len(self) == 0:
            raise ValueError(
                f"batch_size={batch_size} with drop_last gives no batch for {self.num_samples} images; "
                "lower batch_size or set drop_last=False"
            )
        images = images_u8.to(self.device).contiguous()
        # Padding once up front lets every batch be a single gather (crop + flip) from this tensor.
        self.images = pad_images(images, PADDING) if self.augment else images
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_plan(self, epoch: int) -> dict[str, torch.Tensor | None]:
        """The order and per-image crop offsets / flips of one epoch (all [N], on the device)."""
        n, dev = self.num_samples, self.device
        if not (self.train or self.augment):
            return {"order": None, "top": None, "left": None, "flip": None}
        g = make_generator(self.seed, epoch, device=dev)
        order = torch.randperm(n, generator=g, device=dev) if self.train else None
        if not self.augment:
            return {"order": order, "top": None, "left": None, "flip": None}
        top = torch.randint(0, 2 * PADDING + 1, (n,), generator=g, device=dev)
        left = torch.randint(0, 2 * PADDING + 1, (n,), generator=g, device=dev)
        flip = torch.randint(0, 2, (n,), generator=g, device=dev).bool()
        return {"order": order, "top": top, "left": left, "flip": flip}

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1] -> (x - mean) / std, bit-identical to torchvision's to_dtype + normalize."""
        if self.channels_last:
            images_u8 = images_u8.contiguous(memory_format=torch.channels_last)
        x = images_u8.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.epoch_plan(self.epoch)
        self.epoch += 1
        order, top, left, flip = plan["order"], plan["top"], plan["left"], plan["flip"]
        if self.augment and order is None:
            order = torch.arange(self.num_samples, device=self.device)
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            if self.augment:
                index = order[start:stop]
                images = crop_flip(self.images, index, top[start:stop], left[start:stop], flip[start:stop],
                                   size=self.image_size[0])
                labels = self.labels[index]
            elif order is not None:
                index = order[start:stop]
                images, labels = self.images[index], self.labels[index]
            else:
                images, labels = self.images[start:stop], self.labels[start:stop]
            x = self.normalise(images)
            if self.pad_last and stop - start < self.batch_size:
                x, labels = self._padded(x, labels)
            yield x, labels

    def _padded(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        full = x.new_zeros((self.batch_size, *x.shape[1:]))
        if self.channels_last:
            full = full.contiguous(memory_format=torch.channels_last)
        full[:n] = x
        full_labels = torch.full((self.batch_size,), -100, dtype=labels.dtype, device=labels.device)
        full_labels[:n] = labels
        return full, full_labels

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(n={self.num_samples}, batch_size={self.batch_size}, batches={len(self)}, "
            f"train={self.train}, augment={self.augment}, device={self.device})"
        )
