"""Relation Networks (Sung et al., CVPR 2018, "Learning to Compare"), few-shot and zero-shot."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.nn import make_norm
from fewshot.tasks.batch import TaskBatch

AGGREGATES = ("sum", "mean")
LOSSES = ("mse", "bce", "ce")


class RelationModule(nn.Module):
    """g_ϕ: 2 × [conv 3×3 → norm → ReLU → max-pool 2] → FC → ReLU → FC 1 → sigmoid.

    Input: the channel concatenation of a class map and a query map, ``[M, 2C, h, w]``. Padding 1
    for small maps (Omniglot 5×5 → 2 → 1), none for large ones (mini-ImageNet 19 → 17 → 8 → 6 → 3).
    """

    def __init__(self, channels: int, map_size: int, hidden: int = 8, norm: str = "transductive") -> None:
        super().__init__()
        pad = 1 if map_size < 10 else 0
        self.convs = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=pad), make_norm(channels, norm), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=pad), make_norm(channels, norm), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        side = map_size
        for _ in range(2):
            side = (side + 2 * pad - 2) // 2
        if side < 1:
            raise ConfigError(f"feature maps of size {map_size} are too small for the relation module.")
        self.fc = nn.Sequential(nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Scores of concatenated pairs ``[M, 2C, h, w]`` → ``[M]``."""
        return self._rest(self.convs[0](pairs))

    def compare(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Scores of every (query, class) pair, ``queries [M, C, h, w]`` × ``classes [N, C, h, w]`` → ``[M, N]``,
        equal to ``forward`` on the M·N concatenated pairs without building them.

        The first convolution is linear in its input, so with W = [W_c | W_q] split over the two halves of
        the concatenated channels, conv(C(c, q); W, b) = conv(c; W_c, b) + conv(q; W_q, 0): N + M
        convolutions of C channels instead of M·N of 2C (the relation module's dominant cost).
        """
        conv = self.convs[0]
        c = classes.shape[1]
        a = F.conv2d(classes, conv.weight[:, :c], conv.bias, conv.stride, conv.padding)  # [N, C', h, w]
        q = F.conv2d(queries, conv.weight[:, c:], None, conv.stride, conv.padding)     # [M, C', h, w]
        m, n = q.shape[0], a.shape[0]
        return self._rest((q[:, None] + a[None]).flatten(0, 1)).view(m, n)

    def _rest(self, first: torch.Tensor) -> torch.Tensor:
        """Everything after the first convolution: norm, ReLU, pool, second block, FC → sigmoid."""
        return torch.sigmoid(self.fc(self.convs[1:](first).flatten(1))).squeeze(-1)


def init_relation_weights(module: nn.Module) -> None:
    """The reference code's initialization: conv N(0, √(2/n)), n = k·k·out; Linear N(0, 0.01), bias 1."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.ones_(m.bias)


def relation_loss(scores: torch.Tensor, labels: torch.Tensor, ways: int, kind: str) -> torch.Tensor:
    """``mse`` (paper: mean of (r_{c,j} − 1[y_j = c])²), ``bce`` on the same targets, or ``ce`` on log r."""
    if kind == "mse":
        return F.mse_loss(scores, F.one_hot(labels, ways).to(scores.dtype))
    if kind == "bce":
        return F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), F.one_hot(labels, ways).to(scores.dtype))
    if kind == "ce":
        return F.cross_entropy(torch.log(scores.clamp_min(1e-6)).flatten(0, 1), labels.flatten())
    raise ConfigError(f"unknown model.relation_loss {kind!r}; use one of {LOSSES}.")


class RelationNet(Method):
    """Relation Networks for few-shot learning (Sung et al. 2018, Eq. 1–3).

    r_{c,j} = g_ϕ(C(f_φ(class c), f_φ(x̂_j))) ∈ (0, 1), with the class map the element-wise *sum*
    of its K support maps (``aggregate="mean"`` is the variant) and C channel concatenation;
    loss Σ_c Σ_j (r_{c,j} − 1[y_j = c])² (a mean in the code). Predictions are argmax_c r_{c,j}.
    The paper evaluates with batch statistics (``model.norm=transductive``).
    """

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "relation"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "convmap", "norm": "transductive", "aggregate": "sum",
                                          "relation_hidden": 8, "relation_loss": "mse"}

    def __init__(self, encoder: nn.Module, relation: nn.Module, aggregate: str = "sum", relation_loss: str = "mse") -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ConfigError(f"unknown model.aggregate {aggregate!r}; use one of {AGGREGATES}.")
        if relation_loss not in LOSSES:
            raise ConfigError(f"unknown model.relation_loss {relation_loss!r}; use one of {LOSSES}.")
        self.encoder, self.relation, self.aggregate, self.relation_loss = encoder, relation, aggregate, relation_loss

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "RelationNet":
        m = config["model"]
        if m["backbone"] != "convmap":
            raise ConfigError("the Relation Network compares feature maps: set model.backbone=convmap.")
        encoder = cls.build_encoder(config, item_shape)
        with torch.no_grad():
            was = encoder.training
            encoder.eval()
            c, h, _ = encoder(torch.zeros(2, *item_shape)).shape[1:]
            encoder.train(was)
        relation = RelationModule(c, h, m["relation_hidden"], m["norm"])
        model = cls(encoder, relation, m["aggregate"], m["relation_loss"])
        init_relation_weights(model)
        return model

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """Relation scores r ∈ (0, 1): ``[B, N*Q, N]``."""
        b, ns = batch.support_x.shape[:2]
        # support and query in separate passes, as in the reference code (their batch statistics differ)
        support = self.encode(self.encoder, batch.support_x)  # [B, n, C, h, w]
        query = self.encode(self.encoder, batch.query_x)
        n = batch.ways
        index = batch.support_y.view(b, ns, 1, 1, 1).expand_as(support)
        classes = support.new_zeros(b, n, *support.shape[2:]).scatter_add_(1, index, support)
        if self.aggregate == "mean":
            counts = torch.zeros(b, n, device=support.device).scatter_add_(1, batch.support_y, torch.ones_like(batch.support_y, dtype=torch.float))
            classes = classes / counts.clamp_min(1).view(b, n, 1, 1, 1)
        # g_ϕ over the concatenation C(class map, query map) of every pair, one task at a time (the
        # relation module's batch statistics are those of one task's pairs, as in the reference code)
        return torch.stack([self.relation.compare(classes[i], query[i]) for i in range(b)])

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The reference code clips the embedding and the relation module separately (0.5 each)."""
        return [list(self.encoder.parameters()), list(self.relation.parameters())]

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.logits(batch).float()
        loss = relation_loss(scores, batch.query_y, batch.ways, self.relation_loss)
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy(scores.detach(), batch.query_y).mean())}
