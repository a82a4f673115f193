"""The one config loader: YAML files shipped in the package, defaults in one place, ``--set`` overrides.

A config is a nested dict. :data:`DEFAULTS` lists every setting the engine reads, with its default;
a method adds its own ``model`` settings through ``Method.defaults``. Unknown keys and values of the
wrong type are refused with one sentence naming the key. Shipped configs live in
``fewshot/configs/<method>/<setting>.yaml`` and are addressed as ``<method>/<setting>``.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fewshot.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "name": None,            # run / reproduction name; defaults to <method>-<dataset>
    "source": None,          # the shipped config or file this config was read from (set by the loader)
    "method": "protonet",
    "seed": 0,               # drives the model init, the training tasks and nothing else
    "threads": 1,            # torch intra-op threads (small models are fastest single-threaded)
    "device": "cpu",
    "precision": "fp32",     # fp32 | bf16 (autocast + channels-last; CPUs with AVX-512 BF16)
    "data": {
        "dataset": "omniglot",   # omniglot | orl | fsdd | cats_dogs | synthetic | attributes | xlsa17 | sinusoid | logistic
        "split": "vinyals",      # vinyals | lake | random:<seed>[:<train>/<val>/<test>]
        "image_size": 28,
        "resample": "lanczos",
        "rotation": "classes",   # classes | none (rotations as classes are part of the split)
        "normalize": None,       # [mean, std]: pixels (in [0, 1], strokes = 1 for Omniglot) → (x − mean) / std;
                                 # eval.attack_eps stays in pixels (ε/std in normalized units)
        "train_part": "train",
        "val_part": "val",
        "test_part": "test",
        "dir": None,             # data folder; --data-dir > $FEWSHOT_DATA > ~/.cache/fewshot
        "labeled_fraction": 1.0, # < 1: each class split once into labelled / unlabelled pools (semi-supervised)
        "pool_seed": 0,          # seed of that split (the same split every run)
        "synthetic": {"classes": 120, "examples": 20, "dim": 16, "noise": 0.3, "nuisance": 48,
                      "nuisance_scale": 3.0, "image": False},
        "attributes": {"classes": 50, "attributes": 20, "dim": 64, "unseen": 10, "val": 5, "examples": 40,
                       "noise": 1.0, "permute": False, "seed": 0},
        # function task families (sinusoid regression, logistic tasks; spec/datasets.md §7)
        "functions": {"variant": "maml", "x_range": [-5.0, 5.0], "dim": 50, "sigma": 1.0, "seed": 0},
        # labelled-sequence episodes (MANN, Santoro et al. 2016): steps, balanced | iid labels, augmentation
        "episodes": {"length": 50, "labels": "balanced", "rotate": False, "translate": 0, "strings": False},
        # NTM algorithmic tasks (copy, reverse, copy_reverse_layout, repeat_copy, associative_recall); lengths inclusive
        "sequences": {"task": "copy", "width": 8, "min_length": 1, "max_length": 20, "min_repeats": 1,
                      "max_repeats": 10, "item_length": 3},
    },
    "model": {
        "backbone": "conv4",     # conv4 | conv4-strided | mlp
        "width": 64,
        "hidden": [256, 128],    # mlp only
        "norm": "eval",          # eval | transductive | none
    },
    "train": {
        "ways": 60, "shots": 1, "queries": 5, "meta_batch": 1,
        "rotate": "none",        # per-task augmentation: none | per_class | per_task
        "unlabeled": 0, "distractors": 0,   # semi-supervised episodes: M per class, H distractor classes
        "groups": "none", "same_items": False,  # alphabet: tasks within one alphabet; same drawers for all classes
        "affine": False,         # Koch et al.'s per-item affine distortions
        "downsample": 0.0,       # probability of damaging an image by down- and up-sampling (Fort 2017)
        "episodes": 10000,
        "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9,
        "lr_step": 2000, "lr_gamma": 0.5,   # multiply lr by gamma every lr_step episodes (0: constant)
        "grad_clip": None,
        "log_every": 100,
        "checkpoint_every": 500,
        "time_limit_minutes": None,
        "stop_at": None,         # stop once the best validation metric reaches this (≥ accuracy; ≤ errors, MSE)
        "tensorboard": True,     # when tensorboard is installed
    },
    "val": {"every": 500, "ways": 5, "shots": 1, "queries": 15, "tasks": 200, "seed": 999, "batch_tasks": 1,
            "unlabeled": 0, "distractors": 0, "groups": "none", "same_items": False, "downsample": 0.0,
            "cache": True},  # metric methods embed each item once, not once per task (false: the reference path)
    "eval": {"ways": [5, 20], "shots": [1], "queries": 15, "tasks": 1000, "seed": 1234, "batch_tasks": 1,
             "checkpoint": "best", "unlabeled": 0, "distractors": 0, "groups": "none", "same_items": False,
             "downsample": 0.0,  # damaged test images (Fort 2017's degraded-data comparison)
             "report_steps": [],  # methods that adapt at test time: also report the metric after these inner steps
             "attack": "none", "attack_eps": [], "pgd_steps": 10,  # robustness: fgsm | pgd at each ε (pixels in 0..1)
             "lengths": [],  # sequence tasks: evaluate at these lengths (default: the training maximum)
             "report_instances": [1, 2, 3, 4, 5, 10],  # labelled sequences: per-instance accuracy rows
             "cache": True},  # as val.cache
    "reproduce": {"prefix": None, "paper": {}, "seed_code": {}},  # the paper's / the seed code's number per summary key
}

FREE_FORM = {("reproduce", "paper"), ("reproduce", "seed_code")}  # dicts whose keys are not checked
#: the type of settings whose default is None (None stays allowed)
NULLABLE = {"name": str, "source": str, "data.dir": str, "train.grad_clip": float, "train.time_limit_minutes": float, "train.stop_at": float,
            "reproduce.prefix": str}


def shipped_configs() -> list[str]:
    """Names ``<method>/<setting>`` of the YAML configs shipped in the package."""
    root = resources.files("fewshot") / "configs"
    out = []
    for method_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if method_dir.is_dir():
            out += [f"{method_dir.name}/{f.name[:-5]}" for f in sorted(method_dir.iterdir(), key=lambda p: p.name)
                    if f.name.endswith(".yaml")]
    return out


def read_yaml(source: str) -> dict[str, Any]:
    """A shipped config by name (``protonet/omniglot-1shot``) or a YAML file by path."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        name = source[:-5] if source.endswith(".yaml") else source
        res = resources.files("fewshot") / "configs" / f"{name}.yaml"
        if not res.is_file():
            raise ConfigError(f"no config named {source!r}: give a YAML file path or one of "
                              f"{', '.join(shipped_configs())} (see `fewshot list`).")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of settings, not {type(data).__name__}.")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` → (``"key.sub"``, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like key=value, e.g. --set train.episodes=500.")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _merge(base: dict, update: dict, path: str, schema: dict | None) -> None:
    for key, value in update.items():
        where = f"{path}{key}"
        if schema is not None and key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"unknown setting {where!r}; known settings here: {known}.")
        default = schema.get(key) if schema is not None else None
        if isinstance(default, dict) and tuple(where.split(".")) not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"setting {where!r} must be a mapping, got {value!r}.")
            _merge(base.setdefault(key, {}), value, where + ".", default)
        else:
            base[key] = _coerce(where, value, default)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if value is None:
        return value
    if default is None:
        kind = NULLABLE.get(key)
        if kind is None:
            return value
        return _coerce(key, value, kind(0) if kind is not str else "")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"setting {key!r} must be true or false, got {value!r}.")
    if isinstance(value, bool) and not isinstance(default, bool):
        raise ConfigError(f"setting {key!r} must be a {type(default).__name__}, got {value!r}.")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-3 as a string
            number = float(value)
            value = int(number) if isinstance(default, int) and number.is_integer() else number
        except ValueError:
            pass
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, list) and not isinstance(value, list):
        return [value]
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise ConfigError(f"setting {key!r} must be a {type(default).__name__}, got {value!r}.")
    return value


def schema_for(method: str) -> dict[str, Any]:
    """DEFAULTS with the method's own ``model`` settings added."""
    from fewshot.methods import METHODS

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}.")
    schema = copy.deepcopy(DEFAULTS)
    schema["model"].update(copy.deepcopy(METHODS[method].defaults))
    schema["method"] = method
    return schema


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve a config: defaults ← method defaults ← file (or ``base``) ← ``--set`` overrides.

    ``source`` is a shipped config name, a YAML path, or a bare method name (its defaults).
    """
    from fewshot.methods import METHODS

    if base is not None:
        data = copy.deepcopy(base)
    elif source is None or source in METHODS:
        data = {"method": source or DEFAULTS["method"]}
    else:
        data = read_yaml(source)
    pairs = [parse_override(o) for o in overrides]
    method = data.get("method", DEFAULTS["method"])
    for key, value in pairs:
        if key == "method":
            method = value
    config = schema_for(method)
    _merge(config, data, "", config)
    for key, value in pairs:
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cursor = cursor.setdefault(p, {})
        cursor[parts[-1]] = value
        _merge(config, nested, "", schema_for(method))
    if source and source not in METHODS and not config["source"]:
        config["source"] = source if source.endswith((".yaml", ".yml")) else f"{source}.yaml"
    if not config["name"]:
        config["name"] = f"{config['method']}-{config['data']['dataset']}"
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Cross-field checks that need no data."""
    if config["precision"] not in ("fp32", "bf16"):
        raise ConfigError(f"setting 'precision' must be fp32 or bf16, got {config['precision']!r}.")
    from fewshot.methods import METHODS

    if config["precision"] == "bf16" and not METHODS[config["method"]].supports_bf16:
        raise ConfigError(f"method {config['method']} does not train under bf16 autocast; set precision=fp32.")
    if config["precision"] == "bf16" and config["model"].get("vmap") and config["model"].get("norm", "none") != "none":
        raise ConfigError("model.vmap=true through BatchNorm does not run under bf16 autocast (torch.func's inner "
                          "gradient mixes bfloat16 and float32); set precision=fp32, model.vmap=false or model.norm=none.")
    if config["threads"] < 1:
        raise ConfigError("setting 'threads' must be at least 1.")
    for section in ("train", "val"):
        for key in ("ways", "shots", "queries"):
            if config[section][key] < (0 if key != "ways" else 1):
                raise ConfigError(f"setting '{section}.{key}' must be positive, got {config[section][key]}.")
    for key in ("episodes", "log_every", "checkpoint_every", "meta_batch"):
        if config["train"][key] < 1:
            raise ConfigError(f"setting 'train.{key}' must be at least 1, got {config['train'][key]}.")
    steps = config["model"].get("eval_steps")
    for s in config["eval"]["report_steps"]:
        if steps is None or not 0 <= s <= steps:
            raise ConfigError(f"eval.report_steps asks for inner step {s}, but "
                              + ("this method does not adapt at test time" if steps is None else
                                 f"model.eval_steps={steps}") + "; report steps between 0 and model.eval_steps.")
    if config["eval"]["attack"] not in ("none", "fgsm", "pgd"):
        raise ConfigError(f"eval.attack must be none, fgsm or pgd (got {config['eval']['attack']!r}).")
    if config["eval"]["attack"] != "none" and not config["eval"]["attack_eps"]:
        raise ConfigError("eval.attack is set but eval.attack_eps is empty; give the attack sizes, e.g. eval.attack_eps=[0.1,0.2].")
    stats = config["data"].get("normalize")
    if stats is not None:
        from fewshot.data import IMAGES

        if config["data"]["dataset"] not in IMAGES:
            raise ConfigError(f"data.normalize applies to the image datasets read as pixels in [0, 1] "
                              f"({', '.join(IMAGES)}), not to {config['data']['dataset']}; remove data.normalize.")
        if (not isinstance(stats, (list, tuple)) or len(stats) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stats)
                or not stats[1] > 0):
            raise ConfigError(f"data.normalize must be [mean, std] with finite values and std > 0 (got {stats!r}), "
                              f"e.g. --set 'data.normalize=[0.078,0.084]'.")
    if config["val"]["every"] < 1 or config["val"]["tasks"] < 2 or config["eval"]["tasks"] < 2:
        raise ConfigError("val.every must be ≥ 1 and val.tasks / eval.tasks ≥ 2 (a CI needs two tasks).")


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
