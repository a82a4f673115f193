"""Gaussian ProtoNet's per-image precision as a confidence score (Fort 2017): on test-class images, is the
precision of a damaged (down-sampled to 1/2 or 1/4 and up-sampled back) image lower than that of a clean one?

    python benchmarks/gaussian_confidence.py runs/gaussian-omniglot-1shot-damaged runs/gaussian-omniglot-1shot \
        --output benchmarks/gaussian/confidence.json

For each run folder (its best checkpoint): median precision of 2,000 random test images, clean and damaged,
and P(precision of a clean image > precision of a damaged image) over all pairs (0.5: no signal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fewshot.data import build_dataset
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.runs import read_run_config, write_json
from fewshot.methods import build_method
from fewshot.tasks.sampler import random_downsample


def confidence(run: Path, images: int = 2000, seed: int = 0) -> dict:
    cfg = read_run_config(run)
    data = build_dataset(cfg["data"], cfg["data"]["test_part"])
    model = build_method(cfg, data.item_shape)
    model.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt")["model"])
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = data.to_float(data.images[torch.randperm(len(data.images), generator=g)[:images]])
    damaged = random_downsample(x, 1.0, g)
    with torch.no_grad():
        clean_p = model.embed(x[None])[1][0].mean(-1)  # [n]: radius has one precision per image
        damaged_p = model.embed(damaged[None])[1][0].mean(-1)
    return {"run": run.name, "config": cfg.get("name"), "train_downsample": cfg["train"]["downsample"],
            "images": images, "median_precision_clean": round(float(clean_p.median()), 4),
            "median_precision_damaged": round(float(damaged_p.median()), 4),
            "p_clean_above_damaged": round(float((clean_p[:, None] > damaged_p[None]).float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [confidence(Path(r)) for r in args.runs]
    print(json.dumps(rows, indent=2))
    if args.output:
        write_json(Path(args.output), rows)


if __name__ == "__main__":
    main()
