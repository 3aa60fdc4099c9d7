"""tools/convert_weights.py: file formats, the reproduction layout, and refusals."""

import numpy as np
import paddle
import pytest

from parity import FIXTURE_DIR, load_fixture, reference_weights
from ppcls.arch import build_model
from ppcls.utils.errors import WeightsError
from ppcls.arch.backbone.model_zoo.mnasnet.converter import convert_state_dict
from ppcls.weights import load_into, read_state_dict
from ppcls.weights import read_weights as read_checkpoint
from tools import convert_weights

TV_0_5 = load_fixture(FIXTURE_DIR / "torchvision_mnasnet0_5.json")


def run_tool(capsys, *argv):
    code = convert_weights.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_wrong_width_names_first_mismatching_tensors(tmp_path, capsys):
    src = tmp_path / "mnasnet0_5.npz"
    np.savez(src, **reference_weights(TV_0_5))
    code, _, err = run_tool(capsys, "--source", "torchvision", "--arch", "MnasNet_B1_x1_0",
                            src, tmp_path / "out.pdparams")
    assert code == 2  # a weights error, as every tool exits (ppcls.utils.cli)
    assert "shape mismatches" in err
    assert "layers.0.weight [16, 3, 3, 3] -> stem.conv.weight [32, 3, 3, 3]" in err
    assert not (tmp_path / "out.pdparams").exists()


def test_missing_and_unused_source_tensors_are_named():
    weights = reference_weights(TV_0_5)
    del weights["layers.15.running_var"]
    weights["layers.99.weight"] = np.zeros(3, np.float32)
    weights["layers.1.num_batches_tracked"] = np.zeros((), np.int64)  # ignored, as documented
    with pytest.raises(WeightsError) as err:
        convert_state_dict(weights, "torchvision", "MnasNet_B1_x0_5")
    message = str(err.value)
    assert "layers.15.running_var (for head.bn._variance)" in message
    assert "source tensors unused, first: layers.99.weight" in message
    assert "num_batches_tracked" not in message


def test_class_num_must_match_the_checkpoint():
    with pytest.raises(WeightsError, match=r"classifier.1.weight \[1000, 1280\] -> fc.weight"):
        convert_state_dict(reference_weights(TV_0_5), "torchvision", "MnasNet_B1_x0_5",
                           class_num=10)


def test_torchvision_has_no_se_variant():
    with pytest.raises(WeightsError, match="squeeze-and-excitation"):
        convert_state_dict(reference_weights(TV_0_5), "torchvision", "MnasNet_A1_x1_0")


def test_safetensors_reads_without_torch(tmp_path):
    from safetensors.numpy import save_file

    weights = reference_weights(TV_0_5)
    save_file(weights, str(tmp_path / "w.safetensors"))
    loaded = read_checkpoint(tmp_path / "w.safetensors")
    assert loaded.keys() == weights.keys()
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **reference_weights(TV_0_5))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        read_checkpoint(src)


def reproduction_checkpoint(weights, extra_relu, bare_classifier):
    """Lay torchvision weights out as the Paddle reproduction stores them: Paddle BN names,
    [in, out] Linear, and with the extra stem ReLU at layers.8 the later indices shifted."""
    out = {}
    for name, value in weights.items():
        parts = name.split(".")
        if extra_relu and parts[0] == "layers" and int(parts[1]) >= 8:
            parts[1] = str(int(parts[1]) + 1)
        if name.startswith("classifier.1."):
            parts = (["classifier"] if bare_classifier else ["classifier", "1"]) + parts[2:]
            value = value.T if parts[-1] == "weight" else value
        parts[-1] = {"running_mean": "_mean", "running_var": "_variance"}.get(parts[-1], parts[-1])
        out[".".join(parts)] = value
    return out


@pytest.mark.parametrize("extra_relu,bare_classifier", [(True, True), (False, False)])
def test_reproduction_checkpoint_converts(tmp_path, capsys, extra_relu, bare_classifier):
    weights = reference_weights(TV_0_5)
    expected, _ = convert_state_dict(weights, "torchvision", "MnasNet_B1_x0_5")
    repro = reproduction_checkpoint(weights, extra_relu, bare_classifier)
    src = tmp_path / "repro.pdparams"
    paddle.save({k: paddle.to_tensor(v) for k, v in repro.items()}, str(src))
    dst = tmp_path / "converted.pdparams"
    code, out, _ = run_tool(capsys, "--source", "reproduction", "--arch", "MnasNet_B1_x0_5",
                            src, dst)
    assert code == 0
    assert f"these weights need stem_relu={extra_relu}, recorded in" in out
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "stem_relu": None}})
    model.set_stem_relu(not extra_relu)  # loading must switch it to the recorded topology
    load_into(model, dst)
    assert model.stem_relu == extra_relu
    converted = read_state_dict(dst)
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(converted[key], value)


def test_pretrained_argument_loads_and_skips_other_class_num(tmp_path, capsys):
    state, _ = convert_state_dict(reference_weights(TV_0_5), "torchvision", "MnasNet_B1_x0_5")
    path = tmp_path / "tv.pdparams"
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "pretrained": str(path)[:-9]}})
    np.testing.assert_array_equal(model.stem.conv.weight.numpy(), state["stem.conv.weight"])
    np.testing.assert_array_equal(model.fc.weight.numpy(), state["fc.weight"])

    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "class_num": 10,
                                  "pretrained": str(path)}})
    np.testing.assert_array_equal(model.stem.conv.weight.numpy(), state["stem.conv.weight"])
    assert model.fc.weight.shape == [1280, 10]
    assert "not loading fc.weight/fc.bias" in capsys.readouterr().out


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = build_model({"Arch": {"name": "MnasNet_small"}})
    path = tmp_path / "small.pdparams"
    paddle.save(other.state_dict(), str(path))
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5"}})
    with pytest.raises(WeightsError, match=r"stem.conv.weight: file \[8, 3, 3, 3\] vs model "
                                           r"\[16, 3, 3, 3\]"):
        load_into(model, path)


def test_missing_weights_file_names_the_path(tmp_path):
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5"}})
    with pytest.raises(WeightsError, match=r"not found: .*nothing_here\.pdparams"):
        load_into(model, tmp_path / "nothing_here")


def test_truncated_pdparams_is_a_clear_error(tmp_path):
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5"}})
    path = tmp_path / "w.pdparams"
    paddle.save(model.state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated"):
        load_into(model, path)


def _npy_header(shape, dtype="<f4"):
    """The bytes of an .npy file's magic and header (version 1.0) for `shape`."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()  # the magic string comes first in it


def test_npz_whose_header_claims_more_than_its_data_is_refused(tmp_path):
    """numpy allocates the header's shape before reading data: 10^10 floats (40 GB) from a
    few hundred bytes must be refused from the header alone."""
    import zipfile

    src = tmp_path / "claims.npz"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("fc.weight.npy", _npy_header((10**10,)) + b"\0" * 64)
    with pytest.raises(WeightsError, match="claims 40000000000 bytes"):
        read_checkpoint(src)


def test_npz_zip_bomb_is_refused(tmp_path):
    """A compressed member of 128 MiB of zeros is a file of about 130 kB: refused from the
    zip's directory, before anything is unpacked."""
    import zipfile

    src = tmp_path / "bomb.npz"
    count = (128 << 20) // 4
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("fc.weight.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((count,)))
            zeros = bytes(1 << 20)
            for _ in range(128):
                member.write(zeros)
    assert src.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match="zip bomb"):
        read_checkpoint(src)


def test_compressed_npz_weights_still_read(tmp_path):
    src = tmp_path / "w.npz"
    weights = reference_weights(TV_0_5)
    np.savez_compressed(src, **weights)
    read = read_checkpoint(src)
    assert all(np.array_equal(read[k], v) for k, v in weights.items())
