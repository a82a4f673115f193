import pytest
import torch

from fewshot.data.classdataset import ClassDataset
from fewshot.errors import DataError
from fewshot.tasks import EpisodeSampler


def id_dataset(classes=12, examples=10, unequal=False):
    """Items whose value encodes (class, item) so every draw can be traced back."""
    counts = [examples - (c % 3 if unequal else 0) for c in range(classes)]
    items = torch.cat([torch.tensor([[c * 1000.0 + i] for i in range(n)]) for c, n in enumerate(counts)])
    return ClassDataset(items, torch.tensor(counts), [f"c{c}" for c in range(classes)], scale=1.0)


def decode(x):
    v = x.squeeze(-1).long()
    return v // 1000, v % 1000


@pytest.mark.parametrize("unequal", [False, True])
def test_counts_labels_and_disjointness(unequal):
    ds = id_dataset(unequal=unequal)
    s = EpisodeSampler(ds, ways=5, shots=3, queries=4, batch_size=6, seed=1)
    for _ in range(20):
        b = s.sample()
        assert b.support_x.shape == (6, 15, 1) and b.query_x.shape == (6, 20, 1)
        for t in range(6):
            sc, si = decode(b.support_x[t])
            qc, qi = decode(b.query_x[t])
            assert torch.bincount(b.support_y[t], minlength=5).tolist() == [3] * 5
            assert torch.bincount(b.query_y[t], minlength=5).tolist() == [4] * 5
            # one global class per label, the same in support and query, all distinct
            mapping = {}
            for c, y in zip(sc.tolist() + qc.tolist(), b.support_y[t].tolist() + b.query_y[t].tolist()):
                assert mapping.setdefault(y, c) == c
            assert len(set(mapping.values())) == 5
            # support and query never share an item, no item twice
            pairs = list(zip(sc.tolist(), si.tolist())) + list(zip(qc.tolist(), qi.tolist()))
            assert len(set(pairs)) == 35
            # items exist in their class
            assert all(i < ds.counts[c] for c, i in pairs)


def test_labels_are_remapped_in_random_order():
    s = EpisodeSampler(id_dataset(), ways=5, shots=1, queries=1, seed=0)
    orders = set()
    for _ in range(30):
        b = s.sample()
        c, _ = decode(b.support_x[0])
        ranks = torch.argsort(torch.argsort(c))  # class-id rank of each item
        orders.add(tuple(b.support_y[0][torch.argsort(ranks)].tolist()))
    assert len(orders) > 10  # label k is not "the k-th smallest class id"


def test_seeded_and_batch_size_independent():
    ds = id_dataset()
    a = EpisodeSampler(ds, 4, 2, 3, batch_size=5, seed=7).sample()
    b = EpisodeSampler(ds, 4, 2, 3, batch_size=5, seed=7).sample()
    c = EpisodeSampler(ds, 4, 2, 3, batch_size=5, seed=8).sample()
    singles = EpisodeSampler(ds, 4, 2, 3, batch_size=1, seed=7)
    one_by_one = [singles.sample() for _ in range(5)]
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)
    assert torch.equal(a.query_x, torch.cat([t.query_x for t in one_by_one]))


def test_state_dict_restores_the_stream():
    s = EpisodeSampler(id_dataset(), 4, 1, 2, seed=3)
    s.sample()
    state = s.state_dict()
    nxt = s.sample()
    s.sample()
    s.load_state_dict(state)
    assert torch.equal(s.sample().support_x, nxt.support_x)


def test_fixed_tasks_iter_is_a_fixed_list():
    ds = id_dataset()
    first = [b.query_x for b in EpisodeSampler(ds, 3, 1, 2, batch_size=4, seed=5).fixed_tasks_iter(10)]
    again = [b.query_x for b in EpisodeSampler(ds, 3, 1, 2, batch_size=3, seed=5).fixed_tasks_iter(10)]
    assert sum(x.shape[0] for x in first) == 10
    assert torch.equal(torch.cat(first), torch.cat(again))


@pytest.mark.parametrize("ways,shots,queries,match", [
    (13, 1, 1, "ways"), (5, 6, 5, "shots"), (5, 0, 0, "positive"), (0, 1, 1, "positive")])
def test_impossible_settings_are_refused(ways, shots, queries, match):
    with pytest.raises(DataError, match=match):
        EpisodeSampler(id_dataset(), ways, shots, queries, name="train")


def test_unequal_classes_limit_shots_by_smallest_class():
    ds = id_dataset(unequal=True)  # smallest class has 8
    EpisodeSampler(ds, 3, 4, 4)
    with pytest.raises(DataError, match="smallest class has 8"):
        EpisodeSampler(ds, 3, 4, 5)


def test_per_class_rotation_rotates_whole_classes():
    base = torch.zeros(6, 4, 1, 5, 5)
    base[..., 0, 1] = 1.0  # a mark in the top row: its position tells the rotation
    ds = ClassDataset.from_blocks(base, [str(i) for i in range(6)], scale=1.0)
    s = EpisodeSampler(ds, 6, 2, 2, seed=0, rotate="per_class")
    seen = set()
    for _ in range(10):
        b = s.sample()
        for y in range(6):
            imgs = torch.cat([b.support_x[0][b.support_y[0] == y], b.query_x[0][b.query_y[0] == y]])
            assert all(torch.equal(imgs[0], im) for im in imgs)  # one angle per class
            k = [j for j in range(4) if torch.equal(torch.rot90(base[0, 0], j, dims=(-2, -1)), imgs[0])]
            assert len(k) == 1
            seen.add(k[0])
    assert seen == {0, 1, 2, 3}


def test_per_task_rotation_turns_the_whole_task_by_one_angle():
    base = torch.zeros(6, 4, 1, 5, 5)
    base[..., 0, 1] = 1.0
    ds = ClassDataset.from_blocks(base, [str(i) for i in range(6)], scale=1.0)
    s = EpisodeSampler(ds, 3, 2, 2, seed=0, rotate="per_task")
    seen = set()
    for _ in range(12):
        b = s.sample()
        imgs = torch.cat([b.support_x[0], b.query_x[0]])
        assert all(torch.equal(imgs[0], im) for im in imgs)  # every item of the task: the same angle
        k = [j for j in range(4) if torch.equal(torch.rot90(base[0, 0], j, dims=(-2, -1)), imgs[0])]
        assert len(k) == 1
        seen.add(k[0])
    assert len(seen) > 1  # the angle changes from task to task


def test_seeded_stream_is_stable_across_versions():
    # evaluation task lists must not change silently: this pins the stream of seed 0
    b = EpisodeSampler(id_dataset(), 3, 1, 2, seed=0).sample()
    sc, si = decode(b.support_x[0])
    qc, qi = decode(b.query_x[0])
    assert (sc.tolist(), si.tolist(), b.support_y[0].tolist()) == ([2, 4, 3], [0, 3, 5], [1, 0, 2])
    assert (qc.tolist(), qi.tolist()) == ([2, 2, 4, 4, 3, 3], [6, 1, 0, 2, 6, 8])


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_unlabeled_items_and_distractors(fraction):
    ds = id_dataset(classes=12, examples=10)
    s = EpisodeSampler(ds, ways=3, shots=1, queries=2, unlabeled=2, distractors=2, labeled_fraction=fraction,
                       pool_seed=4, seed=0)
    pools = {}
    for _ in range(15):
        b = s.sample()
        uc, ui = decode(b.unlabeled_x[0])
        assert b.unlabeled_x.shape == (1, 10, 1) and b.unlabeled_y.shape == (1, 10)
        sc, si = decode(b.support_x[0])
        qc, qi = decode(b.query_x[0])
        label_of = dict(zip(b.support_y[0].tolist(), sc.tolist()))
        for c, i, y in zip(uc.tolist(), ui.tolist(), b.unlabeled_y[0].tolist()):
            if y >= 0:
                assert label_of[y] == c  # unlabelled items of episode classes carry their (hidden) label
            else:
                assert c not in label_of.values()  # distractor classes are not episode classes
        labelled = set(zip(sc.tolist(), si.tolist())) | set(zip(qc.tolist(), qi.tolist()))
        unlabelled = set(zip(uc.tolist(), ui.tolist()))
        assert len(unlabelled) == 10 and not labelled & unlabelled
        assert torch.bincount(b.unlabeled_y[0] + 1, minlength=4).tolist() == [4, 2, 2, 2]
        for c, i in labelled:
            pools.setdefault(c, set()).add(("L", i))
        for c, i in unlabelled:
            pools.setdefault(c, set()).add(("U", i))
    if fraction < 1:  # a fixed split: an item is always labelled or always unlabelled
        for items in pools.values():
            assert not {i for t, i in items if t == "L"} & {i for t, i in items if t == "U"}
            assert len({i for t, i in items if t == "L"}) <= 5


def test_semi_supervised_settings_are_checked():
    ds = id_dataset(classes=6, examples=10)
    with pytest.raises(DataError, match="distractor"):
        EpisodeSampler(ds, 5, 1, 1, unlabeled=1, distractors=2)
    with pytest.raises(DataError, match="labelled items per class"):
        EpisodeSampler(ds, 3, 2, 2, labeled_fraction=0.3)


def test_within_group_tasks_and_same_items():
    items = torch.arange(30 * 6, dtype=torch.float).view(30, 6, 1)
    names = [f"{'ABC'[c % 3]}/char{c}" for c in range(30)]  # three "alphabets" of 10 classes
    ds = ClassDataset.from_blocks(items, names, scale=1.0)
    s = EpisodeSampler(ds, 5, 1, 1, seed=0, groups="alphabet", same_items=True)
    seen = set()
    for _ in range(20):
        b = s.sample()
        classes = (b.support_x[0, :, 0] // 6).long()
        assert len({names[c][0] for c in classes.tolist()}) == 1  # one alphabet per task
        seen.add(names[classes[0]][0])
        assert len(set((b.support_x[0, :, 0] % 6).tolist())) == 1  # the same drawer for every class
        assert len(set((b.query_x[0, :, 0] % 6).tolist())) == 1
    assert seen == {"A", "B", "C"}
    with pytest.raises(DataError, match="no group"):
        EpisodeSampler(ds, 11, 1, 1, groups="alphabet")


def test_affine_distortion_keeps_shape_and_mass():
    from fewshot.tasks.sampler import random_affine

    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    y = random_affine(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    changed = (y - x).abs().flatten(1).sum(1) > 1e-3
    assert 0.8 < changed.float().mean() < 1.0  # each of 4 components on with p = 1/2: ~94 % changed
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))  # the square stays inside the image: area changes by the scales only
    assert ((ratio > 0.5) & (ratio < 1.8)).all()  # scales 0.8-1.2 per axis (area 0.69-1.56), plus shear


def test_downsampling_damages_the_requested_share():
    from fewshot.tasks.sampler import random_downsample

    x = torch.rand(400, 1, 28, 28)
    y = random_downsample(x, 0.5, torch.Generator().manual_seed(0))
    damaged = (y != x).flatten(1).any(1)
    assert 0.4 < damaged.float().mean() < 0.6
    blocks = y[damaged][:, :, ::2, ::2]  # a damaged image is constant on 2x2 blocks at least
    assert torch.equal(blocks.repeat_interleave(2, -1).repeat_interleave(2, -2), y[damaged])
    assert torch.equal(y[~damaged], x[~damaged])


def test_pool_split_is_the_same_in_every_part():
    from fewshot.tasks.sampler import split_pools

    ds = id_dataset(classes=8, examples=10)
    lab_all, _ = split_pools(ds, 0.3, seed=2)
    lab_sub, _ = split_pools(ds.subset([5, 2]), 0.3, seed=2)
    assert torch.equal(lab_sub.images[:3], lab_all.images[15:18]) and torch.equal(lab_sub.images[3:], lab_all.images[6:9])


def test_too_small_items_for_a_backbone():
    from fewshot.errors import ConfigError
    from fewshot.nn import build_backbone

    with pytest.raises(ConfigError, match="cannot take items of shape"):
        build_backbone("convmap", (1, 4, 4))
