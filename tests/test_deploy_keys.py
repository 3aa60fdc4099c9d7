"""The deploy keys that choose a device and a precision (use_gpu, use_tensorrt, use_fp16,
use_int8), on every backend: each is honoured, as Paddle's own Config getters show, or refused
in one line through deploy/python/predict_cls.py (exit 2), never silently ignored (issue 23).

This machine's Paddle has no CUDA, so what a GPU run asks of Paddle is checked through
`gpu_plan` (the decisions) and through the refusal a CPU build gives."""

import os
import shutil
import subprocess
import sys

import onnxruntime
import paddle
import pytest

from conftest import QUICK_START, ROOT
from ppcls.export.inference_model import export_inference_model
from ppcls.inference import (DEPLOY_DEFAULTS, GpuPlan, _configure_gpu, _paddle_config, cpu_engine,
                             gpu_plan, running_precision, tensorrt_shape_ranges)
from ppcls.utils.cli import run
from ppcls.utils.config import get_config
from ppcls.utils.errors import ConfigError
from ppcls.export.onnx_model import export_onnx

sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))
import predict_cls  # noqa: E402

DEPLOY_CONFIG = os.path.join(ROOT, "deploy", "configs", "inference_digits.yaml")


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """The quick-start network with its initial weights, exported (both programs and ONNX),
    and two images to predict."""
    root = tmp_path_factory.mktemp("deploy_keys")
    config = get_config(QUICK_START, [f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"])
    export_inference_model(config, str(root / "inference"))
    export_onnx(str(root / "inference"))
    images = root / "images"
    images.mkdir()
    for i, rel in enumerate((digits / "val_odd.txt").read_text().split()[::2][:2]):
        shutil.copy(digits / rel, images / f"img{i}.png")
    return {"dir": root / "inference", "images": images}


def predict(model, capsys, *overrides):
    """deploy/python/predict_cls.py through its entry point: (exit code, stdout, stderr)."""
    args = ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={model['dir']}",
            "-o", f"Global.infer_imgs={model['images']}"]
    for override in overrides:
        args += ["-o", override]
    code = run(predict_cls.main, predict_cls.parse_args(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def settings(model, **keys):
    return {**DEPLOY_DEFAULTS, "inference_model_dir": str(model["dir"]), **keys}


# ------------------------------------------------------------------ on this CPU build
@pytest.mark.parametrize("keys", [
    ["Global.use_gpu=True"],
    ["Global.use_gpu=True", "Global.use_fp16=True"],
    ["Global.use_gpu=True", "Global.use_tensorrt=True"],
    ["Global.use_gpu=True", "Global.use_tensorrt=True", "Global.use_fp16=True"],
], ids=["gpu", "gpu-fp16", "tensorrt", "tensorrt-fp16"])
def test_gpu_keys_on_a_paddle_without_cuda_are_refused_in_one_line(model, capsys, keys):
    assert not paddle.is_compiled_with_cuda()  # this machine's build
    code, out, err = predict(model, capsys, *keys)
    line = one_line_error(err)
    assert code == 2 and not out.strip()
    assert "Global.use_gpu" in line and "paddlepaddle-gpu" in line


@pytest.mark.parametrize("keys,named", [
    (["Global.use_tensorrt=True"], "Global.use_tensorrt needs -o Global.use_gpu=True"),
    (["Global.use_fp16=True", "Global.enable_mkldnn=False"], "-o Global.enable_mkldnn=True"),
    (["Global.use_onnx=True", "Global.use_fp16=True"], "Global.use_fp16"),
    (["Global.use_onnx=True", "Global.use_tensorrt=True"], "Global.use_tensorrt"),
], ids=["tensorrt-on-cpu", "fp16-without-onednn", "onnxruntime-fp16", "onnxruntime-tensorrt"])
def test_keys_the_chosen_engine_would_ignore_are_refused_in_one_line(model, capsys, keys, named):
    code, out, err = predict(model, capsys, *keys)
    assert code == 2 and named in one_line_error(err) and not out.strip()


def test_onnxruntime_on_a_gpu_needs_its_cuda_provider(model, capsys):
    """The onnxruntime wheel has no CUDA provider: asked for the GPU, it would run on the CPU."""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: use_gpu is honoured")
    code, out, err = predict(model, capsys, "Global.use_onnx=True", "Global.use_gpu=True")
    line = one_line_error(err)
    assert code == 2 and "onnxruntime-gpu" in line and "CPUExecutionProvider" in line


@pytest.mark.parametrize("keys,engine,program,onednn,openvino", [
    ({}, "openvino", "inference.pdmodel", None, True),  # oneDNN runs what OpenVINO leaves
    ({"use_openvino": False}, "onednn", "inference.json", True, False),
    ({"use_fp16": True}, "onednn", "inference.json", True, False),
    ({"use_openvino": False, "enable_mkldnn": False}, "native", "inference.json", False, False),
], ids=["default", "onednn", "fp16", "native"])
def test_cpu_configs_ask_paddle_for_what_the_keys_say(model, keys, engine, program, onednn, openvino):
    g = settings(model, **keys)
    assert cpu_engine(g, g["inference_model_dir"]) == engine
    config = _paddle_config(g, g["inference_model_dir"], engine)
    assert os.path.basename(config.prog_file()) == program
    assert config.openvino_engine_enabled() == openvino
    assert onednn is None or config.mkldnn_enabled() == onednn
    assert not config.use_gpu() and not config.tensorrt_engine_enabled()


def predict_in_a_process(model, *overrides):
    """deploy/python/predict_cls.py as users run it: (exit code, stdout, stderr)."""
    args = [sys.executable, "deploy/python/predict_cls.py", "-c", DEPLOY_CONFIG,
            "-o", f"Global.inference_model_dir={model['dir']}", "-o", f"Global.infer_imgs={model['images']}"]
    for override in overrides:
        args += ["-o", override]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    return proc.returncode, proc.stdout, proc.stderr


def test_benchmark_line_names_the_precision_that_runs(model):
    """use_fp16 on a CPU runs bfloat16 oneDNN kernels (on CPUs with AVX-512; refused on others).
    In a process of its own: a bfloat16 predictor changes what later oneDNN predictors in the
    same process compute (Paddle 3.3.1; seen as another INT8 top-5 in tests/test_inference.py)."""
    code, out, err = predict_in_a_process(model, "Global.use_fp16=True", "Global.benchmark=True")
    if not paddle.base.core.supports_bfloat16():
        assert code == 2 and "bfloat16" in [line for line in err.splitlines() if line.startswith("error: ")][0]
        return
    assert code == 0, err[-2000:]
    assert "benchmark (paddle, bf16, batch 16, 2 threads)" in out
    code, out, err = predict_in_a_process(model, "Global.use_onnx=True", "Global.benchmark=True")
    assert code == 0 and "benchmark (onnxruntime, fp32, batch 16, 2 threads)" in out, err[-2000:]


# ------------------------------------------------------------------ what a GPU run asks for
@pytest.mark.parametrize("keys,engine,program,precision", [
    ({}, "gpu", "inference.json", "fp32"),
    ({"use_fp16": True}, "gpu", "inference.json", "fp16"),
    ({"use_tensorrt": True}, "tensorrt", "inference.pdmodel", "fp32"),
    ({"use_tensorrt": True, "use_fp16": True}, "tensorrt", "inference.pdmodel", "fp16"),
    ({"use_tensorrt": True, "use_int8": True}, "tensorrt", "inference.pdmodel", "int8"),
], ids=["fp32", "fp16-mixed-precision", "tensorrt", "tensorrt-fp16", "tensorrt-int8"])
def test_gpu_plan_for_each_key_combination(model, keys, engine, program, precision):
    """TensorRT reads the legacy program (Paddle 3.3.1 runs a PIR program without its
    TensorRT subgraph pass); use_fp16 without TensorRT is Paddle's GPU mixed precision on the
    PIR program; the benchmark line reports the same precision."""
    g = settings(model, use_gpu=True, **keys)
    plan = gpu_plan(g, g["inference_model_dir"])
    assert (plan.engine, os.path.basename(plan.model_file), plan.precision) == (engine, program, precision)
    assert running_precision(g) == precision


@pytest.mark.parametrize("keys,message", [
    ({"use_int8": True}, "Global.use_int8 on a GPU runs through TensorRT"),
    ({"use_tensorrt": True, "ir_optim": False}, "TensorRT runs as an IR pass"),
], ids=["int8-without-tensorrt", "tensorrt-without-ir-optim"])
def test_gpu_plan_refuses_what_paddle_would_ignore(model, keys, message):
    g = settings(model, use_gpu=True, **keys)
    with pytest.raises(ConfigError, match=message):
        gpu_plan(g, g["inference_model_dir"])


def test_tensorrt_needs_the_legacy_program_and_says_how_to_get_it(model, tmp_path):
    pir_only = tmp_path / "pir_only"
    shutil.copytree(model["dir"], pir_only)
    os.remove(pir_only / "inference.pdmodel")
    g = settings(model, use_gpu=True, use_tensorrt=True, inference_model_dir=str(pir_only))
    with pytest.raises(ConfigError, match="no inference.pdmodel.*tools/export_model.py"):
        gpu_plan(g, str(pir_only))
    g["use_tensorrt"] = False
    assert gpu_plan(g, str(pir_only)).engine == "gpu"  # the PIR program is enough without it


def test_tensorrt_builds_for_batches_up_to_batch_size_at_the_exported_size(model):
    """The exported batch dimension is -1; TensorRT gets it as a dynamic range."""
    smallest, largest, optimal = tensorrt_shape_ranges(str(model["dir"] / "inference.pdmodel"), 16)
    assert smallest == {"x": [1, 3, 32, 32]} and largest == optimal == {"x": [16, 3, 32, 32]}


def test_gpu_settings_paddle_drops_are_refused_not_run_without(model):
    """Paddle's Config logs an error and carries on when it cannot take a setting: on this CPU
    build enable_use_gpu leaves use_gpu() False. The predictor checks the getters afterwards."""
    from paddle import inference

    config = inference.Config(str(model["dir"] / "inference.json"), str(model["dir"] / "inference.pdiparams"))
    plan = GpuPlan("gpu", config.prog_file(), "fp16")
    with pytest.raises(ConfigError, match=r"did not accept the GPU settings \(use_gpu, gpu, fp16\)"):
        _configure_gpu(config, settings(model, use_gpu=True, use_fp16=True), plan)


# ------------------------------------------------------------------ use_bf16 (OpenVINO's bfloat16)
def cpu_has_bf16():
    from ppcls.inference import BF16_CPU_FLAGS
    from ppcls.utils.threads import cpu_info

    return bool(set(BF16_CPU_FLAGS) & cpu_info()[1])


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 instructions")
def test_use_bf16_runs_openvino_in_bfloat16_and_says_so(model):
    """In a process of its own, as the use_fp16 run above (a bfloat16 predictor's state)."""
    g = settings(model, use_bf16=True)
    assert cpu_engine(g, g["inference_model_dir"]) == "openvino"
    config = _paddle_config(g, g["inference_model_dir"], "openvino")
    assert config.openvino_engine_enabled() and os.path.basename(config.prog_file()) == "inference.pdmodel"
    code, out, err = predict_in_a_process(model, "Global.use_bf16=True", "Global.benchmark=True")
    assert code == 0, err[-2000:]
    line = [line for line in out.splitlines() if line.startswith("benchmark")][0]
    assert line.startswith("benchmark (paddle, bf16, batch 16, 2 threads)") and line.endswith("engine openvino)")


@pytest.mark.parametrize("keys,named", [
    (["Global.use_bf16=True", "Global.use_fp16=True"], "choose one precision"),
    (["Global.use_bf16=True", "Global.use_int8=True"], "choose one precision"),
    (["Global.use_bf16=True", "Global.use_openvino=False"], "remove use_openvino: False"),
    (["Global.use_bf16=True", "Global.use_onnx=True"], "Global.use_bf16 is for the paddle backend"),
    (["Global.use_bf16=True", "Global.engine=onednn"], "use_bf16 runs on the openvino engine"),
    (["Global.use_bf16=True", "Global.ir_optim=False"], "use_bf16 runs on Paddle Inference's OpenVINO engine, "
                                                        "which cannot run here: it runs as an IR pass"),
], ids=["fp16", "int8", "no-openvino", "onnxruntime", "onednn", "no-ir-optim"])
def test_use_bf16_with_a_key_it_cannot_honour_is_one_line(model, capsys, keys, named):
    code, out, err = predict(model, capsys, *keys)
    assert code == 2 and named in one_line_error(err) and not out.strip()


def test_use_bf16_needs_bfloat16_instructions(model, tmp_path):
    from ppcls.inference import check_bf16_keys

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma avx512f\n")
    with pytest.raises(ConfigError, match=r"needs a CPU with bfloat16 instructions \(avx512_bf16 or "
                                          r"amx_bf16 in /proc/cpuinfo\); this one has none"):
        check_bf16_keys(settings(model, use_bf16=True), str(cpuinfo))
    cpuinfo.write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    check_bf16_keys(settings(model, use_bf16=True), str(cpuinfo))


def test_use_bf16_on_a_gpu_is_refused(model):
    with pytest.raises(ConfigError, match="on a GPU use -o Global.use_fp16=True"):
        gpu_plan(settings(model, use_gpu=True, use_bf16=True), str(model["dir"]))
