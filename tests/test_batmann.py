"""BATMANN: softabs, straight-through estimators, 8-bit quantization, the controller, key-value memory reads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewshot.data.synthetic import gaussian_classes
from fewshot.errors import ConfigError
from fewshot.methods.memory import BATMANN, softabs
from fewshot.nn.binary import (BatmannController, XNORConv2d, XNORLinear, fake_quantize, sign_activation,
                               sign_standardized, sign_weight)
from fewshot.tasks import make_sampler


def test_softabs_is_the_sigmoid_form():
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for a in (-1.0, -0.3, 0.0, 0.2, 0.9):
        expected = s(10 * (a - 0.5)) + s(10 * (-a - 0.5))
        assert float(softabs(torch.tensor(a))) == pytest.approx(expected, rel=1e-6)
    # literal values: softabs(0) = 2σ(−5), softabs(±1) = σ(5) + σ(−15)
    assert float(softabs(torch.tensor(0.0))) == pytest.approx(0.0133857, abs=1e-7)
    assert float(softabs(torch.tensor(1.0))) == pytest.approx(0.9933074, abs=1e-7)
    assert float(softabs(torch.tensor(-1.0))) == pytest.approx(0.9933074, abs=1e-7)
    assert float(softabs(torch.tensor(0.5))) == pytest.approx(0.5 + 1 / (1 + math.exp(10)), abs=1e-7)


def test_straight_through_estimators():
    w = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0], requires_grad=True)
    out = sign_weight(w)
    assert out.tolist() == [-1, -1, 1, 1, 1]
    out.backward(torch.tensor([3.0, -0.2, 0.5, -5.0, 1.0]))
    torch.testing.assert_close(w.grad, torch.tensor([1.0, -0.2, 0.5, -1.0, 1.0]))  # gradient clamped to [−1, 1]
    x = torch.tensor([-2.0, -0.5, 0.3, 1.0], requires_grad=True)
    sign_activation(x).backward(torch.ones(4))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # zero where |x| ≥ 1


def test_fused_standardized_sign_matches_autograd_through_mean_and_std():
    """sign_standardized = sign_activation((x − μ)/(σ + ε)) per sample, forward and STE gradient (float64)."""
    torch.manual_seed(0)
    for shape in ((3, 4, 5, 5), (4, 7)):
        x = (torch.randn(*shape, dtype=torch.float64) * 2 + 0.5).requires_grad_()
        upstream = torch.randn(*shape, dtype=torch.float64)
        dims = tuple(range(1, x.ndim))
        ref_x = x.detach().clone().requires_grad_()
        x_hat = (ref_x - ref_x.mean(dims, keepdim=True)) / (ref_x.std(dims, keepdim=True) + 1e-5)
        ref = sign_activation(x_hat)
        ref.backward(upstream)
        out = sign_standardized(x)
        out.backward(upstream)
        assert torch.equal(out.detach(), ref.detach()) and set(out.unique().tolist()) <= {-1.0, 1.0}
        assert 0 < int((x_hat.detach().abs() < 1).sum()) < x.numel()  # the STE mask is doing something
        torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    # a constant sample: output +1, finite gradient (g − mean g)/ε, as torch's std backward (it masks σ = 0)
    x = torch.full((1, 6), 3.0, dtype=torch.float64, requires_grad=True)
    out = sign_standardized(x)
    out.backward(torch.arange(6.0, dtype=torch.float64)[None])
    assert out.tolist() == [[1.0] * 6] and bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(x.grad, (torch.arange(6.0, dtype=torch.float64) - 2.5)[None] / 1e-5)
    # sign(−0) = sign(+0) = +1
    assert sign_weight(torch.tensor([-0.0, 0.0])).tolist() == [1.0, 1.0]
    # XNORLinear's binary inputs go through it too: the same layer output and input gradient as the unfused form
    lin = XNORLinear(6, 3).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    lin(x).pow(2).sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    w = sign_weight((lin.weight - lin.weight.mean(1, keepdim=True)) / (lin.weight.std(1, keepdim=True) + 1e-5))
    x_hat = (ref_x - ref_x.mean(1, keepdim=True)) / (ref_x.std(1, keepdim=True) + 1e-5)
    torch.nn.functional.linear(sign_activation(x_hat), w * lin.scale[:, None], lin.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)


def test_fused_standardized_sign_under_bf16_autocast_keeps_float32_statistics():
    torch.manual_seed(1)
    x64 = (torch.randn(4, 32, 12, 12, dtype=torch.float64) * 3 + 2).relu().to(torch.bfloat16).double()
    upstream = torch.randn_like(x64).to(torch.bfloat16).double()  # the reference sees the same bf16 values
    ref = x64.clone().requires_grad_()
    sign_standardized(ref).backward(upstream)
    x = x64.to(torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sign_standardized(x)
    out.backward(upstream.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert float((out.double() != torch.where(x64 - x64.mean((1, 2, 3), keepdim=True) >= 0, 1.0, -1.0)).sum()) <= 2
    err = (x.grad.double() - ref.grad).norm() / ref.grad.norm()
    assert float(err) < 0.01  # float32 statistics inside: 0.17 %; bf16 statistics: 3.4 %
    assert sign_standardized(torch.empty(0, 3)).shape == (0, 3)  # an empty batch


def test_fake_quantization_has_127_levels_and_identity_gradient():
    w = torch.linspace(-1, 1, 1001, requires_grad=True)
    q = fake_quantize(w)
    assert len(torch.unique(q.detach())) == 255 and float(q.detach().abs().max()) == pytest.approx(1.0)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_xnor_layers_use_signs_and_per_channel_scales():
    torch.manual_seed(0)
    conv = XNORConv2d(2, 3, 3)
    torch.testing.assert_close(conv.scale.detach(), conv.weight.detach().abs().mean((1, 2, 3)))  # init: mean|W|
    with torch.no_grad():
        conv.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.randn(2, 2, 5, 5)
    out = conv(x)
    assert out.shape == (2, 3, 3, 3) and conv.scale.shape == (3,)
    # weights standardized per output channel, inputs per sample, then sign(): conv of ±1 maps times the scale
    w = conv.weight.detach()
    w_std = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
    x_std = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-5)
    pm = lambda t: torch.where(t >= 0, 1.0, -1.0)  # noqa: E731
    expected = torch.nn.functional.conv2d(pm(x_std), pm(w_std) * torch.tensor([0.5, 1.0, 2.0])[:, None, None, None],
                                          conv.bias.detach())
    torch.testing.assert_close(out.detach(), expected)
    lin = XNORLinear(4, 2)
    y = lin(torch.randn(3, 4))
    # binary inputs and binary weights: each output is a multiple of its scale (± up to the fan-in) plus bias
    units = (y - lin.bias) / lin.scale
    assert torch.allclose(units, units.round(), atol=1e-4)


def test_controller_parameter_count_and_shapes():
    c = BatmannController()
    assert sum(p.numel() for p in c.parameters()) == 1757312
    assert c(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    assert BatmannController(binarize="xnor", first_last="int8")(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(ConfigError, match="32"):
        BatmannController(size=12)


def test_training_and_inference_reads_hand_computed():
    from fewshot.tasks import TaskBatch

    model = BATMANN(nn.Identity(), dim=2, sharpen="abs")
    # keys k0 = [1, −1] (label 0), k1 = [1, 1] (label 1); query q = [2, 0.5]
    batch = TaskBatch(torch.tensor([[[1.0, -1.0], [1.0, 1.0]]]), torch.tensor([[0, 1]]),
                      torch.tensor([[[2.0, 0.5]]]), torch.tensor([[1]]), 2)
    model.train()  # |cos| = 1.5/√8.5 and 2.5/√8.5, normalized
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([0.375, 0.625]))
    model.eval()  # bipolar: sign(q) = [1, 1]; (1/d) q·k = 0 and 1
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([0.0, 1.0]))
    model.infer_keys = "binary"  # {0, 1}: q = [1, 1], k0 = [1, 0], k1 = [1, 1]; 1/2 + q·k/(2d) = 0.75 and 1
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([0.75, 1.0]))
    model.infer_keys, model.training = "fp", False
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([1.5, 2.5]) / math.sqrt(8.5))


def test_softabs_softmax_and_bipolar_training_reads_hand_computed():
    """Training reads with the default softabs (a key opposite to the query weighs as much as an aligned one),
    softmax (exp) and sign()-ed support keys (train_keys=bipolar): w = s(cos) / Σ s(cos), summed per class."""
    from fewshot.tasks import TaskBatch

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # keys k0 = [1, −1] (label 0), k1 = [1, 1] (label 1), k2 = [−2, −0.5] (label 0, opposite to q); q = [2, 0.5]
    batch = TaskBatch(torch.tensor([[[1.0, -1.0], [1.0, 1.0], [-2.0, -0.5]]]), torch.tensor([[0, 1, 0]]),
                      torch.tensor([[[2.0, 0.5]]]), torch.tensor([[1]]), 2)
    cos = [1.5 / math.sqrt(8.5), 2.5 / math.sqrt(8.5), -1.0]
    soft = [sig(10 * (a - 0.5)) + sig(10 * (-a - 0.5)) for a in cos]
    expected = torch.tensor([soft[0] + soft[2], soft[1]]) / sum(soft)
    model = BATMANN(nn.Identity(), dim=2)  # softabs, steepness 10
    model.train()
    torch.testing.assert_close(model.logits(batch)[0, 0], expected)
    assert float(model.logits(batch)[0, 0, 0]) > 0.5  # the opposite key counts for label 0
    model.sharpen = "softmax"
    e = [math.exp(a) for a in cos]
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([e[0] + e[2], e[1]]) / sum(e))
    model.sharpen, model.train_keys = "abs", "bipolar"  # keys → [1, −1], [1, 1], [−1, −1]; q stays real
    c = [1.5, 2.5, 2.5]  # |q·sign(k)|, all norms equal (√4.25 · √2)
    torch.testing.assert_close(model.logits(batch)[0, 0], torch.tensor([c[0] + c[2], c[1]]) / sum(c))


def test_batmann_learns_a_synthetic_task_and_survives_bipolar_inference():
    torch.manual_seed(0)
    train = gaussian_classes("train", classes=200, nuisance=16, noise=0.3)
    test = gaussian_classes("test", classes=200, nuisance=16, noise=0.3)
    encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64))
    model = BATMANN(encoder, dim=64)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = make_sampler(train, 5, 1, 5, batch_size=4, seed=0)
    for _ in range(300):
        model.train_step(sampler.sample(), opt)
    from fewshot.engine.evaluator import evaluate

    bipolar = evaluate(model, test, 5, 1, 5, 100, seed=1)["mean"]
    model.infer_keys = "fp"
    full = evaluate(model, test, 5, 1, 5, 100, seed=1)["mean"]
    assert full > 70 and bipolar > 60, (full, bipolar)  # chance: 20 %
