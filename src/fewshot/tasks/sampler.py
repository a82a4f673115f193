"""The one episode sampler: N-way K-shot Q-query tasks from a class dataset, in memory.

Every draw is a few tensor operations on the dataset's in-memory tensor (no disk, no Python loop
over items), driven by the sampler's own ``torch.Generator`` so that a seed gives the same tasks
every time and the sampler state can be saved and restored exactly (``state_dict``).

Protocol (``spec/README.md``): N distinct classes without replacement; K + Q distinct items per
class without replacement, the first K support and the rest query; labels remapped to
``0..N-1`` in a random order per task; items shuffled within support and query.
"""

from __future__ import annotations

import math
import warnings
import zlib

import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import DataError
from fewshot.tasks.stream import SeededStream
from fewshot.tasks.batch import TENSOR_FIELDS, TaskBatch

AUGMENT = ("none", "per_class", "per_task")


class EpisodeSampler(SeededStream):
    """Draws :class:`TaskBatch` es of ``batch_size`` tasks.

    Args:
        dataset: the classes to draw from (one split part).
        ways, shots, queries: N, K and Q. Checked against the dataset before any work starts.
        batch_size: tasks per batch (B).
        seed: seed of the sampler's private generator.
        rotate: ``"per_class"`` rotates all items of each class of a task by one random multiple of
            90° (MAML's augmentation), ``"per_task"`` the whole task by one angle, ``"none"`` nothing.
        unlabeled: M unlabelled items per episode class (semi-supervised episodes, Ren et al. 2018),
            returned in ``unlabeled_x`` and never overlapping support or query.
        distractors: H further classes, disjoint from the N, that contribute M unlabelled items each.
        labeled_fraction: below 1, each class's items are split once (seeded by ``pool_seed``, the
            same split every run) into a labelled pool (support and query) and an unlabelled pool.
        groups: ``"alphabet"`` draws all N classes of a task from one group, the part of the class
            name before the first ``/`` (Koch et al.'s within-alphabet Omniglot trials).
        same_items: every class of a task uses the same item indices (for Omniglot, the same drawers).
        affine: per-item random affine distortion (Koch et al.): each of rotation ±10°, shear ±0.3,
            scale 0.8–1.2 and translation ±2 px applied with probability ½.
        downsample: probability that an image is damaged by down-sampling to ½ or ¼ of its size and
            up-sampling back (Fort 2017's partial down-sampling, so covariance has something to model).
        name: used in error messages (e.g. ``"train"``).
    """

    def __init__(self, dataset: ClassDataset, ways: int, shots: int, queries: int, batch_size: int = 1,
                 seed: int = 0, rotate: str = "none", name: str = "task", unlabeled: int = 0,
                 distractors: int = 0, labeled_fraction: float = 1.0, pool_seed: int = 0, groups: str = "none",
                 same_items: bool = False, affine: bool = False, downsample: float = 0.0) -> None:
        if rotate not in AUGMENT:
            raise DataError(f"unknown rotation augmentation {rotate!r} for the {name} sampler; use one of {AUGMENT}.")
        if rotate != "none" and any(n.endswith(("/rot090", "/rot180", "/rot270")) for n in dataset.names):
            warnings.warn(f"the {name} classes are already rotations (Vinyals split) and {name}.rotate={rotate!r} "
                          "rotates them again: rotations are classes or augmentation, normally not both.", stacklevel=2)
        if rotate != "none" and len(dataset.item_shape) != 3:
            raise DataError(f"rotation augmentation needs image items [C, H, W]; the {name} data has "
                            f"items of shape {dataset.item_shape}.")
        if batch_size < 1:
            raise DataError(f"the {name} meta-batch size must be at least 1 (got {batch_size}).")
        if unlabeled < 0 or distractors < 0 or (distractors and not unlabeled):
            raise DataError(f"{name}.unlabeled must be ≥ 0 and distractor classes need unlabelled items "
                            f"(got unlabeled={unlabeled}, distractors={distractors}).")
        if not 0 < labeled_fraction <= 1:
            raise DataError(f"{name}.labeled_fraction must be in (0, 1], got {labeled_fraction}.")
        self.labeled, self.pool = dataset, None
        if labeled_fraction < 1:
            self.labeled, self.pool = split_pools(dataset, labeled_fraction, pool_seed)
            check_task_settings(self.labeled, ways, shots, queries, name, "labelled ")
            check_task_settings(self.pool, ways + distractors, 0, unlabeled, name, "unlabelled ")
        else:
            check_task_settings(dataset, ways, shots, queries + unlabeled, name)
        if ways + distractors > dataset.num_classes:
            raise DataError(f"{name} tasks ask for {ways} ways + {distractors} distractor classes but the split "
                            f"has only {dataset.num_classes} classes; lower {name}.ways or {name}.distractors.")
        if groups not in ("none", "alphabet"):
            raise DataError(f"unknown {name}.groups {groups!r}; use none or alphabet.")
        self.groups: list[torch.Tensor] = []
        if groups == "alphabet":
            members: dict[str, list[int]] = {}
            for i, class_name in enumerate(dataset.names):
                members.setdefault(class_name.split("/")[0], []).append(i)
            self.groups = [torch.tensor(v) for v in members.values() if len(v) >= ways + distractors]
            if not self.groups:
                raise DataError(f"no group (alphabet) of the {name} split has {ways} classes; lower {name}.ways.")
        if (affine or downsample) and len(dataset.item_shape) != 3:
            raise DataError(f"affine / down-sampling augmentation needs image items [C, H, W]; the {name} data has "
                            f"{dataset.item_shape}.")
        if not 0 <= downsample <= 1:
            raise DataError(f"{name}.downsample is a probability, got {downsample}.")
        self.same_items, self.affine, self.downsample = same_items, affine, downsample
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.batch_size, self.rotate, self.unlabeled, self.distractors = batch_size, rotate, unlabeled, distractors
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int | None = None) -> TaskBatch:
        """Draw one batch of tasks.

        Tasks are drawn one after another, so the i-th task of a seeded stream is the same whatever
        the batch size (evaluation lists do not depend on ``batch_tasks``).
        """
        parts = [self._draw() for _ in range(batch_size or self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return TaskBatch(*(torch.cat([getattr(p, f) for p in parts]) if getattr(parts[0], f) is not None else None
                           for f in TENSOR_FIELDS[:4]), self.ways,
                         *(torch.cat([getattr(p, f) for p in parts]) if getattr(parts[0], f) is not None else None
                           for f in TENSOR_FIELDS[4:]))

    def _items(self, ds: ClassDataset, classes: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` distinct random items of each class: ``[len(classes), count, *item]``."""
        counts = ds.counts[classes]
        width = int(counts.max())
        if self.same_items:  # one set of item indices for every class (e.g. the same two drawers)
            keys = torch.rand(1, int(counts.min()), generator=self.generator).expand(len(classes), -1)
            return ds.images[ds.offsets[classes][:, None] + keys.argsort(dim=1)[:, :count]]
        keys = torch.rand(len(classes), width, generator=self.generator)
        if int(counts.min()) != width:  # unequal classes: invalid slots sort past the end
            keys = keys.masked_fill(torch.arange(width) >= counts[:, None], 2.0)
        return ds.images[ds.offsets[classes][:, None] + keys.argsort(dim=1)[:, :count]]

    def _draw(self) -> TaskBatch:
        n, k, q, u, g = self.ways, self.shots, self.queries, self.unlabeled, self.generator
        ds = self.dataset
        # N distinct classes (then H distractor classes): the first of a random permutation.
        if self.groups:
            group = self.groups[int(torch.randint(len(self.groups), (1,), generator=g))]
            classes = group[torch.rand(len(group), generator=g).argsort()[: n + self.distractors]]
        else:
            classes = torch.rand(ds.num_classes, generator=g).argsort()[: n + self.distractors]
        if self.pool is None:
            x = self._items(ds, classes[:n], k + q + u)  # [N, K+Q+M, *item]
            x, ux = x[:, : k + q], x[:, k + q:]
        else:
            x = self._items(self.labeled, classes[:n], k + q)
        if self.rotate != "none":
            turns = self._turns(n + self.distractors)
            x = _rotate(x, turns[:n])
        # Random label order per task, and random item order within support and query.
        labels = torch.rand(n, generator=g).argsort()  # label of the j-th drawn class
        y = labels[:, None].expand(n, k + q)
        sx, sy = x[:, :k].reshape(n * k, *x.shape[2:]), y[:, :k].reshape(n * k)
        qx, qy = x[:, k:].reshape(n * q, *x.shape[2:]), y[:, k:].reshape(n * q)
        ps = torch.rand(n * k, generator=g).argsort()
        pq = torch.rand(n * q, generator=g).argsort()
        sx, qx = ds.to_float(sx[ps]), ds.to_float(qx[pq])
        if self.affine:
            sx, qx = random_affine(sx, g), random_affine(qx, g)
        if self.downsample:
            sx, qx = random_downsample(sx, self.downsample, g), random_downsample(qx, self.downsample, g)
        batch = TaskBatch(sx[None], sy[ps][None], qx[None], qy[pq][None], n)
        if ds.attributes is not None:  # row k describes the class labelled k
            batch.class_attributes = ds.attributes[classes[:n][labels.argsort()]].float()[None]
        if u:
            if self.pool is not None:
                ux = self._items(self.pool, classes, u)
            elif self.distractors:
                ux = torch.cat([ux, self._items(ds, classes[n:], u)])
            if self.rotate != "none":
                ux = _rotate(ux, turns)
            uy = torch.cat([labels, torch.full((self.distractors,), -1)])[:, None].expand(-1, u).reshape(-1)
            pu = torch.rand(len(uy), generator=g).argsort()
            batch.unlabeled_x = ds.to_float(ux.reshape(-1, *ux.shape[2:])[pu])[None]
            batch.unlabeled_y = uy[pu][None]
        return batch

    def _turns(self, count: int) -> torch.Tensor:
        """Multiples of 90° for ``count`` classes: one each (``per_class``) or one for all (``per_task``)."""
        if self.rotate == "per_class":
            return torch.randint(0, 4, (count,), generator=self.generator)
        return torch.randint(0, 4, (1,), generator=self.generator).expand(count)


def _rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the items of class i (``x [classes, items, C, H, W]``) by ``turns[i]`` × 90°."""
    out = x.clone()
    for t in (1, 2, 3):
        sel = turns == t
        if sel.any():
            out[sel] = torch.rot90(x[sel], t, dims=(-2, -1))
    return out


def random_affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Koch et al.'s distortions of images ``x [n, C, H, W]``: each component with probability ½ —
    rotation θ ∈ [−10°, 10°], shear ρ_x, ρ_y ∈ [−0.3, 0.3], scale s_x, s_y ∈ [0.8, 1.2], translation
    t_x, t_y ∈ [−2, 2] px — as one affine map per image, resampled bilinearly with zero padding."""
    n, _, h, w = x.shape
    u = torch.rand(n, 7, generator=g)
    on = torch.rand(n, 4, generator=g) < 0.5
    theta = torch.where(on[:, 0], (u[:, 0] * 2 - 1) * math.radians(10), 0.0)
    shear = torch.where(on[:, 1:2], (u[:, 1:3] * 2 - 1) * 0.3, 0.0)
    scale = torch.where(on[:, 2:3], 0.8 + 0.4 * u[:, 3:5], 1.0)
    shift = torch.where(on[:, 3:4], (u[:, 5:7] * 2 - 1) * 2, 0.0) * torch.tensor([2 / w, 2 / h])
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.stack([torch.stack([torch.ones(n), shear[:, 0]], -1), torch.stack([shear[:, 1], torch.ones(n)], -1)], -2)
    a = rot @ sh @ torch.diag_embed(scale)
    grid = torch.nn.functional.affine_grid(torch.cat([a, shift[..., None]], -1), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_downsample(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Damage each image of ``x [n, C, H, W]`` with probability ``p``: area-downsample by 2 or 4, then
    nearest-upsample back to H × W."""
    hit = torch.rand(len(x), generator=g) < p
    factor = torch.where(torch.rand(len(x), generator=g) < 0.5, 2, 4)
    out = x.clone()
    h, w = x.shape[-2:]
    for f in (2, 4):
        sel = hit & (factor == f)
        if sel.any():
            small = torch.nn.functional.interpolate(x[sel], size=(max(1, h // f), max(1, w // f)), mode="area")
            out[sel] = torch.nn.functional.interpolate(small, size=(h, w), mode="nearest")
    return out


def split_pools(dataset: ClassDataset, fraction: float, seed: int) -> tuple[ClassDataset, ClassDataset]:
    """Split each class once into a labelled pool (⌈fraction·count⌉ items) and an unlabelled pool.

    Each class's split is seeded by ``seed`` and its name, so a class is split the same way in every
    split part that holds it (``train`` and ``trainval``) and in every run.
    """
    lab, unl, lab_counts, unl_counts = [], [], [], []
    for name, o, c in zip(dataset.names, dataset.offsets.tolist(), dataset.counts.tolist()):
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        perm = torch.randperm(c, generator=g) + o
        cut = max(1, min(c - 1, math.ceil(fraction * c)))
        lab.append(perm[:cut])
        unl.append(perm[cut:])
        lab_counts.append(cut)
        unl_counts.append(c - cut)
    kw = {"scale": dataset.scale, "mean": dataset.mean, "std": dataset.std}
    return (ClassDataset(dataset.images[torch.cat(lab)], torch.tensor(lab_counts), dataset.names, **kw),
            ClassDataset(dataset.images[torch.cat(unl)], torch.tensor(unl_counts), dataset.names, **kw))


def _take(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x[b, perm[b, i]]`` for every task b."""
    return x[torch.arange(x.shape[0])[:, None], perm]


def check_task_settings(dataset: ClassDataset, ways: int, shots: int, queries: int, name: str = "task",
                        pool: str = "") -> None:
    """Refuse impossible N-way K-shot Q-query settings with one clear sentence."""
    if ways < 1 or shots < 0 or queries < 0 or (shots + queries < 1 and not pool):
        raise DataError(f"{name} ways/shots/queries must be positive (got ways={ways}, shots={shots}, "
                        f"queries={queries}).")
    if ways > dataset.num_classes:
        raise DataError(f"{name} tasks ask for {ways} ways but the split has only {dataset.num_classes} "
                        f"classes; lower {name}.ways.")
    if shots + queries > dataset.min_count:
        raise DataError(f"{name} tasks ask for {shots} shots + {queries} queries = {shots + queries} "
                        f"{pool}items per class but the smallest class has {dataset.min_count}; lower "
                        f"{name}.shots or {name}.queries.")


def make_sampler(data, ways: int, shots: int, queries: int, batch_size: int = 1, seed: int = 0, **options):
    """The sampler for ``data``: :class:`EpisodeSampler` over a class dataset, or
    :class:`~fewshot.tasks.functions.FunctionSampler` over a function task family (sinusoid, logistic)."""
    sequence = options.pop("sequence", None)
    if sequence is not None:  # Santoro et al.'s labelled sequences over the classes of ``data``
        from fewshot.tasks.sequences import LabelSequenceSampler

        name = options.get("name", "task")
        used = [k for k, v in options.items() if k not in ("name", "pool_seed", "labeled_fraction")
                and v not in (0, 0.0, False, "none", None)]
        if used:
            raise DataError(f"{name}.{used[0]} does not apply to labelled-sequence episodes; remove it from the config.")
        return LabelSequenceSampler(data, ways, sequence["length"], batch_size, seed, sequence["labels"],
                                    sequence["rotate"], sequence["translate"], name=name,
                                    strings=sequence.get("strings", False))
    if isinstance(data, ClassDataset):
        return EpisodeSampler(data, ways, shots, queries, batch_size, seed, **options)
    from fewshot.data.sequences import SequenceFamily

    if isinstance(data, SequenceFamily):  # ways / shots / queries do not apply to sequences
        from fewshot.tasks.sequences import SequenceSampler

        return SequenceSampler(data, batch_size, seed, **options)
    from fewshot.tasks.functions import FunctionSampler

    return FunctionSampler(data, ways, shots, queries, batch_size, seed, **options)
