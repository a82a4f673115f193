"""Binarized and quantized layers with straight-through estimators (BATMANN's controllers).

* :func:`sign_weight` — forward sign(W); backward: the upstream gradient clamped to [−1, 1] (the
  XNOR-style rule of the BATMANN code: a clamp on the gradient value, not the |W| ≤ 1 indicator).
* :func:`sign_activation` — forward sign(x); backward: the gradient where |x| < 1, zero elsewhere
  (the usual hard-tanh STE).
* :func:`sign_standardized` — sign(x̂) of the per-sample standardized input x̂ = (x − μ)/(σ + ε) with the
  hard-tanh STE on x̂, as one autograd node (the same gradient as autograd through mean and std; an
  XNORConv2d(128, 128, 5) step 1.9x faster, benchmarks/speed/batmann-precision-step-time.json; XNOR layers'
  binary inputs).
* :func:`fake_quantize` — 8-bit symmetric fake quantization of weights, 127 levels of max|W| per tensor,
  identity gradient.
* :class:`XNORConv2d` / :class:`XNORLinear` — XNOR-Net-style layers: weights standardized per output
  channel then sign(); a learnable per-channel scale initialized to mean|W|; inputs standardized per
  sample then sign() (``binary_input``).
* :class:`Int8Conv2d` / :class:`Int8Linear` — 8-bit fake-quantized weights (first and last layers).

sign(0) is taken as +1 so that every output is ±1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (x + 0.0 turns −0 into +0; copysign is a vectorized kernel, where() was 13x slower)."""
    return torch.copysign(torch.ones((), dtype=x.dtype), x + 0.0)


class _SignWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):  # noqa: ARG004
        return _sign(w)

    @staticmethod
    def backward(ctx, grad):  # noqa: ARG004
        return grad.clamp(-1.0, 1.0)


class _SignActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0)  # grad ⊙ 1[|x| < 1]


class _SignStandardized(torch.autograd.Function):
    """out = sign(x̂), x̂ = (x − μ)/s, s = σ + ε (μ, σ: mean and unbiased std of each sample).

    Backward, with g = ∂L/∂out · 1[|x̂| < 1] (the STE on x̂) and n the elements per sample:
    ∂L/∂x = (g − mean(g))/s − x̂ · Σ(g ⊙ x̂) / ((n − 1) σ)   (∂σ/∂x_i = (x_i − μ)/((n − 1) σ)).
    Statistics, x̂ and the gradient are computed in at least float32 (under bf16 autocast the
    gradient's error against float64 is 0.17 % instead of 3.4 % with bf16 statistics, tests/test_batmann.py);
    the output and ∂L/∂x take the input's dtype.
    """

    @staticmethod
    def forward(ctx, x, dims, eps):
        n = math.prod(x.shape[1:])
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        centred = xf - xf.mean(dims, keepdim=True)
        sigma = torch.linalg.vector_norm(centred, dim=dims, keepdim=True) / max(n - 1, 1) ** 0.5
        x_hat = centred / (sigma + eps)
        ctx.save_for_backward(x_hat, sigma)
        ctx.dims, ctx.eps, ctx.n = dims, eps, n
        return _sign(centred).to(x.dtype)  # sign(x̂) = sign(x − μ): s > 0

    @staticmethod
    def backward(ctx, grad):
        x_hat, sigma = ctx.saved_tensors
        dims = ctx.dims
        g = torch.ops.aten.hardtanh_backward(grad.to(x_hat.dtype), x_hat, -1.0, 1.0)  # g ⊙ 1[|x̂| < 1] (NaN x̂ passes)
        dx = (g - g.mean(dims, keepdim=True)) / (sigma + ctx.eps)
        # a constant sample (σ = 0) has x̂ = 0 and no second term (the clamp avoids 0 · ∞)
        second = (g * x_hat).sum(dims, keepdim=True) / (max(ctx.n - 1, 1) * sigma).clamp_min(1e-30)
        return torch.addcmul(dx, x_hat, second, value=-1).to(grad.dtype), None, None


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, levels):  # noqa: ARG004
        scale = w.abs().max().clamp_min(1e-12) / levels
        return torch.round(w / scale).clamp(-levels, levels) * scale

    @staticmethod
    def backward(ctx, grad):  # noqa: ARG004
        return grad, None


def sign_weight(w: torch.Tensor) -> torch.Tensor:
    """sign(W) with the clamped straight-through gradient."""
    return _SignWeight.apply(w)


def sign_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with the hard-tanh straight-through gradient (zero where |x| ≥ 1)."""
    return _SignActivation.apply(x)


def sign_standardized(x: torch.Tensor) -> torch.Tensor:
    """sign((x − μ)/(σ + 1e-5)) per sample (all dimensions but the first: [batch, ...]), hard-tanh STE on the
    standardized x; XNORLinear takes [batch, features]."""
    return _SignStandardized.apply(x, tuple(range(1, x.ndim)), 1e-5)


def fake_quantize(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric fake quantization to 2^(bits−1) − 1 levels of max|W| (127 for 8 bits), identity gradient."""
    return _FakeQuant.apply(w, 2 ** (bits - 1) - 1)


def _standardize(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return (t - t.mean(dims, keepdim=True)) / (t.std(dims, keepdim=True) + 1e-5)


class XNORConv2d(nn.Conv2d):
    """Binary-weight (and, with ``binary_input``, binary-activation) convolution with per-channel scales."""

    def __init__(self, *args, binary_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.binary_input = binary_input
        self.scale = nn.Parameter(self.weight.detach().abs().mean((1, 2, 3)).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = sign_weight(_standardize(self.weight, (1, 2, 3))) * self.scale[:, None, None, None]
        if self.binary_input:
            x = sign_standardized(x)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class XNORLinear(nn.Linear):
    """Binary-weight (and binary-input) linear layer with per-output scales."""

    def __init__(self, *args, binary_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.binary_input = binary_input
        self.scale = nn.Parameter(self.weight.detach().abs().mean(1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = sign_weight(_standardize(self.weight, (1,))) * self.scale[:, None]
        if self.binary_input:
            x = sign_standardized(x)
        return F.linear(x, w, self.bias)


class Int8Conv2d(nn.Conv2d):
    """Convolution with 8-bit fake-quantized weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, fake_quantize(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Int8Linear(nn.Linear):
    """Linear layer with 8-bit fake-quantized weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize(self.weight), self.bias)


class BatmannController(nn.Module):
    """BATMANN's CNN controller (``spec/memory.md`` §3.1) for 1×32×32 inputs → d-dimensional keys.

    conv 5×5/128 → ReLU → conv 5×5/128 → ReLU → pool 2 → conv 3×3/128 → ReLU → conv 3×3/128 → ReLU → pool 2
    (32 → 28 → 24 → 12 → 10 → 8 → 4) → flatten 2,048 → FC d. No normalization layers. Full precision:
    1,757,312 parameters at d = 512. ``binarize="xnor"``: the three middle convolutions are XNOR layers;
    ``first_last`` = ``fp`` | ``int8`` | ``binary`` sets the first convolution and the FC layer.
    Init as the code: conv N(0, √(2/(k²·C_out))), bias 0; linear N(0, 0.01), bias 1.
    """

    def __init__(self, in_channels: int = 1, size: int = 32, dim: int = 512, width: int = 128,
                 binarize: str = "none", first_last: str = "fp") -> None:
        super().__init__()
        from fewshot.errors import ConfigError

        if binarize not in ("none", "xnor") or first_last not in ("fp", "int8", "binary"):
            raise ConfigError(f"model.binarize must be none or xnor and model.first_last fp, int8 or binary "
                              f"(got {binarize!r}, {first_last!r}).")
        side = ((size - 8) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"the BATMANN controller needs inputs of about 32×32 (got {size}); set data.image_size=32.")
        mid = (lambda i, o, k: XNORConv2d(i, o, k)) if binarize == "xnor" else (lambda i, o, k: nn.Conv2d(i, o, k))
        first = {"fp": nn.Conv2d, "int8": Int8Conv2d, "binary": lambda i, o, k: XNORConv2d(i, o, k, binary_input=False)}
        last = {"fp": nn.Linear, "int8": Int8Linear, "binary": XNORLinear}
        if binarize == "none":
            first, last = {k: nn.Conv2d for k in first}, {k: nn.Linear for k in last}
        self.features = nn.Sequential(
            first[first_last](in_channels, width, 5), nn.ReLU(),
            mid(width, width, 5), nn.ReLU(), nn.MaxPool2d(2),
            mid(width, width, 3), nn.ReLU(),
            mid(width, width, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = last[first_last](width * side * side, dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                nn.init.normal_(m.weight, 0.0, (2.0 / (k * k * m.out_channels)) ** 0.5)
                nn.init.zeros_(m.bias)
                if isinstance(m, XNORConv2d):
                    m.scale.data = m.weight.detach().abs().mean((1, 2, 3)).clone()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.ones_(m.bias)
                if isinstance(m, XNORLinear):
                    m.scale.data = m.weight.detach().abs().mean(1).clone()
        self.norm_policy = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))
