"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014) as a sequence module.

Step order (the paper is silent; fixed here as in snowkylin/ntm and Collier & Beel): controller on
[x_t, r_{t−1}] → head parameters → addressing against M_{t−1} → read r_t from M_{t−1} → write M_t →
output y_t = W_o[c_t, r_t] (``output_from="controller_and_reads"``) or W_o c_t (``"controller"``).
Memory operations are the equation functions of :mod:`fewshot.nn.memory`.

Two layouts:

* ``paper`` (Collier & Beel's reliable defaults): heads read the controller output h_t; a read head
  emits key (tanh), β (softplus), g (sigmoid), shift (softmax over −S..S) and γ (1 + softplus); a write
  head adds erase e (sigmoid) and add a (tanh); raw head parameters clipped to ±``clip``; memory
  initialized to the constant 1e-6, reads to 0, weightings one-hot on slot 0, controller state 0.
* ``reverse_code`` (parity with the NTM reverse code, ``spec/memory.md`` §1.5): one read + one write head,
  each a Linear(controller → 2W + 6) driven by the LSTM **cell** state; erase and add merged as
  M ← w·a + (1 − w)·M; memory reset to sigmoid of a learned Linear(1 → N·W) at 0, h and c to learned
  Linear(1 → H) at 0, head weightings to 0 and reads to 0 (the reverse code draws random reads at every
  reset; ours are deterministic). Parameter counts match the code's m1/m2/m3 (68,580 / 211,780 / 89,940).

``compile=True`` runs :meth:`NTM.step` through ``torch.compile`` (the dozens of small element-wise ops of one
step fused): the same numbers (tested), 2–3× faster per training step on a CPU after a one-off compilation
of ~1 min (``benchmarks/speed/compile-step-time.json``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.nn import memory as mem
from fewshot.nn.compiled import compiled

LAYOUTS = ("paper", "reverse_code")
ADDRESSING = ("content", "location", "content_and_location")


class NTM(nn.Module):
    """A Neural Turing Machine over sequences ``x [B, T, input_size]`` → logits ``[B, T, output_size]``."""

    def __init__(self, input_size: int, output_size: int, controller: str = "lstm", controller_size: int = 100,
                 memory_slots: int = 128, memory_width: int = 20, read_heads: int = 1, write_heads: int = 1,
                 shift_range: int = 1, addressing: str = "content_and_location",
                 output_from: str = "controller_and_reads", layout: str = "paper", clip: float = 20.0,
                 compile: bool = False) -> None:
        super().__init__()
        self.compile_step = compile  # run the time step through torch.compile (training and evaluation, not recording)
        if layout not in LAYOUTS or addressing not in ADDRESSING or controller not in ("lstm", "feedforward"):
            raise ConfigError(f"NTM needs model.layout in {LAYOUTS}, model.addressing in {ADDRESSING} and "
                              f"model.controller lstm or feedforward (got {layout!r}, {addressing!r}, {controller!r}).")
        if output_from not in ("controller", "controller_and_reads"):
            raise ConfigError("model.output_from must be controller or controller_and_reads.")
        if 2 * shift_range >= memory_slots:
            raise ConfigError(f"model.shift_range={shift_range} needs more than {2 * shift_range} memory slots.")
        if layout == "reverse_code" and (controller != "lstm" or read_heads != 1 or write_heads != 1):
            raise ConfigError("the reverse_code layout has an LSTM controller with one read and one write head.")
        self.n, self.w, self.s = memory_slots, memory_width, shift_range
        self.reads, self.writes, self.layout = read_heads, write_heads, layout
        self.addressing, self.output_from, self.clip = addressing, output_from, clip
        self.controller_kind, self.hidden = controller, controller_size
        cin = input_size + read_heads * memory_width
        if controller == "lstm":
            self.controller = nn.LSTMCell(cin, controller_size)
        else:
            self.controller = nn.Sequential(nn.Linear(cin, controller_size), nn.ReLU())
        addr = memory_width + 3 + (2 * shift_range + 1)  # key, β, g, shift, γ
        if layout == "reverse_code":
            self.read_params = nn.ModuleList([nn.Linear(controller_size, 2 * memory_width + 2 * shift_range + 4)])
            self.write_params = nn.ModuleList([nn.Linear(controller_size, 2 * memory_width + 2 * shift_range + 4)])
            self.memory_init = nn.Linear(1, memory_slots * memory_width)
            self.h_init, self.c_init = nn.Linear(1, controller_size), nn.Linear(1, controller_size)
        else:
            self.read_params = nn.ModuleList(nn.Linear(controller_size, addr) for _ in range(read_heads))
            self.write_params = nn.ModuleList(nn.Linear(controller_size, addr + 2 * memory_width)
                                              for _ in range(write_heads))
        out_in = controller_size + (read_heads * memory_width if output_from == "controller_and_reads" else 0)
        self.output = nn.Linear(out_in, output_size)

    # -- state ---------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(batch, 1, device=device, dtype=dtype)
        if self.layout == "reverse_code":
            memory = torch.sigmoid(self.memory_init(zeros)).view(batch, self.n, self.w)
            h, c = self.h_init(zeros), self.c_init(zeros)
            weights = torch.zeros(batch, self.reads + self.writes, self.n, device=device, dtype=dtype)
        else:
            memory = torch.full((batch, self.n, self.w), 1e-6, device=device, dtype=dtype)
            h = c = torch.zeros(batch, self.hidden, device=device, dtype=dtype)
            weights = torch.zeros(batch, self.reads + self.writes, self.n, device=device, dtype=dtype)
            weights[..., 0] = 1.0
        reads = torch.zeros(batch, self.reads, self.w, device=device, dtype=dtype)
        return {"memory": memory, "h": h, "c": c, "weights": weights, "reads": reads}

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Linear maps of all read then write heads stacked into one (weight, bias): one matmul per step."""
        heads = list(self.read_params) + list(self.write_params)
        return torch.cat([p.weight for p in heads]), torch.cat([p.bias for p in heads])

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor],
             heads: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One time step: ``x [B, input_size]`` → (logits ``[B, output_size]``, new state); ``heads`` is
        :meth:`head_weights` (computed here when not given)."""
        memory, previous = state["memory"], state["weights"]
        inp = torch.cat([x, state["reads"].flatten(1)], -1)
        if self.controller_kind == "lstm":
            h, c = self.controller(inp, (state["h"], state["c"]))
        else:
            h = c = self.controller(inp)
        drive = c if self.layout == "reverse_code" else h
        weight, bias = self.head_weights() if heads is None else heads
        raw = F.linear(drive, weight, bias).clamp(-self.clip, self.clip)  # raw head parameters, clipped
        b, w, s, r = x.shape[0], self.w, 2 * self.s + 1, self.reads
        per_read = self.read_params[0].out_features
        read_raw = raw[:, : r * per_read].view(b, r, per_read)
        write_raw = raw[:, r * per_read:].view(b, self.writes, -1)
        addr = torch.cat([read_raw[..., : w + 3 + s], write_raw[..., : w + 3 + s]], 1)  # [B, R + K, W + 3 + 2S + 1]
        key = torch.tanh(addr[..., :w])
        beta = F.softplus(addr[..., w])
        gate = torch.sigmoid(addr[..., w + 1])
        shift = torch.softmax(addr[..., w + 2: w + 2 + s], -1)
        gamma = 1 + F.softplus(addr[..., w + 2 + s])
        weights = mem.address(key, beta, gate, shift, gamma, previous, memory, self.addressing)  # [B, R + K, N]
        read_w, write_w = weights[:, :r], weights[:, r:]
        reads = mem.read(memory, read_w)  # from M_{t−1}
        extra = write_raw[..., w + 3 + s:]
        if self.layout == "reverse_code":  # M ← w·a + (1 − w)·M: erase vector of ones
            erase, add = torch.ones_like(extra[..., :w]), extra[..., :w]
        else:
            erase, add = torch.sigmoid(extra[..., :w]), torch.tanh(extra[..., w: 2 * w])
        memory = mem.write(memory, write_w, erase, add)
        features = torch.cat([h, reads.flatten(1)], -1) if self.output_from == "controller_and_reads" else h
        new = {"memory": memory, "h": h, "c": c, "weights": weights, "reads": reads}
        return self.output(features), new

    def forward(self, x: torch.Tensor, record: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B, T, output_size]``; with ``record`` also the read and write weightings ``[B, T, heads, N]``."""
        state = self.initial_state(x.shape[0], x.device, x.dtype)
        outs, weights = [], []
        heads = self.head_weights()
        step = compiled(NTM.step) if self.compile_step and not record else NTM.step
        steps = x.new_empty(x.shape[1], x.shape[0], x.shape[2]).copy_(x.transpose(0, 1))  # strides independent of T
        for x_t in steps.unbind(0):
            y, state = step(self, x_t, state, heads)
            outs.append(y)
            if record:
                weights.append(state["weights"].detach())
        logits = torch.stack(outs, 1)
        if not record:
            return logits
        w = torch.stack(weights, 1)
        return logits, {"read": w[:, :, : self.reads], "write": w[:, :, self.reads:]}
