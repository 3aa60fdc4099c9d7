"""Weights from anywhere: files and URLs (a real server on 127.0.0.1), any naming, the topology
following the weights, Arch.pretrained from the variant records."""

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from conftest import ROOT, config_args, digits_overrides
from parity import load_fixture, reference_input, reference_weights
from ppcls.arch import build_model
from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANT_BY_NAME
from ppcls.utils.errors import WeightsError
from ppcls.weights import load_into
from ppcls.weights.download import cache_path
from ppcls.utils.cli import run
from ppcls.utils.config import parse_args
from tools import eval as eval_tool

FIXTURES = f"{ROOT}/tests/fixtures/parity"


def serve_npz(server, name, arrays):
    path = server.root / name
    np.savez(path, **arrays)
    return server.url(name)


def logits_of(model, fixture):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(reference_input(fixture))).numpy()


def relative_error(logits, fixture):
    expected = np.asarray(fixture["logits"])
    return np.abs(logits - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("name,source", [("torchvision_mnasnet0_5", "torchvision"),
                                         ("timm_mnasnet_small", "timm")])
def test_url_of_foreign_weights_loads_with_their_topology(server, name, source, capsys):
    """Served over HTTP, read by content, renamed, the stem ReLU switched off (the default
    model has it): the reference's own logits come out."""
    fixture = load_fixture(f"{FIXTURES}/{name}.json")
    url = serve_npz(server, f"{name}.npz", reference_weights(fixture))
    arch = {"torchvision_mnasnet0_5": "MnasNet_B1_x0_5", "timm_mnasnet_small": "MnasNet_small"}
    model = build_model({"Arch": {"name": arch[name], "class_num": fixture["num_classes"]}})
    assert model.stem_relu  # our default topology
    load_into(model, url, for_eval=True)
    assert not model.stem_relu
    assert relative_error(logits_of(model, fixture), fixture) <= 1e-4
    assert f"{source} weights: using their topology, stem_relu=False" in capsys.readouterr().out
    assert model.weights_origin.source == source
    assert len(server.ranges) == 1


def test_explicit_stem_relu_that_the_weights_contradict_is_one_line(server):
    fixture = load_fixture(f"{FIXTURES}/torchvision_mnasnet0_5.json")
    url = serve_npz(server, "tv.npz", reference_weights(fixture))
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "stem_relu": True}})
    with pytest.raises(WeightsError) as err:
        load_into(model, url)  # the model has Arch.stem_relu: True
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"Arch.stem_relu is True but {url} holds torchvision weights, "
                              "trained without the extra stem ReLU")


def test_reproduction_weights_keep_the_extra_relu(tmp_path):
    """The reproduction's checkpoints (torchvision names, Paddle's [in, out] classifier, the
    ReLU as layers.8) load into the default topology, unchanged."""
    fixture = load_fixture(f"{FIXTURES}/torchvision_mnasnet1_0.json")
    torch_names = reference_weights(fixture)
    shifted = {}
    paddle_bn = {"running_mean": "_mean", "running_var": "_variance"}
    for key, value in torch_names.items():  # layers.8.. become layers.9..; Linear transposed
        head, rest = key.split(".", 1)
        if head == "layers" and int(rest.split(".")[0]) >= 8:
            index, tail = rest.split(".", 1)
            key = f"layers.{int(index) + 1}.{tail}"
        module, leaf = key.rsplit(".", 1)
        key = f"{module}.{paddle_bn.get(leaf, leaf)}"
        shifted[key] = value.T if key == "classifier.1.weight" else value
    path = tmp_path / "reproduction.npz"
    np.savez(path, **shifted)
    model = build_model({"Arch": {"name": "MnasNet_B1_x1_0"}})
    pretrained = load_into(model, path, for_eval=True)
    assert pretrained.source == "reproduction" and model.stem_relu
    reference = build_model({"Arch": {"name": "MnasNet_B1_x1_0", "stem_relu": False}})
    load_into(reference, serve_free_npz(tmp_path, torch_names), for_eval=True)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)


def serve_free_npz(tmp_path, arrays):
    path = tmp_path / "torchvision.npz"
    np.savez(path, **arrays)
    return path


def test_fine_tuning_keeps_the_backbone_and_reinitialises_the_head(server, capsys):
    fixture = load_fixture(f"{FIXTURES}/torchvision_mnasnet0_5.json")
    weights = reference_weights(fixture)
    url = serve_npz(server, "tv.npz", weights)
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "class_num": 10}})
    head_before = model.fc.weight.numpy().copy()
    load_into(model, url)
    np.testing.assert_array_equal(model.stem.conv.weight.numpy(), weights["layers.0.weight"])
    np.testing.assert_array_equal(model.fc.weight.numpy(), head_before)
    assert "different class_num; these stay freshly initialised" in capsys.readouterr().out


def test_arch_pretrained_reads_the_record_url_from_the_cache(server, capsys):
    """`Arch.pretrained: timm` for B1 x1.0 is timm's mnasnet_100: a copy put at the cache
    path by hand (as the offline message says) is used without any request."""
    fixture = load_fixture(f"{FIXTURES}/timm_mnasnet_100.json")
    record = [w for w in VARIANT_BY_NAME["MnasNet_B1_x1_0"].weights if w.source == "timm"][0]
    target = cache_path(record.url)
    target.parent.mkdir(parents=True)
    save_file(reference_weights(fixture), str(target))
    model = build_model({"Arch": {"name": "MnasNet_B1_x1_0", "pretrained": "timm"}})
    assert not model.stem_relu and model.weights_origin.source == "timm"
    assert "Arch.pretrained: timm's mnasnet_100.rmsp_in1k" in capsys.readouterr().out
    assert relative_error(logits_of(model, fixture), fixture) <= 1e-4
    assert server.ranges == []


@pytest.mark.parametrize("arch,choice", [("MnasNet_B1_x1_4", True),
                                         ("MnasNet_B1_x1_3", "timm")])
def test_variant_without_such_weights_lists_those_that_have_them(arch, choice):
    with pytest.raises(WeightsError) as err:
        build_model({"Arch": {"name": arch, "pretrained": choice}})
    message = str(err.value)
    assert "\n" not in message and f"{arch} has no" in message
    assert "MnasNet_B1_x1_0 (torchvision/timm)" in message
    assert "MnasNet_small (timm)" in message


def test_eval_tool_reads_a_url_and_names_a_failed_download(digits, tmp_path, server, capsys):
    args = config_args(digits_overrides(digits, tmp_path),
                       f"Global.pretrained_model={server.url('missing.pdparams')}")
    code = run(eval_tool.main, parse_args(args))
    err = capsys.readouterr().err
    assert code == 2
    assert "HTTP 404" in err and "missing.pdparams" in err and "put it at" in err
    assert err.count("\n") == 1, err


FINETUNE = f"{ROOT}/configs/quick_start/MnasNet_B1_x0_5_digits_finetune.yaml"


def test_fine_tune_from_served_weights_then_export_and_predict(digits, tmp_path, server, capsys):
    """The README's path: published (here: served) weights -> fine-tune with a new class_num
    -> our checkpoint, which records the weights' topology -> export -> predict, the last two
    without Arch.pretrained."""
    from ppcls.engine.engine import Engine
    from ppcls.export.inference_model import export_inference_model
    from ppcls.utils.config import get_config
    from tools import infer as infer_tool

    fixture = load_fixture(f"{FIXTURES}/torchvision_mnasnet0_5.json")
    url = serve_npz(server, "mnasnet0.5.npz", reference_weights(fixture))
    overrides = digits_overrides(digits, tmp_path, epochs=1) + [f"Arch.pretrained={url}"]
    Engine(get_config(FINETUNE, overrides), "train").train()
    log = capsys.readouterr().out
    assert "not loading fc.weight/fc.bias from" in log and "freshly initialised" in log
    assert "torchvision weights: using their topology, stem_relu=False" in log

    best = tmp_path / "MnasNet_B1_x0_5" / "latest"
    mine = [f"Global.pretrained_model={best}", "Arch.pretrained=False",
            f"Infer.infer_imgs={digits}/images/val/3/", f"Infer.save_path={tmp_path}/r.json",
            f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"]
    config = get_config(FINETUNE, digits_overrides(digits, tmp_path) + mine)
    export_inference_model(config, str(tmp_path / "inference"))
    assert "ppcls weights: using their topology, stem_relu=False" in capsys.readouterr().out
    infer_tool.main(infer_tool.parse_args(["-c", FINETUNE, *(
        a for o in digits_overrides(digits, tmp_path) + mine for a in ("-o", o))]))
    import json

    results = json.load(open(tmp_path / "r.json"))
    assert len(results) == len(list((digits / "images" / "val" / "3").iterdir()))
    assert all(len(r["class_ids"]) == 3 for r in results)


def test_infer_yaml_predicts_the_demo_photos_from_a_served_pth(server, tmp_path, capsys):
    """`python tools/infer.py -c infer.yaml -o Global.pretrained_model=<URL of a .pth>`:
    torch's file format read without torch, torchvision's topology and eval transform, the
    seed's output format with ImageNet label names, one result per demo photo."""
    import json

    import torch_format
    from tools import infer as infer_tool

    fixture = load_fixture(f"{FIXTURES}/torchvision_mnasnet1_0.json")
    state = {k: torch_format.tensor(v) for k, v in reference_weights(fixture).items()}
    torch_format.save(state, server.root / "mnasnet1_0.pth")
    infer_tool.main(parse_args(["-c", f"{ROOT}/infer.yaml", "-o",
                                f"Global.pretrained_model={server.url('mnasnet1_0.pth')}",
                                "-o", f"Infer.infer_imgs={ROOT}/demo",
                                "-o", f"Infer.save_path={tmp_path}/r.json"]))
    out = capsys.readouterr().out
    assert "torchvision weights: using their topology, stem_relu=False" in out
    assert "Infer.transforms replaced by their source's eval transform" in out
    results = json.load(open(tmp_path / "r.json"))
    assert [r["file_name"].rsplit("/", 1)[1] for r in results] == [
        "astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"]
    labels = open(f"{ROOT}/ppcls/utils/imagenet1k_label_list.txt").read().splitlines()
    for r in results:
        assert len(r["class_ids"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True)
        assert r["label_names"] == [labels[i].split(" ", 1)[1] for i in r["class_ids"]]


def test_infer_without_an_infer_section_is_one_line(digits, tmp_path, capsys):
    from tools import infer as infer_tool

    args = config_args(digits_overrides(digits, tmp_path), "Infer=null")
    code = run(infer_tool.main, parse_args(args))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "has no Infer section" in err and "infer.yaml" in err
