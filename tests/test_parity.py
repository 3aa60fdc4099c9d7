"""Converted reference weights compute the reference's logits (torchvision, timm)."""

from collections import OrderedDict

import numpy as np
import paddle
import pytest

import torch_format
from parity import FIXTURE_DIR, fixture_paths, load_fixture, reference_input, reference_weights
from ppcls.arch import build_model
from ppcls.arch.backbone.model_zoo.mnasnet.converter import REFERENCE_ARCHS
from ppcls.weights import load_into
from tools import convert_weights


def assert_converts_to_reference_logits(fixture, src, tmp_path):
    """Convert `src` with tools/convert_weights.py and match the fixture's logits."""
    arch = REFERENCE_ARCHS[(fixture["source"], fixture["arch"])]
    dst = tmp_path / "converted.pdparams"
    exit_code = convert_weights.main(["--source", fixture["source"], "--arch", arch,
                                      "--class_num", str(fixture["num_classes"]),
                                      str(src), str(dst)])
    assert exit_code == 0

    model = build_model({"Arch": {"name": arch, "class_num": fixture["num_classes"],
                                  "stem_relu": False}})
    load_into(model, dst, for_eval=True)
    model.eval()
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    assert trainable == fixture["params"]
    with paddle.no_grad():
        logits = model(paddle.to_tensor(reference_input(fixture))).numpy()
    expected = np.asarray(fixture["logits"])
    relative_error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert relative_error <= 1e-4, f"{src.name}: max |diff| / max |logit| = {relative_error:.2e}"


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_converted_weights_reproduce_reference_logits(path, tmp_path):
    fixture = load_fixture(path)
    src = tmp_path / "reference.npz"
    np.savez(src, **reference_weights(fixture))
    assert_converts_to_reference_logits(fixture, src, tmp_path)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_torchvision_pth_converts_without_torch(tmp_path, legacy):
    """The mnasnet0_5 fixture as torchvision ships it: a torch.save .pth with the BN step
    counters, read by our own unpickler. Both formats: torchvision published mnasnet0_5 before
    torch 1.6 made zip the default, so its file is most likely the legacy one."""
    fixture = load_fixture(FIXTURE_DIR / "torchvision_mnasnet0_5.json")
    state = OrderedDict((k, torch_format.tensor(v)) for k, v in reference_weights(fixture).items())
    for name in [k for k in state if k.endswith(".running_var")]:
        counter = np.array(0, np.int64)
        state[name.replace("running_var", "num_batches_tracked")] = torch_format.tensor(counter)
    src = tmp_path / "mnasnet0.5_top1_67.823-3ffadce67e.pth"
    torch_format.save(state, src, legacy=legacy)
    assert_converts_to_reference_logits(fixture, src, tmp_path)
