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
    results = json.loads((tmp_path / "run" / "results.json").read_text()) if (tmp_path / "run" / "results.json").exists() else t.test()
    assert results["test"][0]["selected_step"] == best["step"]


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
