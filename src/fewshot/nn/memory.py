"""Memory operations of the memory-augmented networks, one function per paper equation, batched.

Shapes: memory ``M [B, N, W]`` (N slots of width W), weightings ``w [B, N]`` (or ``[B, H, N]`` for H
heads), keys ``k [B, W]`` (or ``[B, H, W]``). Numerics follow ``spec/memory.md`` §1.7: ε in the cosine
denominator, sharpening in log space, circular shifts as one matmul over circularly padded windows (any N > 2S).

Neural Turing Machine (Graves, Wayne & Danihelka 2014, §3):
    (1) read             r_t = Σ_i w_t(i) M_t(i)
    (2) erase            M̃_t(i) = M_{t−1}(i) ⊙ (1 − w_t(i) e_t)
    (3) add              M_t(i) = M̃_t(i) + w_t(i) a_t
    (5) content          w^c_t(i) = softmax_i(β_t K(k_t, M_t(i))),  K(u, v) = u·v / (‖u‖‖v‖ + ε)
    (7) interpolation    w^g_t = g_t w^c_t + (1 − g_t) w_{t−1}
    (8) circular shift   w̃_t(i) = Σ_j w^g_t(j) s_t((i − j) mod N)
    (9) sharpening       w_t(i) = w̃_t(i)^γ / Σ_j w̃_t(j)^γ

MANN with LRUA memory (Santoro et al. 2016):
    usage                w^u_t = γ w^u_{t−1} + w^r_t + w^w_t
    least used           w^lu_t(i) = 1 if w^u_t(i) ≤ m(w^u_t, n) else 0   (m = n-th smallest, n = reads)
    write weights        w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}
"""

from __future__ import annotations

import torch

EPS = 1e-8


def cosine_similarity(keys: torch.Tensor, memory: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """K(k, M(i)) for keys ``[B, H, W]`` and memory ``[B, N, W]`` → ``[B, H, N]``, as normalize-then-matmul
    (one batched matmul, no ``[B, H, N, W]`` broadcast): u·v / (‖u‖‖v‖ + ε)."""
    dots = keys @ memory.transpose(1, 2)
    norms = keys.norm(dim=-1, keepdim=True) * memory.norm(dim=-1).unsqueeze(1)
    return dots / (norms + eps)


def content_weighting(keys: torch.Tensor, strength: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Eq. (5): softmax over slots of β · K(k, M(i)); keys ``[B, H, W]``, β ``[B, H]`` → ``[B, H, N]``."""
    return torch.softmax(strength.unsqueeze(-1) * cosine_similarity(keys, memory), dim=-1)


def interpolate(content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Eq. (7): w^g = g·w^c + (1 − g)·w_{t−1}; gate ``[B, H]``."""
    g = gate.unsqueeze(-1)
    return g * content + (1 - g) * previous


def circular_shift(weights: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Eq. (8) with shifts −S..S: w̃(i) = Σ_j w(j) s((i − j) mod N), ``shift [..., 2S+1]`` ordered −S..S.

    A shift weighting concentrated on +1 moves the focus from slot i to slot i + 1.
    """
    size = shift.shape[-1]
    s = size // 2
    if size % 2 == 0 or 2 * s >= weights.shape[-1]:
        raise ValueError(f"a shift weighting over {size} offsets needs an odd size and fewer than N = "
                         f"{weights.shape[-1]} offsets (shift range S < N/2).")
    # Circular padding by S on both sides; window j of the padded weighting holds w((i + j − S) mod N),
    # so offset o = S − j: one small matmul with the flipped shift weighting instead of 2S + 1 rolls.
    padded = torch.cat([weights[..., -s:], weights, weights[..., :s]], -1)
    windows = padded.unfold(-1, weights.shape[-1], 1)  # [..., 2S+1, N]
    return (shift.flip(-1).unsqueeze(-2) @ windows).squeeze(-2)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (9): w^γ / Σ w^γ, computed as a softmax of γ·log(w + ε) (finite gradients at w = 0); γ ``[B, H]``."""
    return torch.softmax(gamma.unsqueeze(-1) * torch.log(weights + eps), dim=-1)


def address(keys: torch.Tensor, strength: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
            gamma: torch.Tensor, previous: torch.Tensor, memory: torch.Tensor, mode: str = "content_and_location"
            ) -> torch.Tensor:
    """The NTM addressing pipeline, Eqs. (5)–(9). ``mode``: ``content`` (w = w^c), ``location``
    (skip Eq. 5: w^g = w_{t−1}, then shift and sharpen) or ``content_and_location``."""
    if mode == "content":
        return content_weighting(keys, strength, memory)
    if mode == "location":
        gated = previous
    elif mode == "content_and_location":
        gated = interpolate(content_weighting(keys, strength, memory), previous, gate)
    else:
        raise ValueError(f"unknown addressing mode {mode!r}; use content, location or content_and_location.")
    return sharpen(circular_shift(gated, shift), gamma)


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. (1): r = Σ_i w(i) M(i); weights ``[B, H, N]`` → reads ``[B, H, W]``."""
    return weights @ memory


def write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Eqs. (2)–(3) for H write heads (``weights [B, H, N]``, ``erase``/``add [B, H, W]``): all erases
    (their product; the order does not matter), then all adds."""
    keep = 1 - weights[:, 0].unsqueeze(-1) * erase[:, :1]  # [B, N, W]; a loop, not torch.prod (its backward is slow)
    for head in range(1, weights.shape[1]):
        keep = keep * (1 - weights[:, head].unsqueeze(-1) * erase[:, head: head + 1])
    return memory * keep + weights.transpose(1, 2) @ add


def lrua_usage(previous_usage: torch.Tensor, read_weights: torch.Tensor, write_weights: torch.Tensor,
               decay: float = 0.95) -> torch.Tensor:
    """w^u_t = γ w^u_{t−1} + Σ_heads w^r_t + Σ_heads w^w_t (usage ``[B, N]``, weights ``[B, H, N]``)."""
    return decay * previous_usage + read_weights.sum(1) + write_weights.sum(1)


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu(i) = 1 for the ``n`` least-used slots (ties broken towards the lower slot index), else 0: ``[B, N]``.

    The paper's "w^u(i) ≤ m(w^u, n)" marks more than n slots when usages tie; taking exactly the n
    smallest (stable order) keeps the written mass fixed.
    """
    order = torch.sort(usage, dim=-1, stable=True).indices[..., :n]
    return torch.zeros_like(usage).scatter_(-1, order, 1.0)


def lrua_write_weights(gate_logit: torch.Tensor, previous_read: torch.Tensor, previous_least_used: torch.Tensor
                       ) -> torch.Tensor:
    """w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}; α ``[B, H]``, read weights ``[B, H, N]``, least used ``[B, N]``."""
    g = torch.sigmoid(gate_logit).unsqueeze(-1)
    return g * previous_read + (1 - g) * previous_least_used.unsqueeze(1)


def zero_least_used(memory: torch.Tensor, least: torch.Tensor) -> torch.Tensor:
    """Before an LRUA write, the least-used slots (``least [B, N]`` from w^u_{t−1}) are set to zero."""
    return memory * (1 - least).unsqueeze(-1)
