"""Memory equations (NTM, LRUA) against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.nn.memory import (address, circular_shift, content_weighting, cosine_similarity, interpolate,
                               least_used, lrua_usage, lrua_write_weights, read, sharpen, write)


def test_cosine_similarity_hand_values_and_zero_rows():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    key = torch.tensor([[[3.0, 0.0]]])
    sim = cosine_similarity(key, memory)
    torch.testing.assert_close(sim, torch.tensor([[[1.0, 0.0, 1 / math.sqrt(2), 0.0]]]), atol=1e-6, rtol=0)
    assert torch.isfinite(sim).all()  # an all-zero slot gives 0, not 0/0


def test_content_weighting_is_a_softmax_of_strength_times_similarity():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    w = content_weighting(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[2.0]]), memory)
    e = math.exp(2.0)
    torch.testing.assert_close(w, torch.tensor([[[e / (e + 1), 1 / (e + 1)]]]))


def test_interpolation():
    torch.testing.assert_close(interpolate(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]]),
                                           torch.tensor([[0.25]])), torch.tensor([[[0.25, 0.75]]]))


def test_shift_direction_and_wraparound():
    w = torch.tensor([[[0.0, 1.0, 0.0, 0.0, 0.0]]])
    plus_one = torch.tensor([[[0.0, 0.0, 1.0]]])  # offsets −1, 0, +1
    torch.testing.assert_close(circular_shift(w, plus_one), torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0]]]))
    minus_one = torch.tensor([[[1.0, 0.0, 0.0]]])
    torch.testing.assert_close(circular_shift(w, minus_one), torch.tensor([[[1.0, 0.0, 0.0, 0.0, 0.0]]]))
    last = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0]]])
    torch.testing.assert_close(circular_shift(last, plus_one), torch.tensor([[[1.0, 0.0, 0.0, 0.0, 0.0]]]))
    mixed = circular_shift(w, torch.tensor([[[0.2, 0.5, 0.3]]]))
    torch.testing.assert_close(mixed, torch.tensor([[[0.2, 0.5, 0.3, 0.0, 0.0]]]))
    with pytest.raises(ValueError, match="S < N/2"):
        circular_shift(torch.ones(1, 1, 2) / 2, torch.ones(1, 1, 3) / 3)


def test_sharpening_hand_values_and_finite_gradient_at_zero():
    w = torch.tensor([[[0.5, 0.25, 0.25, 0.0]]])
    torch.testing.assert_close(sharpen(w, torch.tensor([[2.0]])), torch.tensor([[[2 / 3, 1 / 6, 1 / 6, 0.0]]]),
                               atol=1e-6, rtol=1e-6)
    gamma = torch.tensor([[1.5]], requires_grad=True)
    sharpen(w, gamma)[0, 0, 0].backward()
    assert torch.isfinite(gamma.grad).all()


def test_address_modes():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    previous = torch.tensor([[[1.0, 0.0, 0.0]]])
    args = dict(keys=torch.tensor([[[0.0, 1.0]]]), strength=torch.tensor([[50.0]]), gate=torch.tensor([[0.25]]),
                shift=torch.tensor([[[0.0, 0.0, 1.0]]]), gamma=torch.tensor([[2.0]]), previous=previous, memory=memory)
    # content: softmax(β·cos) = softmax(50·[0, 1, 1/√2])
    sims = torch.tensor([0.0, 1.0, 1 / math.sqrt(2)])
    content = torch.softmax(50 * sims, 0)[None, None]
    torch.testing.assert_close(address(**args, mode="content"), content, atol=1e-6, rtol=0)
    # both: g·content + (1 − g)·previous = [0.75, 0.25, ~0], shifted by +1 → [0, 0.75, 0.25], sharpened with
    # γ = 2 → [0, 0.5625, 0.0625] / 0.625 = [0, 0.9, 0.1]
    torch.testing.assert_close(address(**args), torch.tensor([[[0.0, 0.9, 0.1]]]), atol=1e-5, rtol=0)
    # location: the previous focus alone, shifted by +1 (sharpening a one-hot changes nothing)
    torch.testing.assert_close(address(**args, mode="location"), torch.tensor([[[0.0, 1.0, 0.0]]]), atol=1e-6, rtol=0)


def test_read_and_erase_then_add():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    w = torch.tensor([[[0.25, 0.75]]])
    torch.testing.assert_close(read(memory, w), torch.tensor([[[2.5, 3.5]]]))
    new = write(memory, torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[10.0, 20.0]]]))
    torch.testing.assert_close(new, torch.tensor([[[10.0, 21.0], [3.0, 4.0]]]))
    # two heads: both erases, then both adds
    two = write(memory, torch.tensor([[[0.5, 0.0], [0.5, 0.0]]]), torch.ones(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(two, torch.tensor([[[0.25 + 0.5, 0.5 + 0.5], [3.0, 4.0]]]))


def test_lrua_usage_least_used_with_ties_and_write_weights():
    usage = lrua_usage(torch.tensor([[1.0, 0.0, 0.5, 0.0]]), torch.tensor([[[0.0, 0.0, 0.5, 0.0]]]),
                       torch.tensor([[[0.0, 0.2, 0.0, 0.0]]]), decay=0.9)
    torch.testing.assert_close(usage, torch.tensor([[0.9, 0.2, 0.95, 0.0]]))
    torch.testing.assert_close(least_used(usage, 2), torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    tied = least_used(torch.tensor([[0.3, 0.1, 0.1, 0.1]]), 2)  # exactly two, lower indices first
    torch.testing.assert_close(tied, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    ww = lrua_write_weights(torch.tensor([[0.0]]), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(ww, torch.tensor([[[0.5, 0.0, 0.0, 0.5]]]))


def test_zero_least_used_clears_whole_slots():
    from fewshot.nn.memory import zero_least_used

    memory = torch.arange(6.0).view(1, 3, 2)
    torch.testing.assert_close(zero_least_used(memory, torch.tensor([[0.0, 1.0, 0.0]])),
                               torch.tensor([[[0.0, 1.0], [0.0, 0.0], [4.0, 5.0]]]))
