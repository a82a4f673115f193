"""Backbones: Conv-4 and MLP, with an explicit normalization policy.

Normalization policies (``spec/README.md``, "Normalization at test time"):

* ``eval`` — BatchNorm with running statistics, used in ``model.eval()`` (ProtoNets code);
* ``transductive`` — BatchNorm that always uses the statistics of the current forward pass
  (``track_running_stats=False``), as the MAML and Relation-Net papers evaluate;
* ``none`` — no normalization layer.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.errors import ConfigError

NORM_POLICIES = ("eval", "transductive", "none")


def make_norm(channels: int, policy: str, dims: int = 2) -> nn.Module:
    """The normalization layer for ``policy`` (see module docstring)."""
    if policy not in NORM_POLICIES:
        raise ConfigError(f"unknown normalization policy {policy!r} (model.norm); use one of {NORM_POLICIES}.")
    if policy == "none":
        return nn.Identity()
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(channels, track_running_stats=(policy == "eval"))


class Conv4(nn.Module):
    """Four blocks of [conv 3×3 (padding 1) → norm → ReLU → max-pool 2] (Vinyals et al. 2016).

    Omniglot 28×28 → 14 → 7 → 3 → 1 gives a ``width``-d embedding (64 by default);
    mini-ImageNet 84×84 gives ``width·5·5``. ``stride`` (MAML's strided variant) replaces pooling.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, norm: str = "eval", depth: int = 4,
                 strided: bool = False, out_width: int | None = None, final_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            w = out_width if (out_width and i == depth - 1) else width
            layers += [nn.Conv2d(c, w, 3, stride=2 if strided else 1, padding=1), make_norm(w, norm)]
            if final_relu or i < depth - 1:
                layers.append(nn.ReLU(inplace=True))
            if not strided:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.norm_policy = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class ConvMap(nn.Module):
    """Relation Network embedding (Sung et al. 2018): a feature *map*, not a vector.

    B1, B2 = conv 3×3 (no padding) → norm → ReLU → max-pool 2; B3, B4 = conv 3×3 (padding 1) →
    norm → ReLU. Omniglot 28 → 26 → 13 → 11 → 5 → 5 → 5 (``width``×5×5); 84 → 19×19.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, norm: str = "transductive") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(4):
            layers += [nn.Conv2d(c, width, 3, padding=0 if i < 2 else 1), make_norm(width, norm), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.features = nn.Sequential(*layers)
        self.norm_policy = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class KochNet(nn.Module):
    """The Siamese encoder of Koch, Zemel & Salakhutdinov (2015) for 105×105 inputs.

    conv 64@10×10 → ReLU → pool 2 (96 → 48); conv 128@7×7 → ReLU → pool (42 → 21); conv 128@4×4 → ReLU →
    pool (18 → 9); conv 256@4×4 → ReLU (6×6×256 = 9,216); FC 4,096 → sigmoid. Initialization as in the
    paper: conv weights N(0, 10⁻²), biases N(0.5, 10⁻²), FC weights N(0, 0.2).
    """

    def __init__(self, in_channels: int = 1, size: int = 105) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True))
        side = ((((size - 9) // 2 - 6) // 2 - 3) // 2) - 3
        if side < 1:
            raise ConfigError(f"the Koch network needs inputs of about 105×105 (got {size}); set data.image_size=105.")
        self.fc = nn.Linear(256 * side * side, 4096)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 1e-2)
                nn.init.normal_(m.bias, 0.5, 1e-2)
        nn.init.normal_(self.fc.weight, 0.0, 0.2)
        nn.init.normal_(self.fc.bias, 0.5, 1e-2)
        self.norm_policy = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.features(x).flatten(1)))


class MLP(nn.Module):
    """Fully connected layers with ReLU between them (and an optional norm after each hidden layer)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 128), out_features: int | None = None,
                 norm: str = "none") -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), make_norm(b, norm, dims=1), nn.ReLU(inplace=True)]
        if out_features is not None:
            layers.append(nn.Linear(sizes[-1], out_features))
        self.layers = nn.Sequential(*layers)
        self.norm_policy = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


BACKBONES = ("conv4", "conv4-strided", "convmap", "koch", "mlp")


def build_backbone(name: str, item_shape: tuple[int, ...], width: int = 64, norm: str = "eval",
                   hidden: tuple[int, ...] = (256, 128), out_width: int | None = None,
                   final_relu: bool = True) -> nn.Module:
    """Backbone by name (see :func:`_build`), checked on a dry run so that items too small for it are
    refused with one sentence instead of an error from deep inside a convolution."""
    model = _build(name, item_shape, width, norm, hidden, out_width, final_relu)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *item_shape))
    except RuntimeError:
        raise ConfigError(f"model.backbone={name} cannot take items of shape {tuple(item_shape)} (too small for its "
                          "poolings?); use larger items (data.image_size) or another backbone.") from None
    finally:
        model.train(was)
    return model


def _build(name: str, item_shape: tuple[int, ...], width: int, norm: str, hidden: tuple[int, ...],
           out_width: int | None, final_relu: bool) -> nn.Module:
    """Backbone by name: ``conv4``, ``conv4-strided``, ``convmap`` (items ``[C, H, W]``) or ``mlp`` (any items).

    ``out_width`` / ``final_relu`` change the last layer (e.g. Gaussian ProtoNets' D + s_dim channels
    without a ReLU on the covariance channels); for ``mlp`` ``out_width`` adds a final linear layer.
    """
    if name in ("conv4", "conv4-strided", "convmap", "koch"):
        if len(item_shape) != 3:
            raise ConfigError(f"model.backbone {name} needs image items [C, H, W], got items of shape "
                              f"{item_shape}; use model.backbone=mlp.")
        if name == "koch":
            return KochNet(item_shape[0], item_shape[-1])
        if name == "convmap":
            return ConvMap(item_shape[0], width, norm)
        return Conv4(item_shape[0], width, norm, strided=name.endswith("strided"), out_width=out_width,
                     final_relu=final_relu)
    if name == "mlp":
        n = 1
        for s in item_shape:
            n *= s
        return MLP(n, tuple(hidden), out_width, norm)
    raise ConfigError(f"unknown model.backbone {name!r}; use one of {', '.join(BACKBONES)}.")
