import pytest
import torch

from fewshot.data.attributes import read_attribute_matrix, read_xlsa17, synthetic_attributes
from fewshot.engine.config import load_config
from fewshot.engine.evaluator import evaluate
from fewshot.errors import DataError
from fewshot.methods import build_method
from fewshot.tasks import EpisodeSampler


def test_attribute_rows_follow_the_task_labels():
    ds = synthetic_attributes("train")
    b = EpisodeSampler(ds, 5, 0, 3, seed=1).sample()
    assert b.support_x.shape[1] == 0 and b.class_attributes.shape == (1, 5, 20)
    for k in range(5):  # the row for label k is the attribute vector of the class of the items labelled k
        item = b.query_x[0][b.query_y[0] == k][0]
        c = min(range(ds.num_classes), key=lambda i: (ds.blocks[i] - item).abs().amin(0).sum())
        assert torch.equal(b.class_attributes[0, k], ds.attributes[c])


def test_seen_and_unseen_are_disjoint():
    names = {p: set(synthetic_attributes(p).names) for p in ("train", "val", "test")}
    assert len(names["test"]) == 10 and not names["train"] & names["test"] and not names["val"] & names["test"]


def _train_zsl(method, permute, steps=300):
    torch.manual_seed(0)
    train = synthetic_attributes("train", permute=permute)
    test = synthetic_attributes("test", permute=permute)
    extra = ["model.embed_dim=64"] if method == "zsl_protonet" else ["model.attribute_hidden=64", "model.relation_hidden=64"]
    model = build_method(load_config(method, ["model.attribute_dim=20", *extra]), train.item_shape)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = EpisodeSampler(train, 10, 0, 5, batch_size=4, seed=0)
    for _ in range(steps):
        model.train_step(sampler.sample(), opt)
    return evaluate(model, test, 10, 0, 10, 200, seed=3)["mean"]


@pytest.mark.parametrize("method", ["zsl_protonet", "zsl_relation"])
def test_zero_shot_far_above_chance_and_shuffled_control_at_chance(method):
    assert _train_zsl(method, permute=False) > 50.0  # chance 10 %
    assert _train_zsl(method, permute=True) < 22.0


def test_read_attribute_matrix(tmp_path):
    f = tmp_path / "predicate-matrix-continuous.txt"
    f.write_text("  1.0 0.5  -1\n0 2 3.25\n")
    assert torch.equal(read_attribute_matrix(f), torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 3.25]]))
    f.write_text("1 2\n3\n")
    with pytest.raises(DataError, match="different lengths"):
        read_attribute_matrix(f)


def test_read_xlsa17_generated_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    feats = torch.randn(16, 12)  # 12 images of 16-d features (the real files are 2048 × n)
    labels = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 1, 2])  # 1-based
    att = torch.randn(6, 5)  # a × C
    scipy_io.savemat(tmp_path / "res101.mat", {"features": feats.numpy(), "labels": labels[:, None].numpy()})
    scipy_io.savemat(tmp_path / "att_splits.mat", {"att": att.numpy(), "trainval_loc": [[1], [2], [3], [4], [11], [12]],
                                                  "train_loc": [[1], [2]], "val_loc": [[3], [4]], "test_seen_loc": [[11]],
                                                  "test_unseen_loc": [[7], [8], [9], [10]]})
    test = read_xlsa17(tmp_path, "test")
    assert test.names == ["class004", "class005"] and test.images.shape == (4, 16)
    assert torch.allclose(test.attributes, att.T[[3, 4]])
    assert torch.allclose(test.images, feats.T[[6, 7, 8, 9]])  # image rows stay with their classes
    trainval = read_xlsa17(tmp_path, "trainval")
    assert trainval.counts.tolist() == [3, 3] and trainval.names == ["class001", "class002"]
    assert torch.allclose(trainval.images, feats.T[[0, 1, 10, 2, 3, 11]])  # class-major, 1-based locations
    assert torch.allclose(trainval.attributes, att.T[[0, 1]])
    seen = read_xlsa17(tmp_path, "test_seen")
    assert seen.names == ["class001"] and torch.allclose(seen.images, feats.T[[10]])
