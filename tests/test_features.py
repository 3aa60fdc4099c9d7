"""Backbone features (features_only): the maps are the full network's own stage outputs, for
every variant, and timm's features_only maps for timm's weights; a classifier's weights,
ours or another library's, load without their head; out_indices and feature_info as timm's."""

import glob
import os

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from conftest import ROOT
from parity import load_fixture, reference_input, reference_weights
from ppcls.api import create_model, list_models
from ppcls.arch.backbone.model_zoo.mnasnet.converter import REFERENCE_ARCHS
from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANT_BY_NAME, VARIANTS
from ppcls.utils.errors import ConfigError
from ppcls.weights import load_into
from ppcls.weights.download import cache_path

FIXTURES = f"{ROOT}/tests/fixtures/parity"


def stage_outputs(model, x):
    """Every stage's output in the classifier's own forward (forward hooks), and its logits."""
    captured = {}
    hooks = [stage.register_forward_post_hook(
        lambda layer, inputs, output, index=index: captured.__setitem__(index, output.numpy()))
        for index, stage in enumerate(model.blocks)]
    with paddle.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    return captured, logits


def feature_maps(model, x):
    with paddle.no_grad():
        return [m.numpy() for m in model(x)]


def trained_looking(model):
    """Give BatchNorm running statistics away from 0 and 1, so that a statistic loaded into
    the wrong layer would show."""
    rng = np.random.default_rng(5)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("_mean"):
            value.set_value(rng.normal(0, 0.1, value.shape).astype("float32"))
        elif key.endswith("_variance"):
            value.set_value(rng.uniform(0.5, 1.5, value.shape).astype("float32"))


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_features_are_the_classifiers_stage_outputs(name, tmp_path):
    """Every variant: a classifier's checkpoint loads into the features model (head and
    classifier left aside) and its maps are, bit for bit, the classifier forward's stage
    outputs at strides 4, 8, 16 and 32."""
    paddle.seed(1)
    classifier = create_model(name, class_num=10)
    trained_looking(classifier)
    classifier.eval()
    paddle.save(classifier.state_dict(), str(tmp_path / "classifier.pdparams"))
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal([2, 3, 64, 64]), "float32")
    stages, _ = stage_outputs(classifier, x)

    backbone = create_model(name, features_only=True)
    assert not hasattr(backbone, "fc") and not hasattr(backbone, "head")
    assert not any(k.startswith(("fc.", "head.")) for k in backbone.state_dict())
    load_into(backbone, str(tmp_path / "classifier.pdparams"), for_eval=True)
    backbone.eval()
    maps = feature_maps(backbone, x)

    info = backbone.feature_info
    assert info.reduction() == [4, 8, 16, 32]
    assert [m.shape for m in maps] == [(2, c, 64 // r, 64 // r)
                                       for c, r in zip(info.channels(), info.reduction())]
    for feature, found in zip(info, maps):
        stage = stage_index(feature)
        np.testing.assert_array_equal(found, stages[stage], err_msg=feature["module"])
        # timm's choice: the last stage at each stride (the next one halves the resolution)
        if stage + 1 < len(stages):
            assert stages[stage + 1].shape[-1] == found.shape[-1] // 2
    assert stage_index(info[-1]) == len(stages) - 1


def stage_index(feature):
    return int(feature["module"].split(".")[1])


def test_out_indices_choose_among_the_five_maps():
    model = create_model("MnasNet_A1_x0_5", features_only=True, out_indices=(0, 1, 2, 3, 4))
    model.eval()
    x = paddle.randn([1, 3, 64, 64])
    all_maps = feature_maps(model, x)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [m.shape[-1] for m in all_maps] == [32, 16, 8, 4, 2]
    assert [f["index"] for f in model.feature_info] == [0, 1, 2, 3, 4]

    some = create_model("MnasNet_A1_x0_5", features_only=True, out_indices=[3, 0])
    some.set_state_dict(model.state_dict())
    some.eval()
    picked = feature_maps(some, x)
    assert some.feature_info.reduction() == [2, 16]  # in the network's order
    assert some.feature_info.channels() == [model.feature_info.channels(i) for i in (0, 3)]
    np.testing.assert_array_equal(picked[0], all_maps[0])
    np.testing.assert_array_equal(picked[1], all_maps[3])


@pytest.mark.parametrize("out_indices", [(1, 5), (), "1,2", (-1,), (1.0, 2), (True, 2)])
def test_out_indices_outside_the_five_are_one_line(out_indices):
    with pytest.raises(ConfigError) as err:
        create_model("MnasNet_small", features_only=True, out_indices=out_indices)
    message = str(err.value)
    assert "\n" not in message and message.startswith("out_indices: ")
    assert "choose among 0, 1, 2, 3, 4 (strides 2, 4, 8, 16, 32)" in message


@pytest.mark.parametrize("arguments,expected", [
    (dict(class_num=10, features_only=True), "class_num: a features_only model has no classifier"),
    (dict(out_indices=(1, 2)), "out_indices selects the feature maps of a backbone: add "
                               "features_only=True"),
    (dict(features_only=True, dropout=0.1), "dropout is not an argument of MnasNet_B1_x0_5 "
                                            "with features_only"),
    (dict(stem_rellu=False), "Arch.stem_rellu is not an argument of MnasNet_B1_x0_5 (did you "
                             "mean 'stem_relu'?)"),
])
def test_arguments_that_do_not_fit_are_named(arguments, expected):
    with pytest.raises(ConfigError) as err:
        create_model("MnasNet_B1_x0_5", **arguments)
    assert str(err.value).startswith(expected)


@pytest.mark.parametrize("fixture_name,name", [("timm_semnasnet_050", "MnasNet_A1_x0_5"),
                                               ("torchvision_mnasnet0_5", "MnasNet_B1_x0_5")])
def test_foreign_weights_load_into_a_backbone_with_their_topology(fixture_name, name, server):
    """timm's and torchvision's checkpoints (served over HTTP, as `pretrained` takes them):
    their head and classifier are used by the renaming, then left aside; the stem ReLU
    follows the weights; the maps equal those of the classifier built from the same file."""
    fixture = load_fixture(f"{FIXTURES}/{fixture_name}.json")
    path = server.root / f"{fixture_name}.npz"
    np.savez(path, **reference_weights(fixture))
    url = server.url(path.name)
    classifier = create_model(name, pretrained=url)
    backbone = create_model(name, pretrained=url, features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert not backbone.stem_relu and backbone.weights_origin.source == fixture["source"]
    classifier.eval()
    backbone.eval()
    x = paddle.to_tensor(reference_input(fixture)[:1, :, :96, :96])
    stages, _ = stage_outputs(classifier, x)
    maps = feature_maps(backbone, x)
    for feature, found in zip(backbone.feature_info, maps):
        np.testing.assert_array_equal(found, stages[stage_index(feature)])
    # the hooks keep working: the source's eval transform, the topology in checkpoints
    assert backbone.eval_transforms(["configured"], "Infer.transforms") != ["configured"]
    assert backbone.checkpoint_record() == {"stem_relu": False}


@pytest.mark.parametrize("path", sorted(glob.glob(f"{ROOT}/tests/fixtures/features/*.json")),
                         ids=os.path.basename)
def test_timms_features_only_maps(path, tmp_path):
    """timm's own features_only model (fixtures/features/README.md): the same five maps
    (channels, strides, stages) and the same values, from the classifier fixture's weights."""
    features = load_fixture(path)
    fixture = load_fixture(f"{FIXTURES}/timm_{features['arch']}.json")
    assert fixture["seed"] == features["seed"]
    np.savez(tmp_path / "timm.npz", **reference_weights(fixture))
    name = REFERENCE_ARCHS[("timm", features["arch"])]
    model = create_model(name, pretrained=str(tmp_path / "timm.npz"), features_only=True,
                         out_indices=(0, 1, 2, 3, 4))
    model.eval()
    info = model.feature_info
    assert (info.channels(), info.reduction(), info.module_name()) == (
        features["channels"], features["reduction"], features["modules"])
    x = np.random.default_rng([features["seed"], 999998]).standard_normal(
        features["input_shape"]).astype("float32")
    for found, expected in zip(feature_maps(model, paddle.to_tensor(x)), features["maps"]):
        assert list(found.shape) == expected["shape"]
        error = np.abs(found.ravel()[expected["indices"]] - expected["values"]).max()
        assert error <= 1e-4 * expected["max_abs"]


def test_published_weights_load_into_a_backbone(server, capsys):
    """pretrained="timm" resolves the variant's record as for a classifier (a copy put at
    the cache path, as the offline message says, is used without any request)."""
    fixture = load_fixture(f"{FIXTURES}/timm_mnasnet_100.json")
    record = [w for w in VARIANT_BY_NAME["MnasNet_B1_x1_0"].weights if w.source == "timm"][0]
    assert record.sha256 is None  # else the served copy would need the real file's digest
    target = cache_path(record.url)
    target.parent.mkdir(parents=True)
    save_file(reference_weights(fixture), str(target))
    backbone = create_model("MnasNet_B1_x1_0", pretrained="timm", features_only=True)
    assert "Arch.pretrained: timm's mnasnet_100.rmsp_in1k" in capsys.readouterr().out
    assert not backbone.stem_relu and server.ranges == []
    np.testing.assert_array_equal(backbone.blocks[6][0].project.conv.weight.numpy(),
                                  reference_weights(fixture)["blocks.6.0.conv_pwl.weight"])


def test_a_backbone_trains():
    """Gradients reach every parameter of a backbone whose deepest map is taken."""
    model = create_model("MnasNet_small", features_only=True)
    model.train()
    loss = sum(m.mean() for m in model(paddle.randn([2, 3, 64, 64])))
    loss.backward()
    without = [n for n, p in model.named_parameters() if not p.stop_gradient and p.grad is None]
    assert without == []


def test_list_models_filters_with_a_wildcard():
    assert list_models("MnasNet_A1*") == sorted(n for v in VARIANTS for n in v.names
                                                if n.startswith("MnasNet_A1"))
    assert set(list_models()) >= {name for v in VARIANTS for name in v.names}
