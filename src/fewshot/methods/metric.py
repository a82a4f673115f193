"""Metric-based methods: classify a query by its distance to the support set in an embedding space."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.methods.base import Method
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

    cache_embeddings: ClassVar[bool] = True
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


SIMILARITIES = ("cosine", "dot", "neg_sqeuclidean")


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """c(a, b) for ``a [B, M, D]``, ``b [B, n, D]`` → ``[B, M, n]``; cosine normalizes *both* sides."""
    if kind == "cosine":
        return F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(b, dim=-1, eps=1e-8).transpose(1, 2)
    if kind == "dot":
        return a @ b.transpose(1, 2)
    if kind == "neg_sqeuclidean":
        return -pairwise_distance(a, b, "sqeuclidean")
    raise ConfigError(f"unknown similarity {kind!r} (model.similarity); use one of {SIMILARITIES}.")


def class_logsumexp(scores: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """log Σ_{i: y_i = k} exp(scores_i) per class: ``scores [B, M, n]``, ``y [B, n]`` → ``[B, M, ways]``."""
    onehot = F.one_hot(y, ways).to(scores.dtype)  # [B, n, ways]
    masked = scores[..., None] + torch.log(onehot)[:, None]  # -inf where item i is not of class k
    return torch.logsumexp(masked, dim=2)


class FullContextEmbedding(nn.Module):
    """Full context embeddings of Matching Networks (Vinyals et al. 2016, appendix).

    Support: g(x_i, S) = →h_i + ←h_i + g′(x_i), a bidirectional LSTM (hidden D) over the support
    sequence, directions summed. Query: an attention LSTM run for K steps,
        ĥ_k, c_k = LSTM(f′(x̂), [h_{k−1}, r_{k−1}], c_{k−1});  h_k = ĥ_k + f′(x̂);
        r_k = Σ_i softmax_i(h_kᵀ g(x_i)) g(x_i);          f(x̂, S) = h_K,  h₀ = r₀ = 0,
    implemented as an LSTM cell whose input is [f′(x̂); r_{k−1}] and whose hidden state is h_{k−1}.
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)
        self.steps, self.dim = steps, dim

    def embed_support(self, g: torch.Tensor) -> torch.Tensor:
        out, _ = self.support_lstm(g)  # [B, n, 2D]
        return out[..., : self.dim] + out[..., self.dim:] + g

    def embed_query(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, m, d = f.shape
        flat = f.reshape(b * m, d)
        h = torch.zeros_like(flat)
        c = torch.zeros_like(flat)
        r = torch.zeros_like(flat)
        for _ in range(self.steps):
            h_hat, c = self.query_cell(torch.cat([flat, r], -1), (h, c))
            h = h_hat + flat
            attention = torch.softmax(h.view(b, m, d) @ g.transpose(1, 2), dim=-1)  # over support items
            r = (attention @ g).reshape(b * m, d)
        return h.view(b, m, d)


class MatchingNet(Method):
    """Matching Networks (Vinyals et al., NeurIPS 2016).

    P(ŷ = k | x̂, S) = Σ_{i: y_i = k} a(x̂, x_i),  a(x̂, x_i) = softmax_i( c(f(x̂, S), g(x_i, S)) · scale ),
    with the softmax over *support items* and c the cosine similarity (Eq. 1–2). ``logits`` returns
    log P directly (a logsumexp per class minus the logsumexp over all items), so the loss is the
    negative log-likelihood with no second softmax. ``fce`` adds full context embeddings;
    ``scale`` (1 in the paper) multiplies the similarities; ``learn_scale`` makes it a meta-learned parameter
    (stored as its logarithm, started at ``scale``) — not in the paper, offered because a fixed cosine scale
    caps how sharp the attention can be.
    """

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "matching"
    defaults: ClassVar[dict[str, Any]] = {"similarity": "cosine", "fce": False, "fce_steps": 5, "scale": 1.0,
                                          "learn_scale": False}

    def __init__(self, encoder: nn.Module, similarity: str = "cosine", fce: bool = False, fce_steps: int = 5,
                 scale: float = 1.0, embed_dim: int | None = None, learn_scale: bool = False) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ConfigError(f"unknown similarity {similarity!r} (model.similarity); use one of {SIMILARITIES}.")
        self.encoder, self.similarity = encoder, similarity
        if learn_scale and scale <= 0:
            raise ConfigError(f"a learned model.scale starts at model.scale, which must be positive (got {scale}).")
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log()) if learn_scale else None
        self._scale = scale
        self.fce = FullContextEmbedding(embed_dim or _embed_dim(encoder), fce_steps) if fce else None

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "MatchingNet":
        m = config["model"]
        encoder = cls.build_encoder(config, item_shape)
        dim = _embed_dim(encoder, item_shape)
        return cls(encoder, m["similarity"], m["fce"], m["fce_steps"], m["scale"], dim, m["learn_scale"])

    @property
    def scale(self) -> torch.Tensor | float:
        return self.log_scale.exp() if self.log_scale is not None else self._scale

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """log P(ŷ = k | x̂, S): ``[B, N*Q, N]``."""
        ns = batch.support_x.shape[1]
        z = self.encode(self.encoder, torch.cat([batch.support_x, batch.query_x], 1))
        g, f = z[:, :ns], z[:, ns:]
        if self.fce is not None:
            g = self.fce.embed_support(g)
            f = self.fce.embed_query(f, g)
        scores = similarity(f, g, self.similarity) * self.scale  # [B, M, n]
        return class_logsumexp(scores, batch.support_y, batch.ways) - torch.logsumexp(scores, -1, keepdim=True)


def _embed_dim(encoder: nn.Module, item_shape: tuple[int, ...] | None = None) -> int:
    """Output size of ``encoder`` (a dry run on one zero item when the shape is known)."""
    if item_shape is not None:
        was = encoder.training
        encoder.eval()
        with torch.no_grad():
            dim = encoder(torch.zeros(2, *item_shape)).flatten(1).shape[1]
        encoder.train(was)
        return dim
    for m in reversed(list(encoder.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, nn.Conv2d):
            return m.out_channels
    raise ConfigError("cannot infer the embedding size of this encoder; pass embed_dim.")


PRECISION_TRANSFORMS = ("softplus", "sigmoid", "sigmoid4", "learned")
COVARIANCES = ("radius", "diagonal", "constant")


class GaussianProtoNet(Method):
    """Gaussian Prototypical Networks (Fort 2017, arXiv:1708.02735).

    The encoder emits D embedding channels and s_dim raw precision channels (1 for ``radius``,
    D for ``diagonal``). Precision s = 1 + softplus(s_raw) (``softplus``, Fort's default), 1 + σ(s_raw)
    (``sigmoid``), 1 + 4σ(s_raw) (``sigmoid4``) or offset + scale·softplus(s_raw / div) with trainable
    scalars (``learned``). Per class:
        p_c = Σ_{i∈S_c} s_i ⊙ x_i / Σ_{i∈S_c} s_i,      S_c = Σ_{i∈S_c} s_i,
        d_c(x̂) = sqrt( Σ_j S_{c,j} (x̂_j − p_{c,j})² )   (not squared; the query's own s is unused),
    and logits −d_c. ``constant`` is ProtoNet with the non-squared Euclidean distance.
    :meth:`confidence` returns each query's own precision, a confidence / out-of-distribution score.
    """

    cache_embeddings: ClassVar[bool] = True
    name: ClassVar[str] = "gaussian"
    defaults: ClassVar[dict[str, Any]] = {"covariance": "radius", "transform": "softplus", "embed_dim": 64}

    def __init__(self, encoder: nn.Module, covariance: str = "radius", transform: str = "softplus",
                 embed_dim: int = 64) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise ConfigError(f"unknown model.covariance {covariance!r}; use one of {COVARIANCES}.")
        if transform not in PRECISION_TRANSFORMS:
            raise ConfigError(f"unknown model.transform {transform!r}; use one of {PRECISION_TRANSFORMS}.")
        self.encoder, self.covariance, self.transform, self.embed_dim = encoder, covariance, transform, embed_dim
        if transform == "learned":
            self.offset, self.factor, self.div = (nn.Parameter(torch.ones(())) for _ in range(3))

    @staticmethod
    def precision_channels(covariance: str, embed_dim: int) -> int:
        return {"radius": 1, "diagonal": embed_dim, "constant": 0}[covariance]

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "GaussianProtoNet":
        m = config["model"]
        if m["covariance"] not in COVARIANCES:
            raise ConfigError(f"unknown model.covariance {m['covariance']!r}; use one of {COVARIANCES}.")
        out = m["embed_dim"] + cls.precision_channels(m["covariance"], m["embed_dim"])
        # no ReLU on the last layer: the precision channels must be able to go negative
        encoder = cls.build_encoder(config, item_shape, out_width=out, final_relu=False)
        dim = _embed_dim(encoder, item_shape)
        if dim != out:  # the split into embedding and precision channels assumes a 1x1 output map
            raise ConfigError(f"Gaussian prototypical networks need an encoder with a 1x1 output map; {m['backbone']} "
                              f"on items {tuple(item_shape)} gives {dim // out}x more values (use 28x28 inputs with conv4).")
        return cls(encoder, m["covariance"], m["transform"], m["embed_dim"])

    def _precision(self, raw: torch.Tensor) -> torch.Tensor:
        if self.transform == "softplus":
            return 1 + F.softplus(raw)
        if self.transform == "sigmoid":
            return 1 + torch.sigmoid(raw)
        if self.transform == "sigmoid4":
            return 1 + 4 * torch.sigmoid(raw)
        return self.offset + self.factor * F.softplus(raw / self.div)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, n, *item]`` → embeddings ``[B, n, D]`` and precisions ``[B, n, 1 or D]``."""
        z = self.encode(self.encoder, x)
        emb = z[..., : self.embed_dim]
        if self.covariance == "constant":
            return emb, torch.ones_like(emb[..., :1])
        return emb, self._precision(z[..., self.embed_dim:])

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        ns = batch.support_x.shape[1]
        emb, prec = self.embed(torch.cat([batch.support_x, batch.query_x], 1))
        xs, ss, xq = emb[:, :ns], prec[:, :ns].expand(-1, -1, self.embed_dim), emb[:, ns:]
        b, d, n = xs.shape[0], self.embed_dim, batch.ways
        index = batch.support_y[..., None].expand(-1, -1, d)
        class_prec = xs.new_zeros(b, n, d).scatter_add_(1, index, ss)  # S_c
        prototypes = xs.new_zeros(b, n, d).scatter_add_(1, index, ss * xs) / class_prec.clamp_min(1e-12)
        if self.covariance == "constant":
            class_prec = torch.ones_like(class_prec)
        sq = ((xq[:, :, None] - prototypes[:, None]) ** 2 * class_prec[:, None]).sum(-1)  # [B, M, N]
        return -sq.clamp_min(1e-12).sqrt()

    def confidence(self, batch: TaskBatch) -> torch.Tensor:
        """Each query's own precision (mean over dimensions for ``diagonal``): ``[B, N*Q]``."""
        with torch.no_grad():
            return self.embed(batch.query_x)[1].mean(-1)

