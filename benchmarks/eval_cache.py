"""Evaluation time with and without the embedding table (``eval.cache``), on trained runs.

Each run's best checkpoint is evaluated twice on the same seeded test tasks: items embedded once per task
that draws them (``cache=False``, the reference path) and every test item embedded once
(``cache=True``, :func:`fewshot.engine.evaluator.embedded_dataset`). Both accuracies are written so the
agreement can be read beside the times.

    python benchmarks/eval_cache.py runs/protonet-fsdd-unseen-speakers:20:5 runs/relation-omniglot-1shot:20:1 \\
        --output benchmarks/speed/eval-embedding-cache.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="RUN:WAYS:SHOTS")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--output")
    args = parser.parse_args()
    from fewshot.engine.evaluator import evaluate
    from fewshot.engine.runs import git_revision, machine_summary, write_json
    from fewshot.engine.trainer import load_run, sampler_options

    rows = []
    for spec in args.runs:
        run, ways, shots = spec.rsplit(":", 2)
        config, model, data = load_run(Path(run))
        ev = config["eval"]
        row = {"run": Path(run).name, "config": config.get("source"), "ways": int(ways), "shots": int(shots),
               "queries": ev["queries"], "tasks": args.tasks, "test_items": len(data.images)}
        for cache in (False, True):
            t = time.perf_counter()
            r = evaluate(model, data, int(ways), int(shots), ev["queries"], args.tasks, ev["seed"], ev["batch_tasks"],
                         cache=cache, **sampler_options(config, "eval"))
            key = "cached" if cache else "per_task"
            row[f"{key}_seconds"], row[f"{key}_accuracy"] = round(time.perf_counter() - t, 2), [r["mean"], r["ci95"]]
        row["speedup"] = round(row["per_task_seconds"] / row["cached_seconds"], 1)
        print(row, flush=True)
        rows.append(row)
    result = {"rows": rows, "machine": machine_summary(1), "revision": git_revision(),
              "note": "two meta-training runs shared the 2 cores during the measurement"}
    if args.output:
        write_json(Path(args.output), result)
    return 0


if __name__ == "__main__":
    from fewshot.errors import FewshotError

    try:
        raise SystemExit(main())
    except FewshotError as err:  # bad input: one sentence, no traceback
        raise SystemExit(f"eval_cache: {err}") from None
