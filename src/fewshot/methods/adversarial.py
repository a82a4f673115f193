"""Adversarial examples and adversarial meta-learning.

* :func:`fgsm` — Goodfellow et al. 2015: x_adv = clip(x + ε·sign(∇_x J(f(x), y))), one white-box step.
* :func:`pgd` — Madry et al. 2018: ``steps`` signed-gradient steps of size ``step_size`` projected back into
  the ε-ball around x (and the valid input range), from a random start in the ball by default.
* :class:`ADML` — Yin, Tang, Xu & Wang 2018 (arXiv 1806.03316), the Adversarial Meta-Learner: per task, clean
  and adversarial support sets give two adapted models, θ'_adv = θ − α∇L(θ; D^tr_adv) and
  θ'_clean = θ − α∇L(θ; D^tr_clean); the outer loss is **crossed**: ½[L(θ'_adv; D^val_clean) +
  L(θ'_clean; D^val_adv)] — adapted on adversarial data it must do well on clean queries, adapted on clean
  data it must resist adversarial queries. Support examples are attacked against θ, query examples against
  θ'_clean (the model being evaluated), as in the re-implementation of goldblum/AdversarialQuerying.

Every classifier of the library can be attacked at test time through ``Method.attack_logits`` (query
logits as a differentiable function of the query inputs, after any test-time adaptation on the clean
support set); see :func:`fewshot.engine.evaluator.evaluate` (``attack``, ``attack_eps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fewshot.errors import ConfigError
from fewshot.methods.gradient import MAML, task_loss
from fewshot.tasks.batch import TaskBatch

ATTACKS = ("fgsm", "pgd")


def fgsm(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
         clip: tuple[float, float] = (0.0, 1.0), create_graph: bool = False) -> torch.Tensor:
    """x_adv = clip(x + ε·sign(∇_x loss_fn(x))); the perturbation is a constant (sign has zero gradient)."""
    x0 = x.detach().requires_grad_()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(x0), [x0], create_graph=create_graph)
    return (x.detach() + eps * grad.sign()).clamp(*clip).detach()


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, clip: tuple[float, float] = (0.0, 1.0), random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent in the L∞ ball of radius ε around x (default step 2.5·ε/steps)."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    adv = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        adv = (x + eps * noise).clamp(*clip)
    for _ in range(steps):
        adv = adv.detach().requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(adv), [adv])
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(*clip)
    return adv.detach()


def attack_queries(model: Any, batch: TaskBatch, attack: str, eps: float, clip: tuple[float, float],
                   pgd_steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial query inputs ``[B, n_query, ...]`` against ``model.attack_logits`` (white box); ``generator``
    draws PGD's random start (the evaluator seeds it from the evaluation seed)."""
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r} (eval.attack); use one of {ATTACKS}.")
    y = batch.query_y

    def loss_fn(qx: torch.Tensor) -> torch.Tensor:
        logits = model.attack_logits(TaskBatch(batch.support_x, batch.support_y, qx, y, batch.ways,
                                               batch.unlabeled_x, batch.unlabeled_y, batch.class_attributes))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")

    if attack == "fgsm":
        return fgsm(loss_fn, batch.query_x, eps, clip)
    return pgd(loss_fn, batch.query_x, eps, pgd_steps, clip=clip, generator=generator)


class ADML(MAML):
    """ADML (see module docstring): MAML with crossed clean/adversarial inner and outer loops.

    Args (besides MAML's): ``adv_eps`` the attack strength during meta-training, ``adv_attack`` ``fgsm``
    or ``pgd`` (``adv_pgd_steps`` steps), ``clip_min``/``clip_max`` the valid input range. In a config they are
    in pixel units (0..1); under ``data.normalize`` = (m, s) :meth:`from_config` maps them to the model's
    inputs (ε/s, (clip − m)/s), as the evaluator does with ``eval.attack_eps``.
    """

    name: ClassVar[str] = "adml"
    defaults: ClassVar[dict[str, Any]] = {**MAML.defaults, "adv_eps": 0.2, "adv_attack": "fgsm", "adv_pgd_steps": 5,
                                          "clip_min": 0.0, "clip_max": 1.0}

    def __init__(self, net: torch.nn.Module, adv_eps: float = 0.2, adv_attack: str = "fgsm", adv_pgd_steps: int = 5,
                 clip_min: float = 0.0, clip_max: float = 1.0, **options: Any) -> None:
        if options.get("vmap"):
            raise ConfigError("ADML runs its attacks task by task; set model.vmap=false.")
        super().__init__(net, **options)
        if adv_attack not in ATTACKS or adv_eps < 0 or clip_min >= clip_max:
            raise ConfigError(f"ADML needs model.adv_attack in {ATTACKS}, adv_eps ≥ 0 and clip_min < clip_max "
                              f"(got {adv_attack!r}, {adv_eps}, {clip_min}, {clip_max}).")
        self.adv_eps, self.adv_attack, self.adv_pgd_steps = adv_eps, adv_attack, adv_pgd_steps
        self.clip = (clip_min, clip_max)

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "ADML":
        model = super().from_config(config, item_shape)
        if config["data"].get("normalize"):
            mean, std = map(float, config["data"]["normalize"])
            model.adv_eps /= std
            model.clip = ((model.clip[0] - mean) / std, (model.clip[1] - mean) / std)
        return model

    def _attack(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        frozen = {k: v.detach() for k, v in params.items()}

        def loss_fn(inp: torch.Tensor) -> torch.Tensor:
            return task_loss(self.run(frozen, inp), y)

        if self.adv_attack == "fgsm":
            return fgsm(loss_fn, x, self.adv_eps, self.clip)
        return pgd(loss_fn, x, self.adv_eps, self.adv_pgd_steps, clip=self.clip)

    def task_results(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per task: ½[L(θ'_adv; query_clean) + L(θ'_clean; query_adv)] as ``query``; ``outputs`` are the
        clean-query outputs of θ'_adv (for the training accuracy)."""
        theta = self.meta_params()
        rows = []
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
            sx_adv = self._attack(theta, sx, sy)
            order = not self.first_order
            clean = self.adapt_task(theta, sx, sy, self.inner_steps, create_graph=order)[-1]
            adv = self.adapt_task(theta, sx_adv, sy, self.inner_steps, create_graph=order)[-1]
            qx_adv = self._attack(clean, qx, qy)
            out = self.run(adv, qx)
            query = 0.5 * (task_loss(out, qy) + task_loss(self.run(clean, qx_adv), qy))
            rows.append({"query": query, "outputs": out,
                         "updates": torch.cat([(theta[n] - clean[n]).detach().flatten() for n in self.adapted])})
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
