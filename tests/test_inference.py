"""Prediction: tools/infer.py (dygraph), export, the Paddle Inference predictor, ONNX."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, ROOT, digits_overrides
from ppcls.engine.engine import Engine
from ppcls.engine.export import export_inference_model
from ppcls.utils.config import get_config
from ppcls.utils.errors import ConfigError
from tools import infer as infer_tool
from tools.export_onnx import export_onnx

sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))
import predict_cls  # noqa: E402

DEPLOY_CONFIG = os.path.join(ROOT, "deploy", "configs", "inference_digits.yaml")


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """A briefly trained quick-start model, exported to Paddle Inference and ONNX, plus a
    folder of 5 val images."""
    root = tmp_path_factory.mktemp("exported")
    overrides = digits_overrides(digits, root / "train", epochs=2, extra=["Global.eval_during_train=False"])
    Engine(get_config(QUICK_START, overrides), "train").train()
    weights = root / "train" / "MnasNet_B1_x0_5" / "latest"
    config = get_config(QUICK_START, overrides + [f"Global.pretrained_model={weights}"])
    export_inference_model(config, str(root / "inference"))
    export_onnx(str(root / "inference"))
    images = root / "images"
    images.mkdir()
    val = (digits / "val_odd.txt").read_text().split()[::2][:5]
    for i, rel in enumerate(val):
        shutil.copy(digits / rel, images / f"img{i}.png")
    return {"weights": weights, "model_dir": root / "inference", "images": images,
            "digits": digits, "root": root}


def run_infer(exported, images, save_path, batch_size=2):
    labels = exported["digits"] / "label_list.txt"
    infer_tool.main(infer_tool.parse_args([
        "-c", QUICK_START, "-o", f"Global.pretrained_model={exported['weights']}",
        "-o", f"Infer.infer_imgs={images}", "-o", f"Infer.batch_size={batch_size}",
        "-o", f"Infer.save_path={save_path}",
        "-o", f"Infer.PostProcess.class_id_map_file={labels}", "-o", "Infer.PostProcess.topk=5"]))
    return json.load(open(save_path))


def run_predictor(exported, images, save_path, backend="paddle", batch_size=2, extra=()):
    labels = exported["digits"] / "label_list.txt"
    predict_cls.main(predict_cls.parse_args([
        "-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={exported['model_dir']}",
        "-o", f"Global.infer_imgs={images}", "-o", f"Global.batch_size={batch_size}",
        "-o", f"Global.save_path={save_path}", "-o", f"Global.backend={backend}",
        "-o", f"PostProcess.Topk.class_id_map_file={labels}", "-o", "PostProcess.Topk.topk=5",
        *extra]))
    return json.load(open(save_path))


def test_folder_of_five_in_batches_of_two_gives_five_results_in_order(exported, tmp_path, capsys):
    results = run_infer(exported, exported["images"], tmp_path / "r.json")
    assert [os.path.basename(r["file_name"]) for r in results] == [f"img{i}.png" for i in range(5)]
    assert all(len(r["class_ids"]) == 5 and r["label_names"][0].startswith("digit") for r in results)
    printed = [line for line in capsys.readouterr().out.splitlines()
               if not line.startswith("[")]  # results, not log lines
    assert len(printed) == 5 and all(line.startswith("{'class_ids': [") for line in printed)


@pytest.mark.parametrize("backend,tolerance", [("paddle", 1e-5), ("onnxruntime", 1e-4)])
def test_predictor_agrees_with_dygraph(exported, tmp_path, backend, tolerance):
    dygraph = run_infer(exported, exported["images"], tmp_path / "dy.json")
    deployed = run_predictor(exported, exported["images"], tmp_path / "pi.json", backend)
    assert [r["file_name"] for r in deployed] == [r["file_name"] for r in dygraph]
    for a, b in zip(dygraph, deployed):
        assert a["class_ids"] == b["class_ids"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=tolerance + 1e-5)  # + rounding


@pytest.mark.parametrize("backend", ["paddle", "onnxruntime"])
def test_exported_model_takes_batches_of_one_and_three(exported, backend):
    g = {**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(exported["model_dir"])}
    run_batch = predict_cls.RUNNERS[backend](g)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    three, one = run_batch(x), run_batch(x[:1])
    assert three.shape == (3, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(three[:1], one, atol=1e-5)
    np.testing.assert_allclose(three.sum(axis=1), 1.0, rtol=1e-5)  # softmax output


def test_bad_files_get_their_own_error_and_the_rest_is_predicted(exported, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(exported["images"], folder)
    (folder / "img1b_text.png").write_text("this is not an image")
    (folder / "img2b_empty.jpg").write_bytes(b"")
    for run in (run_infer, run_predictor):
        results = run(exported, folder, tmp_path / "r.json")
        assert len(results) == 7
        errors = {os.path.basename(r["file_name"]): r["error"] for r in results if "error" in r}
        assert set(errors) == {"img1b_text.png", "img2b_empty.jpg"}
        assert all("decodable" in e for e in errors.values())
    missing = run_infer(exported, tmp_path / "nope.jpg", tmp_path / "m.json")
    assert missing == [{"file_name": str(tmp_path / "nope.jpg"), "error": "file not found"}]


def test_predictor_rejects_unknown_keys_and_incomplete_models(exported, tmp_path):
    with pytest.raises(ConfigError, match=r"Global: unknown key 'use_gpus' \(did you mean "
                                          r"'use_gpu'\?\)"):
        run_predictor(exported, exported["images"], tmp_path / "r.json", extra=["-o", "Global.use_gpus=False"])
    for key, value in (("use_int8", "True"), ("enable_profile", "True"), ("save_log_path", "x")):
        with pytest.raises(ConfigError, match=f"Global.{key}: .* is not supported here"):
            run_predictor(exported, exported["images"], tmp_path / "r.json",
                          extra=["-o", f"Global.{key}={value}"])
    with pytest.raises(ConfigError, match="PostProcess.SavePreLabel is not supported here"):
        run_predictor(exported, exported["images"], tmp_path / "r.json",
                      extra=["-o", "PostProcess.SavePreLabel.save_dir=./pre_label"])
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(exported["model_dir"] / "inference.pdiparams", incomplete)
    with pytest.raises(ConfigError, match="missing inference.json or inference.pdmodel"):
        predict_cls.RUNNERS["paddle"]({**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(incomplete)})
    with pytest.raises(ConfigError, match="inference.onnx not found: create it with tools/export_onnx.py"):
        predict_cls.RUNNERS["onnxruntime"]({**predict_cls.DEPLOY_DEFAULTS,
                                            "inference_model_dir": str(incomplete)})


def test_use_onnx_loads_inference_onnx_and_old_model_onnx_still_loads(exported, tmp_path):
    """PaddleClas's Global.use_onnx reads <inference_model_dir>/inference.onnx (the name
    tools/export_onnx.py writes); a folder converted before that, with model.onnx, still loads."""
    assert (exported["model_dir"] / "inference.onnx").is_file()
    paddle_results = run_predictor(exported, exported["images"], tmp_path / "pi.json")
    onnx_results = run_predictor(exported, exported["images"], tmp_path / "ort.json",
                                 extra=["-o", "Global.use_onnx=True"])
    assert [r["class_ids"] for r in onnx_results] == [r["class_ids"] for r in paddle_results]
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(exported["model_dir"] / "inference.onnx", old / "model.onnx")
    run_batch = predict_cls.RUNNERS["onnxruntime"]({**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(old)})
    assert run_batch(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


def test_deployed_predictor_does_not_import_the_training_engine():
    code = "import sys, ppcls.inference; print('ppcls.engine' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_benchmark_prints_stage_timings(exported, tmp_path, capsys):
    run_predictor(exported, exported["images"], tmp_path / "r.json", extra=["-o", "Global.benchmark=True"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("benchmark (paddle, batch 2") and "inference" in line
    inference_ms = float(line.split("inference ")[1].split(" ms")[0])
    assert inference_ms > 0


def test_export_uses_ema_weights_when_configured(digits, tmp_path):
    overrides = digits_overrides(digits, tmp_path, epochs=1,
                                 extra=["EMA.decay=0.5", "Global.eval_during_train=False"])
    Engine(get_config(QUICK_START, overrides), "train").train()
    prefix = tmp_path / "MnasNet_B1_x0_5" / "latest"
    ema = paddle.load(str(prefix) + ".pdema")
    raw = paddle.load(str(prefix) + ".pdparams")
    assert not np.array_equal(ema["fc.weight"].numpy(), raw["fc.weight"].numpy())
    for with_ema, expected in ((True, ema), (False, raw)):
        extra = [f"Global.pretrained_model={prefix}"]
        config = get_config(QUICK_START, overrides + extra)
        if not with_ema:
            del config["EMA"]
        export_inference_model(config, str(tmp_path / f"inf{with_ema}"))
        from ppcls.engine.export import build_inference_network
        net = build_inference_network(config)
        np.testing.assert_array_equal(net.fc.weight.numpy(), expected["fc.weight"].numpy())


def test_benchmark_tool_writes_table_csv_and_plot(tmp_path):
    from tools import benchmark

    out = tmp_path / "bench"
    assert benchmark.main(["--names", "MnasNet_small", "--size", "32", "--batch_sizes", "1", "2",
                           "--threads", "1", "--warmup", "1", "--repeats", "2",
                           "--out_dir", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    assert "| MnasNet_small | 2.03 |" in table and "onnxruntime b2 (ms)" in table
    row = next(csv_row for csv_row in __import__("csv").DictReader(open(out / "benchmark.csv")))
    assert float(row["paddle_b1_ms"]) > 0 and float(row["onnxruntime_b2_ms"]) > 0
    assert float(row["published_top1"]) == 66.196
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000
