import pytest

from fewshot.engine.config import load_config, parse_override, shipped_configs
from fewshot.errors import ConfigError


def test_shipped_configs_load_and_name_their_source():
    names = shipped_configs()
    assert "protonet/omniglot-1shot" in names
    for name in names:
        c = load_config(name)
        assert c["source"] == f"{name}.yaml"
        assert c["eval"]["tasks"] >= 400  # Koch's 400 trials; 1,000 elsewhere
        assert c["val"]["seed"] != c["eval"]["seed"]


def test_paper_recipe_settings():
    c = load_config("protonet/omniglot-paper-5shot")
    assert (c["train"]["ways"], c["train"]["shots"], c["train"]["queries"]) == (60, 5, 5)
    assert (c["train"]["lr"], c["train"]["lr_step"], c["train"]["lr_gamma"]) == (0.001, 2000, 0.5)
    assert c["data"]["split"] == "vinyals" and c["eval"]["tasks"] == 1000


def test_overrides_are_typed():
    c = load_config("protonet", ["train.episodes=50", "train.lr=1e-2", "eval.ways=[5]", "model.width=32"])
    assert c["train"]["episodes"] == 50 and c["train"]["lr"] == 0.01 and c["eval"]["ways"] == [5]
    assert c["model"]["width"] == 32
    assert load_config("protonet", ["train.lr=1"])["train"]["lr"] == 1.0  # int accepted for a float
    assert parse_override("data.split=random:3") == ("data.split", "random:3")


@pytest.mark.parametrize("override,match", [
    ("train.wayz=5", "unknown setting 'train.wayz'"),
    ("trian.ways=5", "unknown setting 'trian'"),
    ("train.ways=five", "train.ways' must be a int"),
    ("train.tensorboard=3", "true or false"),
    ("precision=fp16", "fp32 or bf16"),
    ("noequals", "key=value"),
    ("method=nosuch", "unknown method"),
])
def test_bad_settings_give_one_sentence(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config("protonet", [override])
    assert "\n" not in str(err.value)


def test_unknown_config_name(tmp_path):
    with pytest.raises(ConfigError, match="no config named"):
        load_config("protonet/nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_nullable_settings_are_typed():
    assert load_config("protonet", ["train.time_limit_minutes=5"])["train"]["time_limit_minutes"] == 5.0
    assert load_config("protonet", ["train.grad_clip=null"])["train"]["grad_clip"] is None
    for bad in ("train.time_limit_minutes=abc", "train.grad_clip=abc", "train.episodes=true"):
        with pytest.raises(ConfigError, match="must be a"):
            load_config("protonet", [bad])


def test_bad_normalize_is_refused_before_any_data_is_read():
    for bad in ("[0.1]", "[0.1,0.0]", "[0.1,-0.2]", "[0.1,x]", "0.5", "[true,0.1]", "[.nan,0.1]", "[0.1,.inf]"):
        with pytest.raises(ConfigError, match=r"data.normalize must be \[mean, std\]"):
            load_config("protonet", [f"data.normalize={bad}"])
    with pytest.raises(ConfigError, match="applies to the image datasets"):
        load_config("protonet", ["data.dataset=fsdd", "data.normalize=[0.1,0.2]"])
    assert load_config("protonet", ["data.normalize=[0.1,2]"])["data"]["normalize"] == [0.1, 2]


def test_vmap_under_bf16_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="model.vmap=true through BatchNorm does not run under bf16") as err:
        load_config("maml/omniglot-5w1s", ["precision=bf16"])
    assert "\n" not in str(err.value)
    assert load_config("maml/omniglot-5w1s", ["precision=bf16", "model.vmap=false"])["precision"] == "bf16"
    assert load_config("maml/omniglot-5w1s", ["precision=bf16", "model.norm=none"])["model"]["vmap"]  # no BatchNorm: runs
    with pytest.raises(ConfigError, match="method metanet does not train under bf16 autocast; set precision=fp32"):
        load_config("metanet/omniglot-5w1s", ["precision=bf16"])
