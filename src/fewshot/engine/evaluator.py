"""The one evaluator: mean ± 95 % confidence interval over a fixed, seeded list of tasks."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.methods.base import Method, accuracy
from fewshot.tasks.sampler import EpisodeSampler


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95 % half-width 1.96 · sd / √n (sd with ddof = 1)."""
    v = values.double()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


def evaluate(model: Method, dataset: ClassDataset, ways: int, shots: int, queries: int, tasks: int,
             seed: int, batch_tasks: int = 20, device: str | torch.device = "cpu",
             memory_format: torch.memory_format | None = None, autocast: Any = None,
             **sampler_options: Any) -> dict[str, Any]:
    """Accuracy (%) of ``model`` on ``tasks`` seeded tasks: the same seed gives the same tasks.

    The model is put in ``eval()`` mode (its normalization policy decides which statistics that
    means) and restored afterwards; no autograd graph is built. ``sampler_options`` go to the
    :class:`EpisodeSampler` (e.g. ``unlabeled``, ``distractors``, ``labeled_fraction``).
    """
    sampler = EpisodeSampler(dataset, ways, shots, queries, batch_size=min(batch_tasks, tasks), seed=seed,
                             name="evaluation", **sampler_options)
    was_training = model.training
    model.eval()
    accs = []
    try:
        with torch.inference_mode(), (autocast or nullcontext()):
            for batch in sampler.fixed_tasks_iter(tasks):
                batch = batch.to(device, memory_format)
                accs.append(accuracy(model.predict(batch).float(), batch.query_y).cpu())
    finally:
        model.train(was_training)
    values = torch.cat(accs) * 100
    mean, ci = mean_ci95(values)
    return {"ways": ways, "shots": shots, "queries": queries, "tasks": tasks, "seed": seed,
            "mean": round(mean, 3), "ci95": round(ci, 3)}
