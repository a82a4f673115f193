"""Siamese networks: one shared encoder scores pairs as same / different.

Two heads (``spec/metric.md`` §1–2):

* ``l2`` — energy E = ‖f(x₁) − f(x₂)‖₂ with the contrastive loss (Hadsell, Chopra & LeCun 2006).
  Convention: ``same = True`` for a genuine pair, and
      L = same · E² + (1 − same) · max(m − E, 0)²
  (the factor ½ of Hadsell et al. is dropped; their label convention is the opposite). "Same" iff
  E < τ, with τ chosen on validation classes.
* ``weighted_l1`` — Koch, Zemel & Salakhutdinov (2015): p = σ(Σ_j α_j |h₁⁽ʲ⁾ − h₂⁽ʲ⁾| + b) with
  learned α, trained with binary cross-entropy (label 1 = same class).

Training pairs come from the one episode sampler: every (query, support) pair of an episode, so
pairs are split by class, never contain an item twice, and a 2-way episode gives exactly one
genuine and one impostor pair per query (``balance`` weighs the two kinds equally in any case).
N-way one-shot identification scores a query against each support item and predicts the class of
the most similar one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.tasks.batch import TaskBatch

HEADS = ("l2", "weighted_l1")


def contrastive_loss(energy: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Per-pair L = same·E² + (1 − same)·max(m − E, 0)² (no reduction)."""
    same = same.to(energy.dtype)
    return same * energy.pow(2) + (1 - same) * F.relu(margin - energy).pow(2)


def euclidean_energy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E = sqrt(max(Σ (a − b)², ε)) over the last axis, broadcasting; the gradient is finite at E = 0."""
    return (a - b).pow(2).sum(-1).clamp_min(1e-12).sqrt()


class SiameseNet(Method):
    """Siamese network with a contrastive (``l2``) or Koch weighted-L1 (``weighted_l1``) head."""

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "siamese"
    defaults: ClassVar[dict[str, Any]] = {"head": "l2", "margin": 1.0, "balance": True}

    def __init__(self, encoder: nn.Module, head: str = "l2", margin: float = 1.0, balance: bool = True,
                 embed_dim: int | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown model.head {head!r}; use one of {HEADS}.")
        self.encoder, self.head, self.margin, self.balance = encoder, head, margin, balance
        if head == "weighted_l1":
            if embed_dim is None:
                raise ConfigError("the weighted-L1 head needs the embedding size (embed_dim).")
            self.alpha = nn.Linear(embed_dim, 1)  # Σ_j α_j |h₁ − h₂|_j + b

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "SiameseNet":
        from fewshot.methods.metric import _embed_dim

        m = config["model"]
        encoder = cls.build_encoder(config, item_shape)
        return cls(encoder, m["head"], m["margin"], m["balance"], _embed_dim(encoder, item_shape))

    def pair_scores(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """Similarity of embedded pairs (broadcasting): −E for ``l2``, the logit of p for ``weighted_l1``."""
        if self.head == "l2":
            return -euclidean_energy(za, zb)
        return self.alpha((za - zb).abs()).squeeze(-1)

    def similarity(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Scores of item pairs ``x1[i], x2[i]`` (higher = more alike); threshold them to verify."""
        return self.pair_scores(self.encoder(x1).float(), self.encoder(x2).float())

    def _pairs(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        ns = batch.support_x.shape[1]
        z = self.encode(self.encoder, torch.cat([batch.support_x, batch.query_x], 1))
        scores = self.pair_scores(z[:, ns:, None], z[:, None, :ns])  # [B, M, n]
        same = batch.query_y[:, :, None] == batch.support_y[:, None]
        return scores, same

    @staticmethod
    def _identify(scores: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        onehot = F.one_hot(batch.support_y, batch.ways).bool()[:, None]  # [B, 1, n, N]
        return scores[..., None].masked_fill(~onehot, float("-inf")).amax(2)

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """Per class, the best score over its support items: ``[B, N*Q, N]`` (one-shot identification)."""
        return self._identify(self._pairs(batch)[0], batch)

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        scores, same = self._pairs(batch)
        if self.head == "l2":
            per_pair = contrastive_loss(-scores, same, self.margin)
        else:
            per_pair = F.binary_cross_entropy_with_logits(scores, same.to(scores.dtype), reduction="none")
        if self.balance:
            w = same.float() / same.sum().clamp_min(1) + (~same).float() / (~same).sum().clamp_min(1)
            loss = (per_pair * w).sum() / 2
        else:
            loss = per_pair.mean()
        logits = self._identify(scores.detach(), batch)
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy(logits, batch.query_y).mean())}
