import pytest
import torch
from torch import nn

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.config import load_config
from fewshot.engine.evaluator import best_threshold, evaluate, roc_auc, verification
from fewshot.methods import SiameseNet, build_method
from fewshot.methods.siamese import contrastive_loss, euclidean_energy
from fewshot.tasks import EpisodeSampler, TaskBatch


def test_contrastive_loss_values():
    e = torch.tensor([0.0, 0.5, 0.5, 2.0])
    same = torch.tensor([True, True, False, False])
    assert torch.allclose(contrastive_loss(e, same, margin=1.0), torch.tensor([0.0, 0.25, 0.25, 0.0]))


def test_energy_gradient_is_finite_at_zero():
    a = torch.zeros(3, requires_grad=True)
    contrastive_loss(euclidean_energy(a, torch.zeros(3)), torch.tensor(False)).backward()
    assert torch.isfinite(a.grad).all()


def test_pairs_from_an_episode_are_balanced_and_never_self_pairs():
    b = EpisodeSampler(gaussian_classes("train", classes=30, dim=4, nuisance=0), 2, 1, 1, batch_size=8).sample()
    model = SiameseNet(nn.Identity())
    scores, same = model._pairs(b)
    assert scores.shape == (8, 2, 2) and int(same.sum()) == 16 and int((~same).sum()) == 16
    assert (scores < 0).all()  # distinct items: E > 0, no item paired with itself


def test_identification_hand_computed():
    b = TaskBatch(torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]]), torch.tensor([[0, 1, 1]]),
                  torch.tensor([[[0.0, 2.0]]]), torch.tensor([[1]]), 2)
    logits = SiameseNet(nn.Identity()).predict(b)[0, 0]
    assert torch.allclose(logits, torch.tensor([-2.0, -1.0]))  # best support item of each class


@pytest.mark.parametrize("head,balance,expected", [("l2", True, 4.0), ("l2", False, 5.0),
                                                    ("weighted_l1", True, 1.239484), ("weighted_l1", False, 1.548224)])
def test_pair_losses_hand_computed(head, balance, expected):
    """The batch of test_identification_hand_computed: query (0, 2) against (0, 0) (impostor), (3, 0) and (0, 1)
    (genuine). l2, margin 3: E² = 13 and 1 for the genuine pairs, (3 − 2)² = 1 for the impostor; weighted L1 with
    α = [−1, −2], b = 3: logits −4, 1 (genuine) and −1 (impostor) under binary cross-entropy. Balanced: the mean of
    the genuine and the impostor means; otherwise the mean over pairs."""
    b = TaskBatch(torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]]), torch.tensor([[0, 1, 1]]),
                  torch.tensor([[[0.0, 2.0]]]), torch.tensor([[1]]), 2)
    model = SiameseNet(nn.Identity(), head=head, embed_dim=2, margin=3.0, balance=balance)
    if head == "weighted_l1":
        with torch.no_grad():
            model.alpha.weight.copy_(torch.tensor([[-1.0, -2.0]]))
            model.alpha.bias.fill_(3.0)
    assert model.loss(b)[0].item() == pytest.approx(expected, rel=1e-5)


def test_weighted_l1_head():
    model = SiameseNet(nn.Identity(), head="weighted_l1", embed_dim=2)
    with torch.no_grad():
        model.alpha.weight.copy_(torch.tensor([[-1.0, -2.0]]))
        model.alpha.bias.fill_(3.0)
    s = model.similarity(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]]))
    assert s.item() == pytest.approx(3.0 - 1.0 - 2.0)  # σ(·) of this is p(same)


def test_threshold_and_auc():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    positive = torch.tensor([False, False, True, True])
    assert roc_auc(scores, positive) == pytest.approx(0.75)
    tau = best_threshold(scores, positive)
    assert ((scores >= tau) == positive).float().mean() == 0.75


@pytest.mark.parametrize("head", ["l2", "weighted_l1"])
def test_learns_verification_and_identification(head):
    torch.manual_seed(0)
    parts = {p: gaussian_classes(p, classes=200, dim=16, noise=0.3, nuisance=48) for p in ("train", "val", "test")}
    model = build_method(load_config("siamese", ["model.backbone=mlp", "model.hidden=[64, 32]", "model.norm=none",
                                                 f"model.head={head}"]), parts["train"].item_shape)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sampler = EpisodeSampler(parts["train"], 5, 1, 4, batch_size=8, seed=0)  # balanced loss over 1:4 pairs
    for _ in range(500):
        model.train_step(sampler.sample(), opt)
    v = verification(model, parts["val"], parts["test"], pairs=400)
    assert v["auc"] > 0.7 and v["accuracy"] > 65  # chance: 0.5 and 50 %
    assert evaluate(model, parts["test"], 5, 1, 5, 100, seed=3)["mean"] > 40  # chance 20 %, twice chance at least
