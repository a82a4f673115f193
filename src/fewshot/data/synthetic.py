"""Synthetic class datasets for tests and smoke runs: Gaussian clusters, disjoint across split parts.

Each class c has a mean μ_c ~ N(0, I_dim) and items x = μ_c + noise · ε, ε ~ N(0, I), followed by
``nuisance`` dimensions of pure noise with standard deviation ``nuisance_scale`` that carry no class
information: raw distances are dominated by them, so a method must *learn* a metric to do well. Parts
``train``/``val``/``test`` use 60 % / 20 % / 20 % of the classes (``trainval`` = the first two), so
a method can only do well on ``test`` by learning to compare, not by memorizing classes.
With ``image=True`` and ``dim`` a square, items are shaped ``[1, √dim, √dim]`` for conv backbones.
"""

from __future__ import annotations

import math

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import DataError


def gaussian_classes(part: str, classes: int = 120, examples: int = 20, dim: int = 16, noise: float = 0.3,
                     nuisance: int = 0, nuisance_scale: float = 3.0, image: bool = False,
                     seed: int = 0) -> ClassDataset:
    """One part of a synthetic Gaussian-cluster class dataset (see module docstring)."""
    n_train, n_val = int(classes * 0.6), int(classes * 0.2)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "trainval": (0, n_train + n_val),
              "test": (n_train + n_val, classes)}
    if part not in bounds:
        raise DataError(f"unknown split part {part!r}; use one of {tuple(bounds)}.")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, 1, dim, generator=g)
    items = means + noise * torch.randn(classes, examples, dim, generator=g)
    if nuisance:
        items = torch.cat([items, nuisance_scale * torch.randn(classes, examples, nuisance, generator=g)], -1)
        dim += nuisance
    lo, hi = bounds[part]
    block = items[lo:hi]
    if image:
        side = math.isqrt(dim)
        if side * side != dim:
            raise DataError(f"data.synthetic.dim={dim} is not a square; images need dim = side².")
        block = block.view(hi - lo, examples, 1, side, side)
    return ClassDataset.from_blocks(block.contiguous(), [f"synthetic/{c:04d}" for c in range(lo, hi)], scale=1.0)
