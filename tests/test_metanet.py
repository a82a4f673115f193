"""Meta Networks: gradient preprocessing, constant meta information, zero-start fast weights, output heads, learning."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.evaluator import evaluate
from fewshot.errors import ConfigError
from fewshot.methods.metanet import MetaNetwork, preprocess_gradient
from fewshot.tasks import TaskBatch, make_sampler


def test_gradient_preprocessing_hand_values():
    g = torch.tensor([1.0, -1e-3, 0.0, 2e-4], dtype=torch.float64)
    out = preprocess_gradient(g)
    assert out.shape == (4, 2)
    assert float(out[0, 0]) == pytest.approx(0.0) and float(out[0, 1]) == 1.0
    assert float(out[1, 0]) == pytest.approx(math.log(1e-3) / 7) and float(out[1, 1]) == -1.0  # e⁷·g clipped
    assert float(out[2, 0]) == -1.0 and float(out[2, 1]) == 0.0  # log term clamped at −1, no NaN at 0
    assert float(out[3, 0]) == -1.0 and float(out[3, 1]) == pytest.approx(2e-4 * math.exp(7))


def small(ways_test: int = 5) -> MetaNetwork:
    return MetaNetwork(1, 5, ways_test, width=8, depth=3, feature=8, chunks=2)


def batch_of(data, ways: int, shots: int = 1):
    return make_sampler(data, ways, shots, 3, seed=0).sample()


def test_fast_weights_start_at_zero_and_meta_information_is_constant():
    torch.manual_seed(0)
    data = gaussian_classes("train", classes=60, dim=64, nuisance=0, image=True)
    model = small()
    batch = batch_of(data, 5)
    fast = model._example_fast_weights(batch.support_x[0], batch.support_y[0], "ways_train")
    assert all(float(w.detach().abs().max()) == 0 for w in fast.values())
    plain = model.base(batch.query_x[0], None, "ways_train")
    torch.testing.assert_close(model.logits(batch)[0], plain)
    # the gradients used as inputs are detached: no path from the fast weights back to the slow weights
    grads = torch.autograd.grad(sum(w.sum() for w in fast.values()), list(model.base.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    task = model._task_fast_weights(batch.support_x[0], batch.support_y[0], "ways_train")
    grads = torch.autograd.grad(sum(w.sum() for w in task.values()), list(model.key.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_separate_output_layers_for_test_ways_and_any_shot():
    data = gaussian_classes("train", classes=60, dim=64, nuisance=0, image=True)
    model = small(ways_test=20)
    assert model.logits(batch_of(data, 20, shots=3)).shape == (1, 60, 20)
    assert model.logits(batch_of(data, 5)).shape == (1, 15, 5)
    with pytest.raises(ConfigError, match="7-way"):
        model.logits(batch_of(data, 7))


def test_meta_network_learns_unseen_classes_far_above_chance():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = gaussian_classes("train", classes=200, dim=64, nuisance=0, noise=0.5, image=True)
        test = gaussian_classes("test", classes=200, dim=64, nuisance=0, noise=0.5, image=True)
        model = MetaNetwork(1, 5, 5, width=16, depth=3, feature=16, chunks=5)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        sampler = make_sampler(train, 5, 1, 5, seed=0)
        for _ in range(120):
            model.train_step(sampler.sample(), opt)
        # the output layer cannot know an episode's random labels without the support set: above chance means
        # the fast weights carry it
        assert evaluate(model, test, 5, 1, 5, 50, seed=1)["mean"] > 50  # chance: 20 %
    finally:
        torch.set_num_threads(old)


def lively() -> MetaNetwork:
    """A float64 model whose meta-learners' last layers are not zero, so fast weights are not trivially zero."""
    torch.manual_seed(3)
    model = MetaNetwork(1, 5, 20, width=6, depth=3, feature=8, chunks=3).double()
    for p in [*model.task_out.parameters(), *(mlp[-1] for mlp in model.example_mlp.values())]:
        torch.nn.init.normal_(p.weight if isinstance(p, torch.nn.Linear) else p, std=0.5)
    return model


def tiny_batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(1, 7, 1, 8, 8, generator=g, dtype=torch.float64)
    qx = torch.randn(1, 4, 1, 8, 8, generator=g, dtype=torch.float64)
    return TaskBatch(sx, torch.tensor([[0, 1, 2, 3, 4, 0, 1]]), qx, torch.tensor([[0, 1, 2, 3]]), 5)


def test_fast_weights_equal_a_per_parameter_lstm_cell_and_mlp():
    """The batched coordinate-wise meta-learners (all conv / all fc coordinates in blocks, hand-written LSTM step)
    give exactly what nn.LSTMCell and the nn.Sequential MLP give run parameter by parameter."""
    model, batch = lively(), tiny_batch()
    model.block = 50  # the 702 conv coordinates go through the meta-learners in 15 blocks
    sx, sy = batch.support_x[0], batch.support_y[0]
    kind = MetaNetwork._kind
    names = model._names(model.key, "ways_train")
    params = dict(model.key.named_parameters())
    state = {n: None for n in names}
    expected = {}
    for chunk in torch.arange(7).chunk(3):  # chunks of 3, 3, 1 support items; LSTM state carried across them
        loss = torch.nn.functional.cross_entropy(model.key(sx[chunk]), sy[chunk])
        for n, g in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            state[n] = model.task_lstm[kind(n)](preprocess_gradient(g).reshape(-1, 2), state[n])
            expected[n] = model.task_out[kind(n)](state[n][0]).view(g.shape)
    got = model._task_fast_weights(sx, sy, "ways_train")
    assert got.keys() == expected.keys() and len(got) == 5  # 3 convs, fc1, the training head
    for n in names:
        torch.testing.assert_close(got[n], expected[n])
        assert float(got[n].abs().max()) > 0
    got = model._example_fast_weights(sx, sy, "ways_train")
    for n, p in model.base.named_parameters():
        if n not in got:
            assert n == "heads.ways_test"
            continue
        for i in range(7):  # per example: its own gradient through the MLP
            loss = torch.nn.functional.cross_entropy(model.base(sx[i:i + 1]), sy[i:i + 1])
            (g,) = torch.autograd.grad(loss, [p])
            torch.testing.assert_close(got[n][i], model.example_mlp[kind(n)](preprocess_gradient(g)).squeeze(-1))


def _augmented_forward(x, slow: dict, fast: dict, head: str, key: bool = False) -> torch.Tensor:
    """The paper's layer augmentation written out: ReLU(slow(h)) + ReLU(fast(h)) in every hidden layer, ceil-mode
    pooling; the key is fc1's slow + fast output without ReLU; the output layer sums slow and fast."""
    f = torch.nn.functional
    h, i = x, 0
    while f"convs.{i}" in slow:
        h = f.relu(f.conv2d(h, slow[f"convs.{i}"], padding=1)) + f.relu(f.conv2d(h, fast[f"convs.{i}"], padding=1))
        h = f.max_pool2d(h, 2, ceil_mode=True)
        i += 1
    h = h.flatten(1)
    if key:
        return h @ slow["fc1"].t() + h @ fast["fc1"].t()
    h = f.relu(h @ slow["fc1"].t()) + f.relu(h @ fast["fc1"].t())
    return h @ slow[f"heads.{head}"].t() + h @ fast[f"heads.{head}"].t()


def test_query_read_and_layer_augmentation_by_hand():
    """logits = b(x_q; W_b, W*_q) with W*_q = Σ_i a_i W*_i, a = softmax_i(cos(r_q, r_i)), r = u(x; W_u, W*_u): written
    out query by query with non-zero fast weights (W*_u and W*_i themselves are checked against nn.LSTMCell and
    the MLP above)."""
    model, batch = lively(), tiny_batch()
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    fast_u = model._task_fast_weights(sx, sy, "ways_train")
    assert all(float(w.abs().max()) > 0 for w in fast_u.values())
    # W*_i clearly different per support item, so that the attention weights matter
    g = torch.Generator().manual_seed(5)
    fast_b = {n: torch.randn(7, *p.shape, generator=g, dtype=p.dtype) * 0.3
              for n, p in model.base.named_parameters() if n != "heads.ways_test"}
    model._example_fast_weights = lambda *args: fast_b
    slow_u, slow_b = dict(model.key.named_parameters()), dict(model.base.named_parameters())
    keys = torch.nn.functional.normalize(_augmented_forward(sx, slow_u, fast_u, "ways_train", key=True), dim=-1)
    got = model.logits(batch)[0]
    assert got.shape == (4, 5)
    for q in range(4):
        r_q = torch.nn.functional.normalize(_augmented_forward(qx[q:q + 1], slow_u, fast_u, "ways_train", key=True), dim=-1)
        cos = (keys @ r_q[0]).tolist()
        a = [math.exp(c) / sum(math.exp(d) for d in cos) for c in cos]
        w_q = {n: sum(a[i] * w[i] for i in range(7)) for n, w in fast_b.items()}
        torch.testing.assert_close(got[q], _augmented_forward(qx[q:q + 1], slow_b, w_q, "ways_train")[0])
