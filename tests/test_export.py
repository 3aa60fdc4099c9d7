"""ppcls/export: a squeeze-and-excitation network (MnasNet-A1, small) recorded as the legacy
program Paddle Inference's OpenVINO engine reads, without patching Paddle at run time."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

from conftest import ROOT
from ppcls.arch import build_model
from ppcls.export.inference_model import export_inference_model
from ppcls.utils.config import validate


def se_model():
    paddle.seed(3)
    model = build_model({"Arch": {"name": "MnasNet_A1_x0_5", "class_num": 10}})
    model.eval()
    return model


def test_a_squeeze_excitation_network_records_as_a_legacy_program_by_itself(tmp_path):
    """Plain paddle.jit.save under OldIrGuard, nothing of ours around it: the SE gate's
    sigmoid must record as the legacy operator (F.sigmoid alone emits a PIR one there)."""
    sigmoid, model = F.sigmoid, se_model()
    spec = paddle.static.InputSpec([None, 3, 32, 32], "float32", name="x")
    with paddle.pir_utils.OldIrGuard():
        paddle.jit.save(model, str(tmp_path / "inference"), input_spec=[spec])
    assert F.sigmoid is sigmoid
    program = (tmp_path / "inference.pdmodel").read_bytes()
    assert program.count(b"sigmoid") >= 8  # a gate in each of A1's 8 SE blocks


def test_the_exported_se_network_runs_on_openvino_as_in_dygraph(tmp_path):
    """The predictor runs in a process of its own, as users run it (a Paddle Inference
    predictor in this one would change what later tests' training computes)."""
    config = validate({"Global": {"image_shape": [3, 32, 32], "device": "cpu"},
                       "Arch": {"name": "MnasNet_A1_x0_5", "class_num": 10}})
    paddle.seed(3)
    export_inference_model(config, str(tmp_path / "inference"))
    assert (tmp_path / "inference" / "inference.pdmodel").is_file()

    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    model_dir, batch = str(tmp_path / "inference"), str(tmp_path / "images.npy")
    code = ("import json, sys; import numpy as np; sys.path.insert(0, 'deploy/python'); "
            "import predict_cls; "
            f"g = {{**predict_cls.DEPLOY_DEFAULTS, 'inference_model_dir': {model_dir!r}}}; "
            f"out = predict_cls.RUNNERS['paddle'](g)(np.load({batch!r})); "
            "print(json.dumps(out.tolist()))")
    env = {**os.environ, "PPCLS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    *log, result = done.stdout.strip().splitlines()
    assert not [line for line in log if "OpenVINO" in line], log  # not skipped, converted
    assert list((tmp_path / "cache" / "openvino").iterdir())  # OpenVINO compiled it
    with paddle.no_grad():
        dygraph = F.softmax(se_model()(paddle.to_tensor(images)), axis=-1).numpy()
    np.testing.assert_allclose(np.array(json.loads(result)), dygraph, rtol=1e-4, atol=1e-6)
