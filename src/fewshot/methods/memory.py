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
                                          "layout": "paper", "clip": 20.0, "compile": False}

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


class MANNModel(Method):
    """MANN with LRUA memory (Santoro et al. 2016) on labelled-sequence episodes, or its LSTM baseline
    (``memory: false``). Cross-entropy over every step of the episode (mean over batch × time)."""

    name: ClassVar[str] = "mann"
    task_kind: ClassVar[str] = "label_sequence"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "mann", "norm": "none", "controller_size": 200,
                                          "memory_slots": 128, "memory_width": 40, "heads": 4, "gamma": 0.95,
                                          "memory": True, "controller_input": "reads", "write_vector": "separate",
                                          "lu_assignment": "per_head", "read_on": "after_write", "five_hot": False,
                                          "compile": False}

    def __init__(self, net: "MANN") -> None:
        super().__init__()
        self.net = net

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "MANNModel":
        from fewshot.nn.mann import MANN

        m = config["model"]
        size = 1
        for s in item_shape:
            size *= s
        for section in ("val", "eval"):
            ways = config[section]["ways"] if section == "val" else config["eval"]["ways"]
            for w in ways if isinstance(ways, list) else [ways]:
                if w != config["train"]["ways"]:
                    raise ConfigError(f"MANN has {config['train']['ways']} output classes (train.ways); set "
                                      f"{section}.ways to {config['train']['ways']} (got {w}).")
        keys = [k for k in cls.defaults if k not in ("backbone", "norm", "width", "hidden")]
        return cls(MANN(size, config["train"]["ways"], **{k: m[k] for k in keys}))

    def logits(self, batch) -> torch.Tensor:
        """Class scores ``[B, T, N]``; five-hot: 1 for the class whose string all five decoded characters name,
        in an extra column N (never a label) when the decoded string names no class of the episode."""
        out = self.net(batch.images, batch.labels, batch.strings)
        if not self.net.five_hot:
            return out
        decoded = out.view(*out.shape[:2], 5, 5).argmax(-1)  # [B, T, 5]
        match = (decoded[:, :, None] == batch.strings[:, None]).all(-1).float()  # [B, T, N]
        return torch.cat([match, 1 - match.amax(-1, keepdim=True)], -1)

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.net.five_hot:  # cross-entropy of each of the five characters
            out = self.net(batch.images, batch.labels, batch.strings)
            chars = torch.gather(batch.strings, 1, batch.labels[..., None].expand(-1, -1, 5))
            loss = F.cross_entropy(out.view(-1, 5).float(), chars.flatten())
            logits = self.logits(batch).detach()
        else:
            logits = self.logits(batch)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten())
        correct = (logits.detach().argmax(-1) == batch.labels).float()
        from fewshot.tasks.sequences import instance_index

        idx = instance_index(batch.labels)
        metrics = {"loss": float(loss.detach()), "accuracy": float(correct.mean())}
        for k in (1, 2, 5, 10):
            sel = idx == k
            if sel.any():
                metrics[f"instance_{k}"] = float(correct[sel].mean())
        return loss, metrics


def instance_accuracy(logits: torch.Tensor, batch, max_instance: int = 10) -> torch.Tensor:
    """Per episode, accuracy (%) at the k-th presentation of its label, k = 1..``max_instance``:
    ``[B, max_instance]`` with NaN where an episode has no k-th presentation."""
    from fewshot.tasks.sequences import instance_index

    correct = (logits.argmax(-1) == batch.labels).float()
    idx = instance_index(batch.labels)
    out = torch.full((len(correct), max_instance), float("nan"))
    for k in range(1, max_instance + 1):
        sel = (idx == k).float()
        count = sel.sum(1)
        acc = (correct * sel).sum(1) / count.clamp_min(1) * 100
        out[:, k - 1] = torch.where(count > 0, acc.cpu(), torch.tensor(float("nan")))
    return out


SHARPEN = ("softabs", "softmax", "abs", "cosh")
KEYS = ("fp", "bipolar", "binary")


def softabs(x: torch.Tensor, steepness: float = 10.0) -> torch.Tensor:
    """softabs(α) = σ(β(α − 0.5)) + σ(β(−α − 0.5)), β = ``steepness`` (Karunaratne et al. 2021): ≈ |α| away
    from 0, near zero for quasi-orthogonal keys of either sign."""
    return torch.sigmoid(steepness * (x - 0.5)) + torch.sigmoid(steepness * (-x - 0.5))


class BATMANN(Method):
    """Binarized key-value memory MANN, after Karunaratne et al., Nat. Commun. 12:2468 (2021).

    A CNN controller maps images to d-dimensional keys; the support set is written as an explicit key-value
    memory (keys: support features, values: one-hot labels), rebuilt every episode. Training read:
    α = cosine(q, K), w = s(α) / Σ s(α) with the sharpening s (``softabs``, ``softmax`` = exp, ``abs``; ``cosh`` is
    the BATMANN code's exponential "softabs", a labelled parity option), class scores w·V used as logits for
    cross-entropy (as the code). Inference (``model.eval()``): keys and queries as ``fp`` features,
    ``bipolar`` sign(·) ∈ {−1, +1} or ``binary`` (sign + 1)/2 ∈ {0, 1}; similarity = (1/d) q·k (bipolar),
    1/2 + (1/(2d)) q·k (binary) or cosine (fp); no sharpening; scores = similarity·V.
    ``train_keys=bipolar`` stores sign()-ed support keys during training too (binarized controllers).
    """

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "batmann"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "batmann", "norm": "none", "dim": 512, "width": 128,
                                          "binarize": "none", "first_last": "fp", "sharpen": "softabs",
                                          "steepness": 10.0, "train_keys": "fp", "infer_keys": "bipolar"}

    def __init__(self, controller: torch.nn.Module, dim: int = 512, sharpen: str = "softabs", steepness: float = 10.0,
                 train_keys: str = "fp", infer_keys: str = "bipolar") -> None:
        super().__init__()
        if sharpen not in SHARPEN or train_keys not in ("fp", "bipolar") or infer_keys not in KEYS:
            raise ConfigError(f"BATMANN needs model.sharpen in {SHARPEN}, model.train_keys fp or bipolar and "
                              f"model.infer_keys in {KEYS} (got {sharpen!r}, {train_keys!r}, {infer_keys!r}).")
        self.encoder, self.dim, self.sharpen, self.steepness = controller, dim, sharpen, steepness
        self.train_keys, self.infer_keys = train_keys, infer_keys

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "BATMANN":
        from fewshot.nn.binary import BatmannController

        m = config["model"]
        if len(item_shape) != 3:
            raise ConfigError("BATMANN's controller needs image items [C, H, W] (e.g. Omniglot at data.image_size=32).")
        controller = BatmannController(item_shape[0], item_shape[-1], m["dim"], m["width"], m["binarize"], m["first_last"])
        return cls(controller, m["dim"], m["sharpen"], m["steepness"], m["train_keys"], m["infer_keys"])

    def _sharpen(self, a: torch.Tensor) -> torch.Tensor:
        if self.sharpen == "softabs":
            return softabs(a, self.steepness)
        if self.sharpen == "softmax":
            return a.exp()
        if self.sharpen == "cosh":  # the BATMANN code's exp(β(α − 0.5)) + exp(β(−α − 0.5)) ∝ cosh(βα)
            return torch.exp(self.steepness * (a - 0.5)) + torch.exp(self.steepness * (-a - 0.5))
        return a.abs()

    def logits(self, batch) -> torch.Tensor:
        from fewshot.nn.binary import sign_activation

        ns = batch.support_x.shape[1]
        z = self.encode(self.encoder, torch.cat([batch.support_x, batch.query_x], 1))
        keys, queries = z[:, :ns], z[:, ns:]
        values = F.one_hot(batch.support_y, batch.ways).to(z.dtype)  # [B, n, N]
        if self.training:
            if self.train_keys == "bipolar":
                keys = sign_activation(keys)
            sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)
            s = self._sharpen(sims)
            w = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
            return w @ values
        if self.infer_keys == "fp":
            sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)
        else:
            kq, kk = sign_activation(queries), sign_activation(keys)
            if self.infer_keys == "bipolar":
                sims = kq @ kk.transpose(1, 2) / self.dim
            else:
                kq, kk = (kq + 1) / 2, (kk + 1) / 2
                sims = 0.5 + kq @ kk.transpose(1, 2) / (2 * self.dim)
        return sims @ values
