"""The one evaluator: mean ± 95 % confidence interval over a fixed, seeded list of tasks."""

from __future__ import annotations

import math
import zlib
from contextlib import nullcontext
from typing import Any

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.methods.base import Method, accuracy, uses_batch_statistics
from fewshot.tasks.sampler import EpisodeSampler, make_sampler


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95 % half-width 1.96 · sd / √n (sd with ddof = 1)."""
    v = values.double()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


def task_scores(outputs: torch.Tensor, batch) -> tuple[str, torch.Tensor]:
    """The metric of a batch and its value per task: ``("accuracy", %)`` for class labels, ``("mse", ·)``
    (mean over query points) for regression targets."""
    from fewshot.tasks.sequences import LabelSequenceBatch, SequenceBatch

    if isinstance(batch, LabelSequenceBatch):
        return "accuracy", (outputs.argmax(-1) == batch.labels).float().mean(1).cpu() * 100
    if isinstance(batch, SequenceBatch):
        from fewshot.methods.memory import sequence_costs

        return "bit_errors", sequence_costs(outputs, batch)["bit_errors"].cpu()
    if batch.query_y.is_floating_point():
        return "mse", ((outputs.float() - batch.query_y.float()) ** 2).flatten(1).mean(1).cpu()
    return "accuracy", accuracy(outputs.float(), batch.query_y).cpu() * 100


#: metrics where lower is better (model selection inverts them)
LOWER_IS_BETTER = {"mse", "bit_errors"}


def input_range(dataset) -> tuple[float, float]:
    """The valid range of a dataset's model inputs (stored 0..255 images after scaling and normalization;
    unbounded for real-valued features), used to clip adversarial examples."""
    if isinstance(dataset, ClassDataset) and dataset.images.dtype == torch.uint8:
        lo, hi = (0 - dataset.mean) / dataset.std, (255 * dataset.scale - dataset.mean) / dataset.std
        return float(lo), float(hi)
    return -math.inf, math.inf


#: the largest embedding table :func:`embedded_dataset` builds (bytes); beyond it items are embedded per task
CACHE_LIMIT_BYTES = 2 << 30


def embedded_dataset(model: Method, dataset: ClassDataset, tasks: int, items_per_task: int,
                     device: str | torch.device = "cpu", memory_format: torch.memory_format | None = None,
                     chunk: int = 512, **sampler_options: Any) -> ClassDataset | None:
    """``dataset`` with every item replaced by its embedding ``model.encoder(item)``, or None where that
    would change a result or save nothing.

    Metric methods (``cache_embeddings``) touch raw items only through an encoder applied to each item on its
    own, so in ``eval()`` mode, without batch statistics and without per-task augmentation (rotation, affine,
    down-sampling), an item's embedding is the same in every task. Embedding each test item once, instead of
    once per task that draws it, gives the same tasks (the sampler draws indices, not values) and the same
    scores up to float round-off. Used only when the tasks would embed more items than the dataset holds
    and the table stays under :data:`CACHE_LIMIT_BYTES`. The model must already be in ``eval()`` mode.
    """
    if (not getattr(model, "cache_embeddings", False) or not isinstance(dataset, ClassDataset)
            or sampler_options.get("rotate", "none") != "none" or sampler_options.get("affine")
            or sampler_options.get("downsample") or uses_batch_statistics(model.encoder)
            or tasks * items_per_task <= len(dataset.images)):
        return None
    parts: list[torch.Tensor] = []
    with torch.inference_mode():
        for i in range(0, len(dataset.images), chunk):
            x = dataset.to_float(dataset.images[i:i + chunk]).to(device)
            if memory_format is not None and x.ndim == 4:
                x = x.contiguous(memory_format=memory_format)
            parts.append(model.encoder(x).float().cpu())
            if i == 0 and parts[0][0].numel() * 4 * len(dataset.images) > CACHE_LIMIT_BYTES:
                return None  # the whole table would be too large: known from the first chunk
    return ClassDataset(torch.cat(parts), dataset.counts, dataset.names, scale=1.0, attributes=dataset.attributes,
                        sources=dataset.sources)


def evaluate(model: Method, dataset, ways: int, shots: int, queries: int, tasks: int,
             seed: int, batch_tasks: int = 20, device: str | torch.device = "cpu",
             memory_format: torch.memory_format | None = None, autocast: Any = None,
             attack: str = "none", attack_eps: float = 0.0, pgd_steps: int = 10, cache: bool = True,
             per_task: bool = False, **sampler_options: Any) -> dict[str, Any]:
    """Mean ± 95 % CI of ``model`` on ``tasks`` seeded tasks: the same seed gives the same tasks.

    The metric is accuracy (%) for classification and MSE for regression tasks. The model is put in
    ``eval()`` mode (its normalization policy decides which statistics that means) and restored
    afterwards. No autograd graph is built, except the first-order inner-loop gradients of methods that
    adapt at test time (``needs_grad_at_test``); those also report the metric after every inner step
    (``curve``: step 0 = before adaptation). ``attack`` (``fgsm`` or ``pgd``) replaces every query item
    by a white-box adversarial example of L∞ size ``attack_eps`` against the model adapted on the clean
    support set; for images ``attack_eps`` is in pixel-intensity units (a fraction of the 0..1 range, so
    ε = 0.1 means the same with and without ``data.normalize``), for real-valued features in feature units
    (:mod:`fewshot.methods.adversarial`). ``sampler_options`` go to the sampler. With ``cache``,
    metric methods embed every item once (:func:`embedded_dataset`) instead of once per task. With
    ``per_task`` the metric of every task is returned too (``per_task``, in task order), for paired comparisons
    of models evaluated on the same seeded tasks.
    """
    was_training = model.training
    model.eval()
    encoder = None
    adapts = getattr(model, "needs_grad_at_test", False)
    per_step: list[list[torch.Tensor]] = []
    instances: list[torch.Tensor] = []  # labelled sequences: accuracy per presentation of a label
    metric = "accuracy"
    clip = input_range(dataset)
    # ε is a fraction of the images' intensity range (0..1 pixels), whatever the normalization: in model-input
    # units that is ε·(hi − lo) = ε/std; real-valued features have no range and take ε in their own units
    unit = clip[1] - clip[0] if math.isfinite(clip[1] - clip[0]) else 1.0
    if attack != "none":
        from fewshot.methods.adversarial import attack_queries

        # PGD's random starts: reproducible per seed, a stream apart from the sampler's (seeded with `seed` itself)
        attack_generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"pgd"))
    try:
        if cache and attack == "none":
            unlabeled = sampler_options.get("unlabeled", 0)
            items = ways * (shots + queries + unlabeled) + sampler_options.get("distractors", 0) * unlabeled
            with autocast or nullcontext():
                table = embedded_dataset(model, dataset, tasks, items, device, memory_format, **sampler_options)
            if table is not None:  # the model sees embeddings; its encoder is put back in `finally`
                dataset, encoder, model.encoder, memory_format = table, model.encoder, torch.nn.Identity(), None
        sampler = make_sampler(dataset, ways, shots, queries, batch_size=min(batch_tasks, tasks), seed=seed,
                               name="evaluation", **sampler_options)
        with (torch.no_grad() if adapts or attack != "none" else torch.inference_mode()), (autocast or nullcontext()):
            for batch in sampler.fixed_tasks_iter(tasks):
                batch = batch.to(device, memory_format)
                if attack != "none":
                    batch.query_x = attack_queries(model, batch, attack, attack_eps * unit, clip, pgd_steps,
                                                   attack_generator)
                outputs = model.predict_steps(batch) if hasattr(model, "predict_steps") else [model.predict(batch)]
                if hasattr(batch, "labels") and hasattr(batch, "images"):
                    from fewshot.methods.memory import instance_accuracy

                    instances.append(instance_accuracy(outputs[-1].float(), batch))
                for j, out in enumerate(outputs):
                    metric, scores = task_scores(out, batch)
                    if len(per_step) <= j:
                        per_step.append([])
                    per_step[j].append(scores)
    finally:
        if encoder is not None:
            model.encoder = encoder
        model.train(was_training)
    stats = [mean_ci95(torch.cat(s)) for s in per_step]
    mean, ci = stats[-1]
    result = {"ways": ways, "shots": shots, "queries": queries, "tasks": tasks, "seed": seed, "metric": metric,
              "mean": round(mean, 4 if metric == "mse" else 3), "ci95": round(ci, 4 if metric == "mse" else 3)}
    if per_task:
        result["per_task"] = [round(float(v), 4) for v in torch.cat(per_step[-1])]
    if instances:
        table = torch.cat(instances)
        cols = [table[:, k][~table[:, k].isnan()] for k in range(table.shape[1])]
        result["values"] = {"instance_accuracy": {
            "instance": list(range(1, table.shape[1] + 1)),
            "mean": [round(float(c.mean()), 3) if len(c) else None for c in cols],
            "ci95": [round(mean_ci95(c)[1], 3) if len(c) > 1 else None for c in cols],
            "episodes": [int(len(c)) for c in cols]}}
    if len(stats) > 1:
        result["curve"] = {"steps": list(range(len(stats))), "mean": [round(m, 4) for m, _ in stats],
                           "ci95": [round(c, 4) for _, c in stats]}
    return result


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties ½."""
    pos, neg = scores[positive.bool()].double(), scores[~positive.bool()].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None]).double().mean()
    ties = (pos[:, None] == neg[None]).double().mean()
    return float(greater + 0.5 * ties)


def best_threshold(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The threshold τ maximizing the accuracy of "positive iff score ≥ τ" (midpoints between scores)."""
    s, order = scores.double().sort()
    p = positive.bool()[order]
    candidates = torch.cat([s[:1] - 1, (s[1:] + s[:-1]) / 2, s[-1:] + 1])
    correct = [(((s >= t) == p).double().mean()) for t in candidates]
    return float(candidates[int(torch.stack(correct).argmax())])


def pair_scores(model: Any, dataset: ClassDataset, pairs: int, seed: int, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of ``pairs`` seeded pairs (half genuine, half impostor, class-disjoint from training when
    ``dataset`` is a held-out part): each 2-way 1-shot 1-query task gives two pairs of each kind."""
    tasks = max(1, pairs // 4)
    sampler = EpisodeSampler(dataset, 2, 1, 1, batch_size=min(50, tasks), seed=seed, name="verification")
    was = model.training
    model.eval()
    scores, same = [], []
    try:
        with torch.inference_mode():
            for batch in sampler.fixed_tasks_iter(tasks):
                batch = batch.to(device)
                s, m = model._pairs(batch)
                scores.append(s.flatten().float().cpu())
                same.append(m.flatten().cpu())
    finally:
        model.train(was)
    return torch.cat(scores), torch.cat(same)


def verification(model: Any, val: ClassDataset, test: ClassDataset, pairs: int = 2000, seed: int = 1234,
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """Verification on held-out classes: threshold chosen on ``val`` pairs, accuracy and ROC-AUC on ``test``."""
    vs, vm = pair_scores(model, val, pairs, seed + 1, device)
    tau = best_threshold(vs, vm)
    ts, tm = pair_scores(model, test, pairs, seed, device)
    return {"threshold": tau, "accuracy": round(float(((ts >= tau) == tm).float().mean()) * 100, 3),
            "auc": round(roc_auc(ts, tm), 4), "pairs": int(len(ts)), "val_accuracy_at_threshold":
            round(float(((vs >= tau) == vm).float().mean()) * 100, 3)}
