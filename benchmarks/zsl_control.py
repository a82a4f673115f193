"""Zero-shot controls over many attribute permutations (the synthetic attribute benchmark).

A single permutation of the attribute rows is one draw of "chance": with 10 fixed unseen classes its
accuracy can land far from 10 % (measured: 0.5 % to 24.8 % over four seeds), and the CI over test
tasks, which share those 10 classes, does not show that spread. This script trains the zero-shot model
on ``--seeds`` benchmark seeds, with true and with permuted attributes, and reports the mean ± 95 % CI
over seeds (n = seeds), written as ``benchmarks/results/<name>-over-seeds.json``.

    python benchmarks/zsl_control.py zsl_protonet/attributes --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import git_revision, machine_summary, write_json
    from fewshot.engine.trainer import Trainer

    for permute in (False, True):
        values, seconds = [], 0.0
        for seed in range(args.seeds):
            config = load_config(args.config, [f"data.attributes.seed={seed}", f"data.attributes.permute={str(permute).lower()}",
                                               f"eval.tasks={args.tasks}", "train.tensorboard=false"])
            with TemporaryDirectory() as tmp:
                trainer = Trainer(config, Path(tmp) / "run", progress=False)
                t = time.perf_counter()
                trainer.fit()
                seconds += time.perf_counter() - t
                values.append(trainer.test()["test"][0]["mean"])
            print(f"seed {seed} permute={permute}: {values[-1]:.2f}", flush=True)
        mean = statistics.fmean(values)
        ci = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
        name = f"{config['reproduce']['prefix']}{'-shuffled-control' if permute else ''}-over-seeds"
        summary = {"name": name, "method": config["method"], "dataset": "attributes", "split": "seeded unseen classes",
                   "ways": config["eval"]["ways"][0], "shots": 0, "queries": config["eval"]["queries"],
                   "metric": "accuracy", "mean": round(mean, 3), "ci95": round(ci, 3), "tasks": args.seeds,
                   "paper": None, "train_seconds": round(seconds / args.seeds), "precision": config["precision"],
                   "machine": machine_summary(config["threads"], config["device"]), "config": config["source"],
                   "seed": list(range(args.seeds)), "revision": git_revision(),
                   "values": {"per_seed": values, "tasks_per_seed": args.tasks,
                              "note": "mean ± 95% CI over benchmark seeds (n = seeds), each the mean over its test tasks"}}
        write_json(ROOT / "benchmarks" / "results" / f"{name}.json", summary)
        print(f"{name}: {mean:.2f} ± {ci:.2f} over {args.seeds} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
