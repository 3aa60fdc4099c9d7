"""ppcls/weights/paddle_pickle.py: what paddle.save writes, read without unpickling anything
but numeric arrays and plain containers. Genuine files come from paddle.save itself; hostile
ones are pickles built here. (The same refusals through every tool: test_no_code_from_files.)"""

import io
import os
import pickle
import pickletools
import re

import numpy as np
import paddle
import pytest

from ppcls.utils.errors import UnsafeFileError, WeightsError
from ppcls.weights import checkpoint, read_state_dict
from ppcls.weights.paddle_pickle import allowed_globals, read_paddle_file


def small_model():
    paddle.seed(1)
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4),
                                paddle.nn.Flatten(), paddle.nn.Linear(4 * 6 * 6, 5))


def assert_same_arrays(read, expected):
    assert list(read) == list(expected)
    for key, value in expected.items():
        value = value.numpy() if isinstance(value, paddle.Tensor) else value
        assert isinstance(read[key], np.ndarray) and read[key].dtype == value.dtype, key
        np.testing.assert_array_equal(read[key], value, err_msg=key)


# ------------------------------------------------------------ genuine files
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_model_state_dict_of_every_dtype_round_trips(tmp_path, protocol):
    model = small_model()
    state = dict(model.state_dict())
    state.update({"steps": paddle.to_tensor([7], dtype="int64"),
                  "mask": paddle.to_tensor([True, False]),
                  "half": paddle.to_tensor([0.5, -2.0], dtype="float16"),
                  "brain": paddle.to_tensor([1.5, 3.0], dtype="bfloat16"),
                  "scalar": paddle.to_tensor(3.25, dtype="float64")})
    path = tmp_path / "m.pdparams"
    paddle.save(state, str(path), protocol=protocol)
    read = read_state_dict(path)  # the name table paddle.save adds is dropped, as paddle.load does
    assert_same_arrays(read, state)
    fresh = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4),
                                 paddle.nn.Flatten(), paddle.nn.Linear(4 * 6 * 6, 5))
    fresh.set_state_dict({k: read[k] for k in model.state_dict()})
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value.numpy())


def training_setup(name, master_weights):
    """A model and an optimizer of `name` with a warmup+cosine schedule, after two steps."""
    model = small_model()
    schedule = paddle.optimizer.lr.LinearWarmup(
        paddle.optimizer.lr.CosineAnnealingDecay(0.1, 10), 2, 0.0, 0.1)
    extra = {"multi_precision": True} if name != "RMSProp" else {}
    optimizer = getattr(paddle.optimizer, name)(schedule, parameters=model.parameters(),
                                                **extra)
    if master_weights:  # as AMP O2 resumes them (CPU kernels have no float16 steps)
        for param in model.parameters():
            optimizer._create_master_weight(param)
    return model, optimizer, schedule


def train_steps(model, optimizer, schedule, steps, seed):
    paddle.seed(seed)
    for _ in range(steps):
        model(paddle.randn([2, 3, 8, 8])).mean().backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()


@pytest.mark.parametrize("name,master_weights", [("Momentum", True), ("AdamW", True),
                                                 ("RMSProp", False)])
def test_checkpoint_with_optimizer_state_resumes_exactly(tmp_path, name, master_weights):
    """save_checkpoint (paddle.save) -> resume_checkpoint (this reader) into fresh objects:
    the next steps give the very weights the uninterrupted run gives."""
    model, optimizer, schedule = training_setup(name, master_weights)
    train_steps(model, optimizer, schedule, 2, seed=0)
    prefix = str(tmp_path / "latest")
    # GradScaler disables itself on CPU (state_dict {}); this is its state_dict on a GPU
    scaler = {"scale": np.array([512.0], np.float32), "incr_ratio": 2.0, "decr_ratio": 0.5,
              "incr_every_n_steps": 1000, "decr_every_n_nan_or_inf": 2, "incr_count": 17,
              "decr_count": 0, "use_dynamic_loss_scaling": True}
    states = {"epoch": 1, "lr_scheduler": schedule.state_dict(), "scaler": scaler}
    checkpoint.save_checkpoint(prefix, model, optimizer, state=states)
    saved_optimizer = optimizer.state_dict()

    again, resumed, resumed_schedule = training_setup(name, master_weights=False)
    state = checkpoint.resume_checkpoint(checkpoint.find_checkpoint(prefix), again, resumed)
    resumed_schedule.set_state_dict(state["lr_scheduler"])
    assert resumed.state_dict()["LR_Scheduler"] == saved_optimizer["LR_Scheduler"]
    if master_weights:
        masters = resumed._master_weights
        assert sorted(masters) == sorted(p.name for p in again.parameters())
        assert all(isinstance(m, paddle.Tensor) for m in masters.values())
    fresh_scaler = paddle.amp.GradScaler(init_loss_scaling=1.0)
    fresh_scaler._enable = True  # as on a GPU
    fresh_scaler.load_state_dict(state["scaler"])
    assert fresh_scaler._scale.numpy().tolist() == [512.0] and fresh_scaler._incr_count == 17

    train_steps(model, optimizer, schedule, 2, seed=5)
    train_steps(again, resumed, resumed_schedule, 2, seed=5)
    for (key, value), resumed_value in zip(model.state_dict().items(),
                                           again.state_dict().values()):
        np.testing.assert_array_equal(resumed_value.numpy(), value.numpy(), err_msg=key)


@pytest.mark.parametrize("protocol", [2, 4])
def test_optimizer_state_with_master_weights_reads_as_paddle_load_gives_it(tmp_path, protocol):
    """Master weights make the optimizer state no state dict for paddle.save: its Tensors
    are pickled as (name, array) through builtins.tuple (__builtin__.tuple at protocol 2)."""
    model, optimizer, schedule = training_setup("Momentum", master_weights=True)
    train_steps(model, optimizer, schedule, 1, seed=0)
    path = tmp_path / "latest.pdopt"
    expected = optimizer.state_dict()
    paddle.save(expected, str(path), protocol=protocol)
    read = read_paddle_file(path)
    assert read.keys() == expected.keys() and read["LR_Scheduler"] == expected["LR_Scheduler"]
    assert_same_arrays(read.pop("master_weights"), expected.pop("master_weights"))
    del read["LR_Scheduler"], expected["LR_Scheduler"]
    assert_same_arrays(read, expected)  # the accumulators


def test_training_state_file_round_trips(tmp_path):
    """What the engine stores in `.pdstates`: numbers, nested dicts, tuples, None, a numpy
    scalar and the GradScaler's array."""
    state = {"metric": np.float64(0.75), "epoch": 3, "iter": 6, "evaluated": True,
             "best": {"metric": 0.75, "epoch": 2}, "seed": 7, "plan": None,
             "lr_scheduler": {"last_epoch": 18, "last_lr": 0.0125},
             "scaler": {"scale": np.array([1024.0], np.float32), "incr_count": 3},
             "arch": "MnasNet_B1_x0_5", "files": {".pdparams": (1234, "ab" * 32)}}
    path = tmp_path / "latest.pdstates"
    paddle.save(state, str(path))
    read = read_paddle_file(path)
    assert read.keys() == state.keys()
    scaler = read.pop("scaler")
    scale = scaler.pop("scale")
    assert scale.dtype == np.float32 and scale.tolist() == [1024.0]
    assert scaler == {"incr_count": 3}
    assert read == {k: v for k, v in state.items() if k != "scaler"}
    assert type(read["metric"]) is np.float64


def protocol_2_pickle(state):
    buffer = io.BytesIO()
    pickle.dump(state, buffer, protocol=2)
    return buffer.getvalue()


def test_numpy_1_module_names_read_as_numpy_2(tmp_path):
    """Files written under numpy 1 (all published PaddleClas .pdparams) name
    numpy.core.multiarray; numpy 2 writes numpy._core.multiarray."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.float32(2.5)}
    data = protocol_2_pickle(state).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"_core" not in data
    path = tmp_path / "numpy1.pdparams"
    path.write_bytes(data)
    read = read_paddle_file(path)
    np.testing.assert_array_equal(read["w"], state["w"])
    assert read["n"] == np.float32(2.5)


def test_python_2_pickles_of_latin1_strings_read(tmp_path):
    """Python 2 wrote an array's bytes as a str (SHORT_BINSTRING), which paddle.load decodes
    as latin-1, as here."""
    raw = np.array([1.5, -2.0], "<f4").tobytes()
    data = (b"\x80\x02}q\x00U\x01wq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\n"
            b"q\x03K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02\x85cnumpy\ndtype\nq\x05U\x02f4K\x00K\x01"
            b"\x87Rq\x06(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x08"
            + raw + b"tbs.")
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
    path = tmp_path / "py2.pdparams"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_paddle_file(path)["w"], [1.5, -2.0])


def test_a_big_parameter_split_by_paddle_save_is_joined(tmp_path):
    """Protocols 2 and 3 cannot hold 4 GB objects, so paddle.save splits big arrays into
    slices recorded under 'UnpackBigParamInfor@@'; paddle.load joins them."""
    whole = np.arange(10, dtype=np.float32).reshape(2, 5)
    state = {"big@@.0": whole.reshape(-1)[:6], "big@@.1": whole.reshape(-1)[6:],
             "small": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 5),
                                               "slices": ["big@@.0", "big@@.1"]}}}
    path = tmp_path / "big.pdparams"
    path.write_bytes(protocol_2_pickle(state))
    read = read_state_dict(path)
    assert sorted(read) == ["big", "small"]
    np.testing.assert_array_equal(read["big"], whole)


# ----------------------------------------------------------- hostile files
class Calls:
    """Pickles as a call of `function(*args)`, which an unrestricted unpickler makes."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def stack_global_call(module, name):
    """A protocol-4 pickle calling module.name() (names may hold anything)."""
    def text(s):
        data = s.encode()
        return b"\x8c" + bytes([len(data)]) + data
    return b"\x80\x04" + text(module) + text(name) + b"\x93)R."


def assert_refused_naming(err, path, global_name):
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(str(path)), message
    assert f"names the global {global_name!r}" in message, message
    assert "may run code" in message and "refused" in message, message


def test_a_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pdparams"
    state = {"w": np.zeros(2, np.float32), "x": Calls(os.system, f"touch {marker}")}
    path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(UnsafeFileError) as err:
        read_paddle_file(path)
    assert not marker.exists()
    assert_refused_naming(err, path, f"{os.system.__module__}.system")


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("__builtin__", "eval"), ("builtins", "getattr"),
    ("subprocess", "Popen"), ("numpy", "load"), ("numpy", "frombuffer"),
    ("copyreg", "_reconstructor"), ("numpy.core.multiarray", "array"),
    ("torch._utils", "_rebuild_tensor_v2"), ("os\nx", "system\ny")])
def test_any_other_global_is_refused(tmp_path, module, name):
    path = tmp_path / "w.pdopt"
    path.write_bytes(stack_global_call(module, name))
    with pytest.raises(UnsafeFileError) as err:
        read_paddle_file(path)
    assert_refused_naming(err, path, " ".join(f"{module}.{name}".split()))


def test_the_allowed_globals_are_exactly_these():
    assert allowed_globals() == sorted([
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.ndarray", "numpy.dtype", "_codecs.encode",
        "builtins.tuple", "__builtin__.tuple", "collections.OrderedDict"])


@pytest.mark.parametrize("array,kind", [
    (np.array([1, None], dtype=object), "'O"),
    (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "'V"),
    (np.array(["ab", "c"]), "'U"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "'M")], ids=["object", "structured",
                                                                     "str", "datetime"])
def test_arrays_of_other_than_numbers_are_refused(tmp_path, array, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pdparams"
    if array.dtype == object:
        array[1] = Calls(os.system, f"touch {marker}")
    path.write_bytes(pickle.dumps({"w": array}, protocol=2))
    with pytest.raises(WeightsError) as err:
        read_paddle_file(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert "array of dtype " + kind in message and "only numeric arrays" in message, message
    assert not marker.exists()


def test_a_pickle_cannot_change_an_allowed_function(tmp_path):
    path = tmp_path / "w.pdparams"
    # GLOBAL _codecs.encode; a (dict, slots) state; BUILD: would set its attributes
    path.write_bytes(b"\x80\x02c_codecs\nencode\n}}X\x0c\x00\x00\x00__defaults__)s\x86b.")
    with pytest.raises(WeightsError, match="change an allowed function"):
        read_paddle_file(path)


def shared_nested_lists(levels):
    """A list holding the previous list twice, `levels` deep: ~5 bytes a level, but 2**levels
    references when walked as a tree."""
    data = b"\x80\x02]q\x00"  # EMPTY_LIST, BINPUT 0
    for i in range(1, levels + 1):
        data += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
    return data + b"."


def test_shared_containers_cannot_amplify(tmp_path):
    path = tmp_path / "w.pdstates"
    path.write_bytes(shared_nested_lists(60))
    assert path.stat().st_size < 600
    with pytest.raises(WeightsError, match=r"shares its containers more than a saved state does"):
        read_paddle_file(path)


def test_nesting_is_bounded(tmp_path):
    path = tmp_path / "w.pdstates"
    path.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    with pytest.raises(WeightsError, match=r"nested deeper than \d+ levels"):
        read_paddle_file(path)


def test_a_huge_memo_index_is_refused_before_unpickling(tmp_path):
    """CPython's unpickler grows its memo table to the largest index a file names: 9 bytes
    would make it allocate 2 GB (16 bytes per slot)."""
    path = tmp_path / "w.pdstates"
    path.write_bytes(b"\x80\x02Nr" + (2 ** 27).to_bytes(4, "little") + b".")
    with pytest.raises(WeightsError, match=r"memo index 134217728"):
        read_paddle_file(path)


class ArrayOnSharedBytes:
    """Pickles as numpy pickles an array, but always on the same bytes object, which the
    pickler then writes once and refers to from its memo."""

    def __init__(self, raw):
        self.raw = raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.raw) // 4,),
                                                       np.dtype("<f4"), False, self.raw)


def test_one_array_data_reused_many_times_is_bounded_by_the_file(tmp_path):
    """Arrays are copied out of their bytes: 200 arrays on one memoized 100 kB buffer would
    take 20 MB from a 100 kB file."""
    raw = np.zeros(25_000, np.float32).tobytes()
    data = pickle.dumps([ArrayOnSharedBytes(raw) for _ in range(200)], protocol=4)
    assert len(data) < 2 * len(raw)  # pickle memoizes the shared bytes: written once
    path = tmp_path / "w.pdparams"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=r"its arrays would take more bytes than the "
                                           r"file's \d+: paddle.save writes each array's"):
        read_paddle_file(path)


def test_array_data_must_match_its_shape(tmp_path):
    good = protocol_2_pickle({"w": np.zeros(4, np.float32)})
    path = tmp_path / "w.pdparams"
    path.write_bytes(good.replace(b"K\x04\x85", b"K\x05\x85"))  # shape (4,) -> (5,)
    with pytest.raises(WeightsError, match=r"holds 16 bytes for 5 elements of float32"):
        read_paddle_file(path)


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95", b"not a pickle at all"])
def test_truncated_or_foreign_files_are_one_line(tmp_path, content):
    path = tmp_path / "w.pdparams"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        read_paddle_file(path)
    assert re.fullmatch(rf"cannot read {re.escape(str(path))}: it is truncated or not a file "
                        r"paddle\.save wrote \(.*\)", str(err.value)), str(err.value)


def test_a_state_file_larger_than_any_state_is_refused_unread(tmp_path):
    prefix = tmp_path / "latest"
    with open(f"{prefix}.pdstates", "wb") as f:
        f.truncate(checkpoint.MAX_STATES_BYTES + 1)  # sparse: no disk used
    with pytest.raises(WeightsError, match=r"latest\.pdstates is \d+ bytes: a training state "
                                           r"file is a few kB"):
        checkpoint.read_states(str(prefix))
