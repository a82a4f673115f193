import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fewshot.cli import main

TINY = ["--set", "data.dataset=synthetic", "--set", "model.backbone=mlp", "--set", "model.hidden=[32]",
        "--set", "train.ways=10", "--set", "train.shots=1", "--set", "train.queries=3", "--set", "train.episodes=20",
        "--set", "val.every=10", "--set", "val.tasks=10", "--set", "eval.tasks=20", "--set", "eval.ways=[5]",
        "--set", "train.tensorboard=false"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fewshot: error:") and "Traceback" not in err
    for w in words:
        assert w in lines[0]


def test_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "protonet", "--out", str(run), *TINY)
    assert code == 0 and "protonet-synthetic-5w1s" in out
    results = json.loads((run / "results.json").read_text())
    assert results["test"][0]["tasks"] == 20 and 0 <= results["test"][0]["mean"] <= 100
    assert results["test"][0]["checkpoint"] == "best"
    code, out, _ = run_cli(capsys, "eval", str(run), "--checkpoint", "last")
    assert code == 0 and "over 20 test tasks" in out
    last = json.loads((run / "results.json").read_text())["test"][0]
    assert last["checkpoint"] == "last" and last["selected_step"] == 20  # the final weights, after 20 episodes
    code, out, _ = run_cli(capsys, "eval", str(run), "--set", "eval.tasks=30")
    assert code == 0 and (run / "results-eval.json").exists() and "over 30 test tasks" in out


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "protonet-omniglot-1shot" in out and "protonet/omniglot-paper-5shot" in out


def test_missing_data(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "protonet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "images_background.zip", str(tmp_path))


def test_unknown_key_and_config(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "protonet", "--set", "train.shotz=3")
    assert_one_line_error(code, err, "train.shotz")
    code, _, err = run_cli(capsys, "train", "protonet/nosuch")
    assert_one_line_error(code, err, "no config named")
    code, _, err = run_cli(capsys, "reproduce", "nosuch")
    assert_one_line_error(code, err, "no reproduction named")


def test_impossible_way_and_shot(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "protonet", *TINY, "--set", "train.ways=500", "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "500 ways", "train.ways")
    code, _, err = run_cli(capsys, "train", "protonet", *TINY, "--set", "train.shots=15", "--set", "train.queries=10",
                           "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "25 items per class", "smallest class has 20")
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "checkpoints").exists()


def test_corrupted_checkpoint_and_bad_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "protonet", "--out", str(run), *TINY)[0] == 0
    (run / "checkpoints" / "best.pt").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "eval", str(run))
    assert_one_line_error(code, err, "best.pt", "damaged")
    code, _, err = run_cli(capsys, "eval", str(tmp_path))
    assert_one_line_error(code, err, "not a fewshot run folder")
    code, _, err = run_cli(capsys, "eval", str(run), "--checkpoint", "last", "--set", "model.hidden=[16]")
    assert_one_line_error(code, err, "does not fit the model")
    code, _, err = run_cli(capsys, "train", "protonet", "--out", str(run), *TINY)
    assert_one_line_error(code, err, "already exists")


def test_ctrl_c_then_resume(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "fewshot", "train", "protonet", "--out", str(run), *TINY,
            "--set", "train.episodes=100000", "--set", "val.every=50", "--set", "train.log_every=10"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "best.pt").exists():
        time.sleep(0.2)
    if not (run / "checkpoints" / "best.pt").exists():  # a safety limit, not a timing check
        proc.kill()
        pytest.fail(f"the training wrote no validation checkpoint within 120 s: {proc.communicate()[1][-500:]}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in out
    ckpt = run / "checkpoints" / "last.pt"
    from fewshot.engine.checkpoint import load_checkpoint

    step = load_checkpoint(ckpt)["step"]
    assert step >= 50
    code = subprocess.run([sys.executable, "-m", "fewshot", "train", "--resume", str(run), "--set",
                           f"train.episodes={step + 20}"], env=env, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    assert load_checkpoint(ckpt)["step"] == step + 20
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps)


@pytest.mark.omniglot
def test_reproduce_tiny_omniglot(omniglot_root, tmp_path, capsys):
    code, out, err = run_cli(capsys, "reproduce", "protonet-omniglot-1shot", "--data-dir", str(omniglot_root),
                             "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results"),
                             "--precision", "fp32", "--set", "train.ways=10", "--set", "train.episodes=6",
                             "--set", "val.every=3", "--set", "val.tasks=4", "--set", "eval.tasks=10")
    assert code == 0, err
    summary = json.loads((tmp_path / "results" / "protonet-omniglot-20w1s.json").read_text())
    assert summary["paper"] == 96.0 and summary["tasks"] == 10 and summary["split"] == "vinyals"
    assert summary["config"] == "protonet/omniglot-1shot.yaml" and summary["train_episodes"] == 6
    # a run whose copy of the config lacks the paper's number (recorded after it started) reports today's number
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "20w1s: 96.0" in config
    (tmp_path / "run" / "config.yaml").write_text(config.replace("20w1s: 96.0", "20w1s: 1.0"))
    code, out, err = run_cli(capsys, "reproduce", "--resume", str(tmp_path / "run"), "--data-dir", str(omniglot_root),
                             "--results-dir", str(tmp_path / "again"))
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "protonet-omniglot-20w1s.json").read_text())
    assert again["paper"] == 96.0 and again["mean"] == summary["mean"]


@pytest.mark.omniglot
def test_bench_runs_both_loops(omniglot_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, _, err = run_cli(capsys, "bench", "protonet", "--data-dir", str(omniglot_root), "--ways", "5", "--shots", "1",
                           "--queries", "2", "--episodes", "2", "--warmup", "0", "--output", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert {"ours_bf16", "plain_fp32", "ours_fp32", "speedup_vs_plain"} <= set(result)
    assert result["images_per_episode"] == 15


def test_bench_times_any_config(tmp_path, capsys):
    out = tmp_path / "step.json"
    code, _, err = run_cli(capsys, "bench", "ntm/copy", "--set", "data.sequences.max_length=3",
                           "--set", "train.meta_batch=2", "--set", "model.compile=false", "--episodes", "2",
                           "--warmup", "1", "--output", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["config"] == "ntm/copy" and result["steps"] == 2 and result["seconds_per_step"] > 0
    assert "data.sequences.max_length=3" in result["overrides"]
    code, _, err = run_cli(capsys, "bench", "no/such-config", "--episodes", "1")
    assert code != 0 and "no config named" in err
    code, _, err = run_cli(capsys, "bench", "ntm/copy", "--ways", "5")
    assert code != 0 and "--ways apply to `fewshot bench protonet` only" in err


def test_results_are_printed_in_their_own_units(capsys):
    from fewshot.cli import _print_results

    _print_results({"test": [
        {"name": "a", "metric": "accuracy", "mean": 98.123, "ci95": 0.2, "tasks": 1000, "paper": 98.7},
        {"name": "b", "metric": "mse", "mean": 0.3613, "ci95": 0.0273, "tasks": 600},
        {"name": "c", "metric": "bit_errors", "mean": 0.1, "ci95": 0.11, "tasks": 1000}]})
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["a: 98.12 ± 0.20 % over 1000 test tasks (paper 98.7)", "b: 0.361 ± 0.027 mse over 600 test tasks",
                     "c: 0.100 ± 0.110 bit errors per sequence over 1000 test sequences"]
