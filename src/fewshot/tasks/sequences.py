"""Sequence episodes for the Neural Turing Machine tasks: :class:`SequenceBatch` and its sampler, with the
same contract as the other samplers (``sample()``, ``fixed_tasks_iter()``, ``state_dict()``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.data.sequences import SequenceFamily
from fewshot.errors import DataError
from fewshot.tasks.stream import SeededStream


@dataclass
class SequenceBatch:
    """B sequences, batch-first: ``inputs [B, T, C_in]``, ``targets [B, T, C_out]``, ``mask [B, T]``
    (1 on the steps that are scored)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> "SequenceBatch":  # noqa: ARG002
        return SequenceBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


class SequenceSampler(SeededStream):
    """Batches of ``batch_size`` random sequences of a :class:`SequenceFamily`, from a private generator."""

    def __init__(self, family: SequenceFamily, batch_size: int = 1, seed: int = 0, name: str = "task", **options) -> None:
        used = {k: v for k, v in options.items() if v not in (0, 0.0, 1.0, False, "none", None)
                and k not in ("pool_seed", "labeled_fraction")}
        if used:
            key = next(iter(used))
            raise DataError(f"{name}.{key} does not apply to sequence tasks; remove it from the config.")
        if batch_size < 1:
            raise DataError(f"the {name} batch size must be at least 1 (got {batch_size}).")
        self.family, self.batch_size = family, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int | None = None) -> SequenceBatch:
        return SequenceBatch(*self.family.draw(batch_size or self.batch_size, self.generator))


@dataclass
class LabelSequenceBatch:
    """Santoro et al.'s episodes: ``images [B, T, *item]`` shown one per step, ``labels [B, T]`` (episode
    labels 0..N−1, shuffled per episode); the model sees the label of step t − 1 at step t."""

    images: torch.Tensor
    labels: torch.Tensor
    ways: int
    #: five-character string labels (Santoro et al.'s second setting): ``[B, N, 5]`` characters 0..4 of each class
    strings: torch.Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> "LabelSequenceBatch":  # noqa: ARG002
        return LabelSequenceBatch(self.images.to(device), self.labels.to(device), self.ways,
                                  None if self.strings is None else self.strings.to(device))


def instance_index(labels: torch.Tensor) -> torch.Tensor:
    """For ``labels [B, T]``: how many times the label of step t has been shown up to and including t
    (1 = first presentation) — the index of the per-instance accuracy."""
    one_hot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1)
    return (one_hot.cumsum(1) * one_hot).sum(-1)


class LabelSequenceSampler(SeededStream):
    """Episodes of ``length`` steps over ``ways`` classes drawn without replacement from a class dataset.

    ``labels="balanced"``: exactly length/ways items per class, shuffled (the paper: 5 classes × 10
    instances); ``"iid"``: each step's class uniform (the MANN TF code). Items of a class are distinct.
    ``rotate``: each class rotated by a random multiple of 90°; ``translate``: each image shifted by a
    random integer offset in [−translate, translate] pixels of the stored image (zero fill): the MANN TF
    code's ±10 px on 105-px originals is ±2 px at 20×20.
    """

    def __init__(self, dataset, ways: int = 5, length: int = 50, batch_size: int = 1, seed: int = 0,
                 labels: str = "balanced", rotate: bool = False, translate: int = 0, name: str = "task",
                 strings: bool = False) -> None:
        if labels not in ("balanced", "iid"):
            raise DataError(f"{name} label sampling must be balanced or iid (got {labels!r}).")
        if ways > dataset.num_classes:
            raise DataError(f"{name} episodes need {ways} classes but the split has {dataset.num_classes}.")
        per = -(-length // ways) if labels == "balanced" else length
        if labels == "balanced" and length % ways:
            raise DataError(f"balanced {name} episodes need a length divisible by the {ways} classes (got {length}).")
        if per > dataset.min_count and labels == "balanced":
            raise DataError(f"{name} episodes show each class {per} times but some classes have only "
                            f"{dataset.min_count} items; use shorter episodes or fewer instances.")
        side = min(dataset.item_shape[-2:]) if len(dataset.item_shape) == 3 else 0
        if translate and not 0 < 2 * translate < side:
            raise DataError(f"{name} translation of up to {translate} px does not fit items of shape "
                            f"{tuple(dataset.item_shape)}: set data.episodes.translate between 0 and "
                            f"{max(side // 2 - 1, 0)} (pixels of the stored image; the MANN TF code's ±10 px at "
                            "105x105 is 2 at 20x20).")
        self.dataset, self.ways, self.length, self.batch_size = dataset, ways, length, batch_size
        self.labels_mode, self.rotate, self.translate, self.strings = labels, rotate, translate, strings
        self.generator = torch.Generator().manual_seed(seed)

    def _episode(self) -> tuple[torch.Tensor, torch.Tensor]:
        ds, g, n, t = self.dataset, self.generator, self.ways, self.length
        classes = torch.rand(ds.num_classes, generator=g).argsort()[:n]
        if self.labels_mode == "balanced":
            labels = torch.arange(n).repeat_interleave(t // n)[torch.rand(t, generator=g).argsort()]
        else:
            labels = torch.randint(0, n, (t,), generator=g)
        images = torch.empty(t, *ds.item_shape, dtype=ds.images.dtype)
        for k in range(n):
            steps = (labels == k).nonzero().flatten()
            count = int(ds.counts[classes[k]])
            picks = torch.rand(count, generator=g).argsort()[: len(steps)] if len(steps) <= count else \
                torch.randint(0, count, (len(steps),), generator=g)
            images[steps] = ds.images[ds.offsets[classes[k]] + picks]
        x = ds.to_float(images)
        if self.rotate:
            turns = torch.randint(0, 4, (n,), generator=g)[labels]
            for r in (1, 2, 3):
                sel = turns == r
                if sel.any():
                    x[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
        if self.translate:
            shifts = torch.randint(-self.translate, self.translate + 1, (t, 2), generator=g)
            out = torch.zeros_like(x)
            h, w = x.shape[-2:]
            for i, (dy, dx) in enumerate(shifts.tolist()):
                ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
                xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
                out[i, ..., yd, xd] = x[i, ..., ys, xs]
            x = out
        return x, labels

    def _strings(self) -> torch.Tensor:
        """``ways`` distinct five-character strings over an alphabet of 5 (one per episode class)."""
        codes = torch.randperm(5 ** 5, generator=self.generator)[: self.ways]
        return torch.stack([(codes // 5 ** j) % 5 for j in range(5)], -1)

    def sample(self, batch_size: int | None = None) -> LabelSequenceBatch:
        eps = [self._episode() for _ in range(batch_size or self.batch_size)]
        strings = torch.stack([self._strings() for _ in eps]) if self.strings else None
        return LabelSequenceBatch(torch.stack([e[0] for e in eps]), torch.stack([e[1] for e in eps]), self.ways, strings)

