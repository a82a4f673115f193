"""Metric-based methods: classify a query by its distance to the support set in an embedding space."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.tasks.batch import TaskBatch

DISTANCES = ("sqeuclidean", "euclidean", "cosine")


def class_means(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """Prototypes c_k = (1/|S_k|) Σ_{(x_i, y_i) ∈ S_k} f_φ(x_i)  (Snell et al. 2017, Eq. 1).

    ``z [B, n, D]``, ``y [B, n]`` → ``[B, ways, D]`` by scatter over labels, so unequal shots and
    any item order work.
    """
    b, _, d = z.shape
    sums = z.new_zeros(b, ways, d).scatter_add_(1, y[..., None].expand_as(z), z)
    counts = torch.zeros(b, ways, dtype=z.dtype, device=z.device).scatter_add_(1, y, torch.ones_like(y, dtype=z.dtype))
    return sums / counts.clamp_min(1)[..., None]


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "sqeuclidean") -> torch.Tensor:
    """Distances ``[B, M, N]`` between ``a [B, M, D]`` and ``b [B, N, D]``.

    ``sqeuclidean``: d(a, b) = Σ_j (a_j − b_j)², a *sum* over dimensions, computed as
    ‖a‖² + ‖b‖² − 2a·b clamped at 0; ``euclidean``: its square root (clamped away from 0 so the
    gradient stays finite); ``cosine``: 1 − cos(a, b) with both sides normalized.
    """
    if kind == "cosine":
        return 1 - F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(b, dim=-1, eps=1e-8).transpose(1, 2)
    sq = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(1) - 2 * a @ b.transpose(1, 2)).clamp_min(0)
    if kind == "sqeuclidean":
        return sq
    if kind == "euclidean":
        return sq.clamp_min(1e-12).sqrt()
    raise ConfigError(f"unknown distance {kind!r} (model.distance); use one of {DISTANCES}.")


class ProtoNet(Method):
    """Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    p_φ(y = k | x) = exp(−d(f_φ(x), c_k)) / Σ_k' exp(−d(f_φ(x), c_k'))   (Eq. 2), d squared Euclidean;
    J(φ) = −(1/(N·Q)) Σ_q log p_φ(y_q | x_q)                              (Eq. 3 / Algorithm 1).

    One encoder embeds support and query together. ``temperature`` divides the distances
    (1 = the paper's sum over dimensions; a mean over D would be a hidden temperature of D).
    """

    name: ClassVar[str] = "protonet"
    defaults: ClassVar[dict[str, Any]] = {"distance": "sqeuclidean", "temperature": 1.0}

    def __init__(self, encoder: nn.Module, distance: str = "sqeuclidean", temperature: float = 1.0) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"unknown distance {distance!r} (model.distance); use one of {DISTANCES}.")
        if temperature <= 0:
            raise ConfigError(f"model.temperature must be positive (got {temperature}).")
        self.encoder, self.distance, self.temperature = encoder, distance, temperature

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """−d(f_φ(x_q), c_k) / T for every query and class: ``[B, N*Q, N]``."""
        ns = batch.support_x.shape[1]
        z = self.encode(self.encoder, torch.cat([batch.support_x, batch.query_x], 1))
        prototypes = class_means(z[:, :ns], batch.support_y, batch.ways)
        return -pairwise_distance(z[:, ns:], prototypes, self.distance) / self.temperature

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy(logits.detach(), batch.query_y).mean())}

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(batch)
