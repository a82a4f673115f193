import json
import math

import pytest
import torch

from fewshot.engine.checkpoint import load_checkpoint, save_checkpoint
from fewshot.engine.config import load_config
from fewshot.engine.evaluator import mean_ci95
from fewshot.engine.trainer import Trainer
from fewshot.errors import CheckpointError

TINY = ["data.dataset=synthetic", "model.backbone=mlp", "model.hidden=[32]", "model.norm=eval",
        "train.ways=10", "train.shots=2", "train.queries=3", "train.episodes=30", "train.log_every=5",
        "train.checkpoint_every=10", "val.every=10", "val.tasks=20", "val.ways=5", "eval.tasks=50",
        "eval.ways=[5]", "eval.shots=[1]", "train.lr=3e-3", "train.lr_step=10", "train.tensorboard=false"]

DETERMINISTIC = ("step", "loss", "accuracy", "lr", "val_accuracy", "val_ci95", "best_val_accuracy")


def _clean(records):
    return [{k: v for k, v in r.items() if k in DETERMINISTIC} for r in records]


def test_ci95_hand_computed():
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)


def test_resume_equals_uninterrupted(tmp_path):
    config = load_config("protonet", TINY)
    full = Trainer(config, tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(config, tmp_path / "part", progress=False)
    part.fit(stop_after=13)  # stops between checkpoints: the last checkpoint is written on stop
    # metrics written after the checkpoint a crash would leave behind are cut back on resume
    resumed = Trainer(config, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 13
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _clean(full.metrics.read()) == _clean(resumed.metrics.read())
    assert full.test()["test"][0]["mean"] == resumed.test()["test"][0]["mean"]


def test_resume_after_a_crash_cuts_metrics_back(tmp_path):
    config = load_config("protonet", TINY)
    t = Trainer(config, tmp_path / "run", progress=False)
    t.fit(stop_after=10)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # lines a crash left after the checkpoint
        f.write(json.dumps({"step": 15, "loss": 9.0}) + "\n")
    resumed = Trainer(config, tmp_path / "run", resume=True, progress=False)
    assert max(r["step"] for r in resumed.metrics.read()) == 10
    resumed.fit()
    assert resumed.step == 30


def test_sigint_stops_at_an_episode_boundary_and_saves(tmp_path):
    config = load_config("protonet", TINY)
    t = Trainer(config, tmp_path / "run", progress=False)
    t._stop_requested = True  # what the first Ctrl-C does
    summary = t.fit()
    assert summary["step"] == 0 and not summary["completed"]
    t._stop_requested = False
    t.fit(stop_after=3)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_best_checkpoint_is_selected_on_validation(tmp_path):
    config = load_config("protonet", TINY)
    t = Trainer(config, tmp_path / "run", progress=False)
    t.fit()
    vals = [r for r in t.metrics.read() if "val_accuracy" in r]
    best = max(vals, key=lambda r: r["val_accuracy"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert state["step"] == best["step"] and t.best == best["val_accuracy"]
    assert t.test()["test"][0]["selected_step"] == best["step"]
    # the step schedule: lr 3e-3 halved every 10 episodes (logged after the step's update)
    lrs = {r["step"]: r["lr"] for r in t.metrics.read() if "lr" in r}
    assert [lrs[k] for k in (5, 10, 15, 20, 25, 30)] == pytest.approx([3e-3, 1.5e-3, 1.5e-3, 7.5e-4, 7.5e-4, 3.75e-4])


@pytest.mark.parametrize("metric,values,best,best_step,record", [
    ("accuracy", [50.0, 70.0, 60.0], 70.0, 20, [50.0, 70.0, 70.0]),
    ("mse", [0.5, 0.2, 0.3], -0.2, 20, [0.5, 0.2, 0.2])])  # lower is better: kept as −MSE internally
def test_model_selection_keeps_the_best_not_the_last(tmp_path, metric, values, best, best_step, record):
    """Scripted validation results (rise, peak, fall): best.pt holds the peak's step, never simply the latest."""
    config = load_config("protonet", TINY)
    t = Trainer(config, tmp_path / "run", progress=False)
    scripted = iter(values)
    t.validate = lambda: {"metric": metric, "mean": next(scripted), "ci95": 0.0}
    for step in (10, 20, 30):
        t.step = step
        t._validate_and_select()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == best_step
    assert t.best == pytest.approx(best) and t.best_step == best_step
    logged = [r[f"best_val_{metric}"] for r in t.metrics.read() if f"best_val_{metric}" in r]
    assert logged == pytest.approx(record)


def test_checkpoint_write_is_atomic_and_damage_is_reported(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    assert load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob("*.part"))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_folder_contents(tmp_path):
    config = load_config("protonet", TINY)
    t = Trainer(config, tmp_path / "run", progress=False)
    t.fit()
    t.test()
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "env.json", "metrics.jsonl", "results.json", "checkpoints"} <= names
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["threads"] == 1 and env["torch"] == torch.__version__


def test_crash_mid_episode_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config("protonet", TINY)
    full = Trainer(config, tmp_path / "full", progress=False)
    full.fit()
    t = Trainer(config, tmp_path / "run", progress=False)
    calls = {"n": 0}
    original = t.model.train_step

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)  # the optimizer has stepped ...
        if calls["n"] == 17:
            raise RuntimeError("simulated crash")  # ... but the episode never finishes
        return out

    t.model.train_step = flaky
    with pytest.raises(RuntimeError, match="simulated"):
        t.fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 10
    resumed = Trainer(config, tmp_path / "run", resume=True, progress=False)
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _clean(full.metrics.read()) == _clean(resumed.metrics.read())


def test_stop_before_the_first_validation_resumes_exactly(tmp_path):
    config = load_config("protonet", TINY)
    full = Trainer(config, tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(config, tmp_path / "part", progress=False)
    part.fit(stop_after=5)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.')  # a line cut by a crash
    resumed = Trainer(config, tmp_path / "part", resume=True, progress=False)
    resumed.fit()
    assert _clean(full.metrics.read()) == _clean(resumed.metrics.read())
    assert full.best_step == resumed.best_step


def test_impossible_or_leaky_evaluation_is_refused_before_training(tmp_path):
    from fewshot.errors import ConfigError, DataError

    with pytest.raises(DataError, match="eval tasks ask for 500 ways"):
        Trainer(load_config("protonet", TINY + ["eval.ways=[500]"]), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="held-out classes only"):
        Trainer(load_config("protonet", TINY + ["data.test_part=train"]), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="cannot select"):
        Trainer(load_config("protonet", TINY + ["data.train_part=trainval"]), tmp_path / "c", progress=False)
    Trainer(load_config("protonet", TINY + ["data.train_part=trainval", "eval.checkpoint=last"]), tmp_path / "d",
            progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_run_folder_lists_its_classes(tmp_path):
    config = load_config("protonet", TINY)
    Trainer(config, tmp_path / "run", progress=False)
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert len(classes["train"]) == 72 and len(classes["test"]) == 24 and not set(classes["train"]) & set(classes["test"])


def test_random_labels_stay_at_chance(tmp_path):
    # the negative control of the learning tests: with labels unrelated to the inputs nothing is learned
    from fewshot.data.synthetic import gaussian_classes
    from fewshot.engine.evaluator import evaluate
    from fewshot.methods import build_method
    from fewshot.tasks import EpisodeSampler

    torch.manual_seed(0)
    train = gaussian_classes("train", classes=200, dim=16, noise=0.3, nuisance=48)
    test = gaussian_classes("test", classes=200, dim=16, noise=0.3, nuisance=48)
    model = build_method(load_config("protonet", ["model.backbone=mlp", "model.hidden=[64, 32]", "model.norm=none"]),
                         train.item_shape)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sampler = EpisodeSampler(train, 20, 1, 5, seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        b = sampler.sample()
        b.query_y = b.query_y[:, torch.randperm(b.query_y.shape[1], generator=g)]  # labels no longer match items
        model.train_step(b, opt)
    assert evaluate(model, test, 5, 1, 10, 200, seed=3)["mean"] < 35.0  # chance 20 %; the real test reaches > 75 %


def test_stop_at_ends_training_once_validation_reaches_it(tmp_path):
    """train.stop_at: the run stops at the first validation whose best score reaches it and counts as completed;
    a target above what the run reaches changes nothing."""
    easy = Trainer(load_config("protonet", TINY + ["train.stop_at=1"]), tmp_path / "easy", progress=False)
    summary = easy.fit()
    assert summary["step"] == 10 and summary["completed"] and summary["best"] >= 1  # first validation at 10
    full = Trainer(load_config("protonet", TINY + ["train.stop_at=101"]), tmp_path / "full", progress=False)
    assert full.fit()["step"] == 30


def test_load_run_gives_the_tested_model_on_the_same_tasks(tmp_path):
    from fewshot.engine.evaluator import evaluate
    from fewshot.engine.trainer import load_run

    t = Trainer(load_config("protonet", TINY), tmp_path / "run", progress=False)
    t.fit()
    tested = t.test()["test"][0]
    config, model, data = load_run(tmp_path / "run")
    ev = config["eval"]
    again = evaluate(model, data, 5, 1, ev["queries"], ev["tasks"], ev["seed"], ev["batch_tasks"], per_task=True)
    assert again["mean"] == tested["mean"] and len(again["per_task"]) == ev["tasks"]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    bigger = tmp_path / "bigger"
    Trainer(load_config("protonet", TINY + ["model.hidden=[48]"]), bigger, progress=False)
    (bigger / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_checkpoint(bigger / "checkpoints" / "best.pt", state)  # a checkpoint of another architecture
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_run(bigger)


def test_a_method_without_a_torch_optimizer_steps_no_schedule_and_logs_no_lr(tmp_path):
    """Reptile moves its weights itself: no 'scheduler before optimizer' warning, no meaningless lr in the log."""
    import warnings

    config = load_config("reptile", ["data.dataset=synthetic", "model.backbone=mlp", "model.hidden=[16]",
                                     "train.ways=5", "train.shots=2", "train.queries=2", "train.episodes=12",
                                     "train.log_every=5", "val.every=6", "val.tasks=5", "val.ways=5", "eval.tasks=5",
                                     "eval.ways=[5]", "train.meta_batch=2", "train.tensorboard=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Trainer(config, tmp_path / "run", progress=False)
        t.fit()
    logged = [r for r in t.metrics.read() if "epsilon" in r]
    assert logged and not any("lr" in r for r in logged)
