"""Reptile — Nichol, Achiam & Schulman 2018: first-order meta-learning by interpolation towards adapted weights.

The network is the gradient-based family's (:func:`fewshot.methods.gradient.build_network`); the outer
update is not the gradient of a loss, so the method overrides ``train_step``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from fewshot.errors import ConfigError
from fewshot.methods.base import Method, accuracy
from fewshot.methods.gradient import agreement_weights, build_network, task_loss
from fewshot.tasks.batch import TaskBatch


class Reptile(Method):
    """Reptile — Nichol, Achiam & Schulman 2018 (arXiv 1803.02999), "On First-Order Meta-Learning Algorithms".

    Per task, W = U^k_T(θ): k steps of Adam with β₁ = 0 (or SGD) on minibatches of ``inner_batch`` items
    of the task's training set (the support set; it cycles through a shuffled copy of it, as the reference
    code does). Batched update over the n tasks of a meta-batch: θ ← θ + ε (1/n) Σᵢ (Wᵢ − θ), with ε
    annealed linearly from ``meta_step`` to ``meta_step_final`` over ``anneal_steps`` meta-iterations; the
    outer optimizer of the trainer is not used. With ``agreement`` the mean is replaced by gradient-
    agreement weights of the updates θ − Wᵢ (Eshratifar et al. 2018).

    The inner Adam's second moments persist across training tasks (the reference code never resets them;
    β₁ = 0 limits the carry-over) and live in buffers, so resuming is exact; at test time each task
    starts from θ and from the saved moments, and neither is changed. Under ``torchrun`` each process
    keeps its own moments (they see only that process's tasks); θ stays identical on every process.

    Evaluation adapts ``eval_steps`` steps on minibatches of ``eval_batch`` support items, then predicts
    the query set ``transductive``-ly (one batch: BatchNorm uses the query statistics, as in the paper's
    "+ transduction" rows) or not (each query item in a batch with the whole support set, only its own
    prediction kept; the curve over inner steps is reported only in transductive mode).
    """

    name: ClassVar[str] = "reptile"
    uses_optimizer: ClassVar[bool] = False  # θ ← θ + ε·mean(W − θ), no torch optimizer
    defaults: ClassVar[dict[str, Any]] = {"backbone": "conv4-strided", "norm": "transductive", "inner_lr": 0.001,
                                          "inner_steps": 5, "inner_batch": 10, "inner_optimizer": "adam",
                                          "adam_beta2": 0.999, "eval_steps": 50, "eval_batch": 5, "meta_step": 1.0,
                                          "meta_step_final": 0.0, "transductive": True, "agreement": False}
    needs_grad_at_test: ClassVar[bool] = True

    def __init__(self, net: nn.Module, inner_lr: float = 0.001, inner_steps: int = 5, inner_batch: int = 10,
                 inner_optimizer: str = "adam", adam_beta2: float = 0.999, eval_steps: int = 50, eval_batch: int = 5,
                 meta_step: float = 1.0, meta_step_final: float = 0.0, transductive: bool = True,
                 agreement: bool = False, anneal_steps: int = 100000) -> None:
        super().__init__()
        if inner_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"model.inner_optimizer must be adam or sgd (got {inner_optimizer!r}).")
        if min(inner_steps, inner_batch, eval_batch, anneal_steps) < 1 or eval_steps < 0:
            raise ConfigError("model.inner_steps, inner_batch and eval_batch must be at least 1 and eval_steps ≥ 0.")
        self.net, self.inner_lr, self.inner_steps, self.inner_batch = net, inner_lr, inner_steps, inner_batch
        self.inner_optimizer, self.beta2, self.eval_steps, self.eval_batch = inner_optimizer, adam_beta2, eval_steps, eval_batch
        self.meta_step, self.meta_step_final, self.anneal_steps = meta_step, meta_step_final, anneal_steps
        self.transductive, self.agreement = transductive, agreement
        self.register_buffer("meta_iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("adam_count", torch.zeros((), dtype=torch.long))
        for n, p in net.named_parameters():
            self.register_buffer("adam_v__" + n.replace(".", "__"), torch.zeros_like(p))

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "Reptile":
        m = config["model"]
        return cls(build_network(config, item_shape, cls.name, cls.build_encoder), anneal_steps=config["train"]["episodes"],
                   **{k: m[k] for k in cls.defaults if k not in ("backbone", "width", "norm", "hidden")})

    # -- inner loop (in place, on a snapshot) ---------------------------------------------------
    def _inner(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, update_moments: bool,
               record: Any = None) -> None:
        """``steps`` optimizer steps on minibatches of (x, y), in place on ``self.net``."""
        params = dict(self.net.named_parameters())
        v = {n: getattr(self, "adam_v__" + n.replace(".", "__")) for n in params}
        if not update_moments:
            v = {n: t.clone() for n, t in v.items()}
        count = int(self.adam_count)
        order = torch.randperm(len(x), device=x.device)
        pos = 0
        for j in range(steps):
            if record is not None:
                record(j)
            if pos + batch > len(order):
                order, pos = torch.randperm(len(x), device=x.device), 0
            idx = order[pos:pos + batch]
            pos += batch
            loss = task_loss(self.net(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, list(params.values()))
            count += 1
            with torch.no_grad():
                for (n, p), g in zip(params.items(), grads):
                    if self.inner_optimizer == "sgd":
                        p.sub_(self.inner_lr * g)
                        continue
                    v[n].mul_(self.beta2).add_((1 - self.beta2) * g * g)  # Adam, β₁ = 0: m = g
                    v_hat = v[n] / (1 - self.beta2 ** count)
                    p.sub_(self.inner_lr * g / (v_hat.sqrt() + 1e-8))
        if record is not None:
            record(steps)
        if update_moments:
            self.adam_count.fill_(count)

    def check_world(self, world: Any) -> None:
        """Gradient agreement weighs every task's update against all the others: refused under torchrun."""
        if world is not None and world.size > 1 and self.agreement:
            raise ConfigError("Reptile with gradient agreement needs every task's update on one process; "
                              "run it without torchrun.")

    def epsilon(self) -> float:
        """ε at the current meta-iteration: linear from ``meta_step`` to ``meta_step_final``."""
        frac = min(1.0, int(self.meta_iteration) / self.anneal_steps)
        return self.meta_step + frac * (self.meta_step_final - self.meta_step)

    def train_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, autocast: Any = None) -> dict[str, float]:  # noqa: ARG002
        """θ ← θ + ε Σᵢ wᵢ (Wᵢ − θ), wᵢ = 1/n (or agreement weights)."""
        theta = [p.detach().clone() for p in self.net.parameters()]
        buffers = [b.clone() for b in self.net.buffers()]  # e.g. BatchNorm running statistics: restored per task
        ends, accs, losses = [], [], []
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            for i in range(batch.num_tasks):
                self._inner(batch.support_x[i], batch.support_y[i], self.inner_steps, self.inner_batch, True)
                with torch.no_grad():
                    out = self.net(batch.query_x[i])
                    losses.append(float(task_loss(out, batch.query_y[i])))
                    if not batch.query_y.is_floating_point():
                        accs.append(float(accuracy(out[None].float(), batch.query_y[i][None])))
                    ends.append([p.detach().clone() for p in self.net.parameters()])
                    for p, t in zip(self.net.parameters(), theta):
                        p.copy_(t)
                    for b, t in zip(self.net.buffers(), buffers):
                        b.copy_(t)
        with torch.no_grad():
            updates = torch.stack([torch.cat([(t - w).flatten() for t, w in zip(theta, end)]) for end in ends])
            distributed = self.world is not None and self.world.size > 1
            self.check_world(self.world)
            total = self.meta_batch_total if distributed else len(ends)
            weights = agreement_weights(updates) if self.agreement else torch.full((len(ends),), 1.0 / total)
            eps = self.epsilon()
            deltas = [sum(float(weights[i]) * (ends[i][k] - theta[k]) for i in range(len(ends)))
                      for k in range(len(theta))]
            if distributed:  # Σ over all tasks of all processes of (1/B)(Wᵢ − θ)
                for d in deltas:
                    self.world.all_reduce_sum(d)
            for p, d in zip(self.net.parameters(), deltas):
                p.add_(eps * d)
            self.meta_iteration += 1
        metrics = {"loss": sum(losses) / len(losses), "epsilon": eps}
        if accs:
            metrics["accuracy"] = sum(accs) / len(accs)
        if self.agreement:
            metrics["ga_negative"] = float((weights < 0).float().mean())
        return metrics

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("Reptile's outer update is not the gradient of a loss; use train_step.")

    # -- evaluation ---------------------------------------------------------------------------
    def _predict_query(self, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        if self.transductive:
            return self.net(query_x).float()
        return torch.cat([self.net(torch.cat([support_x, query_x[q:q + 1]]))[-1:] for q in range(len(query_x))]).float()

    def predict_steps(self, batch: TaskBatch, steps: int | None = None) -> list[torch.Tensor]:
        """Query outputs after 0 … ``eval_steps`` steps (transductive) or after the last step only."""
        steps = self.eval_steps if steps is None else steps
        theta = [p.detach().clone() for p in self.net.parameters()]
        buffers = [b.clone() for b in self.net.buffers()]
        per_step: list[list[torch.Tensor]] = [[] for _ in range(steps + 1 if self.transductive else 1)]
        try:
            for i in range(batch.num_tasks):
                sx, sy, qx = batch.support_x[i].clone(), batch.support_y[i].clone(), batch.query_x[i]

                def record(j: int) -> None:
                    if self.transductive or j == steps:
                        with torch.no_grad():
                            per_step[j if self.transductive else 0].append(self._predict_query(sx, qx))

                with torch.enable_grad():
                    self._inner(sx, sy, steps, self.eval_batch, False, record)
                with torch.no_grad():
                    for p, t in zip(self.net.parameters(), theta):
                        p.copy_(t)
        finally:
            with torch.no_grad():
                for p, t in zip(self.net.parameters(), theta):
                    p.copy_(t)
                for b, t in zip(self.net.buffers(), buffers):
                    b.copy_(t)
        return [torch.stack(o) for o in per_step]

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        return self.predict_steps(batch)[-1]

    def attack_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Query outputs of the adapted weights (``eval_steps`` steps on the clean support set), differentiable
        with respect to the query inputs."""
        theta = [p.detach().clone() for p in self.net.parameters()]
        buffers = dict(self.net.named_buffers())
        outs = []
        for i in range(batch.num_tasks):
            with torch.enable_grad():
                self._inner(batch.support_x[i].detach(), batch.support_y[i], self.eval_steps, self.eval_batch, False)
            adapted = {n: p.detach().clone() for n, p in self.net.named_parameters()}
            with torch.no_grad():
                for p, t in zip(self.net.parameters(), theta):
                    p.copy_(t)
            with torch.enable_grad():
                qx = batch.query_x[i]
                if self.transductive:
                    outs.append(functional_call(self.net, {**adapted, **buffers}, (qx,)))
                else:
                    sx = batch.support_x[i].detach()
                    outs.append(torch.cat([functional_call(self.net, {**adapted, **buffers}, (torch.cat([sx, qx[q:q + 1]]),))[-1:]
                                           for q in range(len(qx))]))
        return torch.stack(outs)
