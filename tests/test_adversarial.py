"""FGSM / PGD, the robustness evaluation for every classifier, and ADML's crossed objective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.data.synthetic import gaussian_classes
from fewshot.engine.config import load_config
from fewshot.engine.evaluator import evaluate
from fewshot.errors import ConfigError
from fewshot.methods import ProtoNet
from fewshot.methods.adversarial import ADML, fgsm, pgd
from fewshot.methods.gradient import MAML, task_loss
from fewshot.nn import MLP
from fewshot.tasks import make_sampler


def test_fgsm_moves_every_coordinate_by_epsilon_up_the_loss_and_respects_the_range():
    w = torch.tensor([1.0, -2.0, 0.5])
    x = torch.tensor([[0.5, 0.5, 0.98]])

    def loss(inp):  # ∂/∂x = w
        return (inp * w).sum()

    adv = fgsm(loss, x, 0.1)
    torch.testing.assert_close(adv, torch.tensor([[0.6, 0.4, 1.0]]))  # clipped at 1
    assert float(loss(adv)) > float(loss(x))
    assert not adv.requires_grad


def test_pgd_clamps_to_the_valid_range_and_takes_2_5_eps_over_steps():
    w = torch.tensor([1.0, -1.0, 1.0], dtype=torch.double)
    x = torch.tensor([[0.97, 0.03, 0.5]], dtype=torch.double)

    def linear(inp):
        return (inp * w).sum()

    # the ball around 0.97 and 0.03 reaches beyond [0, 1]: the clamp binds there, the ε-projection elsewhere
    expected = torch.tensor([[1.0, 0.0, 0.6]], dtype=torch.double)
    torch.testing.assert_close(pgd(linear, x, 0.1, steps=5, random_start=False), expected)
    torch.testing.assert_close(pgd(linear, x, 0.1, steps=5, generator=torch.Generator().manual_seed(1)), expected)
    torch.testing.assert_close(fgsm(linear, x, 0.1, clip=(-0.5, 0.55)),
                               torch.tensor([[0.55, -0.07, 0.55]], dtype=torch.double))

    def peak(inp):  # maximum at 0.53, 0.03 away: steps of 2.5·ε/steps
        return -((inp - 0.53) ** 2).sum()

    start = torch.tensor([[0.5]], dtype=torch.double)
    # 10 steps of 0.025: 0.525, then alternating 0.55 / 0.525 ... ends at 0.55; 9 steps of 0.02778 end at 0.52778
    assert pgd(peak, start, 0.1, steps=10, random_start=False).item() == pytest.approx(0.55)
    assert pgd(peak, start, 0.1, steps=9, random_start=False).item() == pytest.approx(0.5 + 2.5 * 0.1 / 9, rel=1e-6)


def test_input_range_of_stored_images_follows_the_normalization():
    from fewshot.data.classdataset import ClassDataset
    from fewshot.engine.evaluator import input_range

    images = torch.zeros(2, 3, 1, 4, 4, dtype=torch.uint8)
    assert input_range(ClassDataset.from_blocks(images, ["a", "b"])) == pytest.approx((0.0, 1.0))
    normalized = ClassDataset.from_blocks(images, ["a", "b"])
    normalized.mean, normalized.std = 0.078, 0.084
    assert input_range(normalized) == pytest.approx((-0.078 / 0.084, (1 - 0.078) / 0.084))
    floats = ClassDataset.from_blocks(images.float(), ["a", "b"], scale=1.0)
    assert input_range(floats) == (-float("inf"), float("inf"))


def test_attack_size_is_in_pixel_units_whatever_the_normalization():
    """ε = 0.1 moves a normalized input by 0.1/std: the same image change as on raw 0..1 pixels."""
    from fewshot.data.classdataset import ClassDataset

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(60, 200, (6, 4, 1, 4, 4), dtype=torch.uint8, generator=gen)  # clipping never binds
    torch.manual_seed(0)
    model = ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)))
    steps = {}
    for mean, std in [(0.0, 1.0), (0.078, 0.084)]:
        data = ClassDataset.from_blocks(images, [str(i) for i in range(6)])
        data.mean, data.std = mean, std
        seen = []
        predict = model.predict
        model.predict = lambda batch: seen.append(batch.query_x.clone()) or predict(batch)
        evaluate(model, data, 3, 1, 2, 4, seed=5, cache=False)
        evaluate(model, data, 3, 1, 2, 4, seed=5, attack="fgsm", attack_eps=0.1)
        del model.predict
        assert len(seen) % 2 == 0 and seen
        clean, attacked = torch.cat(seen[:len(seen) // 2]), torch.cat(seen[len(seen) // 2:])
        steps[std] = (attacked - clean).abs() * std  # back to pixel units
    for std, step in steps.items():
        torch.testing.assert_close(step.amax(), torch.tensor(0.1), msg=f"std {std}")
        assert float((step > 0.099).float().mean()) > 0.9  # every coordinate with a gradient moves by ε


def test_pgd_stays_in_the_ball_and_beats_fgsm_on_a_curved_loss():
    torch.manual_seed(0)
    x = torch.rand(4, 6) * 0.6 + 0.2
    a = torch.randn(6, 6)

    def loss(inp):
        return torch.tanh(inp @ a).pow(2).sum()

    adv = pgd(loss, x, 0.1, steps=20, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float(loss(adv)) >= float(loss(fgsm(loss, x, 0.1))) - 1e-4


def small_protonet_and_data():
    torch.manual_seed(1)
    train = gaussian_classes("train", nuisance=0, noise=0.6)
    test = gaussian_classes("test", nuisance=0, noise=0.6)
    model = ProtoNet(MLP(16, (32,), 16))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    sampler = make_sampler(train, 5, 1, 5, seed=0)
    for _ in range(100):
        model.train_step(sampler.sample(), opt)
    return model, test


def test_robustness_evaluation_for_a_metric_classifier():
    model, test = small_protonet_and_data()
    clean = evaluate(model, test, 5, 1, 5, 100, seed=3)
    zero = evaluate(model, test, 5, 1, 5, 100, seed=3, attack="fgsm", attack_eps=0.0)
    weak = evaluate(model, test, 5, 1, 5, 100, seed=3, attack="fgsm", attack_eps=0.1)
    strong = evaluate(model, test, 5, 1, 5, 100, seed=3, attack="pgd", attack_eps=0.5, pgd_steps=5)
    assert zero["mean"] == clean["mean"]
    assert clean["mean"] > weak["mean"] > strong["mean"], (clean, weak, strong)
    # PGD's random starts come from the evaluation seed: the same numbers again, whatever the global RNG did
    torch.rand(7)
    again = evaluate(model, test, 5, 1, 5, 100, seed=3, attack="pgd", attack_eps=0.5, pgd_steps=5, per_task=True)
    torch.manual_seed(123)
    third = evaluate(model, test, 5, 1, 5, 100, seed=3, attack="pgd", attack_eps=0.5, pgd_steps=5, per_task=True)
    assert again["per_task"] == third["per_task"] and again["mean"] == strong["mean"]


def test_robustness_evaluation_for_maml_adapts_on_the_clean_support():
    torch.manual_seed(2)
    test = gaussian_classes("test", nuisance=0, noise=0.6)
    model = MAML(nn.Sequential(nn.Linear(16, 5)), inner_lr=0.5, eval_steps=2)
    clean = evaluate(model, test, 5, 1, 5, 50, seed=3)
    assert evaluate(model, test, 5, 1, 5, 50, seed=3, attack="fgsm", attack_eps=0.0)["mean"] == clean["mean"]
    seen = []
    adapt = model.adapt_task
    model.adapt_task = lambda theta, x, *a, **k: seen.append(x.detach().clone()) or adapt(theta, x, *a, **k)
    attacked = evaluate(model, test, 5, 1, 5, 50, seed=3, attack="fgsm", attack_eps=0.3)
    assert attacked["mean"] < clean["mean"]
    # every adaptation ran on a clean support set of the evaluation tasks
    supports = [b.support_x[i] for b in make_sampler(test, 5, 1, 5, batch_size=20, seed=3, name="evaluation")
                .fixed_tasks_iter(50) for i in range(b.num_tasks)]
    assert seen and all(any(torch.equal(x, s) for s in supports) for x in seen)


def test_adml_objective_is_the_crossed_pair():
    torch.manual_seed(4)
    data = gaussian_classes("train", nuisance=0, noise=0.6)
    batch = make_sampler(data, 5, 1, 3, batch_size=2, seed=0).sample()
    net = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5))
    model = ADML(net, inner_lr=0.3, adv_eps=0.2, clip_min=-10.0, clip_max=10.0)
    results = model.task_results(batch)
    theta = model.meta_params()
    for i in range(2):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        sx_adv = model._attack(theta, sx, sy)
        assert float((sx_adv - sx).abs().max()) == pytest.approx(0.2)  # a real perturbation
        clean = model.adapt_task(theta, sx, sy, 1, create_graph=False)[-1]
        adv = model.adapt_task(theta, sx_adv, sy, 1, create_graph=False)[-1]
        qx_adv = model._attack(clean, qx, qy)
        expected = 0.5 * (task_loss(model.run(adv, qx), qy) + task_loss(model.run(clean, qx_adv), qy))
        torch.testing.assert_close(results["query"][i].detach(), expected.detach())
    loss, metrics = model.loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters()) and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adml_meta_gradient_matches_finite_differences(attack):
    """Second-order ADML in float64: autograd's meta-gradient of the crossed objective against central differences
    (the adversarial examples are piecewise constant in θ), and PGD examples inside the ε-ball."""
    torch.manual_seed(6)
    data = gaussian_classes("train", nuisance=0, noise=0.6)
    b = make_sampler(data, 5, 1, 2, batch_size=2, seed=1).sample()
    batch = type(b)(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, b.ways)
    net = nn.Sequential(nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    model = ADML(net, inner_lr=0.3, adv_eps=0.2, adv_attack=attack, adv_pgd_steps=3, clip_min=-10.0, clip_max=10.0)
    if attack == "pgd":
        sx = batch.support_x[0]
        assert float((model._attack(model.meta_params(), sx, batch.support_y[0]) - sx).abs().max()) <= 0.2 + 1e-12
    torch.manual_seed(0)
    params = list(model.parameters())
    grads = torch.autograd.grad(model.loss(batch)[0], params)
    h = 1e-6
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 2)):
            old = float(flat[i])
            flat[i] = old + h
            torch.manual_seed(0)  # the same PGD random starts
            up = float(model.loss(batch)[0].detach())
            flat[i] = old - h
            torch.manual_seed(0)
            down = float(model.loss(batch)[0].detach())
            flat[i] = old
            assert abs((up - down) / (2 * h) - float(g.view(-1)[i])) < 1e-6 * max(1.0, abs(float(g.view(-1)[i])))


def test_attack_settings_are_checked():
    with pytest.raises(ConfigError, match="attack_eps"):
        load_config("protonet", ["eval.attack=fgsm"])
    with pytest.raises(ConfigError, match="eval.attack"):
        load_config("protonet", ["eval.attack=cw", "eval.attack_eps=[0.1]"])
    with pytest.raises(ConfigError, match="vmap"):
        ADML(nn.Linear(3, 2), vmap=True)


def test_adml_attack_settings_are_pixels_whatever_the_normalization():
    from fewshot.methods import build_method

    raw = build_method(load_config("adml/omniglot-5w1s-fo-5k-eps0.1"), (1, 28, 28))
    assert raw.adv_eps == pytest.approx(0.1) and raw.clip == pytest.approx((0.0, 1.0))
    normalized = build_method(load_config("adml/omniglot-5w1s-fo-5k-eps0.1", ["data.normalize=[0.08,0.25]"]),
                              (1, 28, 28))
    assert normalized.adv_eps == pytest.approx(0.1 / 0.25)
    assert normalized.clip == pytest.approx((-0.08 / 0.25, 0.92 / 0.25))
