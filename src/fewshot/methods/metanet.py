"""Meta Networks — Munkhdalai & Yu, ICML 2017 ("Full" Omniglot model of the Meta Networks code).

Two networks of the same architecture, ``depth`` × [conv 3×3 (no bias) → ReLU → max-pool 2, ceil mode]
→ fc1 (ReLU) → fc2, no biases anywhere: the **base learner** b classifies, the **dynamic representation**
(key network) u gives memory keys (its fc1 output, no ReLU; its fc2 only yields a loss for meta information).

* Meta information = loss gradients w.r.t. slow weights, **constants** (detached), each coordinate
  preprocessed to [max(log(|g| + ε)/k, −1), clip(e^k·g, −1, 1)], k = 7.
* Task-level fast weights for u: the support set is cut into ``chunks`` parts; per part, u's gradient goes
  coordinate-wise through an LSTM(2 → 20) + Linear(20 → 1) whose state carries across parts (one LSTM for
  conv weights, one for fc weights); the last output is W*_u. The coordinates of all conv (all fc) weights
  run in cache-sized blocks of coordinates, one LSTM step per chunk, kind and block (:func:`lstm_step`,
  gate-major: its element-wise arithmetic over ~150k × 80 values is most of an episode's time). With
  ``chunks = 1`` the LSTM never sees a previous state, so W_hh gets no gradient (None, not zeros).
* Example-level fast weights for b: per support example i, b's gradient → coordinate-wise MLP 2 → 20 → 20 → 1
  (ReLU; one for conv, one for fc weights) → W*_i, stored with the key r_i = u(x_i; W_u, W*_u).
* Layer augmentation: every hidden layer outputs ReLU(slow(x)) + ReLU(fast(x)); the last sums slow and fast.
* Query read: a = softmax_i(cos(r_q, r_i)), W*_q = Σ_i a_i W*_i; predict with b(x_q; W_b, W*_q).
Only the query loss trains slow weights and meta-learners. Per-example gradients come from
``torch.func.vmap(grad)`` over the support set (detached), not N separate backward passes; the
example-level MLP likewise runs once per kind over the concatenated coordinates. Separate
output layers for the training and test way counts (``ways_train`` / ``ways_test``) let a model trained
on N-way tasks be tested on M-way tasks; any shot works at test time.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fewshot.errors import ConfigError
from fewshot.methods.base import Method
from fewshot.tasks.batch import TaskBatch


def preprocess_gradient(g: torch.Tensor, k: float = 7.0, eps: float = 1e-12) -> torch.Tensor:
    """Each coordinate → [max(log(|g| + ε)/k, −1), clip(e^k·g, −1, 1)] (Andrychowicz et al.'s preprocessing): ``[..., 2]``."""
    return torch.stack([(torch.log(g.abs() + eps) / k).clamp_min(-1.0), (math.exp(k) * g).clamp(-1.0, 1.0)], -1)


def lstm_step(g: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None, w_ih: torch.Tensor,
              w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, w_out: torch.Tensor,
              b_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of a coordinate-wise LSTM (``nn.LSTMCell`` arithmetic, gate order i, f, g, o) and its output.

    ``g`` ``[n]`` gradient coordinates (preprocessed here to x ``[n, 2]``), ``h``/``c`` ``[n, hidden]`` or None
    for the zero start state; returns (h', c', out ``[n]``): gates = W_ih x + W_hh h + b;
    c' = σ(f)·c + σ(i)·tanh(u) (u the cell-input gate); h' = σ(o)·tanh(c'); out = w_out·h' + b_out.
    The gates are computed **gate-major**, ``[4, n, hidden]``, so that each gate is one contiguous block: the
    element-wise operations on the ``[n, hidden]`` column views of an ``[n, 4·hidden]`` matrix are 3–8× slower
    on this CPU (sigmoid: 2.26 vs 0.29 ms on 16,384 × 20 values).
    """
    x = preprocess_gradient(g)
    hidden = w_hh.shape[1]
    gates = (b_ih + b_hh).view(4, 1, hidden)  # [4, n, hidden] after the products below
    if h is not None:
        gates = torch.baddbmm(gates, h.expand(4, -1, -1), w_hh.view(4, hidden, hidden).transpose(1, 2))
    gates = torch.baddbmm(gates, x.expand(4, -1, -1), w_ih.view(4, hidden, -1).transpose(1, 2))
    i_f = torch.sigmoid(gates[:2])
    c_new = i_f[0] * torch.tanh(gates[2])
    if c is not None:
        c_new = torch.addcmul(c_new, i_f[1], c)
    h = torch.sigmoid(gates[3]) * torch.tanh(c_new)
    return h, c_new, torch.addmm(b_out, h, w_out.t()).squeeze(-1)


def mlp_3(g: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
          w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise example-level MLP 2 → h → h → 1 (ReLU) on gradient coordinates ``g`` (preprocessed
    here): ``[...]``."""
    x = preprocess_gradient(g)
    return F.linear(F.relu(F.linear(F.relu(F.linear(x, w0, b0)), w1, b1)), w2, b2).squeeze(-1)


class AugmentedNet(nn.Module):
    """The shared architecture of b and u: slow weights as parameters; fast weights passed to :meth:`forward`."""

    def __init__(self, in_channels: int, width: int, depth: int, feature: int, outputs: dict[str, int]) -> None:
        super().__init__()
        self.convs = nn.ParameterList()
        c = in_channels
        for _ in range(depth):
            w = nn.Parameter(torch.empty(width, c, 3, 3))
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            self.convs.append(w)
            c = width
        self.fc1 = nn.Parameter(torch.empty(feature, width))
        nn.init.kaiming_uniform_(self.fc1, a=math.sqrt(5))
        self.heads = nn.ParameterDict()
        for name, n in outputs.items():
            self.heads[name] = nn.Parameter(torch.empty(n, feature))
            nn.init.kaiming_uniform_(self.heads[name], a=math.sqrt(5))

    def forward(self, x: torch.Tensor, fast: dict[str, torch.Tensor] | None = None, head: str = "ways_train",
                key: bool = False) -> torch.Tensor:
        """Logits (or, with ``key``, the fc1 features without ReLU); ``fast`` maps parameter names to fast weights."""
        fast = fast or {}
        h = x
        for i, w in enumerate(self.convs):
            out = F.relu(F.conv2d(h, w, padding=1))
            if f"convs.{i}" in fast:
                out = out + F.relu(F.conv2d(h, fast[f"convs.{i}"], padding=1))
            h = F.max_pool2d(out, 2, ceil_mode=True)
        h = h.flatten(1)
        z = F.linear(h, self.fc1)
        if "fc1" in fast:
            if key:
                return z + F.linear(h, fast["fc1"])
            return self._head(F.relu(z) + F.relu(F.linear(h, fast["fc1"])), fast, head)
        if key:
            return z
        return self._head(F.relu(z), fast, head)

    def _head(self, h: torch.Tensor, fast: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        out = F.linear(h, self.heads[head])
        if f"heads.{head}" in fast:
            out = out + F.linear(h, fast[f"heads.{head}"])
        return out


class MetaNetwork(Method):
    """Meta Networks (see the module docstring)."""

    name: ClassVar[str] = "metanet"
    needs_grad_at_test: ClassVar[bool] = True  # meta information = gradients, also at test time
    supports_bf16: ClassVar[bool] = False  # the per-query fast convolutions under vmap fail under autocast
    defaults: ClassVar[dict[str, Any]] = {"backbone": "metanet", "norm": "none", "width": 64, "depth": 5,
                                          "feature": 64, "chunks": 5, "meta_hidden": 20, "task_level": True}

    def __init__(self, in_channels: int, ways_train: int, ways_test: int, width: int = 64, depth: int = 5,
                 feature: int = 64, chunks: int = 5, meta_hidden: int = 20, task_level: bool = True) -> None:
        super().__init__()
        heads = {"ways_train": ways_train} if ways_test == ways_train else {"ways_train": ways_train, "ways_test": ways_test}
        self.base = AugmentedNet(in_channels, width, depth, feature, heads)
        self.key = AugmentedNet(in_channels, width, depth, feature, heads)
        self.ways_train, self.ways_test, self.chunks, self.task_level = ways_train, ways_test, chunks, task_level
        # coordinates per meta-learner call: cache-sized blocks (the gate-major LSTM step over 152k coordinates,
        # forward + backward, is 1.6x faster in blocks of 4,096 than in one pass; see
        # benchmarks/speed/metanet-step-time.json)
        self.block = 4096
        self.task_lstm = nn.ModuleDict({k: nn.LSTMCell(2, meta_hidden) for k in ("conv", "fc")})
        self.task_out = nn.ModuleDict({k: nn.Linear(meta_hidden, 1) for k in ("conv", "fc")})
        self.example_mlp = nn.ModuleDict({k: nn.Sequential(nn.Linear(2, meta_hidden), nn.ReLU(),
                                                           nn.Linear(meta_hidden, meta_hidden), nn.ReLU(),
                                                           nn.Linear(meta_hidden, 1)) for k in ("conv", "fc")})
        # Fast weights start at zero (the last layers of the meta-learners are zero-initialized), so training
        # starts from the plain base learner: random fast weights of the slow weights' size per coordinate
        # would multiply activations through the augmented layers (measured: losses in the millions).
        for last in [*self.task_out.values(), *(mlp[-1] for mlp in self.example_mlp.values())]:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "MetaNetwork":
        if len(item_shape) != 3:
            raise ConfigError("Meta Networks use convolutional learners: items must be images [C, H, W].")
        ways_test = set(config["eval"]["ways"]) | {config["val"]["ways"]}
        if len(ways_test) > 1:
            raise ConfigError(f"Meta Networks have one test output layer; use one way count for val.ways and eval.ways "
                              f"(got {sorted(ways_test)}).")
        m = config["model"]
        return cls(item_shape[0], config["train"]["ways"], ways_test.pop(), m["width"], m["depth"], m["feature"],
                   m["chunks"], m["meta_hidden"], m["task_level"])

    def _head(self, ways: int) -> str:
        if ways == self.ways_train:
            return "ways_train"
        if ways == self.ways_test:
            return "ways_test"
        raise ConfigError(f"this Meta Network has output layers for {self.ways_train}- and {self.ways_test}-way tasks, "
                          f"not {ways}-way.")

    @staticmethod
    def _kind(name: str) -> str:
        return "conv" if name.startswith("convs") else "fc"

    def _names(self, net: AugmentedNet, head: str) -> list[str]:
        return [n for n, _ in net.named_parameters() if not n.startswith("heads.") or n == f"heads.{head}"]

    def _by_kind(self, names: list[str]) -> dict[str, list[str]]:
        kinds: dict[str, list[str]] = {"conv": [], "fc": []}
        for n in names:
            kinds[self._kind(n)].append(n)
        return {k: v for k, v in kinds.items() if v}

    def _task_fast_weights(self, sx: torch.Tensor, sy: torch.Tensor, head: str) -> dict[str, torch.Tensor]:
        """W*_u from an LSTM over the (detached, preprocessed) gradients of u on the support chunks."""
        names = self._names(self.key, head)
        params = dict(self.key.named_parameters())
        kinds = self._by_kind(names)
        state: dict[str, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {}
        out: dict[str, torch.Tensor] = {}
        for chunk in torch.arange(len(sx)).chunk(self.chunks):
            with torch.enable_grad():
                loss = F.cross_entropy(self.key(sx[chunk], head=head), sy[chunk])
                grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
            for kind, members in kinds.items():
                g = torch.cat([grads[n].detach().reshape(-1) for n in members])  # [n]
                lstm, head_out = self.task_lstm[kind], self.task_out[kind]
                parts = g.split(self.block)
                states = state.setdefault(kind, [(None, None)] * len(parts))
                outs = []
                for j, part in enumerate(parts):
                    h, c, o = lstm_step(part, *states[j], lstm.weight_ih, lstm.weight_hh, lstm.bias_ih,
                                        lstm.bias_hh, head_out.weight, head_out.bias)
                    states[j] = (h, c)
                    outs.append(o)
                out[kind] = torch.cat(outs)
        return {n: w.view(params[n].shape) for kind, members in kinds.items()
                for n, w in zip(members, out[kind].split([params[n].numel() for n in members]))}

    def _example_fast_weights(self, sx: torch.Tensor, sy: torch.Tensor, head: str) -> dict[str, torch.Tensor]:
        """W*_i ``[n_support, *shape]`` per base-learner parameter, from per-example detached gradients."""
        names = self._names(self.base, head)
        params = {n: p.detach() for n, p in self.base.named_parameters() if n in names}

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.base, {**dict(self.base.named_parameters()), **p}, (x[None],), {"head": head})
            return F.cross_entropy(logits, y[None])

        with torch.enable_grad():
            grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, sx, sy)
        fast: dict[str, torch.Tensor] = {}
        for kind, members in self._by_kind(names).items():
            g = torch.cat([grads[n].detach().reshape(len(sx), -1) for n in members], 1)  # [n_support, n]
            mlp = self.example_mlp[kind]
            # blocks of coordinates (all support items at once: [n_support, block, hidden] stays small)
            w = torch.cat([mlp_3(part, mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias, mlp[4].weight,
                                 mlp[4].bias) for part in g.split(self.block, 1)], 1)
            fast.update({n: part.reshape(len(sx), *params[n].shape)
                         for n, part in zip(members, w.split([params[n].numel() for n in members], 1))})
        return fast

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        head = self._head(batch.ways)
        outs = []
        for i in range(batch.num_tasks):
            sx, sy, qx = batch.support_x[i], batch.support_y[i], batch.query_x[i]
            fast_u = self._task_fast_weights(sx, sy, head) if self.task_level else {}
            keys = F.normalize(self.key(sx, fast_u, head, key=True), dim=-1)  # r_i
            queries = F.normalize(self.key(qx, fast_u, head, key=True), dim=-1)  # r_q
            attention = torch.softmax(queries @ keys.t(), -1)  # [n_query, n_support]
            fast_b = self._example_fast_weights(sx, sy, head)
            fast_q = {n: torch.tensordot(attention, w, dims=1) for n, w in fast_b.items()}  # W*_q = Σ_i a_i W*_i
            outs.append(vmap(lambda x, f: self.base(x[None], f, head)[0])(qx, fast_q))  # b(x_q; W_b, W*_q)
        return torch.stack(outs)

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(batch)
