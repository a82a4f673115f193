"""MANN with LRUA memory: labelled-sequence episodes, per-instance accuracy, reference parameter counts, learning."""

from __future__ import annotations

import pytest
import torch

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.config import load_config
from fewshot.errors import ConfigError, DataError
from fewshot.methods.memory import MANNModel, instance_accuracy
from fewshot.nn.mann import MANN
from fewshot.tasks.sequences import LabelSequenceBatch, LabelSequenceSampler, instance_index


def test_instance_index_counts_presentations():
    labels = torch.tensor([[0, 1, 0, 0, 2, 1]])
    assert instance_index(labels).tolist() == [[1, 1, 2, 3, 1, 2]]


def test_balanced_episodes_distinct_items_and_shuffled_labels():
    data = gaussian_classes("train", classes=100, examples=20, nuisance=0)
    sampler = LabelSequenceSampler(data, ways=5, length=50, batch_size=8, seed=0)
    batch = sampler.sample()
    assert batch.images.shape == (8, 50, 16) and batch.labels.shape == (8, 50)
    for e in range(8):
        assert torch.bincount(batch.labels[e], minlength=5).tolist() == [10] * 5
        for k in range(5):  # ten distinct items of one class per label
            items = batch.images[e][batch.labels[e] == k]
            assert len(torch.unique(items, dim=0)) == 10
    # per-episode label shuffling: the label of a step is not a function of its position
    assert len({tuple(batch.labels[e, :10].tolist()) for e in range(8)}) > 1
    iid = LabelSequenceSampler(data, 5, 50, 4, seed=0, labels="iid").sample()
    assert iid.labels.shape == (4, 50)
    again = LabelSequenceSampler(data, 5, 50, 8, seed=0).sample()
    assert torch.equal(again.images, batch.images)  # seeded
    with pytest.raises(DataError, match="divisible"):
        LabelSequenceSampler(data, 5, 52)
    with pytest.raises(DataError, match="only 20 items"):
        LabelSequenceSampler(data, 2, 50)


def test_iid_labels_are_unbalanced_with_distinct_items_per_class():
    data = gaussian_classes("train", classes=100, examples=20, nuisance=0)
    batch = LabelSequenceSampler(data, ways=5, length=50, batch_size=20, seed=0, labels="iid").sample()
    counts = [torch.bincount(batch.labels[e], minlength=5).tolist() for e in range(20)]
    assert any(c != [10] * 5 for c in counts)  # i.i.d. labels: some episode is unbalanced
    for e in range(20):
        for k in range(5):
            items = batch.images[e][batch.labels[e] == k]
            if 0 < len(items) <= 20:  # a class has 20 items: distinct while there are enough
                assert len(torch.unique(items, dim=0)) == len(items)


def test_rotation_and_translation_augment_images():
    data = gaussian_classes("train", classes=20, examples=20, dim=16, nuisance=0, image=True)
    plain = LabelSequenceSampler(data, 2, 4, 1, seed=1).sample()
    moved = LabelSequenceSampler(data, 2, 4, 1, seed=1, translate=1, rotate=True).sample()
    assert moved.images.shape == plain.images.shape == (1, 4, 1, 4, 4)
    shifted = LabelSequenceSampler(data, 2, 4, 1, seed=1, translate=1).sample()  # same draws, then the shift

    def shift(x, dy, dx):  # zero-filled translation of [C, H, W] by (dy, dx)
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        return out

    assert not torch.equal(plain.images, shifted.images)
    # rotation: the same draws, every item of a label turned by that label's one multiple of 90°
    used = set()
    for seed in range(4):  # one episode per sampler: the rotation draws come after the item draws
        plain8 = LabelSequenceSampler(data, 2, 8, 1, seed=seed).sample()
        turned = LabelSequenceSampler(data, 2, 8, 1, seed=seed, rotate=True).sample()
        for k in range(2):
            a, b = plain8.images[0][plain8.labels[0] == k], turned.images[0][turned.labels[0] == k]
            turns = [r for r in range(4) if torch.equal(torch.rot90(a, r, dims=(-2, -1)), b)]
            assert turns, (seed, k)
            used.update(turns)
    assert used - {0}  # some class was turned
    for a, b in zip(plain.images[0], shifted.images[0]):
        assert any(torch.equal(shift(a, dy, dx), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    with pytest.raises(DataError, match="translate between 0 and 1"):
        LabelSequenceSampler(data, 2, 4, 1, translate=2)  # ±2 px of a 4-px image
    vectors = gaussian_classes("train", classes=20, examples=20, dim=16, nuisance=0)
    with pytest.raises(DataError, match="translate between 0 and 0"):
        LabelSequenceSampler(vectors, 2, 4, 1, translate=1)  # flat items cannot be translated


@pytest.mark.parametrize("feedback,count", [("reads", 679729), ("read_weights", 961329)])
def test_parameter_counts_of_the_reference_layouts(feedback, count):
    assert sum(p.numel() for p in MANN(400, 5, controller_input=feedback).parameters()) == count


@pytest.mark.parametrize("config,count", [("mann/omniglot", 679729), ("mann/omniglot-tf-code", 961329)])
def test_shipped_configs_build_the_reference_layouts(config, count):
    from fewshot.engine.config import load_config
    from fewshot.methods import build_method

    assert sum(p.numel() for p in build_method(load_config(config), (400,)).parameters()) == count


def _hand_step(lu_assignment: str, write_vector: str, read_on: str):
    """One MANN step with constant head outputs (zero head weights, set biases), from a hand-made state."""
    import math

    torch.manual_seed(0)
    net = MANN(2, 2, controller_size=3, memory_slots=3, memory_width=2, heads=2, gamma=0.95, lu_assignment=lu_assignment,
               write_vector=write_vector, read_on=read_on).double()
    keys, adds, alphas = [[0.6, 0.0], [0.0, 0.8]], [[0.5, -0.5], [0.2, 0.4]], [0.0, math.log(3.0)]  # σ(α) = ½, ¾
    with torch.no_grad():
        for p, k, a, al in zip(net.head_params, keys, adds, alphas):
            p.weight.zero_()
            p.bias.copy_(torch.tensor([*map(math.atanh, k), *map(math.atanh, a), al]))
    state = {"h": torch.zeros(1, 3).double(), "c": torch.zeros(1, 3).double(),
             "memory": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]).double(),
             "usage": torch.tensor([[0.5, 0.1, 0.3]]).double(),  # least used: slot 1, then 2, then 0
             "read_w": torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]).double(),
             "reads": torch.zeros(1, 2, 2).double()}
    heads = (torch.cat([p.weight for p in net.head_params]), torch.cat([p.bias for p in net.head_params]))
    n_in = 2 + 2
    _, new = net.step(torch.zeros(1, 12).double(), net.controller.linear.weight[:, n_in:], heads, state)
    return new, torch.tensor(keys).double(), torch.tensor(adds).double()


@pytest.mark.parametrize("lu_assignment,write_vector,read_on", [("per_head", "separate", "after_write"),
                                                                ("summed", "separate", "after_write"),
                                                                ("per_head", "key", "after_write"),
                                                                ("per_head", "separate", "before_write")])
def test_one_lrua_step_by_hand(lu_assignment, write_vector, read_on):
    """w^w = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu (head i → i-th least-used slot, or every head the sum of the two
    least-used one-hots); the least-used slot zeroed, then M_t = M + Σ_h w^w_h ⊗ v_h (v: add vector or key);
    w^r = softmax(cos(k, M)) against M_t or M_{t−1}; r = w^r M_t; w^u = γ w^u_{t−1} + Σ w^r + Σ w^w."""
    new, keys, adds = _hand_step(lu_assignment, write_vector, read_on)
    if lu_assignment == "per_head":  # head 0 → slot 1, head 1 → slot 2
        write_w = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.75, 0.25]]).double()
    else:  # both heads → slots 1 and 2
        write_w = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.25]]).double()
    v = adds if write_vector == "separate" else keys
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).double()
    memory = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).double()  # slot 1 (least used) zeroed
    for h in range(2):
        memory = memory + write_w[h][:, None] * v[h][None, :]
    if (lu_assignment, write_vector) == ("per_head", "separate"):  # the default layout, fully by hand
        torch.testing.assert_close(memory, torch.tensor([[1.25, -0.25], [0.4, 0.05], [1.05, 1.1]]).double())
    basis = memory if read_on == "after_write" else before
    cos = torch.stack([torch.nn.functional.cosine_similarity(keys[h][None], basis, dim=-1) for h in range(2)])
    read_w = torch.softmax(cos, -1)
    torch.testing.assert_close(new["memory"][0], memory)
    torch.testing.assert_close(new["read_w"][0], read_w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new["reads"][0], read_w @ memory, atol=1e-6, rtol=1e-6)
    usage = 0.95 * torch.tensor([0.5, 0.1, 0.3]).double() + read_w.sum(0) + write_w.sum(0)
    torch.testing.assert_close(new["usage"][0], usage, atol=1e-6, rtol=1e-6)


def test_read_before_and_after_the_write_differ():
    after, _, _ = _hand_step("per_head", "separate", "after_write")
    before, _, _ = _hand_step("per_head", "separate", "before_write")
    assert not torch.allclose(after["read_w"], before["read_w"], atol=1e-3)


def test_per_instance_accuracy_with_missing_instances():
    batch = LabelSequenceBatch(torch.zeros(2, 3, 1), torch.tensor([[0, 0, 1], [1, 0, 1]]), 2)
    logits = torch.tensor([[[1.0, 0], [0, 1.0], [0, 1.0]], [[0, 1.0], [1.0, 0], [1.0, 0]]])
    acc = instance_accuracy(logits, batch, max_instance=3)
    assert acc[0, :2].tolist() == [100.0, 0.0] and acc[1, :2].tolist() == [100.0, 0.0]
    assert torch.isnan(acc[:, 2]).all()


def test_mann_learns_a_small_labelled_sequence_task():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = gaussian_classes("train", classes=200, nuisance=0, noise=0.1, dim=8)
        test = gaussian_classes("test", classes=200, nuisance=0, noise=0.1, dim=8)
        sampler = LabelSequenceSampler(train, 2, 10, 32, seed=0)
        batch = LabelSequenceSampler(test, 2, 10, 200, seed=3).sample()
        model = MANNModel(MANN(8, 2, controller_size=32, memory_slots=8, memory_width=8, heads=1))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(400):
            model.train_step(sampler.sample(), opt)
        later = instance_accuracy(model.predict(batch), batch).nanmean(0)[1:5]
        assert float(later.mean()) > 85, later  # chance: 50 %
    finally:
        torch.set_num_threads(old)


def test_mann_config_trains_and_reports_instances(tmp_path):
    from fewshot.engine.trainer import Trainer

    config = load_config("mann/omniglot", ["data.dataset=synthetic", "data.episodes.rotate=false",
                                           "data.episodes.translate=0", "data.episodes.length=10",
                                           "model.controller_size=8", "model.memory_slots=8", "model.memory_width=4",
                                           "model.heads=1", "model.compile=false", "train.meta_batch=2", "train.episodes=4",
                                           "val.every=2",
                                           "val.tasks=4", "eval.tasks=6", "train.tensorboard=false"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    names = [r["name"] for r in trainer.test()["test"]]
    assert names[0] == "mann-omniglot-5w" and "mann-omniglot-5w-inst2" in names and "mann-omniglot-5w-inst10" not in names
    with pytest.raises(ConfigError, match="output classes"):
        from fewshot.methods import build_method

        build_method(load_config("mann/omniglot", ["eval.ways=[15]"]), (1, 20, 20))


def test_instance_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from fewshot.engine.plots import instance_figure

    summary = {"values": {"instance_accuracy": {"instance": [1, 2, 3], "mean": [30.0, 80.0, None],
                                                "ci95": [2.0, 1.0, None], "episodes": [10, 10, 0]}}}
    path = instance_figure(summary, tmp_path / "inst.png")
    assert path.stat().st_size > 1000


def test_five_character_string_labels():
    data = gaussian_classes("train", classes=100, examples=20, nuisance=0)
    batch = LabelSequenceSampler(data, 15, 30, 3, seed=0, strings=True).sample()
    assert batch.strings.shape == (3, 15, 5) and int(batch.strings.max()) <= 4
    for e in range(3):  # distinct strings per episode
        assert len({tuple(r) for r in batch.strings[e].tolist()}) == 15
    model = MANNModel(MANN(16, 15, controller_size=8, memory_slots=8, memory_width=4, heads=1, five_hot=True))
    assert model.net.output.out_features == 25 and model.net.controller.linear.in_features == 16 + 25 + 4 + 8
    scores = model.logits(batch)
    assert scores.shape == (3, 30, 16)  # 15 classes + "no class of the episode"
    assert torch.equal(scores.sum(-1), torch.ones(3, 30))
    loss, metrics = model.loss(batch)
    assert loss.requires_grad and 0 <= metrics["accuracy"] <= 1
    with pytest.raises(ConfigError, match="strings"):
        model.net(batch.images, batch.labels)


def test_compiled_step_gives_the_eager_numbers():
    """model.compile runs MANN.step through torch.compile as one graph: the same logits and gradients as eager,
    the same predictions under inference_mode."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = MANN(12, 3, controller_size=10, memory_slots=6, memory_width=4, heads=2)
    fast = MANN(12, 3, controller_size=10, memory_slots=6, memory_width=4, heads=2, compile=True)
    fast.load_state_dict(eager.state_dict())
    images, labels = torch.rand(2, 7, 12), torch.randint(0, 3, (2, 7))
    out_e, out_f = eager(images, labels), fast(images, labels)
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-6)
    out_e.square().sum().backward()
    out_f.square().sum().backward()
    for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert counters["stats"]["unique_graphs"] >= 1
    with torch.inference_mode():
        torch.testing.assert_close(fast(images, labels), eager(images, labels), rtol=1e-5, atol=1e-6)
