"""Zero-shot data: class descriptions (attributes) with features, in common formats and synthetic.

* :func:`synthetic_attributes` — the offline benchmark of ``spec/datasets.md`` §6: attribute matrix
  A ∈ {0, 1}^{C×a}, a fixed random map W, class means μ_c = W·A_c, items x ~ N(μ_c, σ²I); seen and
  unseen classes disjoint and seeded. ``permute=True`` shuffles the attribute rows across classes,
  the control that must fall to chance.
* :func:`read_attribute_matrix` — whitespace-separated class × attribute text files (CUB's
  ``class_attribute_labels_continuous.txt``, AwA2's ``predicate-matrix-continuous.txt``).
* :func:`read_xlsa17` — the GBU benchmark files (Xian et al.): ``res101.mat`` (``features`` 2048×n,
  1-based ``labels``) and ``att_splits.mat`` (``att`` a×C, 1-based ``trainval_loc``, ``train_loc``,
  ``val_loc``, ``test_seen_loc``, ``test_unseen_loc``); needs scipy (optional extra) to read ``.mat``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import DataError, DataNotFoundError

PARTS = ("train", "val", "trainval", "test")


def synthetic_attributes(part: str, classes: int = 50, attributes: int = 20, dim: int = 64, unseen: int = 10,
                         val: int = 0, examples: int = 40, noise: float = 1.0, permute: bool = False,
                         seed: int = 0) -> ClassDataset:
    """One part of the synthetic attribute benchmark as a :class:`ClassDataset` with ``attributes``.

    ``train`` = the seen classes (minus ``val``), ``val`` = ``val`` further seen classes held out for
    model selection, ``test`` = the ``unseen`` classes. Items are ``dim``-d float features.
    """
    if part not in PARTS:
        raise DataError(f"unknown split part {part!r}; use one of {PARTS}.")
    if unseen + val >= classes:
        raise DataError(f"the synthetic attribute benchmark needs more classes ({classes}) than unseen + val "
                        f"({unseen} + {val}).")
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(classes, attributes, generator=g) < 0.5).float()
    w = torch.randn(attributes, dim, generator=g) / attributes ** 0.5 * 3
    means = a @ w
    items = means[:, None] + noise * torch.randn(classes, examples, dim, generator=g)
    if permute:  # control: attributes no longer describe their class
        a = a[torch.randperm(classes, generator=torch.Generator().manual_seed(seed + 1))]
    order = torch.randperm(classes, generator=g)
    seen = classes - unseen - val
    idx = {"train": order[:seen], "val": order[seen:seen + val], "trainval": order[:seen + val],
           "test": order[seen + val:]}[part]
    return ClassDataset.from_blocks(items[idx].contiguous(), [f"class{int(i):03d}" for i in idx], scale=1.0,
                                    attributes=a[idx])


def read_attribute_matrix(path: str | os.PathLike) -> torch.Tensor:
    """A class × attribute matrix from a whitespace-separated text file: ``[C, a]`` float32."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"attribute file {path} does not exist.")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        values = [[float(v) for v in r] for r in rows]
    except ValueError:
        raise DataError(f"{path} must hold numbers only (one class per line, attributes separated by spaces).") from None
    if len({len(r) for r in values}) != 1:
        raise DataError(f"{path}: rows have different lengths {sorted({len(r) for r in values})}; one class per line.")
    return torch.tensor(values, dtype=torch.float32)


XLSA_PARTS = {"train": "train_loc", "val": "val_loc", "trainval": "trainval_loc", "test": "test_unseen_loc",
              "test_seen": "test_seen_loc"}


def read_xlsa17(folder: str | os.PathLike, part: str) -> ClassDataset:
    """One part of an xlsa17 dataset folder (``res101.mat`` + ``att_splits.mat``) as a class dataset."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading .mat files needs scipy: pip install 'fewshot[zsl]' (or scipy).") from None
    folder = Path(folder)
    for name in ("res101.mat", "att_splits.mat"):
        if not (folder / name).is_file():
            raise DataNotFoundError(f"{folder / name} is missing; an xlsa17 folder holds res101.mat and att_splits.mat.")
    if part not in XLSA_PARTS:
        raise DataError(f"unknown xlsa17 part {part!r}; use one of {tuple(XLSA_PARTS)}.")
    res, splits = loadmat(folder / "res101.mat"), loadmat(folder / "att_splits.mat")
    try:
        features = torch.as_tensor(res["features"], dtype=torch.float32).T  # [n, 2048]
        labels = torch.as_tensor(res["labels"]).flatten().long() - 1
        att = torch.as_tensor(splits["att"], dtype=torch.float32).T  # [C, a]
        loc = torch.as_tensor(splits[XLSA_PARTS[part]]).flatten().long() - 1
    except KeyError as exc:
        raise DataError(f"{folder}: field {exc} is missing from the xlsa17 files.") from None
    if loc.max() >= len(labels) or labels.max() >= len(att):
        raise DataError(f"{folder}: split indices or labels exceed the features / attribute rows.")
    x, y = features[loc], labels[loc]
    classes = torch.unique(y)
    order = torch.argsort(y, stable=True)
    counts = torch.stack([(y == c).sum() for c in classes])
    return ClassDataset(x[order], counts, [f"class{int(c) + 1:03d}" for c in classes], scale=1.0, attributes=att[classes])
