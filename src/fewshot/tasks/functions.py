"""Episodes of function task families (sine-wave regression, logistic tasks), same contract as
:class:`~fewshot.tasks.EpisodeSampler`: ``sample()``, ``fixed_tasks_iter()``, ``state_dict()``."""

from __future__ import annotations


import torch

from fewshot.data.functions import TaskFamily
from fewshot.errors import DataError
from fewshot.tasks.stream import SeededStream
from fewshot.tasks.batch import TaskBatch

#: EpisodeSampler options that mean nothing for function tasks, with their neutral values
NEUTRAL = {"unlabeled": 0, "distractors": 0, "labeled_fraction": 1.0, "groups": "none", "same_items": False,
           "affine": False, "downsample": 0.0, "rotate": "none"}


class FunctionSampler(SeededStream):
    """Draws batches of ``batch_size`` tasks with ``shots`` support and ``queries`` query points each.

    For the 2-way logistic family, ``shots`` and ``queries`` are per label (``2·shots`` support items),
    so that settings read the same as for class episodes. Tasks are drawn one after another from the
    sampler's own generator: the i-th task of a seeded stream does not depend on the batch size.
    """

    def __init__(self, family: TaskFamily, ways: int, shots: int, queries: int, batch_size: int = 1, seed: int = 0,
                 name: str = "task", pool_seed: int = 0, **options) -> None:  # noqa: ARG002
        bad = {k: v for k, v in options.items() if k in NEUTRAL and v != NEUTRAL[k]}
        if bad or set(options) - set(NEUTRAL):
            key = next(iter(bad or set(options) - set(NEUTRAL)))
            raise DataError(f"{name}.{key} does not apply to {family.kind} tasks (there are no classes or images); "
                            "remove it from the config.")
        if not family.regression and ways != 2:
            raise DataError(f"{family.kind} tasks are 2-way (labels 0/1); set {name}.ways=2 (got {ways}).")
        if shots < 1 or queries < 1 or batch_size < 1:
            raise DataError(f"{name} tasks need at least one support point, one query point and one task per batch "
                            f"(got shots={shots}, queries={queries}, batch={batch_size}).")
        self.family, self.ways, self.shots, self.queries, self.batch_size = family, ways, shots, queries, batch_size
        self.per = 1 if family.regression else ways
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int | None = None) -> TaskBatch:
        tasks = [self.family.draw(self.shots * self.per, self.queries * self.per, self.generator)
                 for _ in range(batch_size or self.batch_size)]
        sx, sy, qx, qy = (torch.stack(t) for t in zip(*tasks))
        return TaskBatch(sx, sy, qx, qy, 0 if self.family.regression else self.ways)

