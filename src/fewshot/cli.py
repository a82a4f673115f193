"""The ``fewshot`` command: train, eval, data, bench, reproduce, list.

Bad input (an unknown setting, missing data, an impossible task, a damaged checkpoint) is answered
with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from fewshot.errors import FewshotError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config setting, e.g. --set train.episodes=500 (repeatable)")
    p.add_argument("--data-dir", help="data folder (beats $FEWSHOT_DATA and ~/.cache/fewshot)")
    p.add_argument("--threads", type=int, help="torch threads (recorded in the run folder)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="training precision")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if getattr(args, "data_dir", None):
        out.append(f"data.dir={args.data_dir}")
    for key in ("threads", "device", "precision"):
        if getattr(args, key, None) is not None:
            out.append(f"{key}={getattr(args, key)}")
    return out


def _print_results(results: dict[str, Any]) -> None:
    for r in results["test"]:
        paper = f" (paper {r['paper']})" if r.get("paper") is not None else ""
        unit = "test pairs" if r["metric"].startswith("verification") else "test tasks"
        if r["metric"] == "mse":
            value = f"{r['mean']:.3f} ± {r['ci95']:.3f} mse"
        elif r["metric"] == "bit_errors":
            value, unit = f"{r['mean']:.3f} ± {r['ci95']:.3f} bit errors per sequence", "test sequences"
        else:
            value = f"{r['mean']:.2f} ± {r['ci95']:.2f} %"
        print(f"{r['name']}: {value} over {r['tasks']} {unit}{paper}")


def _train(config: dict[str, Any], out: str | None, resume: str | None, test: bool = True,
           command: str = "train") -> Path:
    from fewshot.engine.runs import new_run_dir
    from fewshot.engine.trainer import Trainer

    run = Path(resume) if resume else Path(out) if out else new_run_dir(config["name"])
    if not resume and run.exists() and any(run.iterdir()):
        raise FewshotError(f"run folder {run} already exists and is not empty; choose another --out or "
                           f"continue it with --resume {run}.")
    trainer = Trainer(config, run, resume=bool(resume))
    if not trainer.world.main:  # torchrun: the other processes train silently
        trainer.fit()
        trainer.world.close()
        # Leave without the interpreter's teardown: there gloo's threads can still be joinable and the
        # process aborts ("terminate called without an active exception"; 2 of ~16 two-process runs on a
        # loaded 2-core CPU, torch 2.13). Everything this rank owns is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    print(f"run folder: {run}", flush=True)
    summary = trainer.fit()
    trainer.world.close()  # rank 0 tests alone, after every process has left the group
    best = (f"best validation {summary['metric']} {summary['best']:.4g} at episode {summary['best_step']}"
            if math.isfinite(summary["best"]) else "no validation yet")
    print(f"trained {summary['step']} episodes in {summary['train_seconds']:.0f} s; {best}", flush=True)
    if not summary["completed"] and trainer._stop_requested:
        print(f"stopped early; continue with: fewshot {command} --resume {run}", flush=True)
        raise SystemExit(130)
    if test and trainer.world.main:
        _print_results(trainer.test())
    return run


def cmd_train(args: argparse.Namespace) -> None:
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import read_run_config

    if args.resume:
        config = load_config(base=read_run_config(Path(args.resume)), overrides=_overrides(args))
    elif not args.config:
        raise FewshotError("name a method or config to train (see `fewshot list`), or --resume a run folder.")
    else:
        config = load_config(args.config, _overrides(args))
    _train(config, args.out, args.resume, test=not args.no_test)


def cmd_eval(args: argparse.Namespace) -> None:
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import read_run_config
    from fewshot.engine.trainer import test_run

    run = Path(args.run)
    config = load_config(base=read_run_config(run), overrides=_overrides(args))
    name = "results.json" if not args.overrides else "results-eval.json"
    results = test_run(config, run, checkpoint=args.checkpoint, results_name=name)
    _print_results(results)
    print(f"written: {run / name}")


def reproductions() -> dict[str, str]:
    """Reproduction name → shipped config, for every config with a ``reproduce.prefix``."""
    from fewshot.engine.config import read_yaml, shipped_configs

    out = {}
    for name in shipped_configs():
        data = read_yaml(name)
        if (data.get("reproduce") or {}).get("prefix"):
            out[data.get("name") or name.replace("/", "-")] = name
    return out


def _current_reference_numbers(config: dict[str, Any]) -> None:
    """The papers' and seed codes' numbers are documentation, not settings: a resumed reproduction reports the
    ones its shipped config states now (a run started before a number was recorded would otherwise report none)."""
    from fewshot.engine.config import read_yaml, shipped_configs

    source = (config.get("source") or "").removesuffix(".yaml")
    reproduce = config.get("reproduce") or {}
    if source in shipped_configs():
        shipped = read_yaml(source).get("reproduce") or {}
        if shipped.get("prefix") == reproduce.get("prefix"):
            reproduce.update({k: shipped.get(k, {}) for k in ("paper", "seed_code")})


def cmd_reproduce(args: argparse.Namespace) -> None:
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import read_run_config, write_json

    table = reproductions()
    if args.resume:
        base = read_run_config(Path(args.resume))
        _current_reference_numbers(base)  # before the overrides: a --set reproduce.paper... still wins
        config = load_config(base=base, overrides=_overrides(args))
    else:
        if args.name not in table:
            raise FewshotError(f"no reproduction named {args.name!r}; available: {', '.join(sorted(table))}.")
        config = load_config(table[args.name], _overrides(args))
    run = _train(config, args.out, args.resume, command="reproduce")
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 tests and writes the results
        return
    results = json.loads((run / "results.json").read_text())
    target = Path(args.results_dir) if args.results_dir else None
    if target is not None:
        for summary in results["test"]:
            write_json(target / f"{summary['name']}.json", summary)
        print(f"summaries written to {target}/")


def cmd_data(args: argparse.Namespace) -> None:
    from fewshot.data import omniglot

    if args.dataset != "omniglot":
        raise FewshotError(f"`fewshot data` knows omniglot only so far, not {args.dataset!r}.")
    if args.action == "verify":
        print(json.dumps(omniglot.verify(args.data_dir), indent=2))
    else:
        for size, seconds in omniglot.prepare(args.data_dir, tuple(args.sizes), args.resample).items():
            print(f"omniglot {size}x{size} ({args.resample}) ready in {seconds:.1f} s")


def cmd_list(args: argparse.Namespace) -> None:  # noqa: ARG001
    from fewshot.engine.config import shipped_configs
    from fewshot.methods import METHODS

    print("methods:", ", ".join(sorted(METHODS)))
    print("configs:")
    for c in shipped_configs():
        print(f"  {c}")
    print("reproductions:")
    for name, cfg in sorted(reproductions().items()):
        print(f"  {name}  ({cfg})")


def cmd_bench(args: argparse.Namespace) -> None:
    from fewshot.engine.bench import bench, step_time

    shape = {"--ways": args.ways, "--shots": args.shots, "--queries": args.queries}
    if args.method == "protonet":
        if args.set:
            raise FewshotError("`fewshot bench protonet` compares fixed episode shapes (--ways, --shots, --queries); "
                               "--set applies to config benchmarks such as `fewshot bench protonet/omniglot-1shot`.")
        result = bench(args.method, args.ways or 60, args.shots or 5, args.queries or 5, args.episodes,
                       args.threads or 1, args.data_dir, args.precision or "bf16", args.warmup)
    else:  # any config: seconds per training step
        given = [flag for flag, value in shape.items() if value is not None]
        if given:
            raise FewshotError(f"{', '.join(given)} apply to `fewshot bench protonet` only; for a config use "
                               "--set train.ways=N (and train.shots, train.queries).")
        overrides = list(args.set) + ([f"precision={args.precision}"] if args.precision else [])
        result = step_time(args.method, overrides, args.episodes, args.warmup, args.threads or 1, args.data_dir)
    print(json.dumps(result, indent=2))
    if args.output:
        from fewshot.engine.runs import write_json

        write_json(Path(args.output), result)


def cmd_plot(args: argparse.Namespace) -> None:
    from fewshot.engine.plots import plot_run

    run = Path(args.run)
    if not (run / "config.yaml").exists():
        raise FewshotError(f"{run} is not a run folder (no config.yaml); give the folder `fewshot train` wrote.")
    for path in plot_run(run, Path(args.out) if args.out else None):
        print(f"written: {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot", description="Meta-learning that trains for real.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a method or config, then test it")
    t.add_argument("config", nargs="?", help="method name (its defaults), shipped config or YAML file")
    t.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder exactly")
    t.add_argument("--no-test", action="store_true", help="skip the test evaluation")
    _common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint on its test classes")
    e.add_argument("run", help="run folder")
    e.add_argument("--checkpoint", choices=["best", "last"], help="default: the config's eval.checkpoint")
    _common(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("reproduce", help="train, select on validation, test and summarize a paper setting")
    r.add_argument("name", nargs="?", help="reproduction name (see `fewshot list`)")
    r.add_argument("--out", help="run folder")
    r.add_argument("--resume", metavar="RUN", help="continue an interrupted reproduction")
    r.add_argument("--results-dir", default=None,
                   help="also write each summary as <dir>/<name>.json (the repository uses benchmarks/results)")
    _common(r)
    r.set_defaults(func=cmd_reproduce)

    d = sub.add_parser("data", help="verify or prepare datasets")
    d.add_argument("action", choices=["verify", "prepare"])
    d.add_argument("--dataset", default="omniglot")
    d.add_argument("--data-dir")
    d.add_argument("--sizes", type=int, nargs="+", default=[28])
    d.add_argument("--resample", default="lanczos", choices=["nearest", "bilinear", "lanczos"])
    d.set_defaults(func=cmd_data)

    ls = sub.add_parser("list", help="methods, shipped configs and reproductions")
    ls.set_defaults(func=cmd_list)

    pl = sub.add_parser("plot", help="figures of a run (NTM weightings, MANN per-instance accuracy, t-SNE of features)")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="folder for the figures (default: the run folder)")
    pl.set_defaults(func=cmd_plot)

    b = sub.add_parser("bench", help="training throughput: protonet against a plain PyTorch loop, or the "
                                     "seconds per training step of any config")
    b.add_argument("method", help="protonet (against the plain loop) or a config (e.g. mann/omniglot)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    b.add_argument("--ways", type=int, help="protonet only (default 60)")
    b.add_argument("--shots", type=int, help="protonet only (default 5)")
    b.add_argument("--queries", type=int, help="protonet only (default 5)")
    b.add_argument("--episodes", type=int, default=30, help="timed episodes (training steps for a config)")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--threads", type=int)
    b.add_argument("--precision", choices=["fp32", "bf16"])
    b.add_argument("--data-dir")
    b.add_argument("--output", help="also write the result as JSON here")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FewshotError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fewshot list | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
