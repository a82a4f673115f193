"""Reptile (Nichol et al. 2018): the interpolation meta-step, the inner SGD/Adam loop by hand, evaluation that
changes no state, learning on logistic tasks, and gradient agreement's weights."""

from __future__ import annotations

import pytest
import torch
from test_gradient import _agreement_tasks, double_batch, one_step_query_loss
from torch import nn

from fewshot.data.functions import TaskFamily
from fewshot.methods.gradient import MAML
from fewshot.tasks import FunctionSampler, TaskBatch


def test_reptile_update_is_the_interpolation_towards_the_adapted_weights():
    from fewshot.methods.reptile import Reptile

    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(50, 2)).double()
    model = Reptile(net, inner_lr=0.1, inner_steps=3, inner_batch=4, inner_optimizer="sgd", meta_step=0.5,
                    meta_step_final=0.0, anneal_steps=10)
    batch = double_batch(FunctionSampler(TaskFamily("logistic"), 2, 4, 2, batch_size=2, seed=0).sample())
    theta = [p.detach().clone() for p in net.parameters()]
    ends = []
    for i in range(2):  # the same minibatch order: replay the global RNG
        state = torch.get_rng_state()
        model._inner(batch.support_x[i], batch.support_y[i], 3, 4, True)
        ends.append([p.detach().clone() for p in net.parameters()])
        with torch.no_grad():
            for p, t in zip(net.parameters(), theta):
                p.copy_(t)
        if i == 0:
            first_state = state
    torch.set_rng_state(first_state)
    metrics = model.train_step(batch, None)
    assert metrics["epsilon"] == 0.5 and model.epsilon() == pytest.approx(0.45)  # linear annealing
    for k, p in enumerate(net.parameters()):
        expected = theta[k] + 0.5 * ((ends[0][k] - theta[k]) + (ends[1][k] - theta[k])) / 2
        torch.testing.assert_close(p.detach(), expected)


def test_reptile_inner_loops_and_meta_step_by_hand():
    """Full-batch inner loops on two quadratics, written out: SGD w ← w − α·(2/n)Xᵀ(Xw − y); Adam with β₁ = 0,
    v ← β₂v + (1 − β₂)g², w ← w − α·g/(√(v/(1 − β₂^t)) + 1e-8), the moments v and the step count t carried from
    one task (and meta-iteration) to the next; then θ ← θ + ε·mean_i(W_i − θ)."""
    from fewshot.methods.reptile import Reptile

    torch.manual_seed(21)
    d, n, steps, alpha, eps = 3, 6, 3, 0.05, 0.5
    X, Y = torch.randn(2, n, d).double(), torch.randn(2, n, 1).double()
    batch = TaskBatch(X, Y, X[:, :2], Y[:, :2], 0)
    for optimizer in ("sgd", "adam"):
        net = nn.Sequential(nn.Linear(d, 1, bias=False)).double()
        model = Reptile(net, inner_lr=alpha, inner_steps=steps, inner_batch=n, inner_optimizer=optimizer,
                        meta_step=eps, meta_step_final=eps, anneal_steps=10)
        assert model.beta2 == 0.999
        theta = net[0].weight.detach().t().clone()  # [d, 1]
        v, t, ends = torch.zeros(d, 1, dtype=torch.double), 0, []
        for i in range(2):
            w = theta.clone()
            for _ in range(steps):
                g = 2 / n * X[i].t() @ (X[i] @ w - Y[i])
                if optimizer == "sgd":
                    w = w - alpha * g
                else:
                    t += 1
                    v = 0.999 * v + 0.001 * g * g
                    w = w - alpha * g / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
            ends.append(w)
        model.train_step(batch, None)
        expected = theta + eps * ((ends[0] - theta) + (ends[1] - theta)) / 2
        torch.testing.assert_close(net[0].weight.detach().t(), expected, rtol=1e-10, atol=1e-12)
        if optimizer == "adam":
            assert int(model.adam_count) == 2 * steps
            torch.testing.assert_close(model.adam_v__0__weight.t(), v, rtol=1e-10, atol=1e-15)


def test_reptile_evaluation_changes_neither_weights_nor_moments_and_non_transductive_is_per_item():
    from fewshot.methods.reptile import Reptile

    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 2))
    model = Reptile(net, inner_lr=0.01, eval_steps=3, eval_batch=4, transductive=False)
    batch = FunctionSampler(TaskFamily("logistic", dim=6), 2, 4, 3, batch_size=2, seed=0).sample()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        outs = model.predict_steps(batch)
    assert len(outs) == 1 and outs[0].shape == (2, 6, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.transductive = True
    with torch.no_grad():
        curve = model.predict_steps(batch)
    assert len(curve) == 4
    # step 0, non-transductive: query item q normalized together with the support set
    model.transductive, model.eval_steps = False, 0
    with torch.no_grad():
        out0 = model.predict_steps(batch)[0][0]
        q = 2
        alone = net(torch.cat([batch.support_x[0], batch.query_x[0][q:q + 1]]))[-1]
    torch.testing.assert_close(out0[q], alone)


def test_reptile_beats_random_and_zero_init_on_logistic_tasks():
    from fewshot.methods.reptile import Reptile

    torch.manual_seed(13)
    family = TaskFamily("logistic", dim=50, seed=3)
    train = FunctionSampler(family, 2, 5, 1, batch_size=5, seed=0)
    test = FunctionSampler(family, 2, 5, 10, batch_size=200, seed=99).sample()
    model = Reptile(nn.Sequential(nn.Linear(50, 2)), inner_lr=0.5, inner_steps=5, inner_batch=10,
                    inner_optimizer="sgd", meta_step=0.5, anneal_steps=200)
    for _ in range(200):
        model.train_step(train.sample(), None)
    probe = MAML(model.net, inner_lr=0.5)  # one SGD step from each start, same α
    learned = one_step_query_loss(probe, None, test)
    random = one_step_query_loss(probe, {"0.weight": torch.randn(2, 50), "0.bias": torch.randn(2)}, test)
    zero = one_step_query_loss(probe, {"0.weight": torch.zeros(2, 50), "0.bias": torch.zeros(2)}, test)
    assert learned < zero - 0.04 and learned < random - 0.3, (learned, zero, random)


def test_reptile_agreement_weights_by_hand():
    """Reptile with agreement on the same tasks: θ ← θ − ε Σ wᵢ uᵢ = w − (0.25·[1, 0] + 0.5·[1, 1] − 0.25·[−1, 0])."""
    from fewshot.methods.reptile import Reptile

    batch, w = _agreement_tasks()
    net = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(w[None])
    model = Reptile(net, inner_lr=0.1, inner_steps=1, inner_batch=2, inner_optimizer="sgd", meta_step=1.0,
                    meta_step_final=1.0, agreement=True)
    model.train_step(batch, None)
    torch.testing.assert_close(net[0].weight.detach(), torch.tensor([[-0.5, -0.75]], dtype=torch.double))
