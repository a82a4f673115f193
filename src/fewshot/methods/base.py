"""The contract every method keeps (DESIGN.md, layer 4).

A method is an ``nn.Module`` with

* ``loss(batch) -> (loss, metrics)`` for meta-training (metrics are floats, e.g. accuracy);
* ``predict(batch) -> logits [B, N*Q, N]`` for the query items, building no graph it does not need;
* ``train_step(batch, optimizer) -> metrics``, which methods whose outer update is not the gradient
  of one loss (Reptile, meta-RL) override.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.tasks.batch import TaskBatch


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when a forward pass of ``module`` normalizes with the statistics of its own batch."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            return True
    return False


class Method(nn.Module):
    """Base class: a shared default ``train_step`` and per-task encoding."""

    name: ClassVar[str] = ""
    #: True when raw items reach the model only through ``self.encoder`` applied to each item on its own
    #: (metric methods), so evaluation may embed every test item once (``evaluator.embedded_dataset``)
    cache_embeddings: ClassVar[bool] = False
    #: False for methods that update their weights themselves (Reptile's interpolation): the trainer then
    #: neither steps the learning-rate schedule nor logs an ``lr``
    uses_optimizer: ClassVar[bool] = True
    #: False where training cannot run under bf16 autocast (precision=bf16 is then refused in one sentence)
    supports_bf16: ClassVar[bool] = True
    #: the method's own ``model`` settings and defaults (may also change shared ones, e.g. ``backbone``)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.grad_clip: float | None = None
        #: set by the trainer when meta-training runs over several processes (fewshot.engine.distributed)
        self.world = None
        self.meta_batch_total: int | None = None

    @staticmethod
    def build_encoder(config: dict[str, Any], item_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
        """The backbone named by ``model.backbone`` / ``width`` / ``norm`` / ``hidden``."""
        from fewshot.nn import build_backbone

        m = config["model"]
        return build_backbone(m["backbone"], item_shape, m["width"], m["norm"], tuple(m["hidden"]), **kwargs)

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "Method":
        """Build from a resolved config: the backbone, then ``cls(encoder, **own model settings)``."""
        shared = ("backbone", "width", "norm", "hidden")
        return cls(cls.build_encoder(config, item_shape),
                   **{k: config["model"][k] for k in cls.defaults if k not in shared})

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """Class scores ``[B, N*Q, N]`` for the query items (logits or log-probabilities)."""
        raise NotImplementedError

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of :meth:`logits` on the query labels (log-probabilities pass through unchanged)."""
        logits = self.logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy(logits.detach(), batch.query_y).mean())}

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(batch)

    def check_world(self, world: Any) -> None:
        """Refuse (``ConfigError``) settings that cannot be split over processes; the trainer calls it at start."""

    def attack_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Query logits as a differentiable function of ``batch.query_x`` (white-box attacks at test time)."""
        with torch.enable_grad():
            return self.logits(batch)

    def train_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer,
                   autocast: Any = None) -> dict[str, float]:
        """One outer update: zero grads, loss, backward, optional clipping, step."""
        optimizer.zero_grad(set_to_none=True)
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            loss, metrics = self.loss(batch)
        loss.backward()
        if self.world is not None and self.world.size > 1:  # average the meta-gradient over the processes
            self.world.reduce_gradients(list(self.parameters()), batch.num_tasks, self.meta_batch_total)
        if self.grad_clip:
            norms = [nn.utils.clip_grad_norm_(group, self.grad_clip) for group in self.clip_groups()]
            metrics["grad_norm"] = float(torch.stack(norms).norm())
        optimizer.step()
        return metrics

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the meta-optimizer (one group by default)."""
        return [{"params": list(self.parameters())}]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norms are clipped separately (``train.grad_clip``)."""
        return [list(self.parameters())]

    @staticmethod
    def encode(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x [B, n, *item]`` → ``[B, n, *out]`` in float32 (``[B, n, D]`` for vector encoders).

        Items of all tasks go through one forward pass unless the encoder normalizes with batch
        statistics, in which case each task is its own batch (statistics never mix tasks).
        """
        b, n = x.shape[:2]
        if b > 1 and uses_batch_statistics(encoder):
            return torch.stack([encoder(x[i]).float() for i in range(b)])
        out = encoder(x.reshape(b * n, *x.shape[2:])).float()
        return out.view(b, n, *out.shape[1:])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy ``[B]`` of ``logits [B, M, N]`` against ``labels [B, M]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)
