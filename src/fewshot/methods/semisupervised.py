"""Semi-supervised Prototypical Networks (Ren et al., ICLR 2018, "Meta-learning for semi-supervised
few-shot classification"): prototypes refined with unlabelled items of the episode."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.methods.metric import class_means, pairwise_distance
from fewshot.tasks.batch import TaskBatch

MODES = ("soft_kmeans", "distractor", "masked")


def soft_assignments(d: torch.Tensor) -> torch.Tensor:
    """z̃_{j,c} = exp(−d_{j,c}) / Σ_c' exp(−d_{j,c'})  (Ren et al., Eq. 3)."""
    return torch.softmax(-d, dim=-1)


def refine(z_support: torch.Tensor, y: torch.Tensor, z_unlabeled: torch.Tensor, weights: torch.Tensor,
           ways: int) -> torch.Tensor:
    """p̃_c = (Σ_i h(x_i) z_{i,c} + Σ_j h(x̃_j) w_{j,c}) / (Σ_i z_{i,c} + Σ_j w_{j,c})  (Eq. 4).

    ``weights [B, M, ways]`` are soft assignments (times masks in the masked variant).
    """
    onehot = F.one_hot(y, ways).to(z_support.dtype)  # [B, n, N]
    num = onehot.transpose(1, 2) @ z_support + weights.transpose(1, 2) @ z_unlabeled
    den = onehot.sum(1) + weights.sum(1)
    return num / den.clamp_min(1e-8)[..., None]


def distance_statistics(d: torch.Tensor) -> torch.Tensor:
    """[min, max, variance, skewness, kurtosis] of ``d [B, M, N]`` over the M items: ``[B, N, 5]``."""
    mean = d.mean(1, keepdim=True)
    centred = d - mean
    var = centred.pow(2).mean(1)
    std = var.clamp_min(1e-8).sqrt()
    skew = centred.pow(3).mean(1) / std ** 3
    kurt = centred.pow(4).mean(1) / std ** 4
    return torch.stack([d.amin(1), d.amax(1), var, skew, kurt], -1)


class SemiSupervisedProtoNet(Method):
    """Prototypical networks whose prototypes are refined with the episode's unlabelled items.

    Start from ProtoNet prototypes p_c; then, for ``steps`` refinements:

    * ``soft_kmeans`` — z̃ from the softmax over −‖h(x̃_j) − p_c‖², p̃_c by Eq. 4;
    * ``distractor`` — an extra cluster at the origin with a learned radius r (log-parametrized,
      initialized to 100; the N class radii are 1): z̃_{j,c} ∝ exp(−‖h(x̃_j) − p_c‖²/r_c² − A(r_c)),
      A(r) = ½ log(2π) + log r; the distractor logit stays in the query softmax, as in the code;
    * ``masked`` — d̃_{j,c} = d_{j,c} / mean_j d_{j,c}; an MLP (5 → 20 tanh → 2) on the
      stop-gradient statistics [min, max, var, skew, kurt] of d̃_{·,c} gives a threshold β_c and a
      slope γ_c = exp(·); mask m_{j,c} = σ(−γ_c (d̃_{j,c} − β_c)); p̃_c by Eq. 4 with weights z̃·m.

    Queries are classified by the ProtoNet softmax over −‖h(x̂) − p̃_c‖². Without unlabelled items
    this is exactly ProtoNet.
    """

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "semiproto"
    defaults: ClassVar[dict[str, Any]] = {"mode": "masked", "refine_steps": 1}

    def __init__(self, encoder: nn.Module, mode: str = "masked", refine_steps: int = 1) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown model.mode {mode!r}; use one of {MODES}.")
        self.encoder, self.mode, self.refine_steps = encoder, mode, refine_steps
        if mode == "distractor":
            self.log_radius = nn.Parameter(torch.tensor(math.log(100.0)))
        if mode == "masked":
            self.mask_mlp = nn.Sequential(nn.Linear(5, 20), nn.Tanh(), nn.Linear(20, 2))

    def _scores(self, batch: TaskBatch) -> torch.Tensor:
        """Query logits ``[B, N*Q, N]`` (``[B, N*Q, N+1]`` with the distractor cluster)."""
        ns, nq = batch.support_x.shape[1], batch.query_x.shape[1]
        parts = [batch.support_x, batch.query_x]
        if batch.unlabeled_x is not None:
            parts.append(batch.unlabeled_x)
        z = self.encode(self.encoder, torch.cat(parts, 1))
        zs, zq, zu = z[:, :ns], z[:, ns:ns + nq], z[:, ns + nq:]
        prototypes = class_means(zs, batch.support_y, batch.ways)
        unlabeled = zu.shape[1] > 0
        for _ in range(self.refine_steps if unlabeled else 0):
            d = pairwise_distance(zu, prototypes)  # [B, M, N]
            if self.mode == "distractor":
                d_all = torch.cat([d, zu.pow(2).sum(-1, keepdim=True) / self.log_radius.exp() ** 2], -1)
                a = torch.cat([d.new_zeros(1).expand(d.shape[-1]), self.log_radius[None]])  # log r, r_c = 1
                weights = soft_assignments(d_all + a)[..., : batch.ways]  # + ½log 2π cancels in the softmax
            else:
                weights = soft_assignments(d)
            if self.mode == "masked":
                dn = d / d.mean(1, keepdim=True).clamp_min(1e-8)
                beta, log_gamma = self.mask_mlp(distance_statistics(dn).detach()).unbind(-1)  # [B, N]
                weights = weights * torch.sigmoid(-log_gamma.exp()[:, None] * (dn - beta[:, None]))
            prototypes = refine(zs, batch.support_y, zu, weights, batch.ways)
        logits = -pairwise_distance(zq, prototypes)
        if self.mode == "distractor" and unlabeled:
            logits = torch.cat([logits, -zq.pow(2).sum(-1, keepdim=True) / self.log_radius.exp() ** 2
                                - self.log_radius], -1)
        return logits

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        return self._scores(batch)[..., : batch.ways]

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self._scores(batch)
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())
        acc = accuracy(scores[..., : batch.ways].detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}
