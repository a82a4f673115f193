"""AT&T / ORL faces (Samaria & Harter 1994): 40 people × 10 grey images of 92×112 pixels.

Read from ``<data root>/orl_faces.zip`` (or the extracted ``orl_faces/`` folder, or the official
``att_faces.zip`` renamed). People are classes; splits are always **by identity** (never by image or
pair): ``random:<seed>[:<train>/<val>/<test>]`` over the 40 people (default 26/4/10).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from fewshot.data.archive import find_source, members
from fewshot.data.classdataset import ClassDataset, random_class_split
from fewshot.data.locate import data_root
from fewshot.errors import DataError, DataNotFoundError

PEOPLE, IMAGES = 40, 10


def load_faces(data_dir: str | os.PathLike | None = None, size: tuple[int, int] = (56, 46)) -> tuple[torch.Tensor, list[str]]:
    """``(images [40, 10, 1, H, W] uint8, names ['s1', ...])`` resized (area filter) to ``size = (H, W)``."""
    from PIL import Image

    root = data_root(data_dir)
    source = find_source(root, "orl_faces")
    if source is None:
        raise DataNotFoundError(f"ORL faces not found: put orl_faces.zip (folders orl_faces/s1..s40 of 1..10.pgm) "
                                f"in {root}, or pass --data-dir / set FEWSHOT_DATA to the folder that has it.")
    people: dict[str, dict[int, np.ndarray]] = {}
    for rel, data in members(source, "orl_faces", (".pgm",)):
        person, _, file = rel.partition("/")
        if not file.split(".")[0].isdigit():
            raise DataError(f"{source}: {rel} is not named s<person>/<n>.pgm like the ORL archive.")
        img = Image.open(io.BytesIO(data)).convert("L")
        if (img.size[1], img.size[0]) != tuple(size):
            img = img.resize((size[1], size[0]), Image.BOX)
        people.setdefault(person, {})[int(file.split(".")[0])] = np.asarray(img, dtype=np.uint8)
    names = sorted(people, key=lambda p: int(p[1:]) if p[1:].isdigit() else 0)
    if len(names) != PEOPLE or any(len(people[p]) != IMAGES for p in names):
        raise DataError(f"{source} holds {len(names)} people with {[len(people[p]) for p in names][:5]}… images; "
                        f"expected {PEOPLE} people × {IMAGES} images (the official AT&T archive).")
    images = np.stack([np.stack([people[p][i] for i in sorted(people[p])]) for p in names])[:, :, None]
    return torch.from_numpy(images), names


def orl_faces(part: str, split: str = "random:0", data_dir: str | os.PathLike | None = None,
              size: tuple[int, int] = (56, 46)) -> ClassDataset:
    """One identity-disjoint part of ORL as a :class:`ClassDataset` (pixels scaled to [0, 1])."""
    images, names = load_faces(data_dir, size)
    idx = random_class_split(split, part, PEOPLE, (26, 4, 10))
    return ClassDataset.from_blocks(images[idx].clone(), [names[i] for i in idx])
