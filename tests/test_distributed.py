"""Meta-training over 2 processes (torchrun, gloo on the CPU) takes the same steps as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fewshot.engine.distributed import World
from fewshot.errors import ConfigError
from fewshot.tasks import TaskBatch

SETTINGS = ["data.dataset=synthetic", "model.backbone=mlp", "model.hidden=[32]", "model.norm=none", "train.ways=5",
            "train.shots=1", "train.queries=3", "train.meta_batch=4", "train.episodes=6", "val.every=3", "val.ways=5",
            "val.tasks=20", "eval.ways=[5]", "eval.tasks=20", "train.log_every=1", "train.tensorboard=false"]


def run_cli(args: list[str], processes: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "fewshot", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_two_processes_take_the_same_steps_as_one(tmp_path, method):
    extra = ["model.inner_optimizer=sgd", "model.inner_batch=5", "model.inner_lr=0.1"] if method == "reptile" else []
    sets = [a for s in SETTINGS + extra for a in ("--set", s)]
    run_cli(["train", method, *sets, "--out", str(tmp_path / "one"), "--no-test"], 1)
    if method == "reptile":  # Reptile draws its inner minibatches from the global RNG, which differs per process
        sets += ["--set", "model.inner_batch=1000"]  # one full-batch step per inner iteration: no randomness
        run_cli(["train", method, *sets, "--out", str(tmp_path / "one-full"), "--no-test"], 1)
    run_cli(["train", method, *sets, "--out", str(tmp_path / "two"), "--no-test"], 2)
    one = tmp_path / ("one-full" if method == "reptile" else "one")
    a = torch.load(one / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in a:
        if k.startswith("adam_"):  # Reptile's inner-optimizer state is per process (documented)
            continue
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    val = [[json.loads(line)["val_accuracy"] for line in (d / "metrics.jsonl").read_text().splitlines()
            if "val_accuracy" in line] for d in (one, tmp_path / "two")]
    assert len(val[0]) == 2 and val[0] == pytest.approx(val[1], abs=1e-9)


def test_shard_takes_every_world_size_th_task():
    batch = TaskBatch(torch.arange(5)[:, None].float(), torch.zeros(5, 1), torch.zeros(5, 1), torch.zeros(5, 1), 2)
    assert World(1, 2).shard(batch).support_x.flatten().tolist() == [1.0, 3.0]
    assert World(0, 2).shard(batch).support_x.flatten().tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(ConfigError, match="meta_batch"):
        World(0, 8).shard(batch)


def test_two_processes_stop_together_at_the_validation_target(tmp_path):
    """train.stop_at under torchrun: rank 0 validates, every process leaves at the same step (no hang)."""
    sets = [a for s in SETTINGS + ["train.stop_at=1"] for a in ("--set", s)]
    run_cli(["train", "maml", *sets, "--out", str(tmp_path / "two"), "--no-test"], 2)
    assert torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
