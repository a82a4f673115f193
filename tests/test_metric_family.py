import math

import pytest
import torch
from torch import nn

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.config import load_config
from fewshot.engine.evaluator import evaluate
from fewshot.methods import GaussianProtoNet, MatchingNet, ProtoNet, build_method
from fewshot.methods.metric import FullContextEmbedding
from fewshot.tasks import EpisodeSampler, TaskBatch


def random_batch(ways=4, shots=1, queries=3, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat(shots)[torch.randperm(ways * shots, generator=g)][None]
    qy = torch.arange(ways).repeat(queries)[None]
    return TaskBatch(torch.randn(1, ways * shots, dim, generator=g), sy, torch.randn(1, ways * queries, dim, generator=g),
                     qy, ways)


# -- Matching networks ---------------------------------------------------------------------------
def test_matching_equals_protonet_at_one_shot():
    b = random_batch(shots=1)
    proto = torch.log_softmax(ProtoNet(nn.Identity()).predict(b), -1)
    match = MatchingNet(nn.Identity(), similarity="neg_sqeuclidean").predict(b)
    assert torch.allclose(proto, match, atol=1e-5)


def test_matching_log_probs_hand_computed():
    # one query at (1, 0); support: class 0 at (1, 0) and (0, 1), class 1 at (-1, 0); cosine
    b = TaskBatch(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]), torch.tensor([[0, 0, 1]]),
                  torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), 2)
    logp = MatchingNet(nn.Identity()).predict(b)[0, 0]
    e = torch.exp(torch.tensor([1.0, 0.0, -1.0]))  # cosines 1, 0, -1; softmax over support items
    assert torch.allclose(logp.exp(), torch.stack([(e[0] + e[1]) / e.sum(), e[2] / e.sum()]), atol=1e-6)
    loss, _ = MatchingNet(nn.Identity()).loss(b)  # no double softmax: loss = -log P(y)
    assert loss.item() == pytest.approx(-logp[0].item(), abs=1e-6)


def test_fce_with_zero_lstms_is_the_base_embedding():
    b = random_batch(shots=2)
    plain = MatchingNet(nn.Identity()).predict(b)
    fce_model = MatchingNet(nn.Identity(), fce=True, fce_steps=3, embed_dim=6)
    for p in fce_model.fce.parameters():
        nn.init.zeros_(p)
    assert torch.allclose(plain, fce_model.predict(b), atol=1e-6)
    for p in fce_model.fce.parameters():  # a trained FCE changes the embedding (equations: the test below)
        nn.init.normal_(p, std=0.3)
    assert not torch.allclose(plain, fce_model.predict(b))


def _lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """The LSTM equations written out (gate order i, f, g, o)."""
    z = x @ w_ih.t() + h @ w_hh.t() + b_ih + b_hh
    i, f, g, o = z.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_fce_equations_with_trained_weights_by_hand():
    """g(x_i, S) = →h_i + ←h_i + g′(x_i) (both directions over the support sequence); K = 3 attention steps
    ĥ_k, c_k = LSTM([f′(x̂), r_{k−1}], (h_{k−1}, c_{k−1})), h_k = ĥ_k + f′(x̂), r_k = Σ_i softmax_i(h_kᵀ g_i) g_i."""
    torch.manual_seed(4)
    d = 3
    fce = FullContextEmbedding(d, steps=3).double()
    for p in fce.parameters():
        nn.init.normal_(p, std=0.4)
    g0, f0 = torch.randn(1, 4, d, dtype=torch.double), torch.randn(1, 2, d, dtype=torch.double)
    L = fce.support_lstm
    fwd, bwd = [], []
    h = c = torch.zeros(d, dtype=torch.double)
    for i in range(4):
        h, c = _lstm_cell(g0[0, i], h, c, L.weight_ih_l0, L.weight_hh_l0, L.bias_ih_l0, L.bias_hh_l0)
        fwd.append(h)
    h = c = torch.zeros(d, dtype=torch.double)
    for i in reversed(range(4)):
        h, c = _lstm_cell(g0[0, i], h, c, L.weight_ih_l0_reverse, L.weight_hh_l0_reverse, L.bias_ih_l0_reverse,
                          L.bias_hh_l0_reverse)
        bwd.insert(0, h)
    g = torch.stack([fwd[i] + bwd[i] + g0[0, i] for i in range(4)])
    torch.testing.assert_close(fce.embed_support(g0)[0], g)
    Q = fce.query_cell
    for j in range(2):
        h = c = r = torch.zeros(d, dtype=torch.double)
        for _ in range(3):
            h_hat, c = _lstm_cell(torch.cat([f0[0, j], r]), h, c, Q.weight_ih, Q.weight_hh, Q.bias_ih, Q.bias_hh)
            h = h_hat + f0[0, j]
            r = torch.softmax(g @ h, 0) @ g
        torch.testing.assert_close(fce.embed_query(f0, g[None])[0, j], h)


def test_fce_attention_is_over_support_items():
    fce = FullContextEmbedding(3, steps=2)
    g = torch.randn(2, 5, 3)
    f = torch.randn(2, 4, 3)
    out = fce.embed_query(f, g)
    assert out.shape == (2, 4, 3) and fce.embed_support(g).shape == (2, 5, 3)
    # queries never interact (attention runs over support items), but every support item matters
    assert torch.allclose(fce.embed_query(f[:, :1], g), out[:, :1], atol=1e-6)
    assert not torch.allclose(fce.embed_query(f, g[:, :4]), out)


# -- Gaussian prototypical networks ----------------------------------------------------------------
def test_gaussian_constant_equals_euclidean_protonet():
    b = random_batch(shots=3)
    proto = ProtoNet(nn.Identity(), distance="euclidean").predict(b)
    gauss = GaussianProtoNet(nn.Identity(), covariance="constant", embed_dim=6).predict(b)
    assert torch.allclose(proto, gauss, atol=1e-5)


def test_gaussian_radius_hand_computed():
    # 1-D embeddings + 1 raw precision channel; softplus transform: s = 1 + softplus(raw)
    raw = torch.tensor([0.0, 2.0])
    s = 1 + torch.nn.functional.softplus(raw)
    sx = torch.tensor([[[0.0, raw[0]], [4.0, raw[1]]]])
    qx = torch.tensor([[[1.0, -50.0]]])  # the query's own precision is ignored
    b = TaskBatch(sx, torch.tensor([[0, 0]]), qx, torch.tensor([[0]]), 1)
    logit = GaussianProtoNet(nn.Identity(), "radius", "softplus", embed_dim=1).predict(b)[0, 0, 0]
    p = (s[0] * 0 + s[1] * 4) / s.sum()
    assert logit.item() == pytest.approx(-float(torch.sqrt(s.sum() * (1 - p) ** 2)), rel=1e-5)


def test_huge_precision_pulls_the_prototype_onto_its_point():
    model = GaussianProtoNet(nn.Identity(), "radius", "softplus", embed_dim=2)
    q = torch.tensor([[[0.0, 0.0, 0.0]]])
    for raw, check in ((1e6, lambda d: d < 0.01), (0.0, lambda d: d > 1.0)):
        sx = torch.tensor([[[0.0, 0.0, raw], [2.0, 2.0, -30.0], [5.0, 5.0, 0.0]]])  # 2-D embedding + radius
        b = TaskBatch(sx, torch.tensor([[0, 0, 1]]), q, torch.tensor([[0]]), 2)
        assert check(-model.predict(b)[0, 0, 0].item())  # class 0's prototype sits (almost) on the first point


@pytest.mark.parametrize("transform,lo,hi,at0,at2", [("softplus", 1, None, 1.693147, 3.126928),
                                                      ("sigmoid", 1, 2, 1.5, 1.880797),
                                                      ("sigmoid4", 1, 5, 3.0, 4.523188),
                                                      ("learned", 1, None, 1.693147, 3.126928)])
def test_precision_transforms(transform, lo, hi, at0, at2):
    """1 + softplus(r), 1 + σ(r), 1 + 4σ(r), and the learned offset + factor·softplus(r/div) (softplus at init)."""
    model = GaussianProtoNet(nn.Identity(), "diagonal", transform, embed_dim=2)
    s = model._precision(torch.linspace(-20, 20, 41))
    assert (s >= lo).all() and (hi is None or (s <= hi).all())
    torch.testing.assert_close(model._precision(torch.tensor([0.0, 2.0])).detach(), torch.tensor([at0, at2]))
    if transform == "learned":
        model._precision(torch.tensor([0.0, 2.0])).sum().backward()
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in (model.offset, model.factor, model.div))


def test_gaussian_diagonal_hand_computed():
    """Diagonal covariance, one class: class precision S = Σ s_i per dimension, prototype p = Σ s_i x_i / S,
    logit −sqrt(Σ_d S_d (p_d − q_d)²) (non-squared distance)."""
    import math

    # 2 embedding channels, then 2 raw precision channels (softplus: s = 1 + softplus(raw))
    sx = torch.tensor([[[0.0, 0.0, 0.0, -30.0], [4.0, 4.0, -30.0, 0.0]]])
    qx = torch.tensor([[[0.0, 0.0, 5.0, 5.0]]])
    b = TaskBatch(sx, torch.tensor([[0, 0]]), qx, torch.tensor([[0]]), 1)
    logit = GaussianProtoNet(nn.Identity(), "diagonal", "softplus", embed_dim=2).predict(b)[0, 0, 0]
    big, one = 1 + math.log(2), 1.0  # 1 + softplus(0), 1 + softplus(−30) ≈ 1
    S = big + one  # = 2 + ln 2 in both dimensions
    p = (4 * one / S, 4 * big / S)
    assert logit.item() == pytest.approx(-math.sqrt(S * (p[0] ** 2 + p[1] ** 2)), rel=1e-5)
    assert logit.item() == pytest.approx(-4.792949, rel=1e-5)


def test_confidence_is_per_query():
    """Each query's own precision, averaged over dimensions."""
    b = random_batch(dim=8)
    model = GaussianProtoNet(nn.Identity(), "diagonal", embed_dim=4)
    assert model.confidence(b).shape == (1, 12)
    q = torch.tensor([[[9.0, 9.0, 9.0, 9.0, 0.0, 0.0, 2.0, 2.0]]])
    one = TaskBatch(b.support_x, b.support_y, q, torch.tensor([[0]]), b.ways)
    assert model.confidence(one)[0, 0].item() == pytest.approx((2 * 1.693147 + 2 * 3.126928) / 4, rel=1e-5)


# -- every metric method learns a synthetic task -------------------------------------------------------
@pytest.mark.parametrize("method,extra", [
    ("matching", ["model.similarity=cosine", "model.scale=10"]),
    ("matching", ["model.fce=true", "model.fce_steps=2", "model.similarity=cosine", "model.scale=10"]),
    ("gaussian", ["model.covariance=radius", "model.embed_dim=32"]),
])
def test_learns_a_synthetic_task_far_above_chance(method, extra):
    torch.manual_seed(0)
    train = gaussian_classes("train", classes=200, dim=16, noise=0.3, nuisance=48)
    test = gaussian_classes("test", classes=200, dim=16, noise=0.3, nuisance=48)
    config = load_config(method, ["model.backbone=mlp", "model.hidden=[64, 32]", "model.norm=none", *extra])
    model = build_method(config, train.item_shape)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sampler = EpisodeSampler(train, 20, 1, 5, seed=0)
    for _ in range(400):
        model.train_step(sampler.sample(), opt)
    assert evaluate(model, test, 5, 1, 10, 200, seed=3)["mean"] > 70.0  # chance 20 %, raw distances ≈ 25 %


# -- Relation networks ------------------------------------------------------------------------------
def relation_model(aggregate="sum", norm="transductive"):
    config = load_config("relation", ["model.backbone=convmap", f"model.aggregate={aggregate}", f"model.norm={norm}"])
    return build_method(config, (1, 28, 28))


def test_relation_scores_shape_and_range():
    from fewshot.data.synthetic import gaussian_classes as gc

    batch = EpisodeSampler(gc("train", classes=40, dim=784, image=True), 5, 2, 3, batch_size=2).sample()
    model = relation_model()
    scores = model.predict(batch)
    assert scores.shape == (2, 15, 5) and (scores > 0).all() and (scores < 1).all()
    assert model.encoder(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 5, 5)


def test_relation_sum_versus_mean_aggregation():
    from fewshot.methods.relation import RelationNet

    class Capture(nn.Module):
        def compare(self, classes, queries):
            self.classes, self.queries = classes, queries
            return torch.zeros(queries.shape[0], classes.shape[0])

    enc = nn.Identity()
    sx = torch.arange(4.0).view(1, 4, 1, 1, 1)  # 4 support "maps" of one channel, 1x1
    b = TaskBatch(sx, torch.tensor([[0, 1, 0, 1]]), torch.full((1, 1, 1, 1, 1), 9.0), torch.tensor([[0]]), 2)
    for agg, expected in (("sum", [0 + 2, 1 + 3]), ("mean", [1.0, 2.0])):
        cap = Capture()
        RelationNet(enc, cap, aggregate=agg).predict(b)
        assert cap.classes.flatten().tolist() == expected and cap.queries.flatten().tolist() == [9.0]


@pytest.mark.parametrize("map_size", [5, 12])
def test_relation_compare_equals_the_module_on_concatenated_pairs(map_size):
    """The split first convolution (N + M convolutions) equals g_ϕ on the M·N concatenations,
    batch statistics over all pairs included, in value and in gradient."""
    from fewshot.methods.relation import RelationModule

    torch.manual_seed(7)
    g = RelationModule(6, map_size, hidden=4).double()
    classes = torch.randn(3, 6, map_size, map_size, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(4, 6, map_size, map_size, dtype=torch.float64, requires_grad=True)
    pairs = torch.cat([classes[None].expand(4, 3, -1, -1, -1), queries[:, None].expand(4, 3, -1, -1, -1)], 2)
    direct = g(pairs.flatten(0, 1)).view(4, 3)
    split = g.compare(classes, queries)
    torch.testing.assert_close(split, direct, rtol=1e-12, atol=1e-12)
    weights = torch.rand(4, 3, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((direct * weights).sum(), [classes, queries, *g.parameters()]),
                    torch.autograd.grad((split * weights).sum(), [classes, queries, *g.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_relation_mse_loss_hand_computed():
    from fewshot.methods.relation import relation_loss

    scores = torch.tensor([[[0.9, 0.2], [0.4, 0.5]]])
    loss = relation_loss(scores, torch.tensor([[0, 1]]), 2, "mse")
    assert loss.item() == pytest.approx(((0.1 ** 2) + 0.2 ** 2 + 0.4 ** 2 + 0.5 ** 2) / 4)
    bce = relation_loss(scores, torch.tensor([[0, 1]]), 2, "bce")
    assert bce.item() == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4, rel=1e-6)
    ce = relation_loss(scores, torch.tensor([[0, 1]]), 2, "ce")  # scores as probabilities, normalized per query
    assert ce.item() == pytest.approx((-math.log(0.9 / 1.1) - math.log(0.5 / 0.9)) / 2, rel=1e-6)


def test_relation_learns_synthetic_images():
    torch.manual_seed(0)
    from fewshot.data.synthetic import gaussian_classes as gc

    train, test = gc("train", classes=100, dim=784, image=True, noise=0.5), gc("test", classes=100, dim=784, image=True, noise=0.5)
    model = build_method(load_config("relation", ["model.backbone=convmap", "model.width=16"]), train.item_shape)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = EpisodeSampler(train, 5, 1, 5, seed=0)
    for _ in range(150):
        model.train_step(sampler.sample(), opt)
    assert evaluate(model, test, 5, 1, 5, 100, seed=3)["mean"] > 60.0  # chance 20 %


# -- Semi-supervised prototypical networks ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["soft_kmeans", "distractor", "masked"])
def test_semi_supervised_without_unlabelled_items_is_protonet(mode):
    from fewshot.methods import SemiSupervisedProtoNet

    b = random_batch(shots=2)
    assert torch.allclose(SemiSupervisedProtoNet(nn.Identity(), mode).predict(b), ProtoNet(nn.Identity()).predict(b))


@pytest.mark.parametrize("mode", ["soft_kmeans", "masked"])
def test_unlabelled_point_on_a_prototype_leaves_it_unchanged(mode):
    from fewshot.methods import SemiSupervisedProtoNet

    b = random_batch(ways=2, shots=1, dim=2)
    b.support_x = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    b.support_y = torch.tensor([[0, 1]])
    b.unlabeled_x = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])  # exactly on p_0 and p_1
    assert torch.allclose(SemiSupervisedProtoNet(nn.Identity(), mode).predict(b), ProtoNet(nn.Identity()).predict(b), atol=1e-4)


def test_soft_kmeans_refinement_hand_computed():
    from fewshot.methods import SemiSupervisedProtoNet

    # 1-D: p_0 = 0, p_1 = 4; unlabelled x̃ = 1: d = (1, 9), z̃ = softmax(-1, -9)
    b = TaskBatch(torch.tensor([[[0.0], [4.0]]]), torch.tensor([[0, 1]]), torch.tensor([[[2.0]]]), torch.tensor([[0]]), 2,
                  unlabeled_x=torch.tensor([[[1.0]]]))
    w = torch.softmax(torch.tensor([-1.0, -9.0]), 0)
    p0, p1 = (0 + w[0] * 1) / (1 + w[0]), (4 + w[1] * 1) / (1 + w[1])
    logits = SemiSupervisedProtoNet(nn.Identity(), "soft_kmeans").predict(b)[0, 0]
    assert torch.allclose(logits, -torch.stack([(2 - p0) ** 2, (2 - p1) ** 2]), atol=1e-6)


def test_distractor_cluster_absorbs_far_points():
    from fewshot.methods import SemiSupervisedProtoNet

    b = TaskBatch(torch.tensor([[[5.0], [9.0]]]), torch.tensor([[0, 1]]), torch.tensor([[[6.0]]]), torch.tensor([[0]]), 2,
                  unlabeled_x=torch.tensor([[[0.05], [5.2]]]))
    model = SemiSupervisedProtoNet(nn.Identity(), "distractor")
    assert model.log_radius.item() == pytest.approx(math.log(100.0))  # initial distractor radius 100
    # r = 2 (not 1, where log r = 0 and the 1/r² scaling would hide): distractor distance d/r², offset A(r) = log r;
    # refined prototypes (5.099970, 8.999998), by hand from the soft assignments over {p_0, p_1, distractor at 0}
    model.log_radius.data.fill_(math.log(2.0))
    soft = SemiSupervisedProtoNet(nn.Identity(), "soft_kmeans").predict(b)
    dist = model.predict(b)
    torch.testing.assert_close(dist[0, 0, :2], torch.tensor([-0.810054, -8.999987]), atol=1e-5, rtol=1e-5)
    # the point near the origin pulls p_0 towards 0 in plain soft k-means, not with the distractor cluster
    assert dist[0, 0, 0] > soft[0, 0, 0]
    loss, _ = model.loss(b)
    assert loss.item() == pytest.approx(4.1606e-4, rel=1e-3)
    loss.backward()
    assert model.log_radius.grad is not None and model.log_radius.grad.item() != 0


def test_masked_soft_kmeans_hand_computed_and_mask_inputs_are_constants():
    """m = σ(−γ(d̃ − β)) with β = 1, γ = 1 (mask MLP output fixed by its bias): p_c = (Σ x + Σ z̃ m x̃) / (n + Σ z̃ m),
    on normalized distances d̃; the statistics fed to the mask MLP carry no gradient, its weights do."""
    from fewshot.methods import SemiSupervisedProtoNet

    b = TaskBatch(torch.tensor([[[0.0], [4.0]]]), torch.tensor([[0, 1]]), torch.tensor([[[1.5]]]), torch.tensor([[0]]), 2,
                  unlabeled_x=torch.tensor([[[1.0], [3.0]]]))
    model = SemiSupervisedProtoNet(nn.Identity(), "masked")
    with torch.no_grad():
        model.mask_mlp[2].weight.zero_()
        model.mask_mlp[2].bias.copy_(torch.tensor([1.0, 0.0]))  # β = 1, log γ = 0
    torch.testing.assert_close(model.predict(b)[0, 0], torch.tensor([-1.191692, -4.374985]), atol=1e-5, rtol=1e-5)
    plain = SemiSupervisedProtoNet(nn.Identity(), "soft_kmeans").predict(b)[0, 0]
    torch.testing.assert_close(plain, torch.tensor([-0.99933, -3.99866]), atol=1e-5, rtol=1e-5)  # the mask matters
    seen = []
    model.mask_mlp.register_forward_hook(lambda m, inp, out: seen.append(inp[0].requires_grad))
    enc = nn.Linear(1, 1)
    model.encoder = enc
    with torch.no_grad():
        enc.weight.fill_(1.0)
        enc.bias.zero_()
    model.loss(b)[0].backward()
    assert seen == [False] and float(model.mask_mlp[2].weight.grad.abs().sum()) > 0  # the mask MLP is trained


def test_soft_kmeans_refinement_steps():
    """Two refinement steps: the second assignment uses the once-refined prototypes."""
    from fewshot.methods import SemiSupervisedProtoNet

    b = TaskBatch(torch.tensor([[[0.0], [4.0]]]), torch.tensor([[0, 1]]), torch.tensor([[[2.0]]]), torch.tensor([[0]]), 2,
                  unlabeled_x=torch.tensor([[[1.0]]]))
    p = [0.0, 4.0]
    for _ in range(2):  # by hand
        w = torch.softmax(torch.tensor([-(1 - p[0]) ** 2, -(1 - p[1]) ** 2]), 0).tolist()
        p = [(0 + w[0]) / (1 + w[0]), (4 + w[1]) / (1 + w[1])]
    logits = SemiSupervisedProtoNet(nn.Identity(), "soft_kmeans", refine_steps=2).predict(b)[0, 0]
    torch.testing.assert_close(logits, torch.tensor([-(2 - p[0]) ** 2, -(2 - p[1]) ** 2]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, torch.tensor([-2.250120, -3.998088]), atol=1e-5, rtol=1e-5)


def test_masked_statistics_are_constants():
    from fewshot.methods.semisupervised import distance_statistics

    d = torch.tensor([[[1.0], [2.0], [3.0], [6.0]]])
    stats = distance_statistics(d)[0, 0]
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    m, v = x.mean(), ((x - x.mean()) ** 2).mean()
    expected = [1.0, 6.0, v, ((x - m) ** 3).mean() / v ** 1.5, ((x - m) ** 4).mean() / v ** 2]
    assert torch.allclose(stats, torch.stack([torch.as_tensor(e) for e in expected]), atol=1e-5)


@pytest.mark.parametrize("mode", ["soft_kmeans", "distractor", "masked"])
def test_semi_supervised_learns_with_unlabelled_items(mode):
    torch.manual_seed(0)
    train = gaussian_classes("train", classes=200, dim=16, noise=0.3, nuisance=48)
    test = gaussian_classes("test", classes=200, dim=16, noise=0.3, nuisance=48)
    config = load_config("semiproto", ["model.backbone=mlp", "model.hidden=[64, 32]", "model.norm=none", f"model.mode={mode}"])
    model = build_method(config, train.item_shape)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sampler = EpisodeSampler(train, 20, 1, 5, seed=0, unlabeled=3, distractors=3 if mode == "distractor" else 0)
    for _ in range(400):
        model.train_step(sampler.sample(), opt)
    result = evaluate(model, test, 5, 1, 10, 200, seed=3, unlabeled=3)
    assert result["mean"] > 70.0  # chance 20 %


def test_matching_learned_scale_starts_at_the_given_scale_and_trains():
    from fewshot.methods import MatchingNet
    from fewshot.nn import MLP

    torch.manual_seed(0)
    fixed = MatchingNet(MLP(16, (8,), 8), scale=10.0)
    learned = MatchingNet(MLP(16, (8,), 8), scale=10.0, learn_scale=True)
    learned.encoder.load_state_dict(fixed.encoder.state_dict())
    data = gaussian_classes("train", nuisance=0)
    batch = EpisodeSampler(data, 5, 1, 3, seed=0).sample()
    torch.testing.assert_close(learned.logits(batch), fixed.logits(batch))
    loss, _ = learned.loss(batch)
    loss.backward()
    assert learned.log_scale.grad is not None and float(learned.log_scale.grad) != 0.0
    assert "log_scale" not in dict(fixed.named_parameters())


# -- evaluation embeds each test item once -------------------------------------------------------------
@pytest.mark.parametrize("method,extra,options", [
    ("protonet", [], {}),
    ("matching", ["model.fce=true", "model.fce_steps=2"], {}),
    ("gaussian", ["model.covariance=diagonal", "model.embed_dim=16"], {}),
    ("siamese", [], {}),
    ("semiproto", ["model.mode=masked"], {"unlabeled": 2, "distractors": 1}),
    ("relation", ["model.backbone=convmap", "model.norm=eval"], {}),
    ("batmann", ["model.backbone=batmann", "model.width=8", "model.dim=32"], {}),
])
def test_cached_embeddings_give_the_same_tasks_and_scores(method, extra, options):
    torch.manual_seed(0)
    image = method in ("relation", "batmann")
    dim = {"batmann": 1024, "relation": 784}.get(method, 16)
    test = gaussian_classes("test", classes=100, dim=dim, image=image)
    backbone = [] if image else ["model.backbone=mlp", "model.hidden=[32, 16]", "model.norm=eval"]
    model = build_method(load_config(method, backbone + extra), test.item_shape)
    model.train()  # a trained-looking state: BatchNorm running statistics away from their defaults
    with torch.no_grad():
        model.encode(model.encoder, torch.randn(1, 64, *test.item_shape) + 0.5)
    encoder, calls = model.encoder, []
    encoder.register_forward_hook(lambda *_: calls.append(1))
    cached = evaluate(model, test, 5, 1, 3, 60, seed=7, batch_tasks=4, per_task=True, **options)
    n_cached, calls[:] = len(calls), []
    plain = evaluate(model, test, 5, 1, 3, 60, seed=7, batch_tasks=4, cache=False, per_task=True, **options)
    assert cached["per_task"] == plain["per_task"] and len(plain["per_task"]) == 60  # task by task
    assert sum(plain["per_task"]) / 60 == pytest.approx(plain["mean"], abs=1e-3)
    import statistics  # the CI is over tasks: 1.96 · sd(task means) / √tasks
    assert plain["ci95"] == pytest.approx(1.96 * statistics.stdev(plain["per_task"]) / math.sqrt(60), abs=1e-3)
    assert 0.0 < plain["mean"] < 100.0  # an untrained model: the comparison is not between two constants
    assert n_cached == 1 and len(calls) >= 15  # one pass over the 400 items, against one per batch of tasks
    assert model.encoder is encoder and model.training  # the model is given back as it was


def test_no_cache_under_batch_statistics_augmentation_or_attack():
    test = gaussian_classes("test", classes=100, dim=16)
    config = load_config("protonet", ["model.backbone=mlp", "model.hidden=[32, 16]", "model.norm=transductive"])
    model, calls = build_method(config, test.item_shape), []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    evaluate(model, test, 5, 1, 3, 60, seed=7, batch_tasks=60)
    assert len(calls) == 60  # transductive batch statistics: each task is its own batch, never cached
    images = gaussian_classes("test", classes=100, dim=784, image=True)
    model = build_method(load_config("protonet", ["model.norm=eval"]), images.item_shape)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    evaluate(model, images, 5, 1, 3, 60, seed=7, batch_tasks=60, rotate="per_class")
    assert len(calls) == 1  # rotated items differ per task: embedded in the task's one batch
    calls.clear()
    evaluate(model, images, 5, 1, 3, 8, seed=7, batch_tasks=4)
    assert len(calls) == 2  # 8 tasks × 20 items < 400 items: caching would cost more than it saves
    calls.clear()
    evaluate(model, images, 5, 1, 3, 60, seed=7, batch_tasks=60, attack="fgsm", attack_eps=0.1)
    assert len(calls) >= 2  # adversarial queries are new items: the attack and the prediction embed them
