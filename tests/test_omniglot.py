import io
import zipfile

import pytest
import torch

from fewshot.data import omniglot as og
from fewshot.errors import DataError, DataNotFoundError


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        og.load_characters(tmp_path)
    msg = str(err.value)
    assert "images_background.zip" in msg and str(tmp_path / "omniglot") in msg and "\n" not in msg


def _png(value=0):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (105, 105), 255 - value).save(buf, format="PNG")
    return buf.getvalue()


def test_wrong_counts_and_corrupt_zip_are_refused(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    with zipfile.ZipFile(folder / "images_background.zip", "w") as z:
        for i in range(20):
            z.writestr(f"images_background/Alpha/character01/0001_{i + 1:02d}.png", _png())
    (folder / "images_evaluation.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="1 alphabets and 1 characters, expected 30 and 964"):
        og.load_characters(tmp_path)
    (folder / "images_background.zip").write_bytes(b"not a zip either")
    with pytest.raises(DataError, match="not a readable zip"):
        og.load_characters(tmp_path)


def test_bad_split_names():
    with pytest.raises(DataError, match="unknown Omniglot split"):
        og.split_characters("nosuch", "train", ["a/b"], torch.tensor([True]))
    with pytest.raises(DataError, match="random:<seed>"):
        og.split_characters("random:x", "train", ["a/b"], torch.tensor([True]))


@pytest.fixture(scope="module")
def characters(omniglot_root):
    return og.load_characters(omniglot_root, 28)


def test_all_characters_decoded_with_stroke_one(characters):
    images, names, background = characters
    assert images.shape == (1623, 20, 1, 28, 28) and images.dtype == torch.uint8
    assert int(background.sum()) == 964 and len(set(names)) == 1623
    mean = images.float().mean() / 255
    assert 0.02 < mean < 0.3  # mostly background (0), strokes bright (1)
    assert (images.flatten(2).amax(-1) > 128).all()  # no empty image


def test_cache_is_used_on_the_next_start(omniglot_root, characters, monkeypatch):
    monkeypatch.setattr(og, "_read_pngs", lambda *a: pytest.fail("decoded again instead of using the cache"))
    images, names, _ = og.load_characters(omniglot_root, 28)
    assert torch.equal(images, characters[0]) and names == characters[1]


def test_vinyals_split_counts_and_disjointness(omniglot_root, characters):
    parts = {p: og.omniglot(p, "vinyals", omniglot_root) for p in og.PARTS}
    assert {p: d.num_classes for p, d in parts.items()} == {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
    chars = {p: {n.rsplit("/", 1)[0] for n in d.names} for p, d in parts.items()}
    assert (len(chars["train"]), len(chars["val"]), len(chars["test"])) == (1028, 172, 423)
    assert not chars["train"] & chars["test"] and not chars["val"] & chars["test"] and not chars["train"] & chars["val"]
    assert chars["trainval"] == chars["train"] | chars["val"]
    # rotations are classes: rot090 is the rot000 image turned by 90 degrees
    test = parts["test"]
    i = test.names.index("Gurmukhi/character42/rot000")
    j = test.names.index("Gurmukhi/character42/rot090")
    assert torch.equal(torch.rot90(test.blocks[i], 1, dims=(-2, -1)), test.blocks[j])


def test_lake_and_random_splits(omniglot_root, characters):
    _, names, background = characters
    lake = {p: og.split_characters("lake", p, names, background) for p in og.PARTS}
    alphabets = {p: {names[i].split("/")[0] for i in idx} for p, idx in lake.items()}
    assert len(lake["test"]) == 659 and len(lake["train"]) + len(lake["val"]) == 964
    assert not alphabets["train"] & alphabets["test"] and not alphabets["val"] & alphabets["train"]
    # validation: 5 named background alphabets (46 + 26 + 22 + 40 + 55 characters); 25 left to train, 20 to test
    assert len(lake["val"]) == 189 and alphabets["val"] == set(og.LAKE_VAL_ALPHABETS)
    assert len(alphabets["train"]) == 25 and len(alphabets["test"]) == 20
    assert set(lake["trainval"]) == set(lake["train"]) | set(lake["val"])
    r1 = {p: og.split_characters("random:1:1100/100/423", p, names, background) for p in og.PARTS}
    assert [len(r1[p]) for p in ("train", "val", "test")] == [1100, 100, 423]
    assert not set(r1["train"]) & set(r1["test"]) and not set(r1["val"]) & set(r1["test"])
    assert not set(r1["train"]) & set(r1["val"]) and set(r1["trainval"]) == set(r1["train"]) | set(r1["val"])
    assert r1["train"] == og.split_characters("random:1:1100/100/423", "train", names, background)
    assert r1["train"] != og.split_characters("random:2:1100/100/423", "train", names, background)
    ds = og.omniglot("test", "lake", omniglot_root, rotation="none")
    assert ds.num_classes == 659


def test_normalize_sets_the_pixel_statistics(omniglot_root, characters):
    """data.normalize = [mean, std] gives the sampled items (x − mean) / std of the [0, 1] pixels."""
    from fewshot.data import build_dataset
    from fewshot.engine.config import load_config
    from fewshot.tasks import make_sampler

    config = load_config("protonet", ["data.split=lake", "data.rotation=none", "data.normalize=[0.078,0.084]"])
    config["data"]["dir"] = str(omniglot_root)
    data = build_dataset(config["data"], "test")
    plain = og.omniglot("test", "lake", omniglot_root, rotation="none")
    assert (data.mean, data.std) == (0.078, 0.084) and (plain.mean, plain.std) == (0.0, 1.0)
    batch = make_sampler(data, 5, 1, 2, seed=0).sample()
    again = make_sampler(plain, 5, 1, 2, seed=0).sample()
    torch.testing.assert_close(batch.support_x, (again.support_x - 0.078) / 0.084)
