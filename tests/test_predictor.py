"""ppcls.predictor.Predictor: the in-process predictor behind predict_cls.py and the service,
and the engine choice behind it (ppcls/engine_choice.py: Global.engine, `auto`)."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import QUICK_START
from ppcls.engine_choice import build_runner, engine_candidates, pick
from ppcls.export.inference_model import export_inference_model
from ppcls.inference import DEPLOY_DEFAULTS
from ppcls.predictor import Predictor
from ppcls.utils.config import get_config
from ppcls.utils.errors import ConfigError


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """The quick-start network with its initial weights, exported as tools/export_model.py
    does (both programs, inference.onnx, inference.yml), and three val images."""
    root = tmp_path_factory.mktemp("predictor")
    config = get_config(QUICK_START, [f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"])
    export_inference_model(config, str(root / "inference"))
    images = [digits / rel for rel in (digits / "val_odd.txt").read_text().split()[::2][:3]]
    return {"dir": root / "inference", "images": images, "root": root}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache, so that `auto` decides afresh."""
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def settings(model, **keys):
    return {**DEPLOY_DEFAULTS, "inference_model_dir": str(model["dir"]), **keys}


def test_export_writes_inference_onnx_beside_the_paddle_files(model):
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml",
            "inference.onnx"} <= set(os.listdir(model["dir"]))


# ------------------------------------------------------------------------------ Predictor
def test_a_path_its_bytes_and_its_pixels_get_the_same_answer(model):
    predictor = Predictor(model["dir"], engine="openvino")
    path = str(model["images"][0])
    alone = predictor.predict(path)
    assert alone["file_name"] == path and len(alone["class_ids"]) == 3  # the quick start's topk
    assert alone["label_names"][0].startswith("digit")
    rgb = cv2.imread(path)[:, :, ::-1]
    results = predictor.predict([path, model["images"][0].read_bytes(), rgb, model["images"][0]])
    without_name = {k: v for k, v in alone.items() if k != "file_name"}
    assert results == [alone, without_name, without_name, alone]


def test_each_bad_image_gets_its_error_and_the_others_their_answers(model, tmp_path):
    predictor = Predictor(model["dir"], engine="openvino")
    good = str(model["images"][1])
    results = predictor.predict([b"not an image", np.zeros((4, 4), np.uint8), good,
                                 np.zeros((8, 8, 3), np.float32), str(tmp_path / "missing.png"),
                                 np.zeros((0, 5, 3), np.uint8), good])
    assert results[0] == {"error": "not a decodable image"}
    assert "HWC uint8 RGB array, got shape [4, 4] of uint8" in results[1]["error"]
    assert "got shape [8, 8, 3] of float32" in results[3]["error"]
    assert results[4] == {"file_name": str(tmp_path / "missing.png"), "error": "file not found"}
    assert "empty image" in results[5]["error"]
    assert results[2] == results[6] == predictor.predict(good)


def test_arrays_are_held_to_the_pixel_cap(model, monkeypatch):
    monkeypatch.setenv("PPCLS_MAX_IMAGE_PIXELS", "1000")
    predictor = Predictor(model["dir"], engine="openvino")
    result = predictor.predict(np.zeros((40, 40, 3), np.uint8))
    assert "40x40 pixels" in result["error"] and "over the pixel cap of 1000" in result["error"]


def test_topk_chooses_how_many_classes(model):
    predictor = Predictor(model["dir"], engine="openvino")
    path = str(model["images"][0])
    three, two = predictor.predict(path), predictor.predict(path, topk=2)
    assert two["class_ids"] == three["class_ids"][:2] and two["scores"] == three["scores"][:2]
    assert len(predictor.predict(path, topk=10)["class_ids"]) == 10
    for k in (0, 11, 2.0, True):
        with pytest.raises(ConfigError, match="topk must be an integer from 1 to 10"):
            predictor.predict(path, topk=k)


def test_wrong_inputs_and_keys_are_refused_before_any_work(model):
    predictor = Predictor(model["dir"], engine="openvino")
    for inputs in (5, [str(model["images"][0]), 3.5], {"image": "x"}):
        with pytest.raises(TypeError, match="takes a file path, encoded image bytes or a decoded"):
            predictor.predict(inputs)
    with pytest.raises(ConfigError, match=r"unknown deploy key 'use_gpus' \(did you mean 'use_gpu'\?\)"):
        Predictor(model["dir"], use_gpus=False)
    with pytest.raises(ConfigError, match="needs an exported model folder"):
        Predictor()


def test_save_pre_label_needs_files(model, tmp_path):
    config = {"Global": settings(model, engine="openvino"),
              "PostProcess": {"main_indicator": "Topk", "Topk": {"topk": 1},
                              "SavePreLabel": {"save_dir": str(tmp_path / "pre")}}}
    predictor = Predictor(config=config)
    with pytest.raises(ConfigError, match="SavePreLabel copies image files"):
        predictor.predict([str(model["images"][0]), model["images"][0].read_bytes()])
    predictor.predict(str(model["images"][0]))
    assert len(list((tmp_path / "pre").rglob("*.png"))) == 1


def test_a_replica_runs_the_same_engine_without_choosing_again(model, cache, caplog):
    predictor = Predictor(model["dir"])
    caplog.clear()
    with caplog.at_level("INFO"):
        twin = predictor.replica()
    assert twin.engine == predictor.engine and "engine auto" not in caplog.text
    path = str(model["images"][2])
    assert twin.predict(path) == predictor.predict(path)


# --------------------------------------------------------------------------- engine choice
@pytest.mark.parametrize("keys,expected", [
    ({}, ["openvino", "onednn", "onnxruntime"]),
    ({"backend": "paddle"}, ["openvino", "onednn"]),
    ({"use_openvino": False}, ["onednn", "onnxruntime"]),
    ({"enable_mkldnn": False}, ["openvino", "native", "onnxruntime"]),
    ({"ir_optim": False}, ["onednn", "onnxruntime"]),
    ({"use_fp16": True}, ["onednn"]),
    ({"use_onnx": True}, ["onnxruntime"]),
    ({"backend": "onnxruntime"}, ["onnxruntime"]),
    ({"engine": "native"}, ["native"]),
    ({"engine": "onnxruntime"}, ["onnxruntime"]),
], ids=["default", "paddle", "no-openvino", "no-onednn", "no-ir-optim", "fp16", "use-onnx",
        "backend-onnxruntime", "named-native", "named-onnxruntime"])
def test_auto_tries_the_engines_the_keys_allow(model, keys, expected):
    g = settings(model, **keys)
    assert engine_candidates(g, g["inference_model_dir"]) == expected


def test_auto_without_inference_onnx_says_how_to_write_it(model, tmp_path, caplog):
    folder = tmp_path / "no_onnx"
    shutil.copytree(model["dir"], folder)
    os.remove(folder / "inference.onnx")
    g = {**settings(model), "inference_model_dir": str(folder)}
    with caplog.at_level("INFO"):
        assert engine_candidates(g, str(folder)) == ["openvino", "onednn"]
    assert f"python tools/export_onnx.py --model_dir {folder} writes it" in caplog.text


@pytest.mark.parametrize("keys,message", [
    ({"engine": "tensorflow"}, "Global.engine must be one of auto, openvino, onednn, native, onnxruntime"),
    ({"engine": "openvino", "use_openvino": False}, "Global.engine openvino: use_openvino is False"),
    ({"engine": "openvino", "ir_optim": False}, "OpenVINO cannot run here: it runs as an IR pass"),
    ({"engine": "onednn", "enable_mkldnn": False}, "Global.engine onednn: enable_mkldnn is False"),
    ({"engine": "onnxruntime", "backend": "paddle"}, "it is not Paddle Inference's"),
    ({"engine": "openvino", "use_onnx": True}, "use_onnx is True): choose one"),
    ({"engine": "native", "use_fp16": True}, "use_fp16 and use_int8 run on the onednn engine"),
    ({"engine": "openvino", "use_int8": True}, "use_fp16 and use_int8 run on the onednn engine"),
    ({"engine": "onednn", "use_bf16": True}, "use_bf16 runs on the openvino engine"),
    ({"backend": "tensorflow"}, "Global.backend must be one of auto, paddle, onnxruntime"),
], ids=["unknown", "openvino-off", "openvino-no-ir", "onednn-off", "ort-paddle", "paddle-ort",
        "native-fp16", "openvino-int8", "onednn-bf16", "unknown-backend"])
def test_a_named_engine_the_other_keys_contradict_is_one_line(model, keys, message):
    g = settings(model, **keys)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine_candidates(g, g["inference_model_dir"])


def decisions(cache):
    return sorted((cache / "engines").glob("*.json"))


def test_auto_times_each_engine_once_and_keeps_the_fastest(model, cache, caplog):
    g = settings(model)
    with caplog.at_level("INFO"):
        _, engine = build_runner(g)
    said = [r.message for r in caplog.records if r.message.startswith("engine auto: ")][-1]
    assert said.startswith(f"engine auto: {engine} (per batch of 1 on 2 threads: ")
    figures = {name: float(ms) for name, ms in
               __import__("re").findall(r"(openvino|onednn|onnxruntime) ([\d.]+) ms", said)}
    assert set(figures) == {"openvino", "onednn", "onnxruntime"}
    fastest = min(figures, key=figures.get)
    assert engine == fastest or (engine == "onnxruntime"
                                 and figures["onnxruntime"] * 0.95 <= figures[fastest])
    [kept] = decisions(cache)
    assert json.loads(kept.read_text())["engine"] == engine
    caplog.clear()
    with caplog.at_level("INFO"):
        _, again = build_runner(g)
    assert again == engine and "decided before, kept in" in caplog.text
    build_runner({**g, "batch_size": 4})  # another batch size is another decision
    assert len(decisions(cache)) == 2


@pytest.mark.parametrize("ms, kept", [
    ({"openvino": 1.00, "onednn": 3.0, "onnxruntime": 1.04}, "onnxruntime"),  # a near tie
    ({"openvino": 0.90, "onednn": 3.0, "onnxruntime": 1.00}, "openvino"),  # clearly faster
    ({"openvino": 1.00, "onednn": 0.80}, "onednn"),  # no ONNX Runtime: the fastest
])
def test_auto_keeps_onnx_runtime_unless_another_engine_is_clearly_faster(ms, kept):
    """Timings differ by several per cent between runs: a near tie goes to ONNX Runtime,
    which the benchmark found fastest or within 5% of it for every variant."""
    assert pick(ms) == kept


@pytest.mark.parametrize("content", ["{not json", json.dumps({"engine": "tensorrt", "ms": {},
                                                               "batch_size": 1, "threads": 2}),
                                     "[]", "x" * 100_000])
def test_a_kept_decision_that_does_not_fit_is_taken_again(model, cache, caplog, content):
    g = settings(model)
    build_runner(g)
    [kept] = decisions(cache)
    kept.write_text(content)
    caplog.clear()
    with caplog.at_level("INFO"):
        _, engine = build_runner(g)
    assert "decided before" not in caplog.text and f"engine auto: {engine} (per batch" in caplog.text
    assert json.loads(kept.read_text())["engine"] == engine


@pytest.mark.parametrize("engine", ["openvino", "onednn", "onnxruntime"])
def test_every_engine_auto_may_choose_answers_alike(model, engine):
    path = str(model["images"][0])
    reference = Predictor(model["dir"], engine="openvino").predict(path)
    answer = Predictor(model["dir"], engine=engine).predict(path)
    assert answer["class_ids"] == reference["class_ids"]
    np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-4)


def test_benchmark_shows_the_default_and_its_engine_beside_each_engine_and_top1_per_precision(
        model, digits, tmp_path):
    from ppcls.inference import BF16_CPU_FLAGS
    from ppcls.utils.threads import cpu_info
    from tools import benchmark

    bf16 = bool(set(BF16_CPU_FLAGS) & cpu_info()[1])
    out = tmp_path / "bench"
    assert benchmark.main(["--names", "MnasNet_small", "--size", "32", "--batch_sizes", "1", "2",
                           "--threads", "1", "--warmup", "1", "--repeats", "2", "--rounds", "1",
                           "--backends", "default", "paddle", "onnxruntime", "paddle_bf16",
                           "--top1_model", str(model["dir"]), "--top1_images", str(digits),
                           "--top1_list", str(digits / "val_odd.txt"), "--out_dir", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    row = next(line for line in table.splitlines() if line.startswith("| MnasNet_small |"))
    cells = dict(zip(header.strip("|").split(" | "), row.strip("|").split(" | ")))
    assert cells["default engine b1"].strip() in ("openvino", "onednn", "onnxruntime")
    assert float(cells["default b2 (ms)"]) > 0 and cells["default / onnxruntime b2"].endswith("x")
    assert ("paddle_bf16 b1 (ms)" in cells) == bf16
    precisions = [line for line in table.splitlines() if line.startswith("| fp32 |")
                  or line.startswith("| bf16, OpenVINO |")]
    assert len(precisions) == (2 if bf16 else 1)
    top1s = [float(line.split(" | ")[2]) for line in precisions]
    assert all(0 <= t <= 100 for t in top1s) and precisions[0].split(" | ")[3] == "+0.00"
