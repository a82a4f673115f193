"""Task families defined by functions rather than classes: sine-wave regression and logistic tasks.

A :class:`TaskFamily` draws whole tasks (a function, then its support and query points) from a
``torch.Generator``; :class:`fewshot.tasks.FunctionSampler` turns it into :class:`TaskBatch` es with
the same batch-first convention as class episodes (``support_x [B, K, d]``, ``support_y [B, K, 1]``
for regression). Families (``spec/datasets.md`` §7):

* ``sinusoid`` — MAML (Finn et al. 2017): y = A·sin(x − b), A ~ U[0.1, 5], b ~ U[0, π], x ~ U[−5, 5]
  (the MAML code's sign convention; ``variant="cavia"`` uses the same ranges, ``"reptile"`` a phase in
  U[0, 2π] and amplitude U[0.1, 5]).
* ``logistic`` — the unit-test family of ``spec/gradient.md`` §2: a fixed w̄ ~ N(0, I_d) (from the
  family seed), per task w = w̄ + σu, u ~ N(0, I_d), x ~ N(0, I_d), y ~ Bernoulli(sigmoid(w·x/√d)),
  labels 0/1 (2-way classification; ``shots``/``queries`` count items per task, not per label,
  since labels are drawn, not balanced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fewshot.errors import DataError

FAMILIES = ("sinusoid", "logistic")
SINE_VARIANTS = {"maml": ((0.1, 5.0), (0.0, math.pi)), "cavia": ((0.1, 5.0), (0.0, math.pi)),
                 "reptile": ((0.1, 5.0), (0.0, 2 * math.pi))}


@dataclass
class TaskFamily:
    """A distribution over regression or classification tasks (see module docstring).

    ``names`` is empty (there are no classes to keep disjoint: train, validation and test tasks are
    independent draws from different seeded streams).
    """

    kind: str
    variant: str = "maml"
    x_range: tuple[float, float] = (-5.0, 5.0)
    dim: int = 50
    sigma: float = 1.0
    seed: int = 0
    names: list[str] = field(default_factory=list)
    w_bar: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAMILIES:
            raise DataError(f"unknown task family {self.kind!r}; use one of {FAMILIES}.")
        if self.kind == "sinusoid" and self.variant not in SINE_VARIANTS:
            raise DataError(f"unknown sinusoid variant {self.variant!r} (data.functions.variant); "
                            f"use one of {tuple(SINE_VARIANTS)}.")
        if self.kind == "logistic":
            self.w_bar = torch.randn(self.dim, generator=torch.Generator().manual_seed(self.seed))

    @property
    def regression(self) -> bool:
        return self.kind == "sinusoid"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (1,) if self.kind == "sinusoid" else (self.dim,)

    @property
    def num_classes(self) -> int:
        return 0 if self.regression else 2

    def draw(self, support: int, query: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One task: ``support_x [K, d], support_y, query_x [Q, d], query_y`` (y ``[n, 1]`` float for
        regression, ``[n]`` long labels for classification)."""
        n = support + query
        if self.kind == "sinusoid":
            (a_lo, a_hi), (b_lo, b_hi) = SINE_VARIANTS[self.variant]
            amp = a_lo + (a_hi - a_lo) * torch.rand((), generator=g)
            phase = b_lo + (b_hi - b_lo) * torch.rand((), generator=g)
            lo, hi = self.x_range
            x = lo + (hi - lo) * torch.rand(n, 1, generator=g)
            y = amp * torch.sin(x - phase)  # MAML code: A·sin(x − b)
        else:
            w = self.w_bar + self.sigma * torch.randn(self.dim, generator=g)
            x = torch.randn(n, self.dim, generator=g)
            p = torch.sigmoid(x @ w / math.sqrt(self.dim))
            y = (torch.rand(n, generator=g) < p).long()
        return x[:support], y[:support], x[support:], y[support:]


def task_family(settings: dict, part: str) -> TaskFamily:  # noqa: ARG001 - every part is the same distribution
    """The family of a config's ``data`` section (``data.dataset`` = ``sinusoid`` or ``logistic``)."""
    f = settings["functions"]
    return TaskFamily(settings["dataset"], variant=f["variant"], x_range=tuple(f["x_range"]), dim=f["dim"],
                      sigma=f["sigma"], seed=f["seed"])
