"""Meta-training over several processes with ``torch.distributed``: the tasks of a meta-batch are split
over the ranks and the meta-gradients (or Reptile's updates) averaged, so that every rank takes the same
optimizer step as one process with the whole meta-batch would.

Launch any training with ``torchrun`` (gloo on a CPU, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m fewshot train maml/omniglot-5w1s --out runs/maml-2p

Every rank draws the same meta-batch from the same seeded sampler and keeps the tasks ``rank, rank +
world, …``; rank r's loss is the mean over its Bᵣ tasks, so its gradient is weighted by Bᵣ/B before the
sum over ranks: Σᵣ (Bᵣ/B)·∇(1/Bᵣ)Σ_{i∈r} Lᵢ = ∇(1/B)Σᵢ Lᵢ. Only rank 0 validates, logs and writes
checkpoints and results; the parameters stay identical on every rank because every rank applies the
same averaged gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from fewshot.errors import ConfigError


@dataclass
class World:
    """This process's place among the training processes (``size`` 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "World":
        """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process.")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, batch):
        """This rank's tasks of a meta-batch: ``rank, rank + size, …``."""
        if self.size == 1:
            return batch
        if batch.num_tasks < self.size:
            raise ConfigError(f"train.meta_batch={batch.num_tasks} is smaller than the {self.size} processes; "
                              "give every process at least one task.")
        idx = torch.arange(self.rank, batch.num_tasks, self.size)
        return type(batch)(**{f.name: getattr(batch, f.name)[idx] if isinstance(getattr(batch, f.name), torch.Tensor)
                              else getattr(batch, f.name) for f in fields(batch)})

    def reduce_gradients(self, params, local_tasks: int, total_tasks: int) -> None:
        """grad ← Σ_ranks (Bᵣ/B)·gradᵣ for every parameter (zeros for parameters without a gradient)."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.mul_(local_tasks / total_tasks)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every process, then leave the process group (a process that exits while another still
        holds the group open can abort in gloo's teardown)."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
