"""Paired comparison of trained runs on the same seeded test tasks.

Runs whose configs share the evaluation seed and setting are tested on the very same tasks, so the
difference of two models is best judged task by task: for each run against the first (the baseline),
the mean of the per-task differences ± 1.96 · sd / √n, beside each run's own mean ± 95 % CI (which
overlap far more than the paired interval suggests). Optionally under an attack (``--attack fgsm --eps 0.1``).

    python benchmarks/paired.py runs/fomaml-omniglot-5k runs/fomaml-ga-omniglot-5k runs/adml-omniglot-5k \\
        --output benchmarks/comparisons/fomaml-omniglot-5k.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="run folders; the first is the baseline")
    parser.add_argument("--attack", default="none", choices=["none", "fgsm", "pgd"])
    parser.add_argument("--eps", type=float, nargs="*", default=[0.0])
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.attack != "none" and not any(args.eps):
        parser.error("--attack needs its sizes, e.g. --eps 0.1 0.2")
    import torch

    from fewshot.engine.evaluator import evaluate, mean_ci95
    from fewshot.engine.runs import git_revision, machine_summary, write_json
    from fewshot.engine.trainer import load_run, sampler_options
    from fewshot.errors import FewshotError

    settings, rows = None, []
    for eps in args.eps if args.attack != "none" else [0.0]:
        base = None
        for run in map(Path, args.runs):
            config, model, data = load_run(run)
            ev = config["eval"]
            setting = (ev["ways"][0], ev["shots"][0], ev["queries"], ev["tasks"], ev["seed"])
            if settings is None:
                settings = setting
            elif setting != settings:
                raise FewshotError(f"{run} is evaluated on {setting} (ways, shots, queries, tasks, seed) but the "
                                   f"baseline on {settings}; paired comparisons need the same tasks.")
            r = evaluate(model, data, *setting, batch_tasks=ev["batch_tasks"], attack=args.attack, attack_eps=eps,
                         per_task=True, **sampler_options(config, "eval"))
            scores = torch.tensor(r["per_task"], dtype=torch.float64)
            row = {"run": run.name, "config": config.get("source"), "attack": args.attack, "eps": eps,
                   "mean": r["mean"], "ci95": r["ci95"]}
            if base is None:
                base = scores
            else:
                diff, half = mean_ci95(scores - base)
                row["paired_difference"] = [round(diff, 3), round(half, 3)]
                row["better_tasks"], row["worse_tasks"] = int((scores > base).sum()), int((scores < base).sum())
            print(row, flush=True)
            rows.append(row)
    result = {"baseline": Path(args.runs[0]).name, "ways_shots_queries_tasks_seed": list(settings), "rows": rows,
              "machine": machine_summary(1), "revision": git_revision()}
    if args.output:
        write_json(Path(args.output), result)
    return 0


if __name__ == "__main__":
    from fewshot.errors import FewshotError

    try:
        raise SystemExit(main())
    except FewshotError as err:  # bad input (a run folder, differing tasks): one sentence, no traceback
        raise SystemExit(f"paired: {err}") from None
