"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1,623 handwritten characters × 20 drawers.

The two official zips (or their extracted folders) are decoded once per image size into a cached
uint8 array ``[1623, 20, 1, H, W]`` with **stroke = 255 (→ 1.0), background = 0**; later starts load
that array in well under two seconds. Named splits (``datasets.md`` §1.3):

* ``vinyals`` — the Matching/Prototypical-network class lists (``train``/``val``/``trainval``/
  ``test``), each line ``Alphabet/characterNN/rotDDD`` a class of its own;
* ``lake`` — background alphabets for training, evaluation alphabets for test; validation is
  the 5 background alphabets listed in :data:`LAKE_VAL_ALPHABETS`;
* ``random:<seed>[:<train>/<val>/<test>]`` — a seeded shuffle of characters (default 1100/100/423).

``rotation="classes"`` multiplies every character into four classes (0°, 90°, 180°, 270°);
per-task rotation augmentation is a sampler option instead (:mod:`fewshot.tasks.sampler`).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.data.archive import members
from fewshot.data.classdataset import ClassDataset
from fewshot.data.locate import cache_root, data_root, download, file_digest
from fewshot.errors import DataError, DataNotFoundError
from fewshot.fileio import atomic_write

URLS = {
    "images_background": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "images_evaluation": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
       "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
EXPECTED = {"images_background": (30, 964), "images_evaluation": (20, 659)}
IMAGES_PER_CHARACTER = 20
SPLIT_URL = ("https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
             "data/omniglot/splits/vinyals/{part}.txt")
SPLIT_SHA256 = {
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
}
LAKE_VAL_ALPHABETS = ("Bengali", "Futurama", "Hebrew", "Korean", "Tifinagh")
SIZES = (20, 28, 32, 84, 105)
RESAMPLE = ("nearest", "bilinear", "lanczos")
PARTS = ("train", "val", "trainval", "test")
CACHE_VERSION = 1


def omniglot_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data root>/omniglot``."""
    return data_root(data_dir) / "omniglot"


def _source(folder: Path, name: str) -> Path:
    """The extracted folder if present, else the zip; downloads the zip when neither exists."""
    extracted = folder / name
    if extracted.is_dir():
        return extracted
    archive = folder / f"{name}.zip"
    if archive.is_file():
        return archive
    try:
        return download(URLS[name], archive, MD5[name])
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"Omniglot is missing {archive} (or the folder {extracted}); put the official "
            f"{name}.zip there, or point --data-dir / FEWSHOT_DATA at a folder whose omniglot/ holds "
            f"both zips ({exc})."
        ) from None


def _read_pngs(source: Path, name: str) -> dict[str, dict[str, list[bytes]]]:
    """{alphabet: {character: [png bytes sorted by file name]}} from a zip or folder."""
    tree: dict[str, dict[str, list[bytes]]] = {}
    try:
        for rel, data in members(source, name, (".png",)):
            parts = rel.split("/")
            if len(parts) == 3:
                tree.setdefault(parts[0], {}).setdefault(parts[1], []).append(data)
    except DataError:
        raise DataError(f"{source} is not a readable zip file; replace it with the official "
                        f"{name}.zip (md5 {MD5[name]}).") from None
    return tree


def _validate(tree: dict, name: str, source: Path) -> None:
    n_alpha, n_char = EXPECTED[name]
    chars = sum(len(c) for c in tree.values())
    if len(tree) != n_alpha or chars != n_char:
        raise DataError(f"{source} holds {len(tree)} alphabets and {chars} characters, expected "
                        f"{n_alpha} and {n_char}; replace it with the official {name}.zip.")
    for alpha, cs in tree.items():
        for char, files in cs.items():
            if len(files) != IMAGES_PER_CHARACTER or any(len(f) == 0 for f in files):
                raise DataError(f"{source}: {alpha}/{char} has {len(files)} images (some may be empty), "
                                f"expected {IMAGES_PER_CHARACTER}; replace it with the official {name}.zip.")


def _decode(png: bytes, size: int, resample: str) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    if size != img.size[0]:
        method = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[resample]
        img = img.resize((size, size), method)
    return 255 - np.asarray(img, dtype=np.uint8)  # stroke (black in the files) -> 255


def _fingerprint(sources: list[Path]) -> str:
    parts = []
    for s in sources:
        st = s.stat()
        parts.append(f"{s.name}:{st.st_size}:{int(st.st_mtime)}" if s.is_file() else f"{s.name}:dir")
    return "|".join(parts)


def load_characters(data_dir: str | os.PathLike | None = None, size: int = 28,
                    resample: str = "lanczos") -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """All 1,623 characters as ``(images [1623, 20, 1, size, size] uint8, names, is_background)``.

    Names are ``"Alphabet/characterNN"``; background characters come first. The decoded array is
    cached in :func:`~fewshot.data.locate.cache_root` keyed by size, resampling and source files.
    """
    if size not in SIZES:
        raise DataError(f"Omniglot image size {size} is not supported; use one of {SIZES} (data.image_size).")
    if resample not in RESAMPLE:
        raise DataError(f"unknown resampling {resample!r}; use one of {RESAMPLE} (data.resample).")
    folder = omniglot_dir(data_dir)
    sources = [_source(folder, n) for n in EXPECTED]
    fingerprint = _fingerprint(sources)
    cache = cache_root() / f"omniglot-{size}-{resample}-v{CACHE_VERSION}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fingerprint:
                    return (torch.from_numpy(z["images"]), [str(n) for n in z["names"]],
                            torch.from_numpy(z["background"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    names, arrays, background = [], [], []
    for name, source in zip(EXPECTED, sources):
        tree = _read_pngs(source, name)
        _validate(tree, name, source)
        for alpha in sorted(tree):
            for char in sorted(tree[alpha]):
                names.append(f"{alpha}/{char}")
                arrays.append(np.stack([_decode(p, size, resample) for p in tree[alpha][char]]))
                background.append(name == "images_background")
    images = np.stack(arrays)[:, :, None]  # [1623, 20, 1, H, W]
    mean = images.mean() / 255
    if not 0.01 < mean < 0.5:  # strokes are a small part of each image, stroke = 1
        raise DataError(f"the decoded Omniglot images have mean {mean:.3f} (expected strokes = 1 on background = 0, "
                        f"mean about 0.1); check the files in {folder}.")
    _atomic_savez(cache, images=images, names=np.array(names), background=np.array(background),
                  fingerprint=np.array(fingerprint))
    return torch.from_numpy(images), names, torch.tensor(background)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def vinyals_classes(part: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Class names of a Vinyals split part, from ``omniglot/splits/vinyals/`` or downloaded."""
    if part not in PARTS:
        raise DataError(f"unknown split part {part!r}; use one of {PARTS}.")
    local = omniglot_dir(data_dir) / "splits" / "vinyals" / f"{part}.txt"
    if not local.is_file():
        cached = cache_root() / "omniglot-splits" / "vinyals" / f"{part}.txt"
        if not cached.is_file():
            try:
                download(SPLIT_URL.format(part=part), cached, SPLIT_SHA256[part], "sha256")
            except DataNotFoundError as exc:
                raise DataNotFoundError(f"the Vinyals split file {local} is missing; put {part}.txt from "
                                        f"jakesnell/prototypical-networks there ({exc}).") from None
        local = cached
    return [line.strip() for line in local.read_text().splitlines() if line.strip()]


def split_characters(split: str, part: str, names: list[str], background: torch.Tensor) -> list[int]:
    """Indices of the characters of ``part`` under a ``lake`` or ``random:<seed>[:a/b/c]`` split."""
    if part not in PARTS:
        raise DataError(f"unknown split part {part!r}; use one of {PARTS}.")
    if split == "lake":
        alpha = [n.split("/")[0] for n in names]
        bg = background.tolist()
        val = [i for i, a in enumerate(alpha) if bg[i] and a in LAKE_VAL_ALPHABETS]
        train = [i for i, a in enumerate(alpha) if bg[i] and a not in LAKE_VAL_ALPHABETS]
        test = [i for i in range(len(names)) if not bg[i]]
        return {"train": train, "val": val, "trainval": sorted(train + val), "test": test}[part]
    if split.startswith("random:"):
        fields = split.split(":")
        try:
            seed = int(fields[1])
            sizes = [int(s) for s in fields[2].split("/")] if len(fields) > 2 else [1100, 100, 423]
            assert len(sizes) == 3 and len(fields) <= 3
        except (ValueError, IndexError, AssertionError):
            raise DataError(f"cannot read split {split!r}; write random:<seed> or "
                            "random:<seed>:<train>/<val>/<test>, e.g. random:1:1100/100/423.") from None
        if sum(sizes) > len(names) or min(sizes) < 0:
            raise DataError(f"split {split!r} asks for {sum(sizes)} characters; Omniglot has {len(names)}.")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
        a, b, c = sizes
        parts = {"train": order[:a], "val": order[a:a + b], "test": order[a + b:a + b + c]}
        parts["trainval"] = order[:a + b]
        return parts[part]
    raise DataError(f"unknown Omniglot split {split!r}; use vinyals, lake or random:<seed>[:<train>/<val>/<test>].")


ROTATIONS = ("classes", "none")


def omniglot(part: str, split: str = "vinyals", data_dir: str | os.PathLike | None = None,
             image_size: int = 28, resample: str = "lanczos", rotation: str = "classes") -> ClassDataset:
    """One part of an Omniglot split as a :class:`ClassDataset` (stroke 1, background 0 after scaling).

    ``rotation="classes"`` gives four classes per character (the Vinyals files list them
    explicitly; ``"none"`` keeps only their ``rot000`` lines).
    """
    if rotation not in ROTATIONS:
        raise DataError(f"unknown rotation mode {rotation!r} for a dataset; use one of {ROTATIONS} "
                        "(per-task rotation is the sampler option rotate: per_class).")
    images, names, background = load_characters(data_dir, image_size, resample)
    index = {n: i for i, n in enumerate(names)}
    chars: list[int] = []
    turns: list[int] = []
    if split == "vinyals":
        for line in vinyals_classes(part, data_dir):
            try:
                alpha, char, rot = line.split("/")
                i, k = index[f"{alpha}/{char}"], int(rot[3:]) // 90
            except (ValueError, KeyError):
                raise DataError(f"the Vinyals split file line {line!r} names no Omniglot character; "
                                "replace the split files with the official ones.") from None
            if rotation == "none" and k:
                continue
            chars.append(i)
            turns.append(k)
    else:
        for i in split_characters(split, part, names, background):
            for k in (range(4) if rotation == "classes" else (0,)):
                chars.append(i)
                turns.append(k)
    idx = torch.tensor(chars, dtype=torch.long)
    blocks = images[idx]  # [classes, 20, 1, H, W]
    out = blocks.clone()
    turns_t = torch.tensor(turns)
    for k in (1, 2, 3):
        sel = (turns_t == k).nonzero().flatten()
        if len(sel):
            out[sel] = torch.rot90(blocks[sel], k, dims=(-2, -1))
    class_names = [f"{names[i]}/rot{90 * k:03d}" for i, k in zip(chars, turns)]
    return ClassDataset.from_blocks(out, class_names)


def prepare(data_dir: str | os.PathLike | None = None, sizes: tuple[int, ...] = (28,),
            resample: str = "lanczos") -> dict[str, float]:
    """Decode and cache the given sizes; returns seconds per size."""
    times = {}
    for s in sizes:
        t = time.perf_counter()
        load_characters(data_dir, s, resample)
        times[str(s)] = time.perf_counter() - t
    return times


def verify(data_dir: str | os.PathLike | None = None) -> dict[str, object]:
    """Check the raw files by content (and md5 for zips, reported, not required) and the split files."""
    folder = omniglot_dir(data_dir)
    report: dict[str, object] = {}
    for name in EXPECTED:
        source = _source(folder, name)
        tree = _read_pngs(source, name)
        _validate(tree, name, source)
        entry = {"path": str(source), "alphabets": len(tree), "characters": sum(len(c) for c in tree.values()),
                 "images": sum(len(f) for c in tree.values() for f in c.values())}
        if source.is_file():
            entry["official_md5"] = file_digest(source) == MD5[name]
        report[name] = entry
    _, names, _ = load_characters(data_dir, 28, "lanczos")
    known = set(names)
    for part in PARTS:
        lines = vinyals_classes(part, data_dir)
        bad = [ln for ln in lines if ln.rsplit("/", 1)[0] not in known]
        if bad:
            raise DataError(f"the Vinyals {part}.txt names {len(bad)} unknown characters (e.g. {bad[0]}).")
        report[f"vinyals/{part}"] = len(lines)
    return report
