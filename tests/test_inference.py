"""Prediction: tools/infer.py (dygraph), export, the Paddle Inference predictor, ONNX."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

from conftest import QUICK_START, ROOT, digits_overrides
from ppcls.engine.engine import Engine
from ppcls.export.inference_model import export_inference_model
from ppcls.export.onnx_model import export_onnx
from ppcls.utils.cli import run
from ppcls.utils.config import get_config
from ppcls.utils.errors import ConfigError
from ppcls.weights import read_state_dict
from tools import infer as infer_tool

sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))
import predict_cls  # noqa: E402

DEPLOY_CONFIG = os.path.join(ROOT, "deploy", "configs", "inference_digits.yaml")


def train_and_export(digits, root, extra=()):
    """The quick-start model trained briefly, exported to Paddle Inference and ONNX, plus a
    folder of 5 val images."""
    overrides = digits_overrides(digits, root / "train", epochs=2,
                                 extra=["Global.eval_during_train=False", *extra])
    Engine(get_config(QUICK_START, overrides), "train").train()
    weights = root / "train" / "MnasNet_B1_x0_5" / "latest"
    config = get_config(QUICK_START, overrides + [f"Global.pretrained_model={weights}",
                                                  f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"])
    export_inference_model(config, str(root / "inference"))
    export_onnx(str(root / "inference"))
    images = root / "images"
    images.mkdir()
    val = (digits / "val_odd.txt").read_text().split()[::2][:5]
    for i, rel in enumerate(val):
        shutil.copy(digits / rel, images / f"img{i}.png")
    return {"weights": weights, "model_dir": root / "inference", "images": images,
            "digits": digits, "root": root}


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """Trained for 12 steps on 96 images: enough to run, not to tell images apart."""
    return train_and_export(digits, tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="module")
def discerning(digits, tmp_path_factory):
    """Trained for 180 steps on the whole training list: its BatchNorm statistics settle,
    so its answers differ from image to image (after `exported`'s 12 steps, the running
    variances still shrink the signal about tenfold per stage, and every image gets the
    same probabilities to 5 decimals)."""
    return train_and_export(digits, tmp_path_factory.mktemp("discerning"), extra=[
        f"DataLoader.Train.dataset.cls_label_path={digits}/train_list.txt"])


def run_infer(exported, images, save_path, batch_size=2):
    labels = exported["digits"] / "label_list.txt"
    infer_tool.main(infer_tool.parse_args([
        "-c", QUICK_START, "-o", f"Global.pretrained_model={exported['weights']}",
        "-o", f"Infer.infer_imgs={images}", "-o", f"Infer.batch_size={batch_size}",
        "-o", f"Infer.save_path={save_path}",
        "-o", f"Infer.PostProcess.class_id_map_file={labels}", "-o", "Infer.PostProcess.topk=5"]))
    return json.load(open(save_path))


def run_predictor(exported, images, save_path, backend="paddle", batch_size=2, extra=(), model_dir=None):
    """The deploy config names no labels and no transforms: inference.yml supplies them."""
    predict_cls.main(predict_cls.parse_args([
        "-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={model_dir or exported['model_dir']}",
        "-o", f"Global.infer_imgs={images}", "-o", f"Global.batch_size={batch_size}",
        "-o", f"Global.save_path={save_path}", "-o", f"Global.backend={backend}",
        "-o", "PostProcess.Topk.topk=5", *extra]))
    return json.load(open(save_path))


def test_folder_of_five_in_batches_of_two_gives_five_results_in_order(exported, tmp_path, capsys):
    results = run_infer(exported, exported["images"], tmp_path / "r.json")
    assert [os.path.basename(r["file_name"]) for r in results] == [f"img{i}.png" for i in range(5)]
    assert all(len(r["class_ids"]) == 5 and r["label_names"][0].startswith("digit") for r in results)
    printed = [line for line in capsys.readouterr().out.splitlines()
               if not line.startswith("[")]  # results, not log lines
    assert len(printed) == 5 and all(line.startswith("{'class_ids': [") for line in printed)


@pytest.mark.parametrize("backend,extra,tolerance", [
    ("paddle", (), 1e-5),                                  # the OpenVINO engine
    ("paddle", ("-o", "Global.use_openvino=False"), 1e-5),  # oneDNN
    ("onnxruntime", (), 1e-4)], ids=["paddle-openvino", "paddle-onednn", "onnxruntime"])
def test_predictor_agrees_with_dygraph(exported, tmp_path, backend, extra, tolerance):
    dygraph = run_infer(exported, exported["images"], tmp_path / "dy.json")
    deployed = run_predictor(exported, exported["images"], tmp_path / "pi.json", backend, extra=extra)
    assert [r["file_name"] for r in deployed] == [r["file_name"] for r in dygraph]
    for a, b in zip(dygraph, deployed):
        assert a["class_ids"] == b["class_ids"] and a["label_names"] == b["label_names"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=tolerance + 1e-5)  # + rounding


def test_export_writes_the_legacy_program_for_openvino_on_the_same_parameters(exported):
    from ppcls.inference import cpu_engine

    files = sorted(os.listdir(exported["model_dir"]))
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams"} <= set(files), files
    g = {**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(exported["model_dir"])}
    assert cpu_engine(g, g["inference_model_dir"]) == "openvino"  # no fallback on this machine


def test_openvino_keeps_its_compiled_models_in_our_cache_not_the_working_directory(
        exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "cache"))
    g = {**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(exported["model_dir"])}
    predict_cls.RUNNERS["paddle"](g)(np.zeros((1, 3, 32, 32), np.float32))
    assert not (tmp_path / "__cache__").exists()
    assert list((tmp_path / "cache" / "openvino").iterdir())


def test_a_model_without_the_legacy_program_runs_onednn_and_says_why(exported, tmp_path, caplog):
    from ppcls.inference import cpu_engine

    pir_only = tmp_path / "pir_only"
    shutil.copytree(exported["model_dir"], pir_only)
    os.remove(pir_only / "inference.pdmodel")
    g = {**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(pir_only)}
    with caplog.at_level("INFO"):
        assert cpu_engine(g, str(pir_only)) == "onednn"
    assert "no inference.pdmodel" in caplog.text and "tools/export_model.py" in caplog.text
    probs = predict_cls.RUNNERS["paddle"](g)(np.zeros((1, 3, 32, 32), np.float32))
    assert probs.shape == (1, 10)


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
    with pytest.raises(ConfigError, match=r"PostProcess.SavePreLabe: unknown post-process 'SavePreLabe' "
                                          r"\(did you mean 'SavePreLabel'\?\)"):
        run_predictor(exported, exported["images"], tmp_path / "r.json",
                      extra=["-o", "PostProcess.SavePreLabe.save_dir=./pre_label"])
    with pytest.raises(ConfigError, match="Global.use_int8 is True but .* is not quantized"):
        run_predictor(exported, exported["images"], tmp_path / "r.json", extra=["-o", "Global.use_int8=True"])
    with pytest.raises(ConfigError, match="save_log_path receives the benchmark figures"):
        run_predictor(exported, exported["images"], tmp_path / "r.json", extra=["-o", "Global.save_log_path=x.log"])
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


def test_inference_yml_describes_preprocessing_and_labels(exported):
    described = yaml.safe_load(open(exported["model_dir"] / "inference.yml"))
    assert described["Global"] == {"model_name": "MnasNet_B1_x0_5"}
    ops = described["PreProcess"]["transform_ops"]
    assert [next(iter(op)) for op in ops] == ["NormalizeImage", "ToCHWImage"]  # decoding is the predictor's
    assert ops[0]["NormalizeImage"]["scale"] == pytest.approx(1 / 255)  # a number, as PaddleClas writes it
    assert described["PostProcess"]["Topk"]["label_list"] == [f"digit {i}" for i in range(10)]


def test_explicit_deploy_values_win_over_inference_yml(exported, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} number {i}\n" for i in range(10)))
    explicit = run_predictor(exported, exported["images"], tmp_path / "b.json",
                             extra=["-o", f"PostProcess.Topk.class_id_map_file={labels}"])
    assert all(r["label_names"][0] == f"number {r['class_ids'][0]}" for r in explicit)
    from ppcls.inference import apply_inference_config

    own_ops = [{"ResizeImage": {"size": 16}}, {"ToCHWImage": None}]
    merged = apply_inference_config({"Global": {"inference_model_dir": str(exported["model_dir"])},
                                     "PreProcess": {"transform_ops": own_ops},
                                     "PostProcess": {"Topk": {"topk": 2}}}, "deploy.yaml")
    assert merged["PreProcess"]["transform_ops"] == own_ops
    assert merged["PostProcess"]["Topk"]["topk"] == 2 and len(merged["PostProcess"]["Topk"]["label_list"]) == 10


def test_label_list_of_another_length_is_one_clear_error(exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    described = yaml.safe_load(open(model_dir / "inference.yml"))
    described["PostProcess"]["Topk"]["label_list"] = described["PostProcess"]["Topk"]["label_list"][:9]
    yaml.safe_dump(described, open(model_dir / "inference.yml", "w"))
    with pytest.raises(ConfigError, match="PostProcess.Topk.label_list names 9 classes but the model outputs 10"):
        run_predictor(exported, exported["images"], tmp_path / "r.json", model_dir=model_dir)
    (model_dir / "inference.yml").unlink()
    with pytest.raises(ConfigError, match="no PreProcess.transform_ops, and .*inference.yml does not exist"):
        run_predictor(exported, exported["images"], tmp_path / "r.json", model_dir=model_dir)


def test_save_pre_label_copies_each_image_into_its_predicted_class(exported, tmp_path):
    save_dir = tmp_path / "pre_label"
    results = run_predictor(exported, exported["images"], tmp_path / "r.json",
                            extra=["-o", f"PostProcess.SavePreLabel.save_dir={save_dir}"])
    copied = sorted((p.parent.name, p.name) for p in save_dir.glob("*/*"))
    assert copied == sorted((str(r["class_ids"][0]), os.path.basename(r["file_name"])) for r in results)


def test_thresh_output_follows_paddleclas():
    from ppcls.data.postprocess import ThreshOutput

    binary = ThreshOutput(threshold=0.7, label_0="cat", label_1="dog")
    below, above = binary(np.array([[0.4, 0.6], [0.2, 0.8]]), ["a", "b"])
    assert (below["class_ids"], below["label_names"], below["scores"]) == ([0], ["cat"], [0.4])
    assert (above["class_ids"], above["label_names"], above["scores"]) == ([1], ["dog"], [0.8])
    multi = ThreshOutput(threshold=0.5, default_label_index=2)
    sure, unsure = multi(np.array([[0.1, 0.8, 0.1], [0.3, 0.45, 0.25]]), ["a", "b"])
    assert sure["class_ids"] == [1] and unsure["class_ids"] == [2] and unsure["scores"] == [0.25]


def test_thresh_output_as_main_indicator_in_the_predictor(exported, tmp_path):
    results = run_predictor(exported, exported["images"], tmp_path / "r.json",
                            extra=["-o", "PostProcess.main_indicator=ThreshOutput",
                                   "-o", "PostProcess.ThreshOutput.threshold=1.1",
                                   "-o", "PostProcess.ThreshOutput.default_label_index=7"])
    assert [r["class_ids"] for r in results] == [[7]] * 5  # no probability exceeds 1.1


def test_threads_above_the_cores_warn_once(exported, tmp_path, capsys):
    from ppcls.utils.threads import usable_cores

    run_predictor(exported, exported["images"], tmp_path / "r.json",
                  extra=["-o", f"Global.cpu_num_threads={usable_cores() + 1}"])
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("Global.cpu_num_threads is") == 1


def test_save_log_path_gets_the_benchmark_line_and_profile_runs(exported, tmp_path, capsys):
    log = tmp_path / "logs" / "bench.log"
    run_predictor(exported, exported["images"], tmp_path / "r.json",
                  extra=["-o", "Global.benchmark=True", "-o", f"Global.save_log_path={log}",
                         "-o", "Global.use_onnx=True", "-o", "Global.enable_profile=True"])
    assert "benchmark (onnxruntime, fp32, batch 2" in log.read_text()
    assert list(exported["model_dir"].glob("onnxruntime_profile*.json"))


def test_deployed_predictor_does_not_import_the_training_engine():
    code = "import sys, ppcls.inference; print('ppcls.engine' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_benchmark_prints_stage_timings(exported, tmp_path, capsys):
    run_predictor(exported, exported["images"], tmp_path / "r.json", extra=["-o", "Global.benchmark=True"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("benchmark (paddle, fp32, batch 2") and "inference" in line
    inference_ms = float(line.split("inference ")[1].split(" ms")[0])
    assert inference_ms > 0


def test_export_uses_ema_weights_when_configured(digits, tmp_path):
    overrides = digits_overrides(digits, tmp_path, epochs=1,
                                 extra=["EMA.decay=0.5", "Global.eval_during_train=False"])
    Engine(get_config(QUICK_START, overrides), "train").train()
    prefix = tmp_path / "MnasNet_B1_x0_5" / "latest"
    ema = read_state_dict(str(prefix) + ".pdema")
    raw = read_state_dict(str(prefix) + ".pdparams")
    assert not np.array_equal(ema["fc.weight"], raw["fc.weight"])
    for with_ema, expected in ((True, ema), (False, raw)):
        extra = [f"Global.pretrained_model={prefix}"]
        config = get_config(QUICK_START, overrides + extra)
        if not with_ema:
            del config["EMA"]
        export_inference_model(config, str(tmp_path / f"inf{with_ema}"))
        from ppcls.export.inference_model import build_inference_network
        net = build_inference_network(config)
        np.testing.assert_array_equal(net.fc.weight.numpy(), expected["fc.weight"])


def test_benchmark_tool_writes_table_csv_and_plot(tmp_path):
    from tools import benchmark

    out = tmp_path / "bench"
    assert benchmark.main(["--names", "MnasNet_small", "--size", "32", "--batch_sizes", "1", "2",
                           "--threads", "1", "--warmup", "1", "--repeats", "2", "--rounds", "2",
                           "--out_dir", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    assert "| MnasNet_small | 2.03 |" in table and "onnxruntime b2 (ms)" in table
    assert "paddle_onednn b1 (ms)" in table and "floor b2 (ms)" in table
    row = next(csv_row for csv_row in __import__("csv").DictReader(open(out / "benchmark.csv")))
    assert float(row["paddle_b1_ms"]) > 0 and float(row["onnxruntime_b2_ms"]) > 0
    assert float(row["floor_b2_ms"]) == pytest.approx(2 * float(row["floor_b1_ms"]))
    assert float(row["published_top1"]) == 66.196
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000


def assert_int8_answers(results, int8):
    """`results` are the INT8 program's answers `int8`: the same top 3 and scores within
    0.05. oneDNN runs the program with and without use_int8's passes, whose kernels differ:
    scores moved by up to 0.011 here, and the last of the top 5, scores near 0.002, once came
    out in another order."""
    assert [r["class_ids"][:3] for r in results] == [r["class_ids"][:3] for r in int8]
    np.testing.assert_allclose([r["scores"] for r in results], [r["scores"] for r in int8],
                               atol=0.05)


def test_int8_models_mostly_agree_with_fp32(exported, tmp_path, monkeypatch, capsys):
    """deploy/slim/quant_post_static.py on the exported model: the Paddle INT8 model run with
    oneDNN INT8 kernels and the ONNX Runtime QDQ model predict what the FP32 model predicts."""
    model_dir = tmp_path / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    overrides = digits_overrides(exported["digits"], tmp_path / "unused")
    # a process of its own, as users run it: it needs Paddle's legacy programs from the start
    quant = subprocess.run([sys.executable, "deploy/slim/quant_post_static.py", "-c", QUICK_START,
                            "-o", f"Global.pretrained_model={exported['weights']}",
                            "-o", f"Global.save_inference_dir={model_dir}", "--batch_size", "4",
                            "--batch_nums", "3", *(a for o in overrides for a in ("-o", o))],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert quant.returncode == 0, quant.stderr[-3000:]
    quant_dir = model_dir / "quant_post_static_model"
    int8_paddle = None
    fp32 = run_predictor(exported, exported["images"], tmp_path / "fp32.json")
    for extra in (["-o", "Global.use_int8=True"], ["-o", "Global.use_onnx=True", "-o", "Global.use_int8=True"]):
        int8 = run_predictor(exported, exported["images"], tmp_path / "int8.json", extra=extra, model_dir=quant_dir)
        agree = sum(a["class_ids"][0] == b["class_ids"][0] for a, b in zip(fp32, int8))
        assert agree >= 4, (extra, fp32, int8)
        np.testing.assert_allclose([r["scores"][0] for r in int8], [r["scores"][0] for r in fp32], atol=0.1)
        int8_paddle = int8_paddle if "Global.use_onnx=True" in extra else int8
    # without use_int8 the default config still runs it (OpenVINO cannot convert quantize ops,
    # so one line says oneDNN runs instead), and so does the OpenVINO-first path if a program
    # with no quantize ops fails OpenVINO's conversion all the same
    import ppcls.inference

    from_default = run_predictor(exported, exported["images"], tmp_path / "d.json", model_dir=quant_dir)
    assert_int8_answers(from_default, int8_paddle)
    monkeypatch.setattr(ppcls.inference, "cpu_engine", lambda g, model_dir: "openvino")
    capsys.readouterr()
    after_failure = run_predictor(exported, exported["images"], tmp_path / "f.json", model_dir=quant_dir)
    assert_int8_answers(after_failure, int8_paddle)
    said = capsys.readouterr().out
    assert "OpenVINO could not convert" in said and "running onednn" in said, said
    # told apart by their operators (a legacy program's op-version table names quantize ops in
    # every model, so a byte search would call the FP32 program INT8 too)
    from ppcls.inference import is_int8_model

    assert is_int8_model(str(quant_dir / "inference.pdmodel"))
    assert not is_int8_model(str(model_dir / "inference.pdmodel"))
    # the quantized folder describes itself too, and an FP32 folder refuses use_int8
    assert (quant_dir / "inference.yml").read_text() == (model_dir / "inference.yml").read_text()


# ------------------------------------- images the model does not take as they come
ENGINES = {"openvino": ("paddle", ()), "onednn": ("paddle", ("-o", "Global.use_openvino=False")),
           "onnxruntime": ("onnxruntime", ())}


@pytest.fixture(scope="module")
def mixed_sizes(discerning, tmp_path_factory):
    """Six other val digits, at 32, 48 and 64 px (upscaled), in one folder."""
    import cv2

    folder = tmp_path_factory.mktemp("mixed_sizes")
    val = (discerning["digits"] / "val_odd.txt").read_text().split()[::2][5:11]
    for i, (rel, side) in enumerate(zip(val, (32, 48, 64, 32, 64, 48))):
        image = cv2.imread(str(discerning["digits"] / rel))
        cv2.imwrite(str(folder / f"img{i}_{side}px.png"), cv2.resize(image, (side, side)))
    return folder


def assert_same_results(results, expected, atol):
    assert [r["file_name"] for r in results] == [r["file_name"] for r in expected]
    for mine, own in zip(results, expected):
        assert mine["class_ids"] == own["class_ids"], (mine, own)
        np.testing.assert_allclose(mine["scores"], own["scores"], atol=atol)


def test_each_image_of_another_size_gets_its_own_result(discerning, mixed_sizes, tmp_path, capsys):
    """A 32 px model asked about 48 and 64 px images, by every engine at batch 1 and 2 and by
    tools/infer.py: each image's result is the one it gets alone (its own, resized to 32x32)."""
    exported = discerning
    files = sorted(mixed_sizes.iterdir())
    alone = [run_predictor(exported, f, tmp_path / "alone.json", batch_size=1)[0] for f in files]
    assert len({tuple(r["scores"]) for r in alone}) == len(files)  # so a swap would show
    for engine, (backend, extra) in ENGINES.items():
        for batch_size in (1, 2):
            capsys.readouterr()
            results = run_predictor(exported, mixed_sizes, tmp_path / "r.json", backend,
                                    batch_size=batch_size, extra=extra)
            assert_same_results(results, [{**r, "file_name": str(f)} for r, f in zip(alone, files)],
                                atol=2e-4)
            said = capsys.readouterr()
            assert (said.out + said.err).count("resized 4 of 6 images to the model's 32x32 input") == 1
    dygraph = run_infer(exported, mixed_sizes, tmp_path / "dy.json", batch_size=2)
    assert_same_results(dygraph, [{**r, "file_name": str(f)} for r, f in zip(alone, files)], atol=2e-4)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_of_another_shape_raises_instead_of_answering(exported, engine):
    """OpenVINO used to log its error and hand back the previous batch's probabilities."""
    from ppcls.inference import EngineError

    backend, extra = ENGINES[engine]
    g = {**predict_cls.DEPLOY_DEFAULTS, "inference_model_dir": str(exported["model_dir"]),
         **({"use_openvino": False} if extra else {})}
    run_batch = predict_cls.RUNNERS[backend](g)
    assert run_batch.input_shape == (3, 32, 32)
    assert run_batch(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    with pytest.raises(EngineError, match=r"takes \[N, 3, 32, 32\] images, got \[1, 3, 48, 48\]"):
        run_batch(np.zeros((1, 3, 48, 48), np.float32))


def test_a_model_taking_any_size_runs_each_size_in_batches_of_its_own(discerning, mixed_sizes, tmp_path):
    """Exported with H and W left open, the model runs each image at its own size, and a
    batch is never formed of images of two sizes."""
    from ppcls.export.inference_model import InferenceModel, build_inference_network

    exported = discerning
    config = get_config(QUICK_START, digits_overrides(exported["digits"], tmp_path) + [
        f"Global.pretrained_model={exported['weights']}"])
    model_dir = tmp_path / "any_size"
    spec = paddle.static.InputSpec([None, 3, None, None], "float32", name="x")
    paddle.jit.save(InferenceModel(build_inference_network(config)), str(model_dir / "inference"),
                    input_spec=[spec])
    shutil.copy(exported["model_dir"] / "inference.yml", model_dir)
    files = sorted(mixed_sizes.iterdir())
    alone = [run_predictor(exported, f, tmp_path / "a.json", batch_size=1, model_dir=model_dir)[0]
             for f in files]
    together = run_predictor(exported, mixed_sizes, tmp_path / "t.json", batch_size=2, model_dir=model_dir)
    assert_same_results(together, [{**r, "file_name": str(f)} for r, f in zip(alone, files)], atol=1e-5)
    at_32 = run_predictor(exported, mixed_sizes, tmp_path / "32.json", batch_size=2)
    assert [r["scores"] for r in together] != [r["scores"] for r in at_32]  # not resized here


def test_a_png_bomb_in_the_folder_gets_an_error_and_the_others_their_results(exported, tmp_path):
    from conftest import write_png_bomb

    folder = tmp_path / "with_bomb"
    shutil.copytree(exported["images"], folder)
    write_png_bomb(folder / "img2b_bomb.png")
    for run in (run_predictor, run_infer):
        for batch_size in (2, 1):
            results = run(exported, folder, tmp_path / "r.json", batch_size=batch_size)
            assert len(results) == 6
            errors = {os.path.basename(r["file_name"]): r["error"] for r in results if "error" in r}
            assert set(errors) == {"img2b_bomb.png"}, errors
            assert re.search(r"12000x12000 pixels .*over the pixel cap of 134217728", errors["img2b_bomb.png"])


def predictor_peak_rss_mb(exported, images, tmp_path):
    """Peak memory (MB) of a predictor process on `images`, measured inside it."""
    argv = ["predict_cls.py", "-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={exported['model_dir']}",
            "-o", f"Global.infer_imgs={images}", "-o", f"Global.save_path={tmp_path / 'p.json'}"]
    code = ("import resource, runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n    runpy.run_path('deploy/python/predict_cls.py', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("PEAK")[-1]) / 1024


def test_a_png_bomb_costs_the_predictor_no_memory(exported, tmp_path):
    """Decoded, the bomb alone would take 432 MB (and its float32 copy 1.7 GB)."""
    from conftest import write_png_bomb

    folder = tmp_path / "with_bomb"
    shutil.copytree(exported["images"], folder)
    write_png_bomb(folder / "img2b_bomb.png")
    with_bomb = predictor_peak_rss_mb(exported, folder, tmp_path)
    without = predictor_peak_rss_mb(exported, exported["images"], tmp_path)
    assert with_bomb - without < 100, (with_bomb, without)


# -------------------------------------------------------- inference.yml checked
def predictor_cli(exported, model_dir, capsys, extra=()):
    code = run(predict_cls.main, predict_cls.parse_args([
        "-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={model_dir}",
        "-o", f"Global.infer_imgs={exported['images']}", *extra]))
    return code, capsys.readouterr()


@pytest.mark.parametrize("old,new,message", [
    ("PreProcess:\n", "PreProcess: [\n", "not valid YAML (line "),
    ("transform_ops:", "transform_opts:", "PreProcess: unknown key 'transform_opts' (did you mean "
     "'transform_ops'?)"),
    ("PostProcess:", "PostProces:", "unknown section 'PostProces' (did you mean 'PostProcess'?)"),
    ("model_name:", "model_nam:", "Global: unknown key 'model_nam' (did you mean 'model_name'?)"),
    ("  - ToCHWImage: null", "  - ResizeImage:\n      size: 0\n  - ToCHWImage: null",
     "PreProcess.transform_ops.1.ResizeImage: size must be a positive integer"),
    ("  - ToCHWImage: null", "  - ResizeImage:\n      size: -5\n  - ToCHWImage: null",
     "PreProcess.transform_ops.1.ResizeImage: size must be a positive integer"),
    ("    topk: 3", "    top_k: 3", "PostProcess.Topk: unknown argument 'top_k' (did you mean 'topk'?)"),
], ids=["broken", "unknown-key", "unknown-section", "unknown-global-key", "size-0", "size-negative",
        "unknown-argument"])
def test_a_bad_inference_yml_is_one_line_naming_it(exported, tmp_path, capsys, old, new, message):
    model_dir = tmp_path / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    path = model_dir / "inference.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    code, out = predictor_cli(exported, model_dir, capsys)
    assert code == 2
    assert out.err.startswith(f"error: {path}: ") and out.err.count("\n") == 1, out.err
    assert message in out.err, out.err


def test_paddlex_hpi_settings_in_inference_yml_are_named_and_run(exported, tmp_path, capsys):
    """PaddleX writes an Hpi section (TensorRT dynamic shapes); it has no effect here."""
    model_dir = tmp_path / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    path = model_dir / "inference.yml"
    path.write_text("Hpi:\n  backend_configs:\n    paddle_infer:\n      trt_dynamic_shapes:\n"
                    "        x: [[1, 3, 32, 32], [1, 3, 32, 32], [8, 3, 32, 32]]\n" + path.read_text())
    code, out = predictor_cli(exported, model_dir, capsys)
    assert code == 0, out.err
    assert "Hpi (PaddleX's high-performance inference settings) has no effect here" in out.out + out.err


def test_bf16_mostly_agrees_with_fp32(discerning, tmp_path):
    """Global.use_bf16 (OpenVINO in bfloat16) on a briefly trained model over 37 val images:
    the top-1 class of fp32 for nearly all, and its probability close. Each precision runs in
    a process of its own, as users run them."""
    from ppcls.inference import BF16_CPU_FLAGS
    from ppcls.utils.threads import cpu_info

    if not set(BF16_CPU_FLAGS) & cpu_info()[1]:
        pytest.skip("this CPU has no bfloat16 instructions")
    digits, results = discerning["digits"], {}
    folder = tmp_path / "val"
    folder.mkdir()
    for i, rel in enumerate((digits / "val_odd.txt").read_text().split()[::2]):
        shutil.copy(digits / rel, folder / f"{i:02d}.png")
    for bf16 in (False, True):
        done = subprocess.run([sys.executable, "deploy/python/predict_cls.py", "-c", DEPLOY_CONFIG,
                               "-o", f"Global.inference_model_dir={discerning['model_dir']}",
                               "-o", f"Global.infer_imgs={folder}", "-o", f"Global.use_bf16={bf16}",
                               "-o", "Global.engine=openvino",
                               "-o", f"Global.save_path={tmp_path / f'{bf16}.json'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results[bf16] = json.load(open(tmp_path / f"{bf16}.json"))
    fp32, bf16 = results[False], results[True]
    assert len(fp32) == len(bf16) == 37
    changed = [a for a, b in zip(fp32, bf16) if a["class_ids"][0] != b["class_ids"][0]]
    assert len(changed) <= 4, changed  # this briefly trained model has close calls
    # the probability fp32 gives its top class, as bf16 gives it: close on average
    moved = [abs(a["scores"][0] - dict(zip(b["class_ids"], b["scores"])).get(a["class_ids"][0], 0))
             for a, b in zip(fp32, bf16)]
    assert np.mean(moved) < 0.03 and max(moved) < 0.25, moved
    assert [r["scores"] for r in bf16] != [r["scores"] for r in fp32]  # bfloat16 did run
