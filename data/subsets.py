"""Class-balanced index selection for training subsets, test subsets and validation splits."""

from __future__ import annotations

import torch


def resolve_count(value: int | float, available: int, what: str) -> int:
    """An int count, or a fraction in (0, 1) of `available`, checked to lie in [1, available]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be an int count or a fraction in (0, 1); got {value!r}")
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{what} as a fraction must lie in (0, 1); got {value}")
        count = round(value * available)
    else:
        count = value
    if not 1 <= count <= available:
        raise ValueError(f"{what}={value!r} asks for {count} images but only {available} are available (need >= 1)")
    return count


def balanced_indices(labels: torch.Tensor, count: int, num_classes: int, generator: torch.Generator,
                     what: str = "subset") -> torch.Tensor:
    """Pick `count` indices with equal numbers per class, sorted ascending.

    Each class gets count // num_classes images; the count % num_classes leftover images go one each
    to classes drawn at random (from `generator`). Within a class the images are drawn at random.
    A count below num_classes is refused: some class would get no image at all.
    """
    if count < num_classes:
        raise ValueError(f"data.{what}={count} is smaller than the {num_classes} classes, so some class would have "
                         f"no image; use data.{what} >= {num_classes}")
    quota = torch.full((num_classes,), count // num_classes, dtype=torch.int64)
    quota[torch.randperm(num_classes, generator=generator)[: count % num_classes]] += 1
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        need = int(quota[cls])
        if need > members.numel():
            most = num_classes * int(torch.bincount(labels, minlength=num_classes).min())
            raise ValueError(
                f"a class-balanced selection of {count} images needs {need} of class {cls}, "
                f"which has only {members.numel()}; ask for at most {most}"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:need]])
    return torch.cat(chosen).sort().values


def complement(indices: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[indices] = False
    return torch.nonzero(keep).flatten()
