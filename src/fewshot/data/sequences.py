"""Algorithmic sequence tasks of the Neural Turing Machine (``spec/datasets.md`` §7.3, ``spec/memory.md`` §1.3).

A :class:`SequenceFamily` draws one batch of sequences at a time: ``inputs [B, T, C_in]``, ``targets
[B, T, C_out]`` and a ``mask [B, T]`` that is 1 on the output phase (the loss and the metrics count
only those steps). Every sequence of a batch has its own length; shorter ones are padded with zero
steps that the mask excludes. Lengths are drawn from ``min_length..max_length`` **inclusive** (the NTM
reverse code's ``randint`` excludes the upper bound; say ``max_length = 19`` to match its d1 data).

* ``copy`` (Graves et al. 2014): L random ``width``-bit vectors, then a delimiter step (an extra
  channel), then L blank steps during which the target is the sequence. Inputs ``width + 1``.
* ``reverse`` (the NTM reverse code's layout): ``width + 2`` input channels, a start flag on channel
  ``width`` at step 0, the L vectors, an end flag on channel ``width + 1`` at step L + 1, then L blank
  steps; the target is the time-reversed sequence. ``copy_reverse_layout`` gives copy in this layout.
* ``repeat_copy``: the sequence, then the repeat count (normalized by ``max_repeats``) on the end-flag
  channel; the target is the sequence ``repeats`` times followed by an end marker on an extra channel.
* ``associative_recall``: ``items`` items of ``item_length`` vectors, each preceded by a delimiter
  (channel ``width``), then a query item between two query delimiters (channel ``width + 1``); the
  target is the item that followed the query item.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fewshot.errors import DataError

SEQUENCE_TASKS = ("copy", "reverse", "copy_reverse_layout", "repeat_copy", "associative_recall")


@dataclass(frozen=True)
class SequenceFamily:
    """Random sequences of one algorithmic task (see the module docstring)."""

    task: str = "copy"
    width: int = 8
    min_length: int = 1
    max_length: int = 20
    min_repeats: int = 1
    max_repeats: int = 10
    item_length: int = 3
    names: tuple = ()

    def __post_init__(self) -> None:
        if self.task not in SEQUENCE_TASKS:
            raise DataError(f"unknown sequence task {self.task!r} (data.sequences.task); use one of {SEQUENCE_TASKS}.")
        if not 1 <= self.min_length <= self.max_length:
            raise DataError(f"data.sequences needs 1 ≤ min_length ≤ max_length (got {self.min_length}, {self.max_length}).")
        if self.task == "associative_recall" and self.min_length < 2:
            raise DataError("associative recall needs at least 2 items (data.sequences.min_length ≥ 2).")
        if self.task == "repeat_copy" and not 1 <= self.min_repeats <= self.max_repeats:
            raise DataError("repeat copy needs 1 ≤ min_repeats ≤ max_repeats (data.sequences).")

    @property
    def regression(self) -> bool:
        return False

    @property
    def input_size(self) -> int:
        return self.width + (1 if self.task == "copy" else 2)

    @property
    def output_size(self) -> int:
        return self.width + (1 if self.task == "repeat_copy" else 0)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.input_size,)

    def at_length(self, length: int) -> "SequenceFamily":
        """The same task with every sequence of length ``length`` (evaluation buckets)."""
        return replace(self, min_length=length, max_length=length)

    def _bits(self, n: int, length: int, g: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, length, self.width, generator=g) < 0.5).float()

    def draw(self, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``inputs [B, T, C_in]``, ``targets [B, T, C_out]``, ``mask [B, T]`` for ``batch`` sequences."""
        lengths = torch.randint(self.min_length, self.max_length + 1, (batch,), generator=g).tolist()
        repeats = (torch.randint(self.min_repeats, self.max_repeats + 1, (batch,), generator=g).tolist()
                   if self.task == "repeat_copy" else [1] * batch)
        rows = [self._one(n, r, g) for n, r in zip(lengths, repeats)]
        steps = max(r[0].shape[0] for r in rows)
        inputs = torch.zeros(batch, steps, self.input_size)
        targets = torch.zeros(batch, steps, self.output_size)
        mask = torch.zeros(batch, steps)
        for b, (x, y, m) in enumerate(rows):
            inputs[b, : len(x)], targets[b, : len(y)], mask[b, : len(m)] = x, y, m
        return inputs, targets, mask

    def _one(self, length: int, repeats: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.width
        if self.task == "copy":
            seq = self._bits(1, length, g)[0]
            x = torch.zeros(2 * length + 1, w + 1)
            x[:length, :w] = seq
            x[length, w] = 1.0  # delimiter
            y = torch.zeros(2 * length + 1, w)
            y[length + 1:] = seq
            m = torch.zeros(2 * length + 1)
            m[length + 1:] = 1.0
            return x, y, m
        if self.task in ("reverse", "copy_reverse_layout"):
            seq = self._bits(1, length, g)[0]
            steps = 2 * length + 2
            x = torch.zeros(steps, w + 2)
            x[0, w] = 1.0  # start flag
            x[1:length + 1, :w] = seq
            x[length + 1, w + 1] = 1.0  # end flag
            y = torch.zeros(steps, w)
            y[length + 2:] = seq.flip(0) if self.task == "reverse" else seq
            m = torch.zeros(steps)
            m[length + 2:] = 1.0
            return x, y, m
        if self.task == "repeat_copy":
            seq = self._bits(1, length, g)[0]
            out = length * repeats + 1
            steps = length + 2 + out
            x = torch.zeros(steps, w + 2)
            x[0, w] = 1.0
            x[1:length + 1, :w] = seq
            x[length + 1, w + 1] = repeats / self.max_repeats
            y = torch.zeros(steps, w + 1)
            y[length + 2: length + 2 + length * repeats, :w] = seq.repeat(repeats, 1)
            y[-1, w] = 1.0  # end marker
            m = torch.zeros(steps)
            m[length + 2:] = 1.0
            return x, y, m
        # associative recall: `length` items of item_length vectors
        k = self.item_length
        items = self._bits(length, k, g)  # [items, k, w]
        q = int(torch.randint(0, length - 1, (1,), generator=g))
        steps_in = length * (k + 1) + (k + 2)
        steps = steps_in + k
        x = torch.zeros(steps, w + 2)
        for i in range(length):
            x[i * (k + 1), w] = 1.0
            x[i * (k + 1) + 1: (i + 1) * (k + 1), :w] = items[i]
        start = length * (k + 1)
        x[start, w + 1] = 1.0
        x[start + 1: start + 1 + k, :w] = items[q]
        x[start + 1 + k, w + 1] = 1.0
        y = torch.zeros(steps, w)
        y[steps_in:] = items[q + 1]
        m = torch.zeros(steps)
        m[steps_in:] = 1.0
        return x, y, m


def sequence_family(data: dict) -> SequenceFamily:
    """The family of a config's ``data`` section (``data.dataset = sequences``)."""
    s = data["sequences"]
    return SequenceFamily(s["task"], s["width"], s["min_length"], s["max_length"], s["min_repeats"], s["max_repeats"],
                          s["item_length"])
