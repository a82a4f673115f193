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
meta-learned but not adapted (as in MAML's code) unless ``adapt_norm`` is set. ``vmap`` is allowed in
second order through transductive BatchNorm (its meta-gradient equals the loop's, tested), not through
running statistics.
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
TAML = ("none", "entropy", "theil", "ge", "atkinson", "gini", "vl")


class Network(nn.Module):
    """Backbone → (spatial mean of a feature map, with ``pool``) → flatten → linear head with ``outputs`` units.

    MAML's Omniglot network averages its last strided feature map (64 × 2 × 2) over space before the
    linear layer; its mini-ImageNet network flattens (32 × 5 × 5 = 800).
    """

    def __init__(self, body: nn.Module, features: int, outputs: int, pool: bool = False) -> None:
        super().__init__()
        self.body, self.pool = body, pool
        self.head = nn.Linear(features, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.pool and h.ndim == 4:
            h = h.mean((2, 3))
        return self.head(h.flatten(1))


def network_body(config: dict[str, Any], item_shape: tuple[int, ...], build) -> tuple[nn.Module, int, bool]:
    """The backbone of ``config`` as used by the gradient-based methods: (body, head input size, pool).

    A Conv-4 keeps its feature map (``.features``); the strided variant is averaged over space (MAML code).
    """
    body = build(config, item_shape)
    pool = config["model"]["backbone"] == "conv4-strided"
    if hasattr(body, "features") and isinstance(body.features, nn.Sequential):
        body = body.features
    with torch.no_grad():
        was = body.training
        body.eval()
        h = body(torch.zeros(2, *item_shape))
        body.train(was)
    features = h.shape[1] if pool and h.ndim == 4 else h[0].numel()
    return body, features, pool


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for class labels, mean squared error for real-valued targets."""
    if outputs.dtype in (torch.bfloat16, torch.float16):  # losses in float32 under autocast
        outputs = outputs.float()
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets.to(outputs.dtype))
    return F.cross_entropy(outputs, targets)


def agreement_weights(updates: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Gradient agreement (Eshratifar et al. 2018): wᵢ = Σⱼ gᵢ·gⱼ / Σₖ |Σⱼ gₖ·gⱼ| for update vectors
    ``updates [B, P]`` (constants: detached); uniform 1/B when the normalizer is below ``eps``."""
    g = updates.detach().double()
    agree = (g @ g.t()).sum(1)  # Σⱼ gᵢ·gⱼ = gᵢ · Σⱼ gⱼ
    norm = agree.abs().sum()
    if float(norm) < eps:
        return torch.full((len(g),), 1.0 / len(g), dtype=updates.dtype, device=updates.device)
    return (agree / norm).to(updates.dtype)


def entropy(outputs: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy H = −E_x Σₙ ŷₙ log ŷₙ of logits ``[..., n, N]`` (log-softmax for stability)."""
    logp = torch.log_softmax(outputs.float(), -1)
    return -(logp.exp() * logp).sum(-1).mean()


def inequality(losses: torch.Tensor, measure: str, a: float = 2.0, eps: float = 1e-8) -> torch.Tensor:
    """Inequality of the task losses ℓ₁..ℓ_M (TAML, Jamal et al. 2019), scale-invariant, ℓ clamped at ε:

    * ``theil``: T = (1/M) Σ (ℓᵢ/ℓ̄) ln(ℓᵢ/ℓ̄)
    * ``ge``: GE(a) = (1/(M·a(a−1))) Σ [(ℓᵢ/ℓ̄)^a − 1]; a = 1 is Theil, a = 0 the mean log deviation −(1/M) Σ ln(ℓᵢ/ℓ̄)
    * ``atkinson``: A_e = 1 − ((1/M) Σ ℓᵢ^{1−e})^{1/(1−e)} / ℓ̄ (e = ``a``); e = 1: 1 − geometric mean / ℓ̄
    * ``gini``: G = Σᵢ Σⱼ |ℓᵢ − ℓⱼ| / (2 M² ℓ̄)
    * ``vl``: variance of logarithms (1/M) Σ (ln ℓᵢ − ln g)², g the geometric mean
    """
    l = (losses if losses.dtype == torch.float64 else losses.float()).clamp_min(eps)
    m = l.numel()
    r = l / l.mean()
    if measure == "theil":
        return (r * r.log()).mean()
    if measure == "ge":
        if abs(a - 1) < 1e-12:
            return (r * r.log()).mean()
        if abs(a) < 1e-12:
            return -r.log().mean()
        return (r ** a - 1).sum() / (m * a * (a - 1))
    if measure == "atkinson":
        if abs(a - 1) < 1e-12:
            return 1 - l.log().mean().exp() / l.mean()
        return 1 - (l ** (1 - a)).mean() ** (1 / (1 - a)) / l.mean()
    if measure == "gini":
        return (l[:, None] - l[None]).abs().sum() / (2 * m * m * l.mean())
    if measure == "vl":
        logs = l.log()
        return ((logs - logs.mean()) ** 2).mean()
    raise ConfigError(f"unknown inequality measure {measure!r}; use one of {TAML[2:]}.")


def build_network(config: dict[str, Any], item_shape: tuple[int, ...], method: str, build) -> Network:
    """The adapted network of a config: backbone + linear head with train.ways outputs (1 for regression).

    A learned initialization has one output per class of its training tasks, so validation and test
    tasks must have the same number of ways (refused otherwise, before any training)."""
    body, features, pool = network_body(config, item_shape, build)
    regression = config["data"]["dataset"] == "sinusoid"
    ways = config["train"]["ways"]
    for w in config["eval"]["ways"] + [config["val"]["ways"]]:
        if not regression and w != ways:
            raise ConfigError(f"{method} learns an initialization for a {ways}-way head (train.ways), so it cannot "
                              f"be evaluated on {w}-way tasks; set val.ways and eval.ways to [{ways}] or train a "
                              f"{w}-way model.")
    return Network(body, features, 1 if regression else ways, pool)


class MAML(Method):
    """MAML and first-order MAML (see module docstring) with per-step query metrics at test time.

    Args:
        net: the network adapted per task (e.g. :class:`Network`); its outputs are the logits of the
            ``ways`` classes of a task, or the regression outputs.
        inner_lr: α. inner_steps: k during meta-training. eval_steps: k at test time (may exceed k).
        first_order: use ∇_{θ'} L^val as the meta-gradient (no second-order graph).
        adapt: ``all`` parameters or only the ``head`` (ANIL-style, far cheaper in second order).
        adapt_norm: also adapt normalization affine parameters.
        vmap: vectorize the inner loop over the tasks of a meta-batch (refused where it is known to be wrong).
        agreement: gradient agreement weights instead of the mean over tasks (MAML-GA, Eshratifar et al. 2018).
        taml: TAML (Jamal, Qi & Shah, CVPR 2019): ``entropy`` (classification) or an inequality measure
            (``theil``, ``ge``, ``atkinson``, ``gini``, ``vl``) of the tasks' losses, weighted by ``taml_lambda``;
            ``taml_on`` = ``initial`` (the paper: losses of the initial model on the support sets) or
            ``adapted`` (the book's variant: query losses after adaptation); ``taml_a`` is GE's a / Atkinson's e.
    """

    name: ClassVar[str] = "maml"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "conv4-strided", "norm": "transductive", "inner_lr": 0.4,
                                          "inner_steps": 1, "eval_steps": 3, "first_order": False, "adapt": "all",
                                          "adapt_norm": False, "vmap": False, "agreement": False, "taml": "none",
                                          "taml_lambda": 0.1, "taml_on": "initial", "taml_a": 2.0}
    needs_grad_at_test: ClassVar[bool] = True

    def __init__(self, net: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1, eval_steps: int = 3,
                 first_order: bool = False, adapt: str = "all", adapt_norm: bool = False, vmap: bool = False,
                 agreement: bool = False, taml: str = "none", taml_lambda: float = 0.1, taml_on: str = "initial",
                 taml_a: float = 2.0) -> None:
        super().__init__()
        if taml not in TAML:
            raise ConfigError(f"unknown model.taml {taml!r}; use one of {TAML}.")
        if taml_on not in ("initial", "adapted"):
            raise ConfigError(f"model.taml_on must be initial or adapted (got {taml_on!r}).")
        self.agreement, self.taml, self.taml_lambda, self.taml_on, self.taml_a = agreement, taml, taml_lambda, taml_on, taml_a
        # vmap in second order: verified equal to the loop (tests) through transductive BatchNorm (batch
        # statistics only); refused through running statistics (in-place buffer updates) and other norms
        norms = [type(m).__name__ for m in net.modules()
                 if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
                 and not (isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats)]
        if vmap and norms and not first_order:
            raise ConfigError(f"model.vmap=true in second order is verified only through BatchNorm with batch "
                              f"statistics, not through {norms[0]} (running statistics or another norm); use "
                              "model.norm=transductive or none, model.first_order=true or model.vmap=false.")
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
        m = config["model"]
        return cls(build_network(config, item_shape, cls.name, cls.build_encoder),
                   **{k: m[k] for k in cls.defaults if k not in ("backbone", "width", "norm", "hidden")})

    # -- the functional inner loop ------------------------------------------------------------
    def meta_params(self) -> dict[str, torch.Tensor]:
        """θ: the network's parameters and buffers by name (the dict ``functional_call`` runs on)."""
        return {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

    def run(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f_params(x) through ``functional_call``."""
        return functional_call(self.net, params, (x,))

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
            loss = task_loss(self.run(params, x), y)
            grads = torch.autograd.grad(loss, [params[n] for n in self.adapted], create_graph=create_graph)
            params = self.inner_step(params, dict(zip(self.adapted, grads)), j)
            if detach:
                params = {k: v.detach() for k, v in params.items()}
            out.append(params)
        return out

    # -- the method contract --------------------------------------------------------------------
    def task_results(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Every task of the batch adapted from θ with ``inner_steps`` steps, stacked over tasks:

        ``query`` L^val(f_{θ'ᵢ}) ``[B]``; ``outputs`` query outputs ``[B, n_query, out]``; ``updates`` the
        flattened update vectors θ − θ'ᵢ ``[B, P]`` (constants); and, for methods that need them
        (``needs_initial``), ``initial`` L^tr(f_θ) ``[B]`` with its graph and ``initial_outputs``.
        In a loop over tasks, or under ``torch.func.vmap`` (``model.vmap``).
        """
        theta = self.meta_params()
        if self.vmap:
            return self._task_results_vmap(theta, batch)
        rows: list[dict[str, torch.Tensor]] = []
        for i in range(batch.num_tasks):
            sx, sy = batch.support_x[i], batch.support_y[i]
            adapted = self.adapt_task(theta, sx, sy, self.inner_steps, create_graph=not self.first_order)[-1]
            out = self.run(adapted, batch.query_x[i])
            row = {"query": task_loss(out, batch.query_y[i]), "outputs": out,
                   "updates": torch.cat([(theta[n] - adapted[n]).detach().flatten() for n in self.adapted])}
            if self.needs_initial:
                row["initial_outputs"] = self.run(theta, sx)
                row["initial"] = task_loss(row["initial_outputs"], sy)
                row["adapted_outputs"] = self.run(adapted, sx)
            rows.append(row)
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def _task_results_vmap(self, theta: dict[str, torch.Tensor], batch: TaskBatch) -> dict[str, torch.Tensor]:
        """The same as the loop, vectorized over tasks: θ is shared (``in_dims=None``), task data batched."""
        fixed = {k: v for k, v in theta.items() if k not in self.adapted}

        def one_task(start: dict[str, torch.Tensor], sx, sy, qx, qy):
            adapted = start
            for j in range(self.inner_steps):
                def support_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
                    return task_loss(self.run({**fixed, **p}, sx), sy)

                grads = torch.func.grad(support_loss)(adapted)
                if self.first_order:
                    grads = {k: g.detach() for k, g in grads.items()}
                adapted = {n: v for n, v in self.inner_step(adapted, grads, j).items() if n in self.adapted}
            out = self.run({**fixed, **adapted}, qx)
            row = {"query": task_loss(out, qy), "outputs": out,
                   "updates": torch.cat([(start[n] - adapted[n]).detach().flatten() for n in self.adapted])}
            if self.needs_initial:
                row["initial_outputs"] = self.run({**fixed, **start}, sx)
                row["initial"] = task_loss(row["initial_outputs"], sy)
                row["adapted_outputs"] = self.run({**fixed, **adapted}, sx)
            return row

        start = {n: theta[n] for n in self.adapted}
        return torch.func.vmap(one_task, in_dims=(None, 0, 0, 0, 0))(start, batch.support_x, batch.support_y,
                                                                      batch.query_x, batch.query_y)

    @property
    def needs_initial(self) -> bool:
        """Whether the meta-loss uses the losses and outputs of the initial model (TAML)."""
        return self.taml != "none"

    def check_world(self, world: Any) -> None:
        """Gradient agreement and TAML's inequality measures weigh each task of a meta-batch against all the
        others: refused when the tasks are split over processes (torchrun)."""
        if world is not None and world.size > 1 and (self.agreement or self.taml not in ("none", "entropy")):
            raise ConfigError("gradient agreement and TAML's inequality measures weigh each task of a meta-batch "
                              "against all the others, but under torchrun each process holds only its share of the "
                              "tasks; run them without torchrun.")

    def meta_loss(self, results: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The outer objective from the per-task results (see :meth:`task_results`).

        MAML: (1/B) Σᵢ L^val_i. Gradient agreement (``agreement``): Σᵢ wᵢ L^val_i with constant weights
        wᵢ = Σⱼ gᵢ·gⱼ / Σₖ |Σⱼ gₖ·gⱼ| from the update vectors gᵢ = θ − θ'ᵢ (negative for disagreeing tasks,
        Σ|wᵢ| = 1, uniform when the normalizer vanishes). TAML (``taml``): + λ·I(ℓ₁..ℓ_B) on the initial
        (or adapted) support losses, or + λ(−H(f_θ) + H(f_θ')) for ``taml=entropy``.
        """
        query = results["query"]
        metrics: dict[str, float] = {}
        self.check_world(self.world)
        if self.agreement:
            w = agreement_weights(results["updates"])
            loss = (w * query).sum()
            metrics["ga_negative"] = float((w < 0).float().mean())
            metrics["ga_weight_min"], metrics["ga_weight_max"] = float(w.min()), float(w.max())
        else:
            loss = query.mean()
        if self.taml != "none":
            if self.taml == "entropy":
                term = -entropy(results["initial_outputs"]) + entropy(results["adapted_outputs"])
            else:
                losses = results["initial"] if self.taml_on == "initial" else results["query"]
                term = inequality(losses, self.taml, self.taml_a)
            metrics["taml_term"] = float(term.detach())
            loss = loss + self.taml_lambda * term
        return loss, metrics

    def loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The meta-loss of the batch (:meth:`meta_loss`), with the mean query loss and accuracy or MSE."""
        results = self.task_results(batch)
        loss, metrics = self.meta_loss(results)
        metrics = {"loss": float(loss.detach()), **metrics}
        query = float(results["query"].detach().mean())
        if batch.query_y.is_floating_point():
            metrics["mse"] = query
        else:
            metrics["query_loss"] = query
            metrics["accuracy"] = float(accuracy(results["outputs"].detach().float(), batch.query_y).mean())
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
                        per_step[j].append(self.run(p, batch.query_x[i]).float())
        return [torch.stack(o) for o in per_step]

    def predict(self, batch: TaskBatch) -> torch.Tensor:
        return self.predict_steps(batch)[-1]

    def attack_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Query outputs after ``eval_steps`` first-order steps on the clean support set, differentiable
        with respect to the query inputs (for white-box attacks at test time)."""
        theta = {k: v.detach() for k, v in self.meta_params().items()}
        outs = []
        with torch.enable_grad():
            for i in range(batch.num_tasks):
                p = self.adapt_task(theta, batch.support_x[i].detach(), batch.support_y[i], self.eval_steps,
                                    create_graph=False, detach=True)[-1]
                outs.append(self.run(p, batch.query_x[i]))
        return torch.stack(outs)


class MetaSGD(MAML):
    """Meta-SGD: learned per-coordinate inner step sizes α (same shapes as the adapted θ), one step.

    α is a meta-parameter (in ``parameters()``, updated by the meta-optimizer), initialized
    U[``alpha_low``, ``alpha_high``] = U[0.005, 0.1] as in the paper. Evaluating with more inner steps
    than were trained applies α beyond the regime it was learned for (it often diverges): a warning says so.
    """

    name: ClassVar[str] = "metasgd"
    defaults: ClassVar[dict[str, Any]] = {**MAML.defaults, "eval_steps": 1, "alpha_low": 0.005, "alpha_high": 0.1}

    def __init__(self, net: nn.Module, inner_lr: float = 0.0, inner_steps: int = 1, eval_steps: int = 1,
                 alpha_low: float = 0.005, alpha_high: float = 0.1, **options: Any) -> None:
        super().__init__(net, inner_lr, inner_steps, eval_steps, **options)
        if not 0 <= alpha_low <= alpha_high:
            raise ConfigError(f"model.alpha_low ≤ model.alpha_high is needed (got {alpha_low}, {alpha_high}).")
        params = dict(net.named_parameters())
        self.alpha = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(
            torch.empty_like(params[n]).uniform_(alpha_low, alpha_high)) for n in self.adapted})
        if eval_steps > inner_steps:
            warnings.warn(f"Meta-SGD learned its step sizes for {inner_steps} inner step(s) but is evaluated with "
                          f"{eval_steps}; learned step sizes applied repeatedly often diverge.", stacklevel=2)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """θ, and α in a group of its own that is never weight-decayed (step sizes are not weights)."""
        alpha = {id(p) for p in self.alpha.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in alpha]},
                {"params": list(self.alpha.parameters()), "weight_decay": 0.0}]

    def inner_step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """θ' = θ − α ⊙ ∇L^tr(θ)."""
        return {**params, **{n: params[n] - self.alpha[n.replace(".", "__")] * g for n, g in grads.items()}}


class ConcatContext(nn.Module):
    """CAVIA's regression network: the context φ is concatenated to the input of the first layer."""

    def __init__(self, net: nn.Module, context_dim: int) -> None:
        super().__init__()
        self.net, self.context_dim = net, context_dim

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), context.expand(x.shape[0], -1).to(x.dtype)], 1))


class FiLMContext(nn.Module):
    """CAVIA's classification network: φ drives FiLM at one conv block, h ← γ ⊙ h + b channel-wise with
    [γ, b] = W φ + c, applied after conv → norm (→ pool) and before the ReLU of block ``film_block``
    (the 3rd by default, as in the CAVIA code)."""

    def __init__(self, body: nn.Sequential, features: int, outputs: int, context_dim: int, film_block: int = 2,
                 pool: bool = False) -> None:
        super().__init__()
        layers = list(body)
        blocks: list[list[nn.Module]] = []
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                blocks.append([])
            blocks[-1].append(layer)
        if not 0 <= film_block < len(blocks):
            raise ConfigError(f"model.film_block={film_block} but the backbone has {len(blocks)} conv blocks.")
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks)
        self.film_block = film_block
        channels = next(m for m in blocks[film_block] if isinstance(m, nn.Conv2d)).out_channels
        self.film = nn.Linear(context_dim, 2 * channels)
        self.head = nn.Linear(features, outputs)
        self.context_dim, self.pool = context_dim, pool

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if i != self.film_block:
                x = block(x)
                continue
            relu = [m for m in block if isinstance(m, nn.ReLU)]
            for m in block:
                if not isinstance(m, nn.ReLU):
                    x = m(x)
            gamma, beta = self.film(context.to(x.dtype)).chunk(2, -1)
            x = gamma[None, :, None, None] * x + beta[None, :, None, None]
            if relu:
                x = torch.relu(x)
        if self.pool and x.ndim == 4:
            x = x.mean((2, 3))
        return self.head(x.flatten(1))


class CAVIA(MAML):
    """CAVIA / CAML — Zintgraf et al., ICML 2019 (arXiv 1810.03642), "Fast Context Adaptation via Meta-Learning".

    Only a context vector φ ∈ R^m adapts: φ₀ = 0 for every task (at test time too),
    φ_{j+1} = φ_j − α ∇_φ L^tr(f_{φ_j, θ}); the outer loop updates the shared θ through φᵢ(θ):
    θ ← θ − β ∇_θ (1/B) Σᵢ L^val(f_{φᵢ, θ}). φ is not a parameter (the meta-optimizer never sees it).
    Regression: φ concatenated to the input; classification: FiLM at one conv block.
    """

    name: ClassVar[str] = "cavia"
    defaults: ClassVar[dict[str, Any]] = {**MAML.defaults, "inner_lr": 1.0, "context_dim": 5, "film_block": 2}
    CONTEXT = "__context__"

    def __init__(self, net: nn.Module, context_dim: int = 5, film_block: int = 2, **options: Any) -> None:  # noqa: ARG002
        options.pop("adapt", None)
        super().__init__(net, **options)
        if context_dim < 1:
            raise ConfigError(f"model.context_dim must be at least 1 (got {context_dim}).")
        self.context_dim = context_dim
        self.adapted = [self.CONTEXT]

    @classmethod
    def from_config(cls, config: dict[str, Any], item_shape: tuple[int, ...]) -> "CAVIA":
        m = config["model"]
        regression = config["data"]["dataset"] == "sinusoid"
        options = {k: m[k] for k in cls.defaults if k not in ("backbone", "width", "norm", "hidden")}
        if len(item_shape) == 1:
            from fewshot.nn import MLP

            n = item_shape[0] + m["context_dim"]
            body = MLP(n, tuple(m["hidden"]), norm=m["norm"])
            outputs = 1 if regression else config["train"]["ways"]
            return cls(ConcatContext(Network(body, m["hidden"][-1], outputs), m["context_dim"]), **options)
        base = build_network(config, item_shape, cls.name, cls.build_encoder)
        if not isinstance(base.body, nn.Sequential):
            raise ConfigError(f"CAVIA's FiLM context needs a Conv-4 backbone (got model.backbone={m['backbone']}).")
        net = FiLMContext(base.body, base.head.in_features, base.head.out_features, m["context_dim"], m["film_block"],
                          base.pool)
        return cls(net, **options)

    def meta_params(self) -> dict[str, torch.Tensor]:
        """θ plus φ₀ = 0 (a fresh zero context, not a parameter)."""
        p = next(self.net.parameters())
        return {**super().meta_params(), self.CONTEXT: torch.zeros(self.context_dim, dtype=p.dtype, device=p.device,
                                                                   requires_grad=True)}

    def run(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        weights = {k: v for k, v in params.items() if k != self.CONTEXT}
        return functional_call(self.net, weights, (x, params[self.CONTEXT]))
