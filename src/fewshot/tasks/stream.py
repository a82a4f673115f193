"""What every sampler shares: a private seeded generator whose state is saved and restored exactly,
an endless iterator, and the fixed, seeded list of evaluation tasks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class SeededStream:
    """Base of the samplers: subclasses set ``self.generator`` and ``self.batch_size`` and define ``sample()``."""

    generator: torch.Generator
    batch_size: int

    def sample(self, batch_size: int | None = None) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.sample()

    def fixed_tasks_iter(self, count: int) -> Iterator[Any]:
        """``count`` tasks in batches of at most ``batch_size``, drawn from the current generator state:
        a fresh sampler with a given seed yields the same list every time (the evaluation tasks)."""
        left = count
        while left > 0:
            batch = self.sample(min(self.batch_size, left))
            left -= batch.num_tasks
            yield batch
