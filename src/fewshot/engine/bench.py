"""Training throughput: our implementation against a plain PyTorch loop, in the same process.

Both sides train the same architecture on the same episode shape (e.g. 60-way 5-shot 5-query
Omniglot 28×28) with the same number of threads. The plain loop is what a straightforward
implementation looks like: a float32 NumPy copy of the data, a Python loop over classes with
``np.random.choice``, a float32 forward pass, ``torch.cdist`` distances. Ours is
:class:`~fewshot.tasks.EpisodeSampler` + the method's ``train_step`` in the configured precision
(bf16 autocast with channels-last by default). Ours in float32 is measured too, so the gain can be
attributed. Timing lives here, never in tests.

For every other method, :func:`step_time` times the training step of a config (any shipped config or
YAML file, with overrides) on a fixed, seeded list of batches from its own sampler: the number to compare
before and after a change to a model (``fewshot bench mann/omniglot``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.engine.config import load_config
from fewshot.engine.runs import machine_summary
from fewshot.errors import FewshotError


def _timed(step, episodes: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(episodes):
        step()
    return time.perf_counter() - t


def bench(method: str, ways: int = 60, shots: int = 5, queries: int = 5, episodes: int = 30, threads: int = 1,
          data_dir: str | None = None, precision: str = "bf16", warmup: int = 3) -> dict[str, Any]:
    """Episodes/s and images/s of ours (configured precision and fp32) and of the plain loop."""
    from fewshot.data import build_dataset
    from fewshot.methods import build_method
    from fewshot.tasks import EpisodeSampler

    if method != "protonet":
        raise FewshotError(f"`fewshot bench` has a plain-loop reference for protonet only, not {method!r}.")
    torch.set_num_threads(threads)
    overrides = [f"train.ways={ways}", f"train.shots={shots}", f"train.queries={queries}"]
    if data_dir:
        overrides.append(f"data.dir={data_dir}")
    config = load_config(method, overrides)
    data = build_dataset(config["data"], "train")
    images = ways * (shots + queries)
    result: dict[str, Any] = {"method": method, "dataset": "omniglot", "ways": ways, "shots": shots,
                              "queries": queries, "images_per_episode": images, "episodes": episodes,
                              "threads": threads, "machine": machine_summary(threads)}

    def ours(prec: str) -> float:
        torch.manual_seed(0)
        model = build_method(config, data.item_shape)
        fmt = torch.channels_last if prec == "bf16" else None
        if fmt is not None:
            model = model.to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        sampler = EpisodeSampler(data, ways, shots, queries, seed=0)
        cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else nullcontext
        return _timed(lambda: model.train_step(sampler.sample().to("cpu", fmt), opt, cast()), episodes, warmup)

    def plain() -> float:
        torch.manual_seed(0)
        arr = data.blocks.squeeze(2).float().div(255).numpy()  # [C, 20, 28, 28] float32 in memory
        model = build_method(config, data.item_shape).encoder
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        rng = np.random.default_rng(0)

        def step() -> None:
            classes = rng.choice(arr.shape[0], ways, replace=False)
            support, query = [], []
            for c in classes:
                idx = rng.choice(arr.shape[1], shots + queries, replace=False)
                support.append(arr[c, idx[:shots]])
                query.append(arr[c, idx[shots:]])
            xs = torch.from_numpy(np.concatenate(support))[:, None]
            xq = torch.from_numpy(np.concatenate(query))[:, None]
            z = model(torch.cat([xs, xq]))
            protos = z[: ways * shots].view(ways, shots, -1).mean(1)
            dist = torch.cdist(z[ways * shots:], protos) ** 2
            target = torch.arange(ways).repeat_interleave(queries)
            loss = F.cross_entropy(-dist, target)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return _timed(step, episodes, warmup)

    rows = {f"ours_{precision}": ours(precision), "plain_fp32": plain()}
    if precision != "fp32":
        rows["ours_fp32"] = ours("fp32")
    for name, seconds in rows.items():
        result[name] = {"episodes_per_s": round(episodes / seconds, 3), "images_per_s": round(images * episodes / seconds, 1)}
    result["speedup_vs_plain"] = round(rows["plain_fp32"] / rows[f"ours_{precision}"], 2)
    if precision != "fp32":
        result["speedup_fp32_vs_plain"] = round(rows["plain_fp32"] / rows["ours_fp32"], 2)
    return result


def step_time(source: str, overrides: list[str] | tuple[str, ...] = (), steps: int = 20, warmup: int = 3,
              threads: int = 1, data_dir: str | None = None) -> dict[str, Any]:
    """Seconds per training step (sampling excluded) of a config on ``steps`` seeded batches after ``warmup``."""
    import tempfile
    from pathlib import Path

    from fewshot.engine.trainer import Trainer

    overrides = [*overrides, f"threads={threads}"] + ([f"data.dir={data_dir}"] if data_dir else [])
    config = load_config(source, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp), progress=False)
        batches = [trainer.sampler.sample() for _ in range(warmup + steps)]
        batches = [b.to(trainer.device, trainer.memory_format) for b in batches]
        model, opt = trainer.model, trainer.optimizer
        for b in batches[:warmup]:
            model.train_step(b, opt, trainer.autocast())
        start = time.perf_counter()
        for b in batches[warmup:]:
            model.train_step(b, opt, trainer.autocast())
        seconds = (time.perf_counter() - start) / steps
    return {"config": source, "overrides": list(overrides), "steps": steps, "threads": threads,
            "precision": config["precision"], "seconds_per_step": round(seconds, 4),
            "steps_per_s": round(1 / seconds, 2), "machine": machine_summary(threads)}
