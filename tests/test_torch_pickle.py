"""ppcls/weights/torch_pickle.py: torch.save files read without torch, refusing any that
would run code; read_checkpoint recognising formats by content. Files are written by
tests/torch_format.py; the last tests compare with real torch.save output if torch is here."""

import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import torch_format as tf
from ppcls.utils.errors import WeightsError
from ppcls.weights import read_weights as read_checkpoint
from ppcls.weights.torch_pickle import allowed_globals, read_torch_file

A = np.arange(12, dtype=np.float32).reshape(3, 4)
BF16_EXACT = np.array([1.0, -2.5, 0.15625, 2.0 ** 127, -np.inf], np.float32)  # bfloat16-exact


def short_unicode(text):
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def read(obj, tmp_path, **save_args):
    path = tmp_path / "w.pth"
    tf.save(obj, path, **save_args)
    return read_torch_file(path)


@pytest.mark.parametrize("array", [A, A.astype(np.float16), A.astype(np.int64),
                                   A.astype(np.float64), np.array([True, False]),
                                   np.array(7, np.int64)], ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("layout", [{}, {"legacy": True}, {"byteorder": "big"}],
                         ids=["zip", "legacy", "big-endian"])
def test_tensor_dtypes_and_layouts(tmp_path, array, layout):
    loaded = read({"t": tf.tensor(array)}, tmp_path, **layout)["t"]
    assert loaded.dtype == array.dtype.newbyteorder("=") and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, array)


def test_bfloat16_is_widened_to_float32(tmp_path):
    loaded = read({"t": tf.Tensor(tf.bfloat16_storage(BF16_EXACT), 0, (5,), (1,))}, tmp_path)
    assert loaded["t"].dtype == np.float32
    np.testing.assert_array_equal(loaded["t"], BF16_EXACT)


def test_strides_and_offsets_into_shared_storages(tmp_path):
    shared = tf.Storage(np.arange(10, dtype=np.float32))
    state = {"transposed": tf.Tensor(tf.Storage(A), 0, (4, 3), (1, 4)),  # A.T, not contiguous
             "head": tf.Tensor(shared, 0, (4,), (1,)),
             "tail": tf.Tensor(shared, 4, (2, 3), (3, 1)),
             "column": tf.Tensor(tf.Storage(A), 1, (3,), (4,)),
             "broadcast": tf.Tensor(shared, 2, (2, 3), (0, 1)),
             "empty": tf.Tensor(shared, 0, (0, 5), (5, 1))}
    loaded = read(state, tmp_path)
    np.testing.assert_array_equal(loaded["transposed"], A.T)
    np.testing.assert_array_equal(loaded["head"], [0, 1, 2, 3])
    np.testing.assert_array_equal(loaded["tail"], [[4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(loaded["column"], A[:, 1])
    np.testing.assert_array_equal(loaded["broadcast"], [[2, 3, 4], [2, 3, 4]])
    assert loaded["empty"].shape == (0, 5)
    assert all(v.flags.c_contiguous and v.flags.writeable for v in loaded.values())


def test_state_dict_in_a_wrapper_with_plain_values(tmp_path):
    state = OrderedDict([("module.conv.weight", tf.Parameter(tf.tensor(A))),
                         ("module.bn.num_batches_tracked", tf.tensor(np.array(5, np.int64)))])
    wrapper = {"state_dict": state, "epoch": 1, "arch": "mnasnet", "best": 0.5,
               "flags": [True, None, (1, 2)]}
    path = tmp_path / "checkpoint.pth.tar"
    tf.save(wrapper, path, root="checkpoint.pth")
    raw = read_torch_file(path)
    assert (raw["epoch"], raw["arch"], raw["best"], raw["flags"]) == (1, "mnasnet", 0.5,
                                                                       [True, None, (1, 2)])
    assert list(raw["state_dict"]) == list(state)  # order kept
    loaded = read_checkpoint(path)  # unwrapped, 'module.' stripped, non-tensors dropped
    assert list(loaded) == ["conv.weight", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(loaded["conv.weight"], A)
    assert loaded["bn.num_batches_tracked"] == 5


def test_zip_without_byteorder_member_is_little_endian(tmp_path):
    np.testing.assert_array_equal(read({"t": tf.tensor(A)}, tmp_path, byteorder=None)["t"], A)


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    tf.save({"weight": tf.tensor(A), "x": tf.RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert not marker.exists()
    assert "\n" not in message and str(path) in message
    assert "system'" in message and "may run code" in message and ".safetensors" in message


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("os", "system"), ("numpy.core.multiarray", "_reconstruct"),
    ("torch.nn.modules.conv", "Conv2d"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch", "Tensor"), ("collections", "defaultdict"), ("torch\nx", "y\nz")])
def test_any_other_global_is_refused(tmp_path, module, name):
    path = tmp_path / "w.pth"
    # STACK_GLOBAL (names may hold newlines), EMPTY_TUPLE, REDUCE: calls module.name()
    tf.save_raw_pickle(b"\x80\x04" + short_unicode(module) + short_unicode(name)
                       + b"\x93)R.", path)
    with pytest.raises(WeightsError, match="is refused") as err:
        read_torch_file(path)
    assert "\n" not in str(err.value)


def test_allowed_globals_are_exactly_these():
    assert allowed_globals() == sorted(
        ["collections.OrderedDict", "torch._utils._rebuild_tensor",
         "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
         "torch._utils._rebuild_parameter_with_state"]
        + [f"torch.{name}" for name in list(tf.STORAGE_NAMES.values())
           + ["BFloat16Storage", "ComplexFloatStorage", "ComplexDoubleStorage"]])


def test_pickle_cannot_change_an_allowed_function(tmp_path):
    path = tmp_path / "w.pth"
    # GLOBAL; a (dict, slots) state; BUILD: would set attributes on the rebuild function
    tf.save_raw_pickle(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
                       b"}}" + short_unicode("__defaults__") + b")s\x86b.", path)
    with pytest.raises(WeightsError, match="change an allowed function"):
        read_torch_file(path)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    storage = tf.Storage(np.arange(4, dtype=np.float32))
    for bad in (tf.Tensor(storage, 2, (3,), (1,)), tf.Tensor(storage, 0, (2, 2), (1, 3))):
        with pytest.raises(WeightsError, match=r"w\.pth: a tensor runs past the end of its"):
            read({"t": bad}, tmp_path)


def test_truncated_files_are_one_line_errors(tmp_path):
    for layout in ({}, {"legacy": True}):
        path = tmp_path / "w.pth"
        tf.save({"t": tf.tensor(np.arange(1000, dtype=np.float32))}, path, **layout)
        path.write_bytes(path.read_bytes()[:-1500])
        with pytest.raises(WeightsError, match="truncated") as err:
            read_checkpoint(path)
        assert "\n" not in str(err.value)


def test_unknown_content_names_the_accepted_formats(tmp_path):
    for content in (b"", b"hello, not weights", b"PK\x05\x06" + bytes(18)):  # last: empty zip
        path = tmp_path / "w.pth"
        path.write_bytes(content)
        with pytest.raises(WeightsError, match="not a checkpoint format") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert all(f in str(err.value) for f in ("PyTorch", "safetensors", ".npz", ".pdparams"))


def test_a_pickle_that_is_no_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    tf.save([tf.tensor(A)], path)
    assert len(read_torch_file(path)) == 1
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        read_checkpoint(path)


def test_format_is_recognised_by_content_not_extension(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": A}, str(tmp_path / "safetensors.pth"))
    tf.save({"w": tf.tensor(A)}, tmp_path / "torch.bin")
    tf.save({"w": tf.tensor(A)}, tmp_path / "legacy.safetensors", legacy=True)
    with open(tmp_path / "numpy.weights", "wb") as f:
        np.savez(f, w=A)
    for name in ("safetensors.pth", "torch.bin", "legacy.safetensors", "numpy.weights"):
        loaded = read_checkpoint(tmp_path / name)
        assert list(loaded) == ["w"], name
        np.testing.assert_array_equal(loaded["w"], A)


def test_no_module_of_ppcls_imports_torch():
    root = Path(__file__).resolve().parent.parent / "ppcls"
    importing = [str(p) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+torch\b", p.read_text(), re.M)]
    assert importing == []


def test_no_torch_needed(tmp_path, monkeypatch):
    tf.save({"w": tf.tensor(A)}, tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    np.testing.assert_array_equal(read_checkpoint(tmp_path / "w.pth")["w"], A)


# --- real PyTorch, where it is installed (never a requirement) ---

def _torch_state(torch):
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    shared = torch.arange(10, dtype=torch.float32)
    return OrderedDict([
        ("f32", a), ("t", a.t()), ("head", shared[:4]), ("tail", shared[4:].view(2, 3)),
        ("f16", a.half()), ("bf16", torch.from_numpy(BF16_EXACT).bfloat16()),
        ("i64", torch.arange(3)), ("scalar", torch.tensor(5)), ("bool", a > 5),
        ("param", torch.nn.Parameter(torch.ones(2))),
        ("bn", torch.nn.BatchNorm2d(3).state_dict())])


def _expected(torch, value):
    if isinstance(value, dict):
        return {k: _expected(torch, v) for k, v in value.items()}
    value = value.detach()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_matches_real_torch_save(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    state = _torch_state(torch)
    path = tmp_path / "real.pth"
    torch.save({"state_dict": state, "epoch": 3}, path,
               _use_new_zipfile_serialization=not legacy)
    loaded = read_torch_file(path)
    assert loaded["epoch"] == 3
    expected = _expected(torch, state)
    assert loaded["state_dict"].keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            for name in value:
                np.testing.assert_array_equal(loaded["state_dict"][key][name], value[name])
        else:
            assert loaded["state_dict"][key].dtype == value.dtype, key
            np.testing.assert_array_equal(loaded["state_dict"][key], value)


def test_real_torch_reads_our_writer(tmp_path):
    torch = pytest.importorskip("torch")
    shared = tf.Storage(np.arange(10, dtype=np.float32))
    tf.save({"t": tf.Tensor(tf.Storage(A), 0, (4, 3), (1, 4)),
             "tail": tf.Tensor(shared, 4, (2, 3), (3, 1)),
             "p": tf.Parameter(tf.tensor(A))}, tmp_path / "w.pth")
    state = torch.load(tmp_path / "w.pth", weights_only=True)
    np.testing.assert_array_equal(state["t"].numpy(), A.T)
    np.testing.assert_array_equal(state["tail"].numpy(), [[4, 5, 6], [7, 8, 9]])
    assert isinstance(state["p"], torch.nn.Parameter)


def test_torch_zip_of_other_layout_is_refused(tmp_path):
    path = tmp_path / "two.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("b/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(WeightsError, match="not a checkpoint format"):
        read_checkpoint(path)


# --- bounds: a small file may not cost unbounded memory or time ---

def test_shared_nested_lists_are_refused(tmp_path):
    """A list holding the previous list twice, 60 deep: under 600 bytes, 2**60 nodes for
    anything that walks the result as a tree."""
    data = b"\x80\x02]q\x00"
    for i in range(1, 61):
        data += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
    assert len(data) < 600
    path = tmp_path / "w.pth"
    tf.save_raw_pickle(data + b".", path)
    with pytest.raises(WeightsError, match="shares its containers more than a saved state"):
        read_torch_file(path)


@pytest.mark.parametrize("layout", [{}, {"legacy": True}], ids=["zip", "legacy"])
def test_a_stride_0_view_larger_than_its_storage_is_refused(tmp_path, layout):
    """25000 x 25000 float32 elements, all the one element of the storage: 2.5 GB (and 5 GB
    of index) from a file of a few hundred bytes."""
    one = tf.Storage(np.ones(1, np.float32))
    with pytest.raises(WeightsError, match=r"w\.pth: a tensor of shape \[25000, 25000\] "
                                           r"\(625000000 elements\) views a storage of 1: "
                                           r"expanded views \(stride 0 or overlapping\)"):
        read({"t": tf.Tensor(one, 0, (25000, 25000), (0, 0))}, tmp_path, **layout)


def test_many_views_of_one_storage_cannot_exceed_it(tmp_path):
    """Each view fits the storage, but 1000 of them would copy it 1000 times."""
    storage = tf.Storage(np.zeros(10_000, np.float32))
    state = {f"t{i}": tf.Tensor(storage, 0, (10_000,), (1,)) for i in range(1000)}
    with pytest.raises(WeightsError, match=r"tensors would hold more elements than its "
                                           r"storages \(10000\)"):
        read(state, tmp_path)


def test_a_compressed_member_larger_than_the_file_is_refused(tmp_path):
    """torch.save stores members uncompressed; a deflated one may unpack to far more."""
    path = tmp_path / "w.pth"
    tf.save({"t": tf.tensor(np.zeros(4, np.float32))}, path)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path) as good, zipfile.ZipFile(bomb, "w") as bad:
        for info in good.infolist():
            data = good.read(info)
            if info.filename.endswith("/data/0"):
                data = bytes(50_000_000)
            bad.writestr(info.filename, data, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(WeightsError, match=r"member archive/data/0 unpacks to 50000000 bytes, "
                                           r"more than the whole file"):
        read_torch_file(bomb)


def test_a_huge_memo_index_is_refused_before_unpickling(tmp_path):
    path = tmp_path / "w.pth"
    tf.save_raw_pickle(b"\x80\x02Nr" + (2 ** 27).to_bytes(4, "little") + b".", path)
    with pytest.raises(WeightsError, match=r"memo index 134217728"):
        read_torch_file(path)
