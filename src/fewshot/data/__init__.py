"""Where data lives and how it is read: class datasets in memory, named splits, synthetic tasks."""

from __future__ import annotations

from typing import Any

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import ConfigError

DATASETS = ("omniglot", "synthetic")


def build_dataset(data: dict[str, Any], part: str) -> ClassDataset:
    """The class dataset of one split ``part`` described by a config's ``data`` section."""
    name = data["dataset"]
    if name == "omniglot":
        from fewshot.data.omniglot import omniglot

        return omniglot(part, data["split"], data.get("dir"), data["image_size"], data["resample"], data["rotation"])
    if name == "synthetic":
        from fewshot.data.synthetic import gaussian_classes

        return gaussian_classes(part, **data["synthetic"])
    raise ConfigError(f"unknown data.dataset {name!r}; available: {', '.join(DATASETS)}.")


__all__ = ["DATASETS", "ClassDataset", "build_dataset"]
