"""Where data lives and how it is read: class datasets in memory, named splits, synthetic tasks."""

from __future__ import annotations

from typing import Any

from fewshot.data.classdataset import ClassDataset
from fewshot.data.functions import TaskFamily
from fewshot.errors import ConfigError

DATASETS = ("omniglot", "orl", "fsdd", "cats_dogs", "synthetic", "attributes", "xlsa17", "sinusoid", "logistic", "sequences")


#: datasets of pixels in [0, 1] (``data.normalize`` applies)
IMAGES = ("omniglot", "orl")

#: datasets whose test classes come from ``data.split``
CLASS_SPLIT = ("omniglot", "orl", "fsdd", "cats_dogs")


def build_dataset(data: dict[str, Any], part: str) -> "ClassDataset | TaskFamily":
    """The class dataset (or function task family) of one split ``part`` of a config's ``data`` section,
    with ``data.normalize`` = [mean, std] (when set) as the pixel normalization (x − mean) / std."""
    dataset = _build(data, part)
    if data.get("normalize") is not None:  # validated with the config (engine.config.validate)
        dataset.mean, dataset.std = float(data["normalize"][0]), float(data["normalize"][1])
    return dataset


def _build(data: dict[str, Any], part: str) -> "ClassDataset | TaskFamily":
    name = data["dataset"]
    if name == "sequences":
        from fewshot.data.sequences import sequence_family

        return sequence_family(data)
    if name in ("sinusoid", "logistic"):
        from fewshot.data.functions import task_family

        return task_family(data, part)
    if name == "omniglot":
        from fewshot.data.omniglot import omniglot

        return omniglot(part, data["split"], data.get("dir"), data["image_size"], data["resample"], data["rotation"])
    if name in ("orl", "fsdd", "cats_dogs"):
        split = data["split"]
        if name != "fsdd" and not split.startswith("random:"):  # FSDD reads its own split kinds (fsdd_classes)
            raise ConfigError(f"data.split={split!r} does not apply to {name}; use random:<seed>[:<train>/<val>/<test>] "
                              "(a split by class).")
        if name == "orl":
            from fewshot.data.faces import orl_faces

            return orl_faces(part, split, data.get("dir"))
        from fewshot.data.audio import cats_dogs, fsdd

        return (fsdd if name == "fsdd" else cats_dogs)(part, split, data.get("dir"))
    if name == "attributes":
        from fewshot.data.attributes import synthetic_attributes

        return synthetic_attributes(part, **data["attributes"])
    if name == "xlsa17":
        from fewshot.data.attributes import read_xlsa17

        if not data.get("dir"):
            raise ConfigError("data.dataset=xlsa17 needs data.dir (or --data-dir): the folder with res101.mat and att_splits.mat.")
        return read_xlsa17(data["dir"], part)
    if name == "synthetic":
        from fewshot.data.synthetic import gaussian_classes

        return gaussian_classes(part, **data["synthetic"])
    raise ConfigError(f"unknown data.dataset {name!r}; available: {', '.join(DATASETS)}.")


def split_name(data: dict[str, Any]) -> str:
    """The class split a summary reports: ``data.split`` where it applies, else how the test classes arise."""
    if data["dataset"] in CLASS_SPLIT:
        return data["split"]
    if data["dataset"] == "xlsa17":
        return "proposed split (att_splits.mat)"
    if data["dataset"] == "attributes":
        return "seeded unseen classes"
    return "generated"  # sinusoid, logistic, synthetic and sequence tasks: drawn afresh, no split


__all__ = ["DATASETS", "ClassDataset", "TaskFamily", "build_dataset", "split_name"]
