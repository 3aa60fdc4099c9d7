"""Converted reference weights compute the reference's logits (torchvision, timm)."""

import numpy as np
import paddle
import pytest

from parity import fixture_paths, load_fixture, reference_input, reference_weights
from ppcls.arch import build_model
from ppcls.weights import load_pretrained_weights
from ppcls.weights.converter import REFERENCE_ARCHS
from tools import convert_weights


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_converted_weights_reproduce_reference_logits(path, tmp_path):
    fixture = load_fixture(path)
    arch = REFERENCE_ARCHS[(fixture["source"], fixture["arch"])]
    src = tmp_path / "reference.npz"
    np.savez(src, **reference_weights(fixture))
    dst = tmp_path / "converted.pdparams"

    exit_code = convert_weights.main(["--source", fixture["source"], "--arch", arch,
                                      "--class_num", str(fixture["num_classes"]),
                                      str(src), str(dst)])
    assert exit_code == 0

    model = build_model({"Arch": {"name": arch, "class_num": fixture["num_classes"],
                                  "stem_relu": False}})
    load_pretrained_weights(model, dst, skip_mismatched_classifier=False)
    model.eval()
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    assert trainable == fixture["params"]
    with paddle.no_grad():
        logits = model(paddle.to_tensor(reference_input(fixture))).numpy()
    expected = np.asarray(fixture["logits"])
    relative_error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert relative_error <= 1e-4, f"{path.name}: max |diff| / max |logit| = {relative_error:.2e}"
