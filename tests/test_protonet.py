import pytest
import torch
from torch import nn

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.evaluator import evaluate
from fewshot.methods import ProtoNet, build_method
from fewshot.methods.metric import class_means, pairwise_distance
from fewshot.nn import MLP
from fewshot.tasks import EpisodeSampler, TaskBatch


def identity_batch():
    # 2-way, unequal shots: class 0 = {(0,0), (2,0)} -> prototype (1,0); class 1 = {(0,2)} -> (0,2)
    sx = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])
    sy = torch.tensor([[0, 1, 0]])
    qx = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])
    qy = torch.tensor([[1, 0]])
    return TaskBatch(sx, sy, qx, qy, ways=2)


def test_logits_against_hand_computed_values():
    model = ProtoNet(nn.Identity())
    logits = model.predict(identity_batch())
    # query (1,1): d to (1,0) = 1, to (0,2) = 1 + 1 = 2; query (3,0): 4 and 9 + 4 = 13
    assert torch.allclose(logits, torch.tensor([[[-1.0, -2.0], [-4.0, -13.0]]]))
    loss, metrics = model.loss(identity_batch())
    expected = -(torch.log_softmax(torch.tensor([-1.0, -2.0]), 0)[1] + torch.log_softmax(torch.tensor([-4.0, -13.0]), 0)[0]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["accuracy"] == 0.5


def test_temperature_and_other_distances():
    b = identity_batch()
    assert torch.allclose(ProtoNet(nn.Identity(), temperature=2.0).predict(b), torch.tensor([[[-0.5, -1.0], [-2.0, -6.5]]]))
    eu = ProtoNet(nn.Identity(), distance="euclidean").predict(b)
    assert torch.allclose(eu, -torch.tensor([[[1.0, 2 ** 0.5], [2.0, 13 ** 0.5]]]))
    cos = ProtoNet(nn.Identity(), distance="cosine").predict(b)
    assert torch.allclose(cos[0, 1], torch.tensor([0.0, -1.0]), atol=1e-6)  # (3,0) vs (1,0) and (0,2)


def test_distance_matches_broadcasting_and_linear_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    direct = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    assert torch.allclose(pairwise_distance(a, b), direct, atol=1e-5)
    # the model's logits: -||f - c||^2 = 2 c.f - ||c||^2 - ||f||^2, the class-dependent part linear in f
    # (Snell et al. §2.4), with c the class means computed here
    sx, qx = torch.randn(1, 8, 5, generator=g), torch.randn(1, 7, 5, generator=g)
    sy = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    logits = ProtoNet(nn.Identity()).predict(TaskBatch(sx, sy, qx, torch.zeros(1, 7, dtype=torch.long), 4))[0]
    c = torch.stack([sx[0][sy[0] == k].mean(0) for k in range(4)])
    linear = 2 * qx[0] @ c.t() - (c ** 2).sum(-1)[None]
    assert torch.allclose(logits + (qx[0] ** 2).sum(-1, keepdim=True), linear, atol=1e-5)
    assert torch.allclose(logits.log_softmax(-1), linear.log_softmax(-1), atol=1e-5)


def test_gradient_of_euclidean_is_finite_at_zero_distance():
    a = torch.zeros(1, 1, 3, requires_grad=True)
    pairwise_distance(a, torch.zeros(1, 1, 3), "euclidean").sum().backward()
    assert torch.isfinite(a.grad).all()


def test_class_means_with_shuffled_labels():
    z = torch.arange(12.0).view(1, 6, 2)
    y = torch.tensor([[2, 0, 1, 0, 2, 1]])
    means = class_means(z, y, 3)
    for k in range(3):
        assert torch.allclose(means[0, k], z[0][y[0] == k].mean(0))


def test_one_encoder_for_support_and_query():
    enc = MLP(16, (8,))
    model = ProtoNet(enc)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in enc.parameters())


def test_learns_a_synthetic_task_far_above_chance():
    torch.manual_seed(0)
    train = gaussian_classes("train", classes=200, dim=16, noise=0.3, nuisance=48)
    test = gaussian_classes("test", classes=200, dim=16, noise=0.3, nuisance=48)
    config = {"method": "protonet", "model": {"backbone": "mlp", "width": 64, "hidden": [64, 32], "norm": "none",
                                              "distance": "sqeuclidean", "temperature": 1.0}}
    model = build_method(config, train.item_shape)
    before = evaluate(model, test, 5, 1, 10, 200, seed=3)["mean"]
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sampler = EpisodeSampler(train, 20, 1, 5, seed=0)
    for _ in range(400):
        model.train_step(sampler.sample(), opt)
    after = evaluate(model, test, 5, 1, 10, 200, seed=3)
    assert after["mean"] > 75.0  # chance is 20 %; raw distances give about 25 %
    assert after["mean"] > before + 20  # raw distances are dominated by the nuisance dimensions


def test_conv4_embedding_size_on_omniglot_shape():
    config = {"method": "protonet", "model": {"backbone": "conv4", "width": 64, "hidden": [1], "norm": "eval",
                                              "distance": "sqeuclidean", "temperature": 1.0}}
    model = build_method(config, (1, 28, 28))
    assert model.encoder(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    assert build_method(config, (3, 84, 84)).encoder(torch.zeros(1, 3, 84, 84)).shape == (1, 1600)


def test_build_each_metric_method_from_config():
    from fewshot.engine.config import load_config

    for method in ("protonet", "matching", "gaussian"):
        model = build_method(load_config(method), (1, 28, 28))
        batch = EpisodeSampler(gaussian_classes("train", image=True, dim=784, nuisance=0, classes=40), 5, 2, 3).sample()
        assert model.predict(batch).shape == (1, 15, 5)
