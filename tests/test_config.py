"""Config loading, overrides and validation; every shipped config builds."""

import glob
import os
import re

import pytest

from conftest import ROOT, QUICK_START
from ppcls.arch import build_model
from ppcls.optimizer import build_optimizer
from ppcls.utils.config import get_config, validate
from ppcls.utils.yaml_file import apply_override, parse_override
from ppcls.utils.errors import ConfigError

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_override_sets_nested_keys_and_list_items():
    config = get_config(QUICK_START, [
        "Global.epochs=3",
        "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=48",
        "Optimizer.lr.learning_rate=0.05",
        "Global.image_shape=[3, 48, 48]",
        "Global.pretrained_model=null",
    ])
    assert config["Global"]["epochs"] == 3
    assert config["DataLoader"]["Train"]["dataset"]["transform_ops"][1]["RandCropImage"]["size"] == 48
    assert config["Optimizer"]["lr"]["learning_rate"] == 0.05
    assert config["Global"]["image_shape"] == [3, 48, 48]
    assert config["Global"]["pretrained_model"] is None


@pytest.mark.parametrize("override,message", [
    ("Global.epochs", "must look like Key.sub.leaf=value"),
    ("Global..epochs=1", "empty key component"),
    ("Global.epochs=[1, 2", "not valid YAML"),
    ("Global.epochs=three", "Global.epochs must be int, got 'three'"),
    ("Global.epoch=3", "Global: unknown key 'epoch' (did you mean 'epochs'?); allowed: checkpoints"),
    ("Globals.epochs=3", "unknown section 'Globals'"),
    ("DataLoader.Train.dataset.transform_ops.9.size=1", "transform_ops.9 is not an index"),
    ("Global.use_visualdl=1", "Global.use_visualdl must be bool"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_config(QUICK_START, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        get_config(str(tmp_path / "nope.yaml"))


def test_defaults_fill_global():
    config = validate({"Arch": {"name": "MnasNet_small"}})
    assert config["Global"]["epochs"] == 1 and config["Global"]["device"] == "gpu"


@pytest.mark.parametrize("overrides, expected", [
    ([], 10),                                                    # the config's Arch.class_num
    (["Arch.class_num=null"], 1000),                             # null is unset
    (["Arch.class_num=null", "Global.class_num=7"], 7),          # upstream's Global key
    (["Global.class_num=10"], 10),                               # both, equal
])
def test_class_num_is_decided_once_and_reaches_the_model(overrides, expected):
    config = get_config(QUICK_START, overrides)
    assert config["Arch"]["class_num"] == config["Global"]["class_num"] == expected
    model = build_model(config)
    assert model.fc.weight.shape[-1] == expected


@pytest.mark.parametrize("override, message", [
    ("Global.class_num=100", r"Arch.class_num \(10\) and Global.class_num \(100\) differ"),
    ("Arch.class_num=0", "Arch.class_num must be a positive integer, got 0"),
    ("Arch.class_num=ten", "Arch.class_num must be a positive integer, got 'ten'"),
])
def test_bad_class_num_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        get_config(QUICK_START, [override])


def test_parse_override_reads_yaml_values():
    assert parse_override("A.b=1e-3") == (["A", "b"], 1e-3)
    assert parse_override("A.b=True") == (["A", "b"], True)
    assert parse_override("A.b=1.0/255.0") == (["A", "b"], "1.0/255.0")
    config = {"A": [{"x": 1}]}
    assert apply_override(config, ["A", "0", "x"], 2) == {"A": [{"x": 2}]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_passes_the_checks_and_builds_without_data(path):
    """get_config checks every section; the model and optimizer then build from it."""
    config = get_config(path)
    config["Arch"].pop("pretrained", None)  # no downloads here (test_pretrained.py has them)
    model = build_model(config)
    build_optimizer(config, config["Global"]["epochs"], 100, model.named_parameters())


@pytest.mark.parametrize("name", ["Momentum", "AdamW"])
def test_no_weight_decay_name_matches_structured_names(name):
    model = build_model({"Arch": {"name": "MnasNet_small", "class_num": 10}})
    spec = {"name": name, "lr": {"name": "Constant", "learning_rate": 0.1},
            "no_weight_decay_name": ".bn. fc.bias"}
    spec.update({"regularizer": {"name": "L2", "coeff": 1e-4}} if name == "Momentum"
                else {"weight_decay": 0.05})
    optimizer, _ = build_optimizer({"Optimizer": spec}, 1, 10, model.named_parameters())
    expected = {p.name for n, p in model.named_parameters()
                if not p.stop_gradient and (".bn." in n or n == "fc.bias")}
    assert len(expected) > 40
    if name == "Momentum":
        groups = optimizer._param_groups
        assert {p.name for p in groups[1]["params"]} == expected
    else:
        decayed = {p.name for p in model.parameters() if optimizer._apply_decay_param_fun(p.name)}
        assert not decayed & expected and decayed


def test_tipc_auto_cast_is_named_when_it_asks_for_something(capsys):
    get_config(QUICK_START, ["Global.auto_cast=null"])
    assert "auto_cast" not in capsys.readouterr().out
    get_config(QUICK_START, ["Global.auto_cast=amp"])
    assert "Global.auto_cast=amp has no effect here" in capsys.readouterr().out


# ------------------------------------- one resolution: every rule checked when the config is read
@pytest.mark.parametrize("override, message", [
    ("Global.device=xpu", "Global.device must be cpu or gpu, got 'xpu'"),
    ("AMP.level=O3", "AMP.level must be O1 or O2, got 'O3'"),
    ("Global.eval_mode=retrieval", "Global.eval_mode: 'retrieval' is not supported (only "
     "classification is implemented)"),
    ("Global.use_multilabel=True", "Global.use_multilabel: True is not supported"),
    ("DataLoader.Train.loader.num_workers=two", "DataLoader.Train.loader.num_workers must be int, "
     "got 'two'"),
    ("DataLoader.Train.loader.num_workers=-1", "DataLoader.Train.loader.num_workers must be at "
     "least 0, got -1"),
    ("DataLoader.Train.loader.use_shared_memory=maybe",
     "DataLoader.Train.loader.use_shared_memory must be bool, got 'maybe'"),
    ("Infer.batch_size=0", "Infer.batch_size must be at least 1, got 0"),
    ("Infer.batch_size=two", "Infer.batch_size must be int, got 'two'"),
])
def test_values_are_checked_when_the_config_is_read(override, message):
    """Values that used to be checked only when the Engine, the loader or tools/infer.py
    reached them (AMP.level only with use_amp on a GPU)."""
    with pytest.raises(ConfigError, match=re.escape(f"{QUICK_START}: {message}")):
        get_config(QUICK_START, [override])


def test_the_loader_is_checked_and_built_by_the_same_rules(digits, tmp_path):
    """A misspelt loader key gets the same one line from the config check and from the
    builder (they used to list the keys twice, with different messages)."""
    from ppcls.data import build_dataloader

    config = get_config(QUICK_START, [
        f"DataLoader.Train.dataset.image_root={digits}",
        f"DataLoader.Train.dataset.cls_label_path={digits}/train_small.txt"])
    with pytest.raises(ConfigError) as from_config:
        get_config(QUICK_START, ["DataLoader.Train.loader.num_worker=2"])
    config["DataLoader"]["Train"]["loader"] = {"num_worker": 2}
    with pytest.raises(ConfigError) as from_builder:
        build_dataloader(config, "Train", 0, 10)
    assert str(from_config.value) == f"{QUICK_START}: {from_builder.value}"
    assert "DataLoader.Train.loader: unknown key 'num_worker' (did you mean 'num_workers'?)" in \
        str(from_builder.value)


def test_loader_values_arrive_typed_with_their_defaults():
    config = get_config(QUICK_START, ["DataLoader.Train.loader={}"])
    from ppcls.data import read_loader_section

    assert read_loader_section(config, "Train").loader == {"num_workers": 0,
                                                          "use_shared_memory": True}
