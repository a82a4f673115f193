"""Memory-augmented networks trained on sequence tasks: the Neural Turing Machine.

The model is an ordinary recurrent module trained by backpropagation through time (no inner loop):
``loss`` is the binary cross-entropy of the output bits on the scored steps (``SequenceBatch.mask``),
averaged over those bits; the metrics are the paper's cost in **bits per sequence**,
Σ_{t,b} −log₂ p(target bit), and the **bit errors per sequence** Σ |round(σ(ŷ)) − y| that Collier &
Beel report.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fewshot.errors import ConfigError
from fewshot.methods.base import Method
from fewshot.nn.ntm import NTM
from fewshot.tasks.sequences import SequenceBatch


def sequence_costs(logits: torch.Tensor, batch: SequenceBatch) -> dict[str, torch.Tensor]:
    """Per sequence ``[B]``: ``bits`` (cost in bits) and ``bit_errors`` on the masked steps."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), batch.targets, reduction="none").sum(-1)
    wrong = ((logits > 0).float() != batch.targets).float().sum(-1)
    return {"bits": (bce * batch.mask).sum(1) / math.log(2), "bit_errors": (wrong * batch.mask).sum(1)}


class NTMModel(Method):
    """Neural Turing Machine (Graves et al. 2014) on the algorithmic tasks of :mod:`fewshot.data.sequences`."""

    name: ClassVar[str] = "ntm"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "ntm", "norm": "none", "controller": "lstm",
                                          "controller_size": 100, "memory_slots": 128, "memory_width": 20,
                                          "read_heads": 1, "write_heads": 1, "shift_range": 1,
                                          "addressing": "content_and_location", "output_from": "controller_and_reads",
                                          "layout": "paper", "clip": 20.0}

    def __init__(self, net: NTM) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "NTMModel":
        if config["data"]["dataset"] != "sequences":
            raise ConfigError("the NTM trains on sequence tasks: set data.dataset=sequences (and data.sequences.task).")
        from fewshot.data.sequences import sequence_family

        family = sequence_family(config["data"])
        m = config["model"]
        keys = [k for k in cls.defaults if k not in ("backbone", "norm", "width", "hidden")]
        return cls(NTM(family.input_size, family.output_size, **{k: m[k] for k in keys}))

    def predict(self, batch: SequenceBatch) -> torch.Tensor:
        with torch.no_grad():
            return self.net(batch.inputs)

    def loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.net(batch.inputs)
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch.targets, reduction="none").mean(-1)
        loss = (bce * batch.mask).sum() / batch.mask.sum().clamp_min(1)
        costs = sequence_costs(logits.detach(), batch)
        return loss, {"loss": float(loss.detach()), "bits_per_sequence": float(costs["bits"].mean()),
                      "bit_errors": float(costs["bit_errors"].mean())}
