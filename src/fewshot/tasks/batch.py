"""The batch types every method consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


TENSOR_FIELDS = ("support_x", "support_y", "query_x", "query_y", "unlabeled_x", "unlabeled_y", "class_attributes")


@dataclass
class TaskBatch:
    """B few-shot classification tasks, batch-first.

    ``support_x [B, N*K, *item]``, ``support_y [B, N*K]``, ``query_x [B, N*Q, *item]``,
    ``query_y [B, N*Q]``; labels are remapped to ``0..N-1`` per task in a random order, and items
    are shuffled within the support and the query set, so no method may rely on class-major order.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    #: semi-supervised episodes: unlabelled items ``[B, M_tot, *item]`` and, for analysis only, their
    #: task labels (−1 for distractor classes); no method may use ``unlabeled_y`` for training.
    unlabeled_x: torch.Tensor | None = None
    unlabeled_y: torch.Tensor | None = None
    #: zero-shot tasks: the description of each class ``[B, N, a]``, row k for label k
    class_attributes: torch.Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> "TaskBatch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t.to(device, non_blocking=True)
            if memory_format is not None and t.ndim == 5:  # [B, n, C, H, W] -> channels-last per item
                b, n = t.shape[:2]
                t = t.reshape(b * n, *t.shape[2:]).contiguous(memory_format=memory_format).view(t.shape)
            return t

        return TaskBatch(**{f.name: move(getattr(self, f.name)) if f.name != "ways" else self.ways for f in fields(self)})

    def task(self, i: int) -> "TaskBatch":
        """The i-th task as a batch of one."""
        s = slice(i, i + 1)
        return TaskBatch(**{f.name: (getattr(self, f.name)[s] if getattr(self, f.name) is not None else None)
                            if f.name != "ways" else self.ways for f in fields(self)})
