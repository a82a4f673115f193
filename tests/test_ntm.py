"""NTM sequence tasks, the NTM module (parameter counts of the reference layouts) and learning a tiny copy task."""

from __future__ import annotations

import pytest
import torch

from fewshot.data.sequences import SequenceFamily
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.config import load_config
from fewshot.errors import DataError
from fewshot.methods import build_method
from fewshot.methods.memory import NTMModel, sequence_costs
from fewshot.nn.ntm import NTM
from fewshot.tasks import SequenceSampler, make_sampler


def one(task: str, length: int, **kw):
    fam = SequenceFamily(task, min_length=length, max_length=length, **kw)
    x, y, m = fam.draw(1, torch.Generator().manual_seed(0))
    return fam, x[0], y[0], m[0]


def test_copy_layout():
    fam, x, y, m = one("copy", 3, width=4)
    assert x.shape == (7, 5) and y.shape == (7, 4)
    assert x[3].tolist() == [0, 0, 0, 0, 1] and x[:3, 4].sum() == 0 and x[4:].abs().sum() == 0
    torch.testing.assert_close(y[4:], x[:3, :4])
    assert m.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_reverse_layout_of_the_reverse_code():
    fam, x, y, m = one("reverse", 3, width=4)
    assert x.shape == (8, 6) and fam.input_size == 6
    assert x[0, 4] == 1 and x[4, 5] == 1 and x[5:].abs().sum() == 0
    torch.testing.assert_close(y[5:], x[1:4, :4].flip(0))
    assert m.tolist() == [0] * 5 + [1] * 3


def test_repeat_copy_and_associative_recall():
    fam, x, y, m = one("repeat_copy", 2, width=3, min_repeats=3, max_repeats=4)
    r = round(float(x[3, 4]) * 4)  # the repeat count, normalized by max_repeats
    assert r in (3, 4) and float(x[3, 4]) == pytest.approx(r / 4)
    torch.testing.assert_close(y[4:4 + 2 * r, :3], x[1:3, :3].repeat(r, 1))
    assert y[-1, 3] == 1 and m.sum() == 2 * r + 1
    fam, x, y, m = one("associative_recall", 4, width=6, item_length=3)
    items = [x[i * 4 + 1: i * 4 + 4, :6] for i in range(4)]
    query = x[17:20, :6]
    q = next(i for i, it in enumerate(items) if torch.equal(it, query))
    torch.testing.assert_close(y[-3:], items[q + 1])
    assert m.sum() == 3


def test_lengths_are_inclusive_and_settings_checked():
    fam = SequenceFamily("copy", min_length=1, max_length=3)
    lengths = {int(m.sum()) for _ in range(20) for m in fam.draw(8, torch.Generator().manual_seed(_))[2]}
    assert lengths == {1, 2, 3}
    with pytest.raises(DataError, match="min_length"):
        SequenceFamily("copy", min_length=5, max_length=2)
    with pytest.raises(DataError, match="does not apply"):
        make_sampler(fam, 5, 1, 1, unlabeled=3)


@pytest.mark.parametrize("config,count", [("ntm/reverse-m1d1", 68580), ("ntm/reverse-m2d2", 211780),
                                          ("ntm/reverse-m3d3", 89940)])
def test_parameter_counts_of_the_reverse_code(config, count):
    model = build_method(load_config(config), (10,))
    assert sum(p.numel() for p in model.parameters()) == count


def test_weightings_are_distributions_and_recorded():
    net = NTM(5, 4, controller_size=16, memory_slots=10, memory_width=6, read_heads=2, write_heads=2)
    logits, w = net(torch.rand(3, 7, 5), record=True)
    assert logits.shape == (3, 7, 4) and w["read"].shape == (3, 7, 2, 10) and w["write"].shape == (3, 7, 2, 10)
    torch.testing.assert_close(w["read"].sum(-1), torch.ones(3, 7, 2))
    torch.testing.assert_close(w["write"].sum(-1), torch.ones(3, 7, 2))


@pytest.mark.parametrize("controller,addressing,output_from", [("lstm", "content_and_location", "controller_and_reads"),
                                                               ("feedforward", "content", "controller"),
                                                               ("lstm", "location", "controller")])
def test_step_order_reads_before_the_write(controller, addressing, output_from):
    """Documented order: address against M_{t−1}, read r_t from M_{t−1}, then write M_t. At t = 1 the memory is the
    constant 1e-6, so r_1 = 1e-6 everywhere (a read after the write would carry the add vectors); r_2 is read from
    M_1 with w^r_2; weightings are distributions for every controller and addressing mode."""
    from fewshot.nn import memory as mem

    torch.manual_seed(0)
    net = NTM(5, 4, controller_size=16, memory_slots=10, memory_width=6, read_heads=2, write_heads=1,
              controller=controller, addressing=addressing, output_from=output_from).double()
    x = torch.rand(3, 2, 5).double()
    state = net.initial_state(3, x.device, x.dtype)
    y1, s1 = net.step(x[:, 0], state)
    torch.testing.assert_close(s1["reads"], torch.full((3, 2, 6), 1e-6, dtype=torch.double))
    assert float((s1["memory"].detach() - 1e-6).abs().max()) > 1e-3  # the write did change M_1
    y2, s2 = net.step(x[:, 1], s1)
    torch.testing.assert_close(s2["reads"], mem.read(s1["memory"], s2["weights"][:, :2]))
    torch.testing.assert_close(s2["weights"].sum(-1), torch.ones(3, 3, dtype=torch.double))
    features = s2["h"] if output_from == "controller" else torch.cat([s2["h"], s2["reads"].flatten(1)], -1)
    torch.testing.assert_close(y2, net.output(features))


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_ntm_learns_a_tiny_copy_task_far_above_chance(one_thread):
    torch.manual_seed(0)
    fam = SequenceFamily("copy", width=4, min_length=1, max_length=4)
    sampler = SequenceSampler(fam, 16, seed=0)
    model = NTMModel(NTM(fam.input_size, fam.output_size, controller_size=32, memory_slots=16, memory_width=8))
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    test = SequenceSampler(fam.at_length(4), 200, seed=5).sample()
    before = float(sequence_costs(model.predict(test), test)["bit_errors"].mean()) / 16
    for _ in range(300):
        model.train_step(sampler.sample(), opt)
    after = float(sequence_costs(model.predict(test), test)["bit_errors"].mean()) / 16
    assert before > 0.35 and after < 0.3, (before, after)  # chance: half the bits wrong


def test_ntm_trains_and_tests_through_the_engine(tmp_path):
    from fewshot.engine.trainer import Trainer

    config = load_config("ntm/copy", ["data.sequences.width=3", "data.sequences.max_length=3", "model.memory_slots=8",
                                      "model.memory_width=4", "model.controller_size=8", "model.compile=false",
                                      "train.meta_batch=4",
                                      "train.episodes=6", "val.every=3", "val.tasks=8", "eval.tasks=10",
                                      "eval.lengths=[3, 6]", "train.tensorboard=false"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    results = trainer.test()["test"]
    assert [r["name"] for r in results] == ["ntm-copy-L3", "ntm-copy-L6"]
    assert results[0]["metric"] == "bit_errors" and 0 <= results[1]["values"]["wrong_bit_fraction"] <= 1
    assert results[0]["split"] == "generated" and results[0]["ways"] == results[0]["shots"] == 0
    assert "best_val_bit_errors" in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_stop_at_counts_bit_errors_as_lower_is_better_also_after_resume(tmp_path):
    from fewshot.engine.trainer import Trainer

    tiny = ["data.sequences.width=3", "data.sequences.max_length=3", "model.memory_slots=8", "model.memory_width=4",
            "model.controller_size=8", "model.compile=false", "train.meta_batch=2", "train.episodes=9",
            "val.every=3", "val.tasks=4", "train.checkpoint_every=3", "train.tensorboard=false"]
    never = Trainer(load_config("ntm/copy", tiny + ["train.stop_at=-1"]), tmp_path / "never", progress=False)
    assert never.fit(stop_after=4)["step"] == 4  # no sequence has fewer than 0 bit errors
    resumed = Trainer(load_config("ntm/copy", tiny + ["train.stop_at=1000"]), tmp_path / "never", resume=True,
                      progress=False)
    assert load_checkpoint(tmp_path / "never" / "checkpoints" / "last.pt")["metric"] == "bit_errors"
    summary = resumed.fit()  # the best so far (step 3) already has fewer than 1000 bit errors
    assert summary["step"] == 4 and summary["completed"] and summary["best"] >= 0


def test_plot_command_draws_the_ntm_weightings(tmp_path):
    pytest.importorskip("matplotlib")
    from fewshot.cli import main
    from fewshot.engine.trainer import Trainer

    config = load_config("ntm/copy", ["data.sequences.width=3", "data.sequences.max_length=3", "model.memory_slots=8",
                                      "model.memory_width=4", "model.controller_size=8", "model.compile=false",
                                      "train.meta_batch=2",
                                      "train.episodes=2", "val.every=2", "val.tasks=2", "eval.tasks=2",
                                      "train.tensorboard=false"])
    Trainer(config, tmp_path / "run", progress=False).fit()
    assert main(["plot", str(tmp_path / "run")]) == 0
    image = tmp_path / "run" / "ntm_weightings.png"
    assert image.exists() and image.stat().st_size > 1000
    assert main(["plot", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("layout", ["paper", "reverse_code"])
def test_compiled_step_gives_the_eager_numbers(one_thread, layout):
    """model.compile runs NTM.step through torch.compile as one graph: same logits and gradients as eager in
    training, the same predictions under no_grad and inference_mode, and no recompilation for a new length."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    kwargs = dict(controller_size=12, memory_slots=8, memory_width=6, layout=layout)
    eager = NTM(5, 4, **kwargs)
    fast = NTM(5, 4, **kwargs, compile=True)
    fast.load_state_dict(eager.state_dict())
    graphs = []
    for length in (3, 6):
        x = torch.rand(2, length, 5)
        out_e, out_f = eager(x), fast(x)
        torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-6)
        out_e.square().sum().backward()
        out_f.square().sum().backward()
        for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
            p.grad, q.grad = None, None
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] == graphs[0]  # compiled once, not once per sequence length
    with torch.no_grad():
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-5, atol=1e-6)
