"""The one training loop for every method.

``Trainer(config, run_dir).fit()`` meta-trains with periodic validation on validation *classes*,
keeps the best checkpoint, writes metrics as JSONL (and TensorBoard when installed), and can be
stopped at any step (Ctrl-C, a time limit, a crash) and resumed exactly: the checkpoint holds the
model, optimizer, schedule, sampler generator and global RNG states, and the metrics log is cut
back to the checkpoint's step. ``test()`` evaluates the selected checkpoint on the test classes.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from fewshot.data import build_dataset, split_name
from fewshot.data.sequences import SequenceFamily
from fewshot.engine.checkpoint import load_checkpoint, save_checkpoint
from fewshot.engine.config import dump_config
from fewshot.engine.distributed import World
from fewshot.engine.evaluator import LOWER_IS_BETTER, evaluate
from fewshot.engine.runs import MetricsLog, environment, machine_summary, write_json, write_text
from fewshot.errors import CheckpointError, ConfigError
from fewshot.methods import build_method
from fewshot.tasks import make_sampler


def make_optimizer(params, train: dict[str, Any]) -> torch.optim.Optimizer:
    """The meta-optimizer; ``params`` are parameters or parameter groups (e.g. Meta-SGD's α without weight decay)."""
    name = train["optimizer"]
    if name == "adam":
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])
    raise ConfigError(f"unknown train.optimizer {name!r}; use adam or sgd.")


def make_schedule(optimizer: torch.optim.Optimizer, train: dict[str, Any]) -> torch.optim.lr_scheduler.LRScheduler:
    """lr · gamma^⌊episode / lr_step⌋ (ProtoNets: halve every 2,000 episodes); constant when lr_step is 0."""
    step, gamma = train["lr_step"], train["lr_gamma"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (e // step) if step else 1.0)


class Trainer:
    """Meta-training and testing of one configured method in one run folder."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, resume: bool = False,
                 progress: bool | None = None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.progress = sys.stderr.isatty() if progress is None else progress
        torch.set_num_threads(config["threads"])
        self.device = torch.device(config["device"])
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device is cuda but no CUDA GPU is available; use --device cpu.")
        tr, va = config["train"], config["val"]
        # Datasets first: impossible settings are refused before any work starts.
        self.train_data = build_dataset(config["data"], config["data"]["train_part"])
        self.val_data = build_dataset(config["data"], config["data"]["val_part"])
        self.sampler = make_sampler(self.train_data, tr["ways"], tr["shots"], tr["queries"], tr["meta_batch"],
                                    seed=config["seed"], rotate=tr["rotate"], name="train",
                                    **sampler_options(config, "train"))
        make_sampler(self.val_data, va["ways"], va["shots"], va["queries"], name="val", **sampler_options(config, "val"))
        test_data = build_dataset(config["data"], config["data"]["test_part"])
        check_eval_settings(config, test_data)
        check_disjoint(config, self.train_data, self.val_data, test_data)
        torch.manual_seed(config["seed"])
        random.seed(config["seed"])
        self.model = build_method(config, self.train_data.item_shape).to(self.device)
        self.model.grad_clip = tr["grad_clip"]
        bf16 = config["precision"] == "bf16"
        self.memory_format = torch.channels_last if bf16 and len(self.train_data.item_shape) == 3 else None
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
        self.world = World.from_env(self.device)  # torchrun: split every meta-batch over the processes
        self.model.world, self.model.meta_batch_total = self.world, tr["meta_batch"]
        self.model.check_world(self.world)  # before a checkpoint is restored or an episode runs
        self.optimizer = make_optimizer(self.model.parameter_groups(), tr)
        self.schedule = make_schedule(self.optimizer, tr)
        self.step, self.best, self.best_step, self.elapsed = 0, -math.inf, 0, 0.0
        self.metric = ("bit_errors" if isinstance(self.train_data, SequenceFamily)  # of validation
                       else "mse" if getattr(self.train_data, "regression", False) else "accuracy")
        self.window: dict[str, list[float]] = {}  # training metrics since the last log line
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore(load_checkpoint(self.run_dir / "checkpoints" / "last.pt"))
            if self.world.main:
                write_text(self.run_dir / "config.yaml", dump_config(config))  # overrides given on resume
        elif self.world.main:
            write_text(self.run_dir / "config.yaml", dump_config(config))
            write_json(self.run_dir / "env.json", environment(config["threads"], config["device"]))
            write_json(self.run_dir / "classes.json", {"train": self.train_data.names, "val": self.val_data.names,
                                                      "test": test_data.names})
            if self.metrics.path.exists():
                self.metrics.path.unlink()
        self._stop_requested = False
        self._target_reached = False  # train.stop_at met (the same on every process)
        self._tb = None

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "sampler": self.sampler.state_dict(),
                "torch_rng": torch.get_rng_state(), "step": self.step, "best": self.best,
                "best_step": self.best_step, "elapsed": self.elapsed, "window": self.window, "metric": self.metric}

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.best, self.best_step = state["step"], state["best"], state["best_step"]
        self.metric = state.get("metric", self.metric)  # the sign of self.best depends on it (bit errors, MSE)
        self.elapsed = state["elapsed"]
        self.window = {k: list(v) for k, v in state["window"].items()}
        if self.world.main:
            self.metrics.truncate_after(self.step)

    def save(self) -> None:
        if self.world.main:
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", self._state())

    # -- loop -------------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        va = self.config["val"]
        with self.autocast():
            return evaluate(self.model, self.val_data, va["ways"], va["shots"], va["queries"], va["tasks"],
                            va["seed"], va["batch_tasks"], self.device, self.memory_format, cache=va["cache"],
                            **sampler_options(self.config, "val"))

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nfewshot: stopping after this episode and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until ``train.episodes``, or until the best validation metric reaches ``train.stop_at``
        (rank 0 decides for every process), or ``stop_after`` episodes in this call, or the time limit.

        Returns ``{"step", "completed", "metric", "best", "best_step", "train_seconds"}``; ``completed`` is
        true when all episodes ran or the target was reached.
        """
        tr, va = self.config["train"], self.config["val"]
        total = tr["episodes"]
        limit = tr["time_limit_minutes"] * 60 if tr["time_limit_minutes"] else math.inf
        target = tr["stop_at"]  # stop once the best validation metric reaches it (≥ accuracy, ≤ errors / MSE)
        self._open_tensorboard()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        bar = None
        if self.progress and self.world.main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, unit="ep", dynamic_ncols=True)
        start, start_elapsed, done_here = time.perf_counter(), self.elapsed, 0
        window = self.window
        win_start = time.perf_counter()
        self.model.train()
        clean = True  # False while an episode is half done: its state must never reach last.pt
        timed_out = False
        try:
            while self.step < total and not self._stop_requested:
                if stop_after is not None and done_here >= stop_after:
                    break
                reached = self._reached(target)
                if self.world.size > 1:  # every process stops at the same episode (rank 0 decides)
                    flag = torch.tensor([float(self.elapsed >= limit), float(reached)], device=self.device)
                    torch.distributed.broadcast(flag, 0)
                    timed_out_everywhere, reached = bool(flag[0].item()), bool(flag[1].item())
                else:
                    timed_out_everywhere = self.elapsed >= limit
                self._target_reached = reached
                if reached:
                    if self.world.main:
                        print(f"fewshot: validation {self.metric} reached train.stop_at={target} at episode "
                              f"{self.best_step}; training stops at episode {self.step}", file=sys.stderr)
                    break
                if timed_out_everywhere:
                    print(f"fewshot: time limit of {tr['time_limit_minutes']} min reached at episode {self.step}",
                          file=sys.stderr)
                    timed_out = True
                    break
                clean = False
                batch = self.world.shard(self.sampler.sample()).to(self.device, self.memory_format)
                m = self.model.train_step(batch, self.optimizer, self.autocast())
                if self.model.uses_optimizer:
                    self.schedule.step()
                self.step += 1
                done_here += 1
                self.elapsed = start_elapsed + time.perf_counter() - start
                for k, v in m.items():
                    window.setdefault(k, []).append(v)
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:
                        bar.set_postfix(acc=f"{sum(window.get('accuracy', [0])) / max(1, len(window.get('accuracy', [0]))):.3f}",
                                        best=f"{self.best:.2f}" if self.best > -math.inf else "-")
                if self.step % tr["log_every"] == 0 or self.step == total:
                    now = time.perf_counter()
                    n = len(next(iter(window.values()), [1]))
                    record = {"step": self.step, **{k: sum(v) / len(v) for k, v in window.items()},
                              "episodes_per_s": n / max(now - win_start, 1e-9), "elapsed_s": self.elapsed}
                    if self.model.uses_optimizer:
                        record["lr"] = self.optimizer.param_groups[0]["lr"]
                    self._log(record)
                    window.clear()
                    win_start = now
                if self.step % va["every"] == 0 or self.step == total:
                    self._validate_and_select()
                    self.elapsed = start_elapsed + time.perf_counter() - start
                if self.step % tr["checkpoint_every"] == 0 or self.step == total:
                    self.save()
                clean = True
        finally:
            # On an exception mid-episode the previous last.pt is kept: resuming redoes the lost episodes.
            self.elapsed = start_elapsed + time.perf_counter() - start if done_here else self.elapsed
            if done_here and clean:
                self.save()
            if bar is not None:
                bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self._tb is not None:
                self._tb.flush()
        if self.best == -math.inf and self.step > 0 and (timed_out or self.step >= total):
            self._validate_and_select()  # the run ended for good before its first validation
            self.save()
        lower = self.metric in LOWER_IS_BETTER
        return {"step": self.step, "completed": self.step >= total or self._target_reached, "metric": self.metric,
                "best": -self.best if lower else self.best, "best_step": self.best_step,
                "train_seconds": round(self.elapsed, 1)}

    def _reached(self, target: float | None) -> bool:
        """Whether the best validation score so far reaches ``train.stop_at`` (rank 0's view)."""
        if target is None or self.best == -math.inf:
            return False
        return self.best >= (-target if self.metric in LOWER_IS_BETTER else target)

    def _validate_and_select(self) -> None:
        if not self.world.main:  # only rank 0 validates and selects (the weights are the same everywhere)
            return
        t = time.perf_counter()
        val = self.validate()
        metric = self.metric = val["metric"]
        record = {"step": self.step, f"val_{metric}": val["mean"], "val_ci95": val["ci95"],
                  "val_seconds": round(time.perf_counter() - t, 2)}
        score = -val["mean"] if metric in LOWER_IS_BETTER else val["mean"]  # self.best is always "higher is better"
        if score > self.best:
            self.best, self.best_step = score, self.step
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt",
                            {"model": self.model.state_dict(), "step": self.step, "val": val})
        best = -self.best if metric in LOWER_IS_BETTER else self.best
        record[f"best_val_{metric}"] = best
        self._log(record)
        if not self.progress:
            print(f"episode {self.step}: val {metric} {val['mean']:.4g} ± {val['ci95']:.2g} "
                  f"(best {best:.4g} at {self.best_step}), {self.elapsed:.0f} s", flush=True)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.main:
            return
        self.metrics.write(record)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def _open_tensorboard(self) -> None:
        if self._tb is None and self.config["train"]["tensorboard"] and self.world.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- test -------------------------------------------------------------------------------
    def test(self, checkpoint: str | None = None) -> dict[str, Any]:
        """Evaluate the selected checkpoint on the test classes; writes and returns ``results.json``.

        A fresh model is built for it: the trainer's own model and state are left untouched.
        """
        return test_run(self.config, self.run_dir, checkpoint=checkpoint)


def check_eval_settings(config: dict[str, Any], test_data) -> None:
    """Refuse impossible test settings (before training, not after)."""
    ev = config["eval"]
    if isinstance(test_data, SequenceFamily):
        for length in ev["lengths"]:
            test_data.at_length(length)  # refuses lengths < 1
    for w in ev["ways"]:
        for s in ev["shots"]:
            make_sampler(test_data, w, s, ev["queries"], name="eval", **sampler_options(config, "eval"))


def check_disjoint(config: dict[str, Any], train, val, test) -> None:
    """Test classes are never training or model-selection classes; validation classes are not
    training classes unless the selection is not used (``eval.checkpoint=last``, e.g. retraining on
    ``trainval`` for a number of episodes chosen earlier)."""
    if config["data"]["dataset"] == "cats_dogs":  # split by clip, not by class (a demonstration set)
        return
    t, v, te = set(train.names), set(val.names), set(test.names)
    if te & (t | v):
        raise ConfigError(f"data.test_part={config['data']['test_part']!r} shares {len(te & (t | v))} classes with "
                          "training or validation; evaluate on held-out classes only (e.g. data.test_part=test).")
    if t & v and config["eval"]["checkpoint"] != "last":
        raise ConfigError(f"data.train_part and data.val_part share {len(t & v)} classes, so validation cannot select "
                          "the model; use disjoint parts or set eval.checkpoint=last.")


def sampler_options(config: dict[str, Any], section: str) -> dict[str, Any]:
    """The :class:`EpisodeSampler` options of a config section (``train``, ``val`` or ``eval``)."""
    sec, data = config[section], config["data"]
    options = {"unlabeled": sec["unlabeled"], "distractors": sec["distractors"],
               "labeled_fraction": data["labeled_fraction"], "pool_seed": data["pool_seed"], "groups": sec["groups"],
               "same_items": sec["same_items"], "affine": sec.get("affine", False),
               "downsample": sec.get("downsample", 0.0)}
    from fewshot.methods import METHODS

    if getattr(METHODS[config["method"]], "task_kind", "episodes") == "label_sequence":
        options["sequence"] = data["episodes"]
    return options


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def load_run_model(config: dict[str, Any], run_dir: Path, which: str, item_shape: tuple[int, ...],
                   device: str | torch.device = "cpu", model=None) -> tuple[Any, dict[str, Any]]:
    """The model of ``config`` (built unless given) with the ``which`` (``best`` / ``last``) checkpoint of
    ``run_dir`` loaded, and that checkpoint's state."""
    if model is None:
        model = build_method(config, item_shape).to(device)
    state = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(f"the {which} checkpoint of {run_dir} does not fit the model of this config; "
                              "evaluate with the model.* settings the run was trained with.") from None
    return model, state


def load_run(run_dir: Path, which: str = "best") -> tuple[dict[str, Any], Any, Any]:
    """A trained run as ``(config, model, test data)``: its resolved config, its model with the ``which``
    checkpoint loaded (on the config's device, with the config's threads), and its test part."""
    from fewshot.engine.config import load_config
    from fewshot.engine.runs import read_run_config

    config = load_config(base=read_run_config(Path(run_dir)))
    torch.set_num_threads(config["threads"])
    data = build_dataset(config["data"], config["data"]["test_part"])
    return config, load_run_model(config, run_dir, which, data.item_shape, config["device"])[0], data


def test_run(config: dict[str, Any], run_dir: Path, model=None, checkpoint: str | None = None,
             results_name: str = "results.json") -> dict[str, Any]:
    """Evaluate a run's ``best`` (or ``last``) checkpoint on every test setting of ``config['eval']``.

    Test evaluation always runs in float32, whatever precision trained the model.
    """
    run_dir = Path(run_dir)
    ev = config["eval"]
    which = checkpoint or ev["checkpoint"]
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    data = build_dataset(config["data"], config["data"]["test_part"])
    settings = [(w, s) for s in ev["shots"] for w in ev["ways"]]
    if isinstance(data, SequenceFamily):
        settings = [(0, length) for length in (ev["lengths"] or [data.max_length])]
    options = sampler_options(config, "eval")
    check_eval_settings(config, data)
    model, state = load_run_model(config, run_dir, which, data.item_shape, device, model)
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt") if (run_dir / "checkpoints" / "last.pt").exists() else {}
    from fewshot.engine.runs import git_revision

    env = {}
    env_path = run_dir / "env.json"
    if env_path.exists():
        import json

        env = json.loads(env_path.read_text())
    prefix = config["reproduce"]["prefix"] or config["name"]
    summaries = []
    for w, s in settings:
        t = time.perf_counter()
        r = evaluate(model, data, w, s, ev["queries"], ev["tasks"], ev["seed"], ev["batch_tasks"], device,
                     cache=ev["cache"], **options)
        key = f"k{s}" if r["metric"] == "mse" else f"{w}w{s}s"
        if isinstance(data, SequenceFamily):  # sequence tasks: one bucket per evaluation length
            key, length = f"L{s}", s
            r = evaluate(model, data.at_length(length), 0, 0, 0, ev["tasks"], ev["seed"], ev["batch_tasks"], device)
            r["values"] = {"wrong_bit_fraction": round(r["mean"] / (length * data.width), 5), "length": length,
                           "training_lengths": [data.min_length, data.max_length]}
        summaries.append({
            "name": f"{prefix}-{key}", "method": config["method"], "dataset": config["data"]["dataset"],
            "split": split_name(config["data"]), "ways": w, "shots": s, "queries": ev["queries"],
            "metric": r["metric"], "mean": r["mean"], "ci95": r["ci95"], "tasks": r["tasks"],
            "paper": config["reproduce"]["paper"].get(key), "train_seconds": round(last.get("elapsed", 0.0)),
            "train_episodes": last.get("step"), "selected_step": state.get("step"), "checkpoint": which,
            "norm": config["model"]["norm"], "precision": config["precision"],
            "machine": machine_summary(config["threads"], config["device"]), "config": config.get("source"),
            "seed": config["seed"], "eval_seed": ev["seed"], "eval_seconds": round(time.perf_counter() - t, 1),
            "revision": env.get("revision") or git_revision(), "run": run_dir.name})
        if "values" in r:
            summaries[-1]["values"] = r["values"]
        if isinstance(data, SequenceFamily):  # generated sequences: no ways or shots
            summaries[-1].update(ways=0, shots=0, queries=0)
        if "instance_accuracy" in r.get("values", {}):  # MANN: one row per reported presentation
            inst = r["values"]["instance_accuracy"]
            base = summaries[-1]
            base["name"], key = f"{prefix}-{w}w", f"{w}w"
            for k in ev["report_instances"]:
                if k <= len(inst["mean"]) and inst["mean"][k - 1] is not None:
                    summaries.append({**base, "name": f"{prefix}-{key}-inst{k}", "metric": f"instance_{k}_accuracy",
                                      "mean": inst["mean"][k - 1], "ci95": inst["ci95"][k - 1],
                                      "paper": config["reproduce"]["paper"].get(f"{key}-inst{k}")})
        if "curve" in r:  # metric after every inner step at test time (gradient-based methods)
            summaries[-1]["values"] = {"curve": r["curve"]}
            final = summaries[-1]
            summaries[-1]["name"] += f"-step{len(r['curve']['mean']) - 1}"
            for step in ev["report_steps"]:
                if not 0 <= step < len(r["curve"]["mean"]):
                    raise ConfigError(f"eval.report_steps asks for step {step} but the model adapts "
                                      f"{len(r['curve']['mean']) - 1} steps at test time (model.eval_steps).")
                summaries.insert(len(summaries) - 1, {
                    **final, "name": f"{prefix}-{key}-step{step}", "mean": r["curve"]["mean"][step],
                    "ci95": r["curve"]["ci95"][step], "paper": config["reproduce"]["paper"].get(f"{key}-step{step}")})
            final["paper"] = config["reproduce"]["paper"].get(f"{key}-step{len(r['curve']['mean']) - 1}")
    if ev["attack"] != "none":  # robustness: accuracy on white-box adversarial queries at each ε
        for w, s in settings:
            base = next(x for x in summaries if x["ways"] == w and x["shots"] == s)
            for eps in ev["attack_eps"]:
                t = time.perf_counter()
                r = evaluate(model, data, w, s, ev["queries"], ev["tasks"], ev["seed"], ev["batch_tasks"], device,
                             attack=ev["attack"], attack_eps=eps, pgd_steps=ev["pgd_steps"], **options)
                name = base["name"].split("-step")[0]
                summaries.append({**base, "name": f"{name}-{ev['attack']}{eps:g}", "mean": r["mean"], "ci95": r["ci95"],
                                  "paper": None, "attack": {"kind": ev["attack"], "eps": eps, "pgd_steps": ev["pgd_steps"]},
                                  "values": {}, "eval_seconds": round(time.perf_counter() - t, 1)})
    if config["method"] == "siamese":  # verification on unseen classes, threshold from validation classes
        from fewshot.engine.evaluator import verification

        t = time.perf_counter()
        val = build_dataset(config["data"], config["data"]["val_part"])
        v = verification(model, val, data, pairs=2000, seed=ev["seed"], device=device)
        p = v["accuracy"] / 100
        summaries.append({**summaries[-1], "name": f"{prefix}-verification", "metric": "verification_accuracy",
                          "ways": 2, "shots": 1, "mean": v["accuracy"], "tasks": v["pairs"], "paper": None,
                          "ci95": round(196 * math.sqrt(p * (1 - p) / v["pairs"]), 3),
                          "values": {"roc_auc": v["auc"], "threshold": v["threshold"],
                                     "val_accuracy_at_threshold": v["val_accuracy_at_threshold"]},
                          "eval_seconds": round(time.perf_counter() - t, 1)})
    seed_code = config["reproduce"]["seed_code"]  # the seed code's own number (spec/README.md), where recorded
    for summary in summaries:
        summary["seed_code"] = seed_code.get(summary["name"][len(prefix) + 1:])
    results = {"name": config["name"], "test": summaries}
    write_json(run_dir / results_name, results)
    return results
