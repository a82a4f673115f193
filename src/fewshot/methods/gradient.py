"""Gradient-based meta-learning on a functional inner loop: MAML, first-order MAML and Meta-SGD.

The network runs on an explicit dict of tensors through ``torch.func.functional_call`` (no cloned
modules, no monkey-patching), so any ``nn.Module`` can be adapted. Algorithms differ only in which
tensors adapt (:meth:`MAML.adapted_names`) and in the inner step rule (:meth:`MAML.inner_step`).

* **MAML** — Finn, Abbeel & Levine, ICML 2017 (arXiv 1703.03400). Inner loop, k steps:
  θ'ᵢ = θ − α ∇_θ L^tr_{Tᵢ}(f_θ); outer: θ ← θ − β ∇_θ (1/B) Σᵢ L^val_{Tᵢ}(f_{θ'ᵢ}). Second order: the
  inner gradients keep their graph, so for one step ∇_θ L^val(θ') = (I − α ∇²L^tr(θ)) ∇_{θ'} L^val(θ').
* **First-order MAML** (same paper, ``first_order=True``): the inner gradients are constants, the
  meta-gradient is ∇_{θ'} L^val(θ') applied to θ; no second-order graph is ever built.
* **Meta-SGD** — Li, Zhou, Chen & Li 2017 (arXiv 1707.09835): per-coordinate step sizes α of θ's
  shape are meta-parameters, θ' = θ − α ⊙ ∇_θ L^tr(θ), one step; ∇_α L^val = −g ⊙ v with g the support
  gradient and v = ∇_{θ'} L^val; α initialized U[0.005, 0.1].

Losses are means over the items of a set: cross-entropy for classification, MSE for regression (the
task's targets decide). Normalization follows ``model.norm``: ``transductive`` (batch statistics of
the task, as MAML's code does at meta-test too) is the default; BatchNorm's affine parameters are
meta-learned but not adapted (as in MAML's code) unless ``adapt_norm`` is set.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.tasks.batch import TaskBatch

ADAPT = ("all", "head")


class Network(nn.Module):
    """Backbone → (spatial mean for feature maps) → linear head with ``outputs`` units.

    MAML's Omniglot network averages the last strided feature map over space before its linear layer;
    a flat backbone output (MLP, pooled Conv-4) goes to the head unchanged.
    """

    def __init__(self, body: nn.Module, features: int, outputs: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if h.ndim == 4:
            h = h.mean((2, 3))
        return self.head(h.flatten(1))


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for class labels, mean squared error for real-valued targets."""
    if outputs.dtype in (torch.bfloat16, torch.float16):  # losses in float32 under autocast
        outputs = outputs.float()
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets.to(outputs.dtype))
    return F.cross_entropy(outputs, targets)


class MAML(Method):
    """MAML and first-order MAML (see module docstring) with per-step query metrics at test time.

    Args:
        net: the network adapted per task (e.g. :class:`Network`); its outputs are the logits of the
            ``ways`` classes of a task, or the regression outputs.
        inner_lr: α. inner_steps: k during meta-training. eval_steps: k at test time (may exceed k).
        first_order: use ∇_{θ'} L^val as the meta-gradient (no second-order graph).
        adapt: ``all`` parameters or only the ``head`` (ANIL-style, far cheaper in second order).
        adapt_norm: also adapt normalization affine parameters.
    """

    name: ClassVar[str] = "maml"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "conv4-strided", "norm": "transductive", "inner_lr": 0.4,
                                          "inner_steps": 1, "eval_steps": 3, "first_order": False, "adapt": "all",
                                          "adapt_norm": False, "vmap": False}
    needs_grad_at_test: ClassVar[bool] = True

    def __init__(self, net: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1, eval_steps: int = 3,
                 first_order: bool = False, adapt: str = "all", adapt_norm: bool = False, vmap: bool = False) -> None:
        super().__init__()
        norms = [type(m).__name__ for m in net.modules()
                 if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))]
        if vmap and norms and not first_order:
            raise ConfigError(f"model.vmap=true gives wrong second-order meta-gradients through {norms[0]} "
                              "(pytorch/functorch#534); use model.norm=none, model.first_order=true or model.vmap=false.")
        self.vmap = vmap
        if adapt not in ADAPT:
            raise ConfigError(f"unknown model.adapt {adapt!r}; use one of {ADAPT}.")
        if inner_steps < 1 or eval_steps < 0:
            raise ConfigError(f"model.inner_steps must be ≥ 1 and model.eval_steps ≥ 0 (got {inner_steps}, {eval_steps}).")
        self.net, self.inner_lr, self.inner_steps, self.eval_steps = net, inner_lr, inner_steps, eval_steps
        self.first_order, self.adapt, self.adapt_norm = first_order, adapt, adapt_norm
        norm_params = {f"{m}.{p}" for m, mod in net.named_modules()
                       if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                       for p, _ in mod.named_parameters(recurse=False)}
        names = [n for n, _ in net.named_parameters()]
        if adapt == "head":
            names = [n for n in names if n.startswith("head.")]
        if not adapt_norm:
            names = [n for n in names if n not in norm_params]
        self.adapted = names

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "MAML":
        body = cls.build_encoder(config, item_shape)
        with torch.no_grad():
            was = body.training
            body.eval()
            h = body(torch.zeros(2, *item_shape))
            body.train(was)
        features = h.shape[1]
        regression = config["data"]["dataset"] == "sinusoid"
        ways = config["train"]["ways"]
        for w in config["eval"]["ways"] + [config["val"]["ways"]]:
            if not regression and w != ways:
                raise ConfigError(f"{cls.name} learns an initialization for a {ways}-way head (train.ways), so it cannot "
                                  f"be evaluated on {w}-way tasks; set val.ways and eval.ways to [{ways}] or train a "
                                  f"{w}-way model.")
        m = config["model"]
        return cls(Network(body, features, 1 if regression else ways),
                   **{k: m[k] for k in cls.defaults if k not in ("backbone", "width", "norm", "hidden")})

    # -- the functional inner loop ------------------------------------------------------------
    def meta_params(self) -> dict[str, torch.Tensor]:
        """θ: the network's parameters and buffers by name (the dict ``functional_call`` runs on)."""
        return {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

    def inner_step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """θ^(j+1) = θ^(j) − α ∇L^tr(θ^(j)) on the adapted tensors."""
        return {**params, **{n: params[n] - self.inner_lr * g for n, g in grads.items()}}

    def adapt_task(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
                   create_graph: bool, detach: bool = False) -> list[dict[str, torch.Tensor]]:
        """Run ``steps`` inner steps on one task's support set; returns [θ^(0), θ^(1), …, θ^(steps)].

        ``create_graph`` keeps the graph of the inner gradients (second order); without it the gradients
        are constants (first order: θ' depends on θ only through the identity). ``detach`` (test time)
        starts every step from detached tensors, so no graph at all outlives a step.
        """
        out = [params]
        for j in range(steps):
            if detach:
                params = {**params, **{n: params[n].detach().requires_grad_() for n in self.adapted}}
            loss = task_loss(functional_call(self.net, params, (x,)), y)
            grads = torch.autograd.grad(loss, [params[n] for n in self.adapted], create_graph=create_graph)
            params = self.inner_step(params, dict(zip(self.adapted, grads)), j)
            if detach:
                params = {k: v.detach() for k, v in params.items()}
            out.append(params)
        return out

    # -- the method contract --------------------------------------------------------------------
    def query_losses(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task query losses L^val(f_{θ'ᵢ}) ``[B]`` and query outputs ``[B, n_query, out]``, each task
        adapted from θ with ``inner_steps`` steps — in a loop over tasks, or under ``torch.func.vmap``."""
        theta = self.meta_params()
        if self.vmap:
            return self._query_losses_vmap(theta, batch)
        losses, outs = [], []
        for i in range(batch.num_tasks):
            adapted = self.adapt_task(theta, batch.support_x[i], batch.support_y[i], self.inner_steps,
                                      create_graph=not self.first_order)[-1]
            outs.append(functional_call(self.net, adapted, (batch.query_x[i],)))
            losses.append(task_loss(outs[-1], batch.query_y[i]))
        return torch.stack(losses), torch.stack(outs)

    def _query_losses_vmap(self, theta: dict[str, torch.Tensor], batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as the loop, vectorized over tasks: θ is shared (``in_dims=None``), task data batched."""
        fixed = {k: v for k, v in theta.items() if k not in self.adapted}

        def one_task(adapted: dict[str, torch.Tensor], sx, sy, qx, qy):
            for j in range(self.inner_steps):
                def support_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
                    return task_loss(functional_call(self.net, {**fixed, **p}, (sx,)), sy)

                grads = torch.func.grad(support_loss)(adapted)
                if self.first_order:
                    grads = {k: g.detach() for k, g in grads.items()}
                adapted = {n: v for n, v in self.inner_step(adapted, grads, j).items() if n in self.adapted}
            out = functional_call(self.net, {**fixed, **adapted}, (qx,))
            return task_loss(out, qy), out

        start = {n: theta[n] for n in self.adapted}
        return torch.func.vmap(one_task, in_dims=(None, 0, 0, 0, 0))(start, batch.support_x, batch.support_y,
                                                                      batch.query_x, batch.query_y)

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """(1/B) Σᵢ L^val(f_{θ'ᵢ}) over the tasks of the batch (query loss after the last inner step)."""
        losses, outs = self.query_losses(batch)
        loss = losses.mean()
        metrics = {"loss": float(loss.detach())}
        if batch.query_y.is_floating_point():
            metrics["mse"] = metrics["loss"]
        else:
            metrics["accuracy"] = float(accuracy(outs.detach().float(), batch.query_y).mean())
        return loss, metrics

    def predict_steps(self, batch: TaskBatch, steps: int | None = None) -> list[torch.Tensor]:
        """Query outputs ``[B, n_query, out]`` after 0, 1, …, ``steps`` (default ``eval_steps``) inner steps.

        Adaptation is first order (no second-order graph) and every tensor it returns is detached.
        """
        steps = self.eval_steps if steps is None else steps
        theta = {k: v.detach() for k, v in self.meta_params().items()}
        per_step: list[list[torch.Tensor]] = [[] for _ in range(steps + 1)]
        with torch.enable_grad():
            for i in range(batch.num_tasks):
                sx, sy = batch.support_x[i].clone(), batch.support_y[i].clone()
                for j, p in enumerate(self.adapt_task(theta, sx, sy, steps, create_graph=False, detach=True)):
                    with torch.no_grad():
                        per_step[j].append(functional_call(self.net, p, (batch.query_x[i],)).float())
        return [torch.stack(o) for o in per_step]

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        return self.predict_steps(batch)[-1]


class MetaSGD(MAML):
    """Meta-SGD: learned per-coordinate inner step sizes α (same shapes as the adapted θ), one step.

    α is a meta-parameter (in ``parameters()``, updated by the meta-optimizer), initialized
    U[``alpha_low``, ``alpha_high``] = U[0.005, 0.1] as in the paper. Evaluating with more inner steps
    than were trained applies α beyond the regime it was learned for (it often diverges): a warning says so.
    """

    name: ClassVar[str] = "metasgd"
    defaults: ClassVar[dict[str, Any]] = {**MAML.defaults, "eval_steps": 1, "alpha_low": 0.005, "alpha_high": 0.1}

    def __init__(self, net: nn.Module, inner_lr: float = 0.0, inner_steps: int = 1, eval_steps: int = 1,
                 first_order: bool = False, adapt: str = "all", adapt_norm: bool = False, vmap: bool = False,
                 alpha_low: float = 0.005, alpha_high: float = 0.1) -> None:
        super().__init__(net, inner_lr, inner_steps, eval_steps, first_order, adapt, adapt_norm, vmap)
        if not 0 <= alpha_low <= alpha_high:
            raise ConfigError(f"model.alpha_low ≤ model.alpha_high is needed (got {alpha_low}, {alpha_high}).")
        params = dict(net.named_parameters())
        self.alpha = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(
            torch.empty_like(params[n]).uniform_(alpha_low, alpha_high)) for n in self.adapted})
        if eval_steps > inner_steps:
            warnings.warn(f"Meta-SGD learned its step sizes for {inner_steps} inner step(s) but is evaluated with "
                          f"{eval_steps}; learned step sizes applied repeatedly often diverge.", stacklevel=2)

    def inner_step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """θ' = θ − α ⊙ ∇L^tr(θ)."""
        return {**params, **{n: params[n] - self.alpha[n.replace(".", "__")] * g for n, g in grads.items()}}
