"""The one episode sampler: N-way K-shot Q-query tasks from a class dataset, in memory.

Every draw is a few tensor operations on the dataset's in-memory tensor (no disk, no Python loop
over items), driven by the sampler's own ``torch.Generator`` so that a seed gives the same tasks
every time and the sampler state can be saved and restored exactly (``state_dict``).

Protocol (``spec/README.md``): N distinct classes without replacement; K + Q distinct items per
class without replacement, the first K support and the rest query; labels remapped to
``0..N-1`` in a random order per task; items shuffled within support and query.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import DataError
from fewshot.tasks.batch import TaskBatch

AUGMENT = ("none", "per_class", "per_task")


class EpisodeSampler:
    """Draws :class:`TaskBatch` es of ``batch_size`` tasks.

    Args:
        dataset: the classes to draw from (one split part).
        ways, shots, queries: N, K and Q. Checked against the dataset before any work starts.
        batch_size: tasks per batch (B).
        seed: seed of the sampler's private generator.
        rotate: ``"per_class"`` rotates all items of each class of a task by one random multiple of
            90° (MAML's augmentation), ``"per_task"`` the whole task by one angle, ``"none"`` nothing.
        name: used in error messages (e.g. ``"train"``).
    """

    def __init__(self, dataset: ClassDataset, ways: int, shots: int, queries: int, batch_size: int = 1,
                 seed: int = 0, rotate: str = "none", name: str = "task") -> None:
        check_task_settings(dataset, ways, shots, queries, name)
        if rotate not in AUGMENT:
            raise DataError(f"unknown rotation augmentation {rotate!r} for the {name} sampler; use one of {AUGMENT}.")
        if rotate != "none" and len(dataset.item_shape) != 3:
            raise DataError(f"rotation augmentation needs image items [C, H, W]; the {name} data has "
                            f"items of shape {dataset.item_shape}.")
        if batch_size < 1:
            raise DataError(f"the {name} meta-batch size must be at least 1 (got {batch_size}).")
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.batch_size, self.rotate = batch_size, rotate
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample()

    def sample(self, batch_size: int | None = None) -> TaskBatch:
        """Draw one batch of tasks.

        Tasks are drawn one after another, so the i-th task of a seeded stream is the same whatever
        the batch size (evaluation lists do not depend on ``batch_tasks``).
        """
        parts = [self._draw() for _ in range(batch_size or self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return TaskBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in
                           ("support_x", "support_y", "query_x", "query_y")), self.ways)

    def _draw(self) -> TaskBatch:
        b = 1
        n, k, q, g, ds = self.ways, self.shots, self.queries, self.generator, self.dataset
        m = k + q
        # N distinct classes per task: the first N of a random permutation.
        classes = torch.rand(b, ds.num_classes, generator=g).argsort(dim=1)[:, :n]  # [B, N]
        counts = ds.counts[classes]  # [B, N]
        # K+Q distinct items per class: random keys, invalid slots pushed past the end.
        width = int(counts.max())
        keys = torch.rand(b, n, width, generator=g)
        if int(counts.min()) != width:
            keys = keys.masked_fill(torch.arange(width) >= counts[..., None], 2.0)
        items = keys.argsort(dim=2)[..., :m]  # [B, N, K+Q]
        flat = ds.offsets[classes][..., None] + items  # [B, N, K+Q]
        x = ds.images[flat]  # [B, N, K+Q, *item]
        if self.rotate != "none":
            x = self._rotate(x)
        # Random label order per task, and random item order within support and query.
        labels = torch.rand(b, n, generator=g).argsort(dim=1)  # label of the j-th drawn class
        y = labels[..., None].expand(b, n, m)
        sx, sy = x[:, :, :k].reshape(b, n * k, *x.shape[3:]), y[:, :, :k].reshape(b, n * k)
        qx, qy = x[:, :, k:].reshape(b, n * q, *x.shape[3:]), y[:, :, k:].reshape(b, n * q)
        ps = torch.rand(b, n * k, generator=g).argsort(dim=1)
        pq = torch.rand(b, n * q, generator=g).argsort(dim=1)
        sx, sy = _take(sx, ps), sy.gather(1, ps)
        qx, qy = _take(qx, pq), qy.gather(1, pq)
        return TaskBatch(ds.to_float(sx), sy, ds.to_float(qx), qy, n)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        if self.rotate == "per_class":
            turns = torch.randint(0, 4, (b, n), generator=self.generator)
        else:
            turns = torch.randint(0, 4, (b, 1), generator=self.generator).expand(b, n)
        out = x.clone()
        for t in (1, 2, 3):
            sel = turns == t
            if sel.any():
                out[sel] = torch.rot90(x[sel], t, dims=(-2, -1))
        return out

    def fixed_tasks_iter(self, count: int) -> Iterator[TaskBatch]:
        """``count`` tasks in batches of at most ``batch_size``, drawn from the current generator state.

        A fresh sampler with a given seed yields the same list every time: the fixed, seeded
        evaluation tasks of the protocol.
        """
        left = count
        while left > 0:
            batch = self.sample(min(self.batch_size, left))
            left -= batch.num_tasks
            yield batch


def _take(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x[b, perm[b, i]]`` for every task b."""
    return x[torch.arange(x.shape[0])[:, None], perm]


def check_task_settings(dataset: ClassDataset, ways: int, shots: int, queries: int, name: str = "task") -> None:
    """Refuse impossible N-way K-shot Q-query settings with one clear sentence."""
    if ways < 1 or shots < 0 or queries < 0 or shots + queries < 1:
        raise DataError(f"{name} ways/shots/queries must be positive (got ways={ways}, shots={shots}, "
                        f"queries={queries}).")
    if ways > dataset.num_classes:
        raise DataError(f"{name} tasks ask for {ways} ways but the split has only {dataset.num_classes} "
                        f"classes; lower {name}.ways.")
    if shots + queries > dataset.min_count:
        raise DataError(f"{name} tasks ask for {shots} shots + {queries} queries = {shots + queries} "
                        f"items per class but the smallest class has {dataset.min_count}; lower "
                        f"{name}.shots or {name}.queries.")
