"""Figures of a run (matplotlib, the optional ``plot`` extra; imported on first use).

* NTM: read and write weightings over time and the output against the target for one test sequence
  (expected for copy: the write focus moves one slot per step through the input, then the read focus
  follows the same slots).
* MANN: per-instance accuracy (1st … 10th presentation of a label) with its 95 % CI.
* BATMANN and any embedding method: t-SNE of the support features of one test task (scikit-learn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewshot.errors import ConfigError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("figures need matplotlib: pip install 'fewshot[plot]'.") from None
    return plt


def ntm_figure(net: Any, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, path: Path) -> Path:
    """Weightings (read, write), input, target and output of the first sequence of a batch."""
    plt = _pyplot()
    with torch.no_grad():
        logits, w = net(inputs[:1], record=True)
    steps = int(mask[0].nonzero().max()) + 1 if mask[0].any() else inputs.shape[1]
    panels = [("input", inputs[0, :steps].T), ("target", (targets[0, :steps] * mask[0, :steps, None]).T),
              ("output σ(ŷ)", (torch.sigmoid(logits[0, :steps]) * mask[0, :steps, None]).T),
              ("write weighting", w["write"][0, :steps, 0].T), ("read weighting", w["read"][0, :steps, 0].T)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 10), sharex=True)
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image.float().numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("slot" if "weighting" in title else "bit", fontsize=8)
    axes[-1].set_xlabel("time step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def instance_figure(summary: dict[str, Any], path: Path, label: str = "MANN") -> Path:
    """Per-instance accuracy of a results summary (``values.instance_accuracy``)."""
    plt = _pyplot()
    inst = summary["values"]["instance_accuracy"]
    ks = [k for k, m in zip(inst["instance"], inst["mean"]) if m is not None]
    means = [m for m in inst["mean"] if m is not None]
    cis = [c or 0.0 for c, m in zip(inst["ci95"], inst["mean"]) if m is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, means, yerr=cis, marker="o", capsize=3, label=label)
    ax.set_xlabel("presentation of a label in the episode")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tsne_figure(features: torch.Tensor, labels: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """t-SNE (scikit-learn) of ``features [n, d]`` coloured by ``labels [n]``."""
    plt = _pyplot()
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("the t-SNE figure needs scikit-learn: pip install scikit-learn.") from None
    points = TSNE(n_components=2, random_state=seed, perplexity=min(30.0, max(2.0, (len(features) - 1) / 3))
                  ).fit_transform(features.float().numpy())
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab20", s=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("support features (t-SNE)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """The figures that fit a run's method, written into the run folder (or ``out``)."""
    import json

    from fewshot.data import build_dataset
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import read_run_config
    from fewshot.methods import build_method
    from fewshot.tasks import make_sampler

    config = load_config(base=read_run_config(run_dir))
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if config["method"] == "mann":
        results = run_dir / "results.json"
        if not results.exists():
            raise ConfigError(f"{run_dir} has no results.json yet; run `fewshot eval {run_dir}` first.")
        summary = json.loads(results.read_text())["test"][0]
        return [instance_figure(summary, out / "instance_accuracy.png", config["name"])]
    data = build_dataset(config["data"], config["data"]["test_part"])
    model = build_method(config, data.item_shape)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / f"{config['eval']['checkpoint']}.pt")["model"])
    model.eval()
    if config["method"] == "ntm":
        family = data.at_length(data.max_length)
        batch = make_sampler(family, 0, 0, 0, seed=config["eval"]["seed"]).sample()
        written.append(ntm_figure(model.net, batch.inputs, batch.targets, batch.mask, out / "ntm_weightings.png"))
    elif hasattr(model, "encoder"):
        ev = config["eval"]
        batch = make_sampler(data, ev["ways"][0], max(ev["shots"][0], 5), 1, seed=ev["seed"]).sample()
        with torch.no_grad():
            features = model.encoder(batch.support_x[0]).flatten(1)
        written.append(tsne_figure(features, batch.support_y[0], out / "support_tsne.png"))
    else:
        raise ConfigError(f"no figure is defined for method {config['method']!r}.")
    return written
