"""Zero-shot learning: classify items of unseen classes from class descriptions alone.

The episode's classes come with their attribute vectors (``batch.class_attributes [B, N, a]``);
there is no support set. Both methods embed the attributes with their own network g_ϑ.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.methods.metric import pairwise_distance
from fewshot.methods.relation import relation_loss
from fewshot.tasks.batch import TaskBatch


def _attributes(batch: TaskBatch) -> torch.Tensor:
    if batch.class_attributes is None:
        raise ConfigError("zero-shot methods need class attributes: use a dataset with attributes "
                          "(data.dataset=attributes or an xlsa17 folder).")
    return batch.class_attributes


class ZeroShotProtoNet(Method):
    """Zero-shot Prototypical Networks (Snell et al. 2017, §2.6).

    c_k = g_ϑ(v_k) / ‖g_ϑ(v_k)‖ (unit-length prototypes: the domains differ), p(y = k | x) ∝
    exp(−‖f_φ(x) − c_k‖²). The paper's f and g are single linear maps to 1,024-d.
    """

    name: ClassVar[str] = "zsl_protonet"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "linear", "embed_dim": 1024, "attribute_dim": 0}

    def __init__(self, image_encoder: nn.Module, attribute_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.attribute_encoder = image_encoder, attribute_encoder

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "ZeroShotProtoNet":
        m = config["model"]
        n_in = int(torch.tensor(item_shape).prod())
        if m["attribute_dim"] < 1:
            raise ConfigError("model.attribute_dim must be the length of the class attribute vectors.")
        return cls(nn.Linear(n_in, m["embed_dim"]), nn.Linear(m["attribute_dim"], m["embed_dim"]))

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        prototypes = F.normalize(self.attribute_encoder(_attributes(batch)), dim=-1)
        z = self.encoder(batch.query_x.flatten(2)).float()
        return -pairwise_distance(z, prototypes.float())


class ZeroShotRelationNet(Method):
    """Zero-shot Relation Network (Sung et al. 2018, §3.3): attributes → FC → ReLU → FC → ReLU gives a class
    feature; the relation module (concat → FC → ReLU → FC 1 → sigmoid) scores (class feature, image feature);
    MSE against one-hot targets. Image features are fixed inputs (e.g. ResNet-101 features)."""

    name: ClassVar[str] = "zsl_relation"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "linear", "attribute_dim": 0, "attribute_hidden": 1024,
                                          "relation_hidden": 400, "relation_loss": "mse"}

    def __init__(self, attribute_encoder: nn.Module, relation: nn.Module, relation_loss: str = "mse") -> None:
        super().__init__()
        self.attribute_encoder, self.relation, self.relation_loss = attribute_encoder, relation, relation_loss

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "ZeroShotRelationNet":
        m = config["model"]
        feat = int(torch.tensor(item_shape).prod())
        if m["attribute_dim"] < 1:
            raise ConfigError("model.attribute_dim must be the length of the class attribute vectors.")
        attr = nn.Sequential(nn.Linear(m["attribute_dim"], m["attribute_hidden"]), nn.ReLU(),
                             nn.Linear(m["attribute_hidden"], feat), nn.ReLU())
        relation = nn.Sequential(nn.Linear(2 * feat, m["relation_hidden"]), nn.ReLU(), nn.Linear(m["relation_hidden"], 1),
                                 nn.Sigmoid())
        return cls(attr, relation, m["relation_loss"])

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """Relation scores ``[B, M, N]`` in (0, 1)."""
        classes = self.attribute_encoder(_attributes(batch))  # [B, N, F]
        x = batch.query_x.flatten(2)  # [B, M, F]
        b, m, n = x.shape[0], x.shape[1], classes.shape[1]
        pairs = torch.cat([classes[:, None].expand(b, m, n, -1), x[:, :, None].expand(b, m, n, -1)], -1)
        return self.relation(pairs).squeeze(-1)

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.logits(batch).float()
        loss = relation_loss(scores, batch.query_y, batch.ways, self.relation_loss)
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy(scores.detach(), batch.query_y).mean())}
