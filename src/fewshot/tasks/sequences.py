"""Sequence episodes for the Neural Turing Machine tasks: :class:`SequenceBatch` and its sampler, with the
same contract as the other samplers (``sample()``, ``fixed_tasks_iter()``, ``state_dict()``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fewshot.data.sequences import SequenceFamily
from fewshot.errors import DataError


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


class SequenceSampler:
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

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def sample(self, batch_size: int | None = None) -> SequenceBatch:
        return SequenceBatch(*self.family.draw(batch_size or self.batch_size, self.generator))

    def fixed_tasks_iter(self, count: int) -> Iterator[SequenceBatch]:
        left = count
        while left > 0:
            batch = self.sample(min(self.batch_size, left))
            left -= batch.num_tasks
            yield batch
