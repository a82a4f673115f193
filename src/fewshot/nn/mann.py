"""Memory-augmented neural network with least-recently-used access (Santoro et al., ICML 2016).

Per step (the MANN TF code's order): controller on [x_t, one-hot label of step t−1, feedback] →
per head key k, add vector a (tanh) and write gate α → zero the least-used slot (from w^u_{t−1}) →
write w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1} with a_t (or k_t) → read w^r_t = softmax_i K(k_t, M(i))
(no key strength) → usage w^u_t = γ w^u_{t−1} + Σ w^r_t + Σ w^w_t → output W_o [h_t, r_t]. Equations are
the functions of :mod:`fewshot.nn.memory`.

Every way the paper and the public codes differ is a switch (``spec/memory.md`` §2.3):
``controller_input`` (``reads`` r_{t−1} as in the paper, or ``read_weights`` w^r_{t−1} as the MANN TF code),
``write_vector`` (``key`` as in the paper, or a ``separate`` add vector as the codes), ``lu_assignment``
(``per_head``: head i writes to the i-th least-used slot; ``summed``: every head gets the sum of the n
least-used one-hots), ``read_on`` (``after_write``: read weights and content from M_t; ``before_write``:
weights against M_{t−1}, content from M_t, as the TF code). ``memory=False`` is the LSTM baseline.
The controller is an LSTM with one bias per gate (as the reference codes), so parameter counts match them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import ConfigError
from fewshot.nn import memory as mem
from fewshot.nn.compiled import compiled


class LSTMCell1Bias(nn.Module):
    """An LSTM cell with one bias per gate (TensorFlow's BasicLSTMCell): gates = W [x, h] + b."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        self.hidden_size = hidden_size

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        return self.from_gates(self.linear(torch.cat([x, h], -1)), c)

    @staticmethod
    def from_gates(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_t, c_t) from the gate pre-activations [i, f, g, o] and c_{t−1}."""
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class MANN(nn.Module):
    """LRUA memory network over labelled sequences: images ``[B, T, D]`` and labels ``[B, T]`` → logits ``[B, T, N]``."""

    def __init__(self, input_size: int, classes: int, controller_size: int = 200, memory_slots: int = 128,
                 memory_width: int = 40, heads: int = 4, gamma: float = 0.95, memory: bool = True,
                 controller_input: str = "reads", write_vector: str = "separate", lu_assignment: str = "per_head",
                 read_on: str = "after_write", five_hot: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.compile_step = compile  # run the time step through torch.compile (fewshot.nn.compiled)
        self.five_hot = five_hot  # labels as five characters of an alphabet of 5: 25-d input and output
        label_size = 25 if five_hot else classes
        choices = {"controller_input": (controller_input, ("reads", "read_weights")),
                   "write_vector": (write_vector, ("key", "separate")),
                   "lu_assignment": (lu_assignment, ("per_head", "summed")),
                   "read_on": (read_on, ("after_write", "before_write"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"model.{key} must be one of {allowed} (got {value!r}).")
        if memory and heads > memory_slots:
            raise ConfigError(f"model.heads={heads} needs at least as many memory slots (got {memory_slots}).")
        self.classes, self.n, self.w, self.heads, self.gamma, self.memory = classes, memory_slots, memory_width, heads, gamma, memory
        self.controller_input, self.write_vector, self.lu_assignment, self.read_on = controller_input, write_vector, lu_assignment, read_on
        feedback = 0 if not memory else heads * (memory_width if controller_input == "reads" else memory_slots)
        self.controller = LSTMCell1Bias(input_size + label_size + feedback, controller_size)
        if memory:
            self.head_params = nn.ModuleList(nn.Linear(controller_size, 2 * memory_width + 1) for _ in range(heads))
            for p in self.head_params.parameters():
                nn.init.uniform_(p, -0.1, 0.1)
        self.output = nn.Linear(controller_size + (heads * memory_width if memory else 0), label_size)
        self.hidden = controller_size

    def forward(self, images: torch.Tensor, labels: torch.Tensor, strings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, classes]`` (or ``[B, T, 25]``: five groups of 5 characters, with ``strings [B, N, 5]``)."""
        b, t = labels.shape
        x = images.reshape(b, t, -1)
        if self.five_hot:
            if strings is None:
                raise ConfigError("a five-hot MANN needs string labels: set data.episodes.strings=true.")
            chars = torch.gather(strings, 1, labels[..., None].expand(-1, -1, 5))  # [B, T, 5]
            prev_label = torch.nn.functional.one_hot(chars, 5).flatten(2).to(x.dtype)
        else:
            prev_label = torch.nn.functional.one_hot(labels, self.classes).to(x.dtype)
        prev_label = torch.cat([torch.zeros_like(prev_label[:, :1]), prev_label[:, :-1]], 1)  # step 0: zero label
        # The controller's input and label columns do not depend on the recurrence: their share of the gates is
        # one matmul over all steps, and only the [feedback, h] columns stay in the per-step loop.
        weight, bias = self.controller.linear.weight, self.controller.linear.bias
        n_in = x.shape[-1] + prev_label.shape[-1]
        gates_in = F.linear(torch.cat([x, prev_label], -1), weight[:, :n_in], bias)  # [B, T, 4H]
        gates_in = gates_in.new_empty(t, b, gates_in.shape[-1]).copy_(gates_in.transpose(0, 1)).unbind(0)  # T × [B, 4H]
        weight_rec = weight[:, n_in:]  # columns of [feedback, h]
        state = {"h": x.new_zeros(b, self.hidden), "c": x.new_zeros(b, self.hidden)}
        if self.memory:
            usage = x.new_zeros(b, self.n)
            usage[:, 0] = 1.0  # one-hot at slot 0: deterministic first choice (ties)
            read_w = x.new_zeros(b, self.heads, self.n)
            read_w[..., 0] = 1.0
            state.update(memory=x.new_full((b, self.n, self.w), 1e-6), usage=usage, read_w=read_w,
                         reads=x.new_zeros(b, self.heads, self.w))
            heads = (torch.cat([p.weight for p in self.head_params]), torch.cat([p.bias for p in self.head_params]))
        else:
            heads = (weight_rec, weight_rec)  # unused
        step = compiled(MANN.step) if self.compile_step else MANN.step
        features = []
        for gates_t in gates_in:
            out, state = step(self, gates_t, weight_rec, heads, state)
            features.append(out)
        return self.output(torch.stack(features, 1))  # W_o [h_t, r_t] for all steps in one matmul

    def step(self, gates_in: torch.Tensor, weight_rec: torch.Tensor, heads: tuple[torch.Tensor, torch.Tensor],
             state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One time step: the input share of the gates ``[B, 4H]``, the recurrent gate columns, the stacked head
        maps and the state → (features [h_t, r_t] ``[B, H + heads·W]``, new state)."""
        h, c = state["h"], state["c"]
        if not self.memory:
            h, c = self.controller.from_gates(torch.addmm(gates_in, h, weight_rec.t()), c)
            return h, {"h": h, "c": c}
        memory, usage, read_w, reads = state["memory"], state["usage"], state["read_w"], state["reads"]
        b = h.shape[0]
        feedback = reads.flatten(1) if self.controller_input == "reads" else read_w.flatten(1)
        h, c = self.controller.from_gates(torch.addmm(gates_in, torch.cat([feedback, h], -1), weight_rec.t()), c)
        raw = F.linear(h, *heads).view(b, self.heads, -1)  # [B, H, 2W + 1]
        key, add, alpha = torch.tanh(raw[..., : self.w]), torch.tanh(raw[..., self.w: 2 * self.w]), raw[..., -1]
        order = torch.sort(usage, dim=-1, stable=True).indices  # ascending usage w^u_{t−1}
        if self.lu_assignment == "per_head":  # head i → the i-th least-used slot
            lu_heads = F.one_hot(order[:, : self.heads], self.n).to(h.dtype)  # [B, H, N]
        else:  # every head: w^lu_{t−1}, the n least-used slots
            lu_heads = mem.least_used(usage, self.heads).unsqueeze(1).expand(-1, self.heads, -1)
        g = torch.sigmoid(alpha).unsqueeze(-1)
        write_w = g * read_w + (1 - g) * lu_heads  # σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}
        least = F.one_hot(order[:, 0], self.n).to(h.dtype)  # zero the single least-used slot before writing
        previous = memory
        memory = mem.zero_least_used(memory, least)
        vector = key if self.write_vector == "key" else add
        memory = memory + write_w.transpose(1, 2) @ vector
        basis = memory if self.read_on == "after_write" else previous
        read_w = torch.softmax(mem.cosine_similarity(key, basis), -1)  # no key strength
        reads = mem.read(memory, read_w)
        usage = mem.lrua_usage(usage, read_w, write_w, self.gamma)
        new = {"h": h, "c": c, "memory": memory, "usage": usage, "read_w": read_w, "reads": reads}
        return torch.cat([h, reads.flatten(1)], -1), new
