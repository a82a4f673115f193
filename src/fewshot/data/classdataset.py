"""Class datasets: every example of every class in memory, as one uint8 tensor.

A :class:`ClassDataset` holds ``images`` of shape ``[total, *item_shape]`` (uint8 for images,
any dtype for features) with per-class ``offsets`` and ``counts``, so classes may have unequal
sizes (a "list of blocks" in DESIGN.md) while sampling stays a handful of tensor operations.
When every class has the same size, :attr:`blocks` views the data as ``[classes, examples, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fewshot.errors import DataError


@dataclass
class ClassDataset:
    """Examples grouped by class.

    Attributes:
        images: ``[total, *item_shape]`` examples, class-major.
        counts: ``[classes]`` examples per class.
        names: one name per class (e.g. ``"Angelic/character01/rot090"``).
        scale: factor that maps stored values to floats (``1/255`` for uint8 images).
        mean, std: normalization applied after scaling (``(x*scale - mean) / std``).
        attributes: optional ``[classes, a]`` class descriptions (zero-shot learning), returned by the
            sampler for the classes of each task.
        sources: optional provenance of every item (e.g. the recording a window was cut from).
    """

    images: torch.Tensor
    counts: torch.Tensor
    names: list[str]
    scale: float = 1.0 / 255.0
    mean: float = 0.0
    std: float = 1.0
    attributes: torch.Tensor | None = None
    sources: list[str] | None = None
    offsets: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.counts = torch.as_tensor(self.counts, dtype=torch.long)
        if self.counts.ndim != 1 or len(self.names) != len(self.counts):
            raise DataError(f"a class dataset needs one count per class name ({len(self.names)} names, "
                            f"{self.counts.numel()} counts).")
        if int(self.counts.sum()) != self.images.shape[0]:
            raise DataError(f"the class counts sum to {int(self.counts.sum())} but there are "
                            f"{self.images.shape[0]} examples.")
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        if self.attributes is not None and self.attributes.shape[0] != len(self.names):
            raise DataError(f"there are {self.attributes.shape[0]} attribute rows for {len(self.names)} classes.")

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, names: list[str], **kw) -> "ClassDataset":
        """Build from an equal-size block ``[classes, examples, *item_shape]``."""
        c, e = blocks.shape[:2]
        return cls(blocks.reshape(c * e, *blocks.shape[2:]), torch.full((c,), e), names, **kw)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def min_count(self) -> int:
        return int(self.counts.min()) if len(self.counts) else 0

    @property
    def blocks(self) -> torch.Tensor:
        """``[classes, examples, *item_shape]`` view; only for equal-size classes."""
        if int(self.counts.min()) != int(self.counts.max()):
            raise DataError("this dataset has classes of unequal sizes; use images/offsets/counts.")
        return self.images.view(self.num_classes, int(self.counts[0]), *self.item_shape)

    def subset(self, classes: list[int] | torch.Tensor) -> "ClassDataset":
        """A new dataset holding only ``classes`` (in that order)."""
        idx = torch.as_tensor(classes, dtype=torch.long)
        parts = [self.images[o:o + n] for o, n in zip(self.offsets[idx].tolist(), self.counts[idx].tolist())]
        return ClassDataset(torch.cat(parts) if parts else self.images[:0], self.counts[idx],
                            [self.names[i] for i in idx.tolist()], self.scale, self.mean, self.std,
                            None if self.attributes is None else self.attributes[idx])

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Stored values → normalized float32 model input."""
        x = x.float()
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        return x


def random_class_split(split: str, part: str, count: int, default: tuple[int, int, int]) -> list[int]:
    """Indices of the classes (identities, speakers…) of ``part`` under ``random:<seed>[:<train>/<val>/<test>]``.

    A seeded permutation of the ``count`` classes cut into train / val / test sizes (``default`` when
    the split names none); ``trainval`` is train + val. Splits are always by class.
    """
    fields = split.split(":")
    try:
        assert fields[0] == "random" and len(fields) in (2, 3)
        seed = int(fields[1])
        sizes = [int(s) for s in fields[2].split("/")] if len(fields) == 3 else list(default)
        assert len(sizes) == 3 and min(sizes) >= 0
    except (AssertionError, ValueError):
        raise DataError(f"cannot read split {split!r}; write random:<seed> or random:<seed>:<train>/<val>/<test> "
                        "(a split by identity).") from None
    if sum(sizes) > count:
        raise DataError(f"split {split!r} asks for {sum(sizes)} classes but there are {count}.")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    a, b, c = sizes
    parts = {"train": order[:a], "val": order[a:a + b], "trainval": order[:a + b], "test": order[a + b:a + b + c]}
    if part not in parts:
        raise DataError(f"unknown split part {part!r}; use one of {tuple(parts)}.")
    return parts[part]
