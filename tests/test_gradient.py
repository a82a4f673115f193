"""Gradient-based family: meta-gradients against closed forms and finite differences, the first-order
switch, vmap against the loop, Meta-SGD's α-gradient, learning on logistic and sine tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.data.functions import TaskFamily
from fewshot.engine.config import load_config
from fewshot.errors import ConfigError, DataError
from fewshot.methods.gradient import MAML, MetaSGD, Network, task_loss
from fewshot.nn import MLP
from fewshot.tasks import FunctionSampler, TaskBatch, make_sampler


def double_batch(batch: TaskBatch) -> TaskBatch:
    def conv(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    return TaskBatch(conv(batch.support_x), conv(batch.support_y), conv(batch.query_x), conv(batch.query_y), batch.ways)


class TanhNet(nn.Module):
    """A smooth tiny network (finite differences need no kinks)."""

    def __init__(self, d_in: int = 1, hidden: int = 8, out: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def sine_batch(tasks: int = 3, shots: int = 5, seed: int = 0) -> TaskBatch:
    return double_batch(FunctionSampler(TaskFamily("sinusoid"), 1, shots, shots, tasks, seed=seed).sample())


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_the_closed_form_of_a_quadratic(steps):
    """Linear model, MSE: L^tr(w) = mean((Xw − y)²) has Hessian H = 2XᵀX/n. After k inner steps
    w_k = w_{k−1} − α·(2/n)·Xᵀ(X w_{k−1} − y), the exact meta-gradient is (I − αH)^k ∇L^val(w_k);
    first order keeps ∇L^val(w_k) alone."""
    torch.manual_seed(steps - 1)
    d, n, m, alpha = 4, 6, 5, 0.1
    X, y, Q, yq = torch.randn(n, d).double(), torch.randn(n, 1).double(), torch.randn(m, d).double(), torch.randn(m, 1).double()
    batch = TaskBatch(X[None], y[None], Q[None], yq[None], 0)
    for first_order in (False, True):
        net = nn.Sequential(nn.Linear(d, 1, bias=False)).double()
        model = MAML(net, inner_lr=alpha, inner_steps=steps, first_order=first_order)
        w = net[0].weight.detach().t().clone()  # [d, 1]
        loss, _ = model.loss(batch)
        (grad,) = torch.autograd.grad(loss, [net[0].weight])
        wk = w
        for _ in range(steps):
            wk = wk - alpha * 2 / n * X.t() @ (X @ wk - y)
        v = 2 / m * Q.t() @ (Q @ wk - yq)
        A = torch.eye(d, dtype=torch.double) - alpha * 2 / n * X.t() @ X
        expected = v if first_order else torch.linalg.matrix_power(A, steps) @ v
        torch.testing.assert_close(grad.t(), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss, ((Q @ wk - yq) ** 2).mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_central_finite_differences(steps):
    torch.manual_seed(1)
    batch = sine_batch()
    model = MAML(TanhNet().double(), inner_lr=0.05, inner_steps=steps)
    assert_meta_gradient_matches_finite_differences(model, batch, per_tensor=4)


def assert_meta_gradient_matches_finite_differences(model, batch: TaskBatch, per_tensor: int, h: float = 1e-6) -> None:
    """Autograd's meta-gradient of ``model.loss`` against float64 central differences at a few coordinates."""
    params = list(model.parameters())
    grads = torch.autograd.grad(model.loss(batch)[0], params)
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // per_tensor)):
            old = float(flat[i])
            flat[i] = old + h
            up = float(model.loss(batch)[0].detach())
            flat[i] = old - h
            down = float(model.loss(batch)[0].detach())
            flat[i] = old
            assert abs((up - down) / (2 * h) - float(g.view(-1)[i])) < 1e-7 * max(1.0, abs(float(g.view(-1)[i])))


class OnceDifferentiableSquare(torch.autograd.Function):
    """x² whose backward cannot itself be differentiated: any second-order graph through it fails."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class SquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(1, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(OnceDifferentiableSquare.apply(self.body(x)))


def test_first_order_builds_no_second_order_graph():
    torch.manual_seed(2)
    batch = sine_batch()
    first = MAML(SquareNet().double(), inner_lr=0.01, inner_steps=2, first_order=True)
    loss, _ = first.loss(batch)
    loss.backward()  # would raise if any backward-of-backward were recorded
    assert all(p.grad is not None for p in first.parameters())
    second = MAML(SquareNet().double(), inner_lr=0.01, inner_steps=2, first_order=False)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        second.loss(batch)[0].backward()


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_parameters():
    torch.manual_seed(3)
    batch = sine_batch(tasks=2)
    model = MAML(TanhNet().double(), inner_lr=0.1, inner_steps=3, first_order=True)
    loss, _ = model.loss(batch)
    grads = torch.autograd.grad(loss, list(model.net.parameters()))
    expected = [torch.zeros_like(g) for g in grads]
    theta = model.meta_params()
    for i in range(2):
        adapted = model.adapt_task(theta, batch.support_x[i], batch.support_y[i], 3, create_graph=False, detach=True)[-1]
        adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
        q = task_loss(torch.func.functional_call(model.net, adapted, (batch.query_x[i],)), batch.query_y[i]) / 2
        for e, g in zip(expected, torch.autograd.grad(q, [adapted[n] for n, _ in model.net.named_parameters()])):
            e += g
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_the_loop(cls, first_order):
    torch.manual_seed(4)
    batch = sine_batch(tasks=4)
    model = cls(Network(MLP(1, (16, 16)), 16, 1).double(), inner_lr=0.02, inner_steps=2, first_order=first_order)
    loop_loss, _ = model.loss(batch)
    loop = torch.autograd.grad(loop_loss, list(model.parameters()))
    model.vmap = True
    vmap_loss, _ = model.loss(batch)
    vec = torch.autograd.grad(vmap_loss, list(model.parameters()))
    torch.testing.assert_close(vmap_loss, loop_loss, rtol=1e-13, atol=1e-13)
    for a, b in zip(loop, vec):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_vmap_is_refused_through_running_statistics_and_group_norm_in_second_order():
    for norm in (nn.BatchNorm2d(4), nn.GroupNorm(2, 4)):
        net = Network(nn.Sequential(nn.Conv2d(1, 4, 3), norm), 4, 5)
        with pytest.raises(ConfigError, match="vmap"):
            MAML(net, vmap=True)
        MAML(net, vmap=True, first_order=True)  # first order is fine


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_the_loop_through_transductive_batchnorm(first_order):
    """Second order under vmap through BatchNorm's batch statistics equals the loop (the reason vmap is allowed there)."""
    torch.manual_seed(12)
    def net() -> Network:
        torch.manual_seed(13)
        body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                             nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                             nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.Flatten())
        return Network(body, 16, 3).double()
    g = torch.Generator().manual_seed(14)
    batch = TaskBatch(torch.randn(3, 6, 1, 8, 8, dtype=torch.float64, generator=g), torch.arange(3).repeat(3, 2),
                      torch.randn(3, 9, 1, 8, 8, dtype=torch.float64, generator=g), torch.arange(3).repeat(3, 3), 3)
    loop_model = MAML(net(), inner_lr=0.3, inner_steps=2, first_order=first_order)
    vmap_model = MAML(net(), inner_lr=0.3, inner_steps=2, first_order=first_order, vmap=True)
    loop_loss, _ = loop_model.loss(batch)
    vmap_loss, _ = vmap_model.loss(batch)
    torch.testing.assert_close(vmap_loss, loop_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loop_loss, list(loop_model.parameters())),
                    torch.autograd.grad(vmap_loss, list(vmap_model.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_vmap_under_bf16_autocast_runs_without_batchnorm_and_matches_the_loop():
    """What config.validate allows (precision=bf16 with model.vmap and model.norm=none) runs, second order, and
    gives the loop's meta-gradient up to bf16 rounding (both within 3 % of float32)."""
    g = torch.Generator().manual_seed(6)
    batch = TaskBatch(torch.randn(3, 6, 1, 8, 8, generator=g), torch.arange(3).repeat(3, 2),
                      torch.randn(3, 9, 1, 8, 8, generator=g), torch.arange(3).repeat(3, 3), 3)
    grads = {}
    for bf16, vmap in ((False, False), (True, False), (True, True)):
        torch.manual_seed(5)
        body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        model = MAML(Network(body, 64, 3), inner_lr=0.3, inner_steps=2, vmap=vmap)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.loss(batch)
        grads[bf16, vmap] = torch.cat([t.flatten() for t in torch.autograd.grad(loss, list(model.parameters()))])
    reference = grads[False, False]
    for key in ((True, False), (True, True)):
        assert float((grads[key] - reference).norm() / reference.norm()) < 0.03
    torch.testing.assert_close(grads[True, True], grads[True, False], rtol=0.05, atol=0.01)


def test_meta_sgd_alpha_gradient_is_minus_g_times_v():
    torch.manual_seed(5)
    batch = sine_batch(tasks=1)
    model = MetaSGD(TanhNet().double(), inner_steps=1)
    loss, _ = model.loss(batch)
    names = model.adapted
    alphas = [model.alpha[n.replace(".", "__")] for n in names]
    grads = torch.autograd.grad(loss, alphas)
    theta = {n: p.detach().requires_grad_() for n, p in model.net.named_parameters()}
    g = torch.autograd.grad(task_loss(torch.func.functional_call(model.net, theta, (batch.support_x[0],)),
                                      batch.support_y[0]), [theta[n] for n in names])
    adapted = {n: (theta[n] - model.alpha[n.replace(".", "__")] * gi).detach().requires_grad_() for n, gi in zip(names, g)}
    v = torch.autograd.grad(task_loss(torch.func.functional_call(model.net, adapted, (batch.query_x[0],)),
                                      batch.query_y[0]), [adapted[n] for n in names])
    for ga, gi, vi in zip(grads, g, v):
        torch.testing.assert_close(ga, -gi * vi, rtol=1e-12, atol=1e-14)
    assert all(float(a.detach().min()) >= 0.005 and float(a.detach().max()) <= 0.1 for a in alphas)  # U[0.005, 0.1] at the start


def test_meta_sgd_warns_when_evaluated_beyond_its_trained_steps():
    import warnings

    with pytest.warns(UserWarning, match="diverge"):
        MetaSGD(TanhNet(), inner_steps=1, eval_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetaSGD(TanhNet(), inner_steps=2, eval_steps=2)  # no warning within the trained steps


def test_meta_sgd_step_sizes_span_their_uniform_range():
    torch.manual_seed(0)
    alphas = torch.cat([a.detach().flatten() for a in MetaSGD(nn.Linear(100, 10)).alpha.values()])  # 1,010 values
    assert float(alphas.min()) >= 0.005 and float(alphas.max()) <= 0.1
    assert float(alphas.min()) < 0.01 and float(alphas.max()) > 0.095  # spread over U[0.005, 0.1], not constant
    assert abs(float(alphas.mean()) - 0.0525) < 0.005
    config = load_config("metasgd", ["model.backbone=mlp", "model.hidden=[8]", "train.ways=5", "val.ways=5",
                                     "eval.ways=[5]", "model.alpha_low=0.02", "model.alpha_high=0.03"])
    from fewshot.methods import build_method

    narrow = torch.cat([a.detach().flatten() for a in build_method(config, (4,)).alpha.values()])
    assert float(narrow.min()) >= 0.02 and float(narrow.max()) <= 0.03
    with pytest.raises(ConfigError, match="alpha_low"):
        MetaSGD(nn.Linear(2, 2), alpha_low=0.2, alpha_high=0.1)


def one_step_query_loss(model: MAML, init: dict[str, torch.Tensor] | None, batch: TaskBatch) -> float:
    """Mean query loss after one inner step with the model's α from ``init`` (default: the meta-learned θ)."""
    theta = {k: v.detach() for k, v in model.meta_params().items()}
    if init is not None:
        theta.update(init)
    total = 0.0
    with torch.enable_grad():
        for i in range(batch.num_tasks):
            p = model.adapt_task(theta, batch.support_x[i], batch.support_y[i], 1, create_graph=False, detach=True)[-1]
            total += float(task_loss(torch.func.functional_call(model.net, p, (batch.query_x[i],)), batch.query_y[i]))
    return total / batch.num_tasks


@pytest.mark.parametrize("cls,first_order", [(MAML, False), (MAML, True), (MetaSGD, False)])
def test_each_algorithm_beats_random_and_zero_init_on_logistic_tasks(cls, first_order):
    torch.manual_seed(6)
    family = TaskFamily("logistic", dim=50, seed=3)
    train = FunctionSampler(family, 2, 5, 10, batch_size=8, seed=0)
    test = FunctionSampler(family, 2, 5, 10, batch_size=200, seed=99).sample()
    model = cls(nn.Sequential(nn.Linear(50, 2)), inner_lr=0.5, inner_steps=1, first_order=first_order)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        model.train_step(train.sample(), opt)
    learned = one_step_query_loss(model, None, test)
    random = one_step_query_loss(model, {"0.weight": torch.randn(2, 50), "0.bias": torch.randn(2)}, test)
    zero = one_step_query_loss(model, {"0.weight": torch.zeros(2, 50), "0.bias": torch.zeros(2)}, test)
    # w = 0 sits at ln 2 ≈ 0.693; the meta-learned start knows the shared direction w̄ (SE of these means ≈ 0.005)
    assert learned < zero - 0.04 and learned < random - 0.3, (learned, zero, random)


def test_maml_learns_sine_regression_far_beyond_its_initial_loss():
    torch.manual_seed(7)
    train = FunctionSampler(TaskFamily("sinusoid"), 1, 10, 10, batch_size=25, seed=0)
    model = MAML(Network(MLP(1, (40, 40)), 40, 1), inner_lr=0.01, inner_steps=1, eval_steps=10, vmap=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    test = FunctionSampler(TaskFamily("sinusoid"), 1, 10, 100, batch_size=100, seed=5).sample()
    before = [float(((o - test.query_y) ** 2).mean()) for o in model.predict_steps(test)]
    for _ in range(600):
        model.train_step(train.sample(), opt)
    after = [float(((o - test.query_y) ** 2).mean()) for o in model.predict_steps(test)]
    assert after[1] < 0.6 * before[1] and after[10] < after[1] < after[0], (before, after)


def test_predict_builds_no_graph_and_adapts_more_steps_than_training():
    model = MAML(TanhNet(), inner_lr=0.05, inner_steps=1, eval_steps=4)
    batch = FunctionSampler(TaskFamily("sinusoid"), 1, 5, 7, batch_size=2, seed=0).sample()
    with torch.no_grad():
        outs = model.predict_steps(batch)
    assert len(outs) == 5 and all(o.shape == (2, 7, 1) and not o.requires_grad for o in outs)
    # the k-step predictions of a linear model, by hand: w ← w − α·(2/n)·Σ(xw + b − y)x, b likewise
    net = nn.Sequential(nn.Linear(1, 1)).double()
    model = MAML(net, inner_lr=0.05, inner_steps=1, eval_steps=4)
    batch = double_batch(batch)
    outs = model.predict_steps(batch)
    for i in range(2):
        x, y, q = batch.support_x[i], batch.support_y[i], batch.query_x[i]
        w, b = net[0].weight.detach().clone(), net[0].bias.detach().clone()
        for k in range(5):
            torch.testing.assert_close(outs[k][i].double(), q @ w.t() + b, rtol=1e-5, atol=1e-6)  # outputs in fp32
            r = x @ w.t() + b - y
            w, b = w - 0.05 * 2 * (r * x).mean(0, keepdim=True), b - 0.05 * 2 * r.mean(0)


def test_function_sampler_is_seeded_and_batch_size_independent():
    fam = TaskFamily("sinusoid")
    a = FunctionSampler(fam, 1, 5, 10, batch_size=4, seed=3).sample()
    b = torch.cat([FunctionSampler(fam, 1, 5, 10, batch_size=2, seed=3).sample().support_x for _ in range(1)])
    assert a.support_x.shape == (4, 5, 1) and a.query_y.shape == (4, 10, 1)
    torch.testing.assert_close(a.support_x[:2], b)
    assert float(a.support_x.min()) >= -5 and float(a.support_x.max()) <= 5
    amp = a.query_y.abs().amax(dim=(1, 2))
    assert float(amp.max()) <= 5.0
    logistic = make_sampler(TaskFamily("logistic"), 2, 3, 4, batch_size=2, seed=0).sample()
    assert logistic.support_x.shape == (2, 6, 50) and logistic.support_y.dtype == torch.long
    with pytest.raises(DataError, match="2-way"):
        make_sampler(TaskFamily("logistic"), 5, 3, 4)
    with pytest.raises(DataError, match="does not apply"):
        make_sampler(TaskFamily("sinusoid"), 1, 3, 4, unlabeled=5)


def test_configs_refuse_impossible_gradient_settings():
    with pytest.raises(ConfigError, match="report_steps"):
        load_config("maml/sinusoid-k10", ["eval.report_steps=[11]"])
    config = load_config("maml", ["data.dataset=synthetic", "model.backbone=mlp", "model.norm=none", "train.ways=5",
                                  "val.ways=5", "eval.ways=[5, 20]"])
    from fewshot.methods import build_method

    with pytest.raises(ConfigError, match="20-way"):
        build_method(config, (64,))


def test_maml_trains_and_tests_through_the_engine(tmp_path):
    from fewshot.engine.trainer import Trainer

    config = load_config("maml", ["data.dataset=synthetic", "model.backbone=mlp", "model.hidden=[64]", "model.norm=none",
                                  "model.inner_lr=0.5", "model.eval_steps=3", "train.ways=5", "train.shots=1",
                                  "train.queries=5", "train.meta_batch=4", "train.episodes=150", "train.lr=0.003",
                                  "val.every=150", "val.ways=5", "val.tasks=50", "eval.ways=[5]", "eval.shots=[1]",
                                  "eval.tasks=100", "eval.report_steps=[0]", "train.tensorboard=false"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    results = trainer.test()["test"]
    names = [r["name"] for r in results]
    assert names == ["maml-synthetic-5w1s-step0", "maml-synthetic-5w1s-step3"]
    before, after = results[0]["mean"], results[1]["mean"]
    assert after > 60 and after > before + 20, (before, after)  # chance is 20 %
    assert results[1]["values"]["curve"]["steps"] == [0, 1, 2, 3]


# -- CAVIA ------------------------------------------------------------------------------------------
def cavia_regressor(context: int = 3) -> "CAVIA":
    from fewshot.methods.gradient import CAVIA, ConcatContext

    net = ConcatContext(TanhNet(d_in=1 + context), context)
    return CAVIA(net, context_dim=context, inner_lr=0.5, inner_steps=2).double()


def test_cavia_context_is_not_a_parameter_and_starts_at_zero_for_every_task():
    model = cavia_regressor()
    assert all("context" not in n for n, _ in model.named_parameters())
    assert model.adapted == ["__context__"]
    batch = sine_batch(tasks=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train_step(batch, opt)
    phi = model.meta_params()["__context__"]
    assert torch.equal(phi, torch.zeros(3, dtype=phi.dtype))
    # no context leaks from one task to the next: a 2-task batch's loss is the mean of the 1-task losses
    one = [model.loss(TaskBatch(batch.support_x[i:i + 1], batch.support_y[i:i + 1], batch.query_x[i:i + 1],
                                batch.query_y[i:i + 1], batch.ways))[0] for i in range(2)]
    torch.testing.assert_close(model.loss(batch)[0], (one[0] + one[1]) / 2)
    adapted = model.adapt_task(model.meta_params(), batch.support_x[0], batch.support_y[0], 2, create_graph=False)
    assert float(adapted[-1]["__context__"].detach().abs().sum()) > 0  # only φ moved
    assert all(torch.equal(adapted[-1][n], p) for n, p in model.net.named_parameters())


def test_cavia_meta_gradient_flows_through_the_context_and_matches_finite_differences():
    torch.manual_seed(8)
    model = cavia_regressor()
    batch = sine_batch(tasks=2)
    assert_meta_gradient_matches_finite_differences(model, batch, per_tensor=2)
    params = list(model.parameters())
    grads = torch.autograd.grad(model.loss(batch)[0], params)
    # second order differs from first order through φ(θ): the context path carries θ's gradient
    model.first_order = True
    fo = torch.autograd.grad(model.loss(batch)[0], params)
    assert any(float((a - b).abs().max()) > 1e-6 for a, b in zip(grads, fo))


def test_cavia_film_classifier_trains_on_images():
    from fewshot.methods import build_method

    config = load_config("cavia", ["data.dataset=synthetic", "data.synthetic.image=true", "data.synthetic.nuisance=0",
                                   "data.synthetic.dim=64", "model.backbone=conv4-strided", "model.width=8",
                                   "train.ways=5", "val.ways=5", "eval.ways=[5]"])
    model = build_method(config, (1, 8, 8))
    assert model.net.film.in_features == 5 and model.net.film.out_features == 16
    from fewshot.data import build_dataset

    data = build_dataset(config["data"], "train")
    batch = make_sampler(data, 5, 1, 2, batch_size=2, seed=0).sample()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    metrics = model.train_step(batch, opt)
    assert 0 <= metrics["accuracy"] <= 1 and model.net.film.weight.grad is not None


# -- gradient agreement and TAML ----------------------------------------------------------------------
def test_agreement_weights():
    from fewshot.methods.gradient import agreement_weights

    same = torch.ones(4, 3)
    torch.testing.assert_close(agreement_weights(same), torch.full((4,), 0.25))
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    w = agreement_weights(g)  # Σⱼ gᵢ·gⱼ = 1, 1, −1 → w = 1/3, 1/3, −1/3
    torch.testing.assert_close(w, torch.tensor([1 / 3, 1 / 3, -1 / 3]))
    assert float(w.abs().sum()) == pytest.approx(1.0)
    torch.testing.assert_close(agreement_weights(torch.zeros(5, 2)), torch.full((5,), 0.2))  # ε fallback
    assert not agreement_weights(torch.ones(2, 2, requires_grad=True)).requires_grad


def test_maml_with_agreement_on_identical_tasks_is_maml():
    torch.manual_seed(9)
    one = sine_batch(tasks=1)
    batch = TaskBatch(*(t.expand(3, *t.shape[1:]) for t in (one.support_x, one.support_y, one.query_x, one.query_y)), 0)
    model = MAML(TanhNet().double(), inner_lr=0.05)
    plain = torch.autograd.grad(model.loss(batch)[0], list(model.parameters()))
    model.agreement = True
    loss, metrics = model.loss(batch)
    ga = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(plain, ga):
        torch.testing.assert_close(a, b)
    assert metrics["ga_negative"] == 0.0


def _agreement_tasks():
    """Three tasks on w = [0.5, −0.25] (inputs e₁, e₂; α = 0.1, one step) whose updates θ − θ'ᵢ are
    u = [1, 0], [1, 1], [−1, 0] and whose adapted query losses are 2, 0.5, 0.5."""
    w = torch.tensor([0.5, -0.25], dtype=torch.double)
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.double)
    a = torch.tensor([2.0, 1.0, 1.0], dtype=torch.double)
    eye = torch.eye(2, dtype=torch.double).expand(3, 2, 2)
    support_y = (w - 10 * u)[..., None]  # one SGD step on the mean squared error moves w by −u
    query_y = (w - u + torch.stack([a, torch.zeros(3, dtype=torch.double)], 1))[..., None]
    return TaskBatch(eye, support_y, eye, query_y, 0), w


@pytest.mark.parametrize("first_order,vmap,expected_grad", [(True, False, -0.75), (False, False, -0.675),
                                                             (True, True, -0.75)])
def test_maml_agreement_weights_and_meta_gradient_by_hand(first_order, vmap, expected_grad):
    """The Gram matrix gᵢ·gⱼ of u has row sums 1, 2, −1 → wᵢ = Σⱼ gᵢ·gⱼ / Σₖ|Σⱼ gₖ·gⱼ| = [0.25, 0.5, −0.25] (a task
    that disagrees gets a negative weight); meta-loss Σ wᵢ L_i = 0.625 (the plain mean would be 1.0)."""
    batch, w = _agreement_tasks()
    net = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(w[None])
    model = MAML(net, inner_lr=0.1, first_order=first_order, vmap=vmap, agreement=True)
    loss, metrics = model.loss(batch)
    assert float(loss.detach()) == pytest.approx(0.625)
    assert metrics["ga_negative"] == pytest.approx(1 / 3)
    assert (metrics["ga_weight_min"], metrics["ga_weight_max"]) == pytest.approx((-0.25, 0.5))
    (grad,) = torch.autograd.grad(loss, [net[0].weight])
    torch.testing.assert_close(grad, torch.tensor([[expected_grad, 0.0]], dtype=torch.double))


def test_inequality_measures_against_hand_values():
    from math import log, sqrt

    from fewshot.methods.gradient import inequality

    l = torch.tensor([1.0, 3.0], dtype=torch.float64)  # mean 2, ratios 0.5 and 1.5
    theil = (0.5 * log(0.5) + 1.5 * log(1.5)) / 2
    assert float(inequality(l, "theil")) == pytest.approx(theil, rel=1e-6)
    assert float(inequality(l, "ge", 1.0)) == pytest.approx(theil, rel=1e-6)
    assert float(inequality(l, "ge", 0.0)) == pytest.approx(-(log(0.5) + log(1.5)) / 2, rel=1e-6)
    assert float(inequality(l, "ge", 2.0)) == pytest.approx(((0.25 - 1) + (2.25 - 1)) / (2 * 2 * 1), rel=1e-6)
    assert float(inequality(l, "atkinson", 1.0)) == pytest.approx(1 - sqrt(3) / 2, rel=1e-6)
    assert float(inequality(l, "atkinson", 0.5)) == pytest.approx(1 - ((1 + sqrt(3)) / 2) ** 2 / 2, rel=1e-6)
    assert float(inequality(l, "gini")) == pytest.approx(4 / (2 * 4 * 2), rel=1e-6)
    assert float(inequality(l, "vl")) == pytest.approx((log(3) / 2) ** 2, rel=1e-6)
    equal = torch.full((5,), 0.7)
    for measure in ("theil", "ge", "atkinson", "gini", "vl"):
        assert abs(float(inequality(equal, measure))) < 1e-6
        assert float(inequality(l * 10, measure)) == pytest.approx(float(inequality(l, measure)), rel=1e-5)


def test_entropy_of_uniform_predictions_is_log_n():
    from math import log

    from fewshot.methods.gradient import entropy

    assert float(entropy(torch.zeros(7, 5))) == pytest.approx(log(5))
    assert float(entropy(torch.tensor([[100.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("taml", ["theil", "entropy"])
def test_taml_with_zero_lambda_is_maml_and_its_term_has_a_gradient(taml):
    torch.manual_seed(10)
    family = TaskFamily("logistic", dim=6)
    batch = double_batch(FunctionSampler(family, 2, 3, 3, batch_size=4, seed=0).sample())
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    plain = MAML(net, inner_lr=0.3)
    base = torch.autograd.grad(plain.loss(batch)[0], list(net.parameters()))
    zero = MAML(net, inner_lr=0.3, taml=taml, taml_lambda=0.0)
    loss, metrics = zero.loss(batch)
    for a, b in zip(base, torch.autograd.grad(loss, list(net.parameters()))):
        torch.testing.assert_close(a, b)
    assert "taml_term" in metrics
    strong = MAML(net, inner_lr=0.3, taml=taml, taml_lambda=1.0)
    moved = torch.autograd.grad(strong.loss(batch)[0], list(net.parameters()))
    assert any(float((a - b).abs().max()) > 1e-8 for a, b in zip(base, moved))


@pytest.mark.parametrize("taml,taml_on", [("theil", "initial"), ("theil", "adapted"), ("entropy", "initial")])
def test_taml_term_by_hand(taml, taml_on):
    """One linear softmax classifier, one SGD step: the logged TAML term and the meta-loss written out.
    Theil on the initial support losses (or the adapted query losses): T = (1/B) Σ (ℓᵢ/ℓ̄) ln(ℓᵢ/ℓ̄);
    entropy: −H(f_θ(x^s)) + H(f_θ'(x^s)), θ' = θ − α·∇L^tr; meta-loss = mean query loss + λ·term."""
    import math

    torch.manual_seed(12)
    family = TaskFamily("logistic", dim=4)
    batch = double_batch(FunctionSampler(family, 2, 4, 5, batch_size=3, seed=0).sample())
    net = nn.Sequential(nn.Linear(4, 2)).double()
    alpha, lam = 0.5, 0.3
    model = MAML(net, inner_lr=alpha, taml=taml, taml_lambda=lam, taml_on=taml_on)
    loss, metrics = model.loss(batch)
    W, b = net[0].weight.detach(), net[0].bias.detach()

    def ce(W, b, x, y):
        p = torch.softmax(x @ W.t() + b, -1)
        return float(-torch.log(p[torch.arange(len(y)), y]).mean()), p

    def ent(p):
        return float(-(p * p.log()).sum(-1).mean())

    initial, query, h0, h1 = [], [], [], []
    for i in range(3):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        l0, p0 = ce(W, b, sx, sy)
        onehot = torch.nn.functional.one_hot(sy, 2).double()
        W1 = W - alpha * (p0 - onehot).t() @ sx / len(sy)  # ∇_W of the mean cross-entropy
        b1 = b - alpha * (p0 - onehot).mean(0)
        initial.append(l0)
        query.append(ce(W1, b1, qx, qy)[0])
        h0.append(ent(p0))
        h1.append(ent(ce(W1, b1, sx, sy)[1]))
    if taml == "theil":
        ls = initial if taml_on == "initial" else query
        mu = sum(ls) / 3
        term = sum(v / mu * math.log(v / mu) for v in ls) / 3
    else:
        term = -sum(h0) / 3 + sum(h1) / 3
    assert metrics["taml_term"] == pytest.approx(term, rel=1e-5, abs=1e-7)
    assert float(loss.detach()) == pytest.approx(sum(query) / 3 + lam * term, rel=1e-5)


@pytest.mark.parametrize("option", [{"agreement": True}, {"taml": "theil"}])
def test_agreement_and_inequality_taml_refuse_a_sharded_meta_batch(option):
    """Both weigh every task against all the others: under torchrun a process holds only its share."""
    from types import SimpleNamespace

    batch = double_batch(FunctionSampler(TaskFamily("logistic", dim=4), 2, 3, 3, batch_size=4, seed=0).sample())
    model = MAML(nn.Sequential(nn.Linear(4, 2)).double(), inner_lr=0.3, **option)
    model.loss(batch)  # one process: fine
    model.world = SimpleNamespace(size=2, main=True)
    with pytest.raises(ConfigError, match="torchrun"):
        model.loss(batch)
    entropy = MAML(nn.Sequential(nn.Linear(4, 2)).double(), inner_lr=0.3, taml="entropy")
    entropy.world = SimpleNamespace(size=2, main=True)
    entropy.loss(batch)  # a mean over tasks: shards add up


def test_meta_sgd_step_sizes_are_never_weight_decayed():
    from fewshot.engine.trainer import make_optimizer

    model = MetaSGD(TanhNet(), inner_steps=1)
    train = {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.1, "momentum": 0.9}
    groups = make_optimizer(model.parameter_groups(), train).param_groups
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.alpha.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
