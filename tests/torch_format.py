"""Write files in PyTorch's `torch.save` layouts without PyTorch, for tests.

The pickle names torch's functions and storage classes (`torch._utils._rebuild_tensor_v2`,
`torch.FloatStorage`, ...) as torch.save does. Python's pickler writes a global only after
importing its module and finding that very object there, so stand-in modules `torch` and
`torch._utils` sit in sys.modules while a pickle is written; the real ones, if imported,
are put back right after. Nothing here is ever called by the reader under test.
"""

import contextlib
import io
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np

STORAGE_NAMES = {np.dtype(t): name for t, name in [
    (np.float32, "FloatStorage"), (np.float64, "DoubleStorage"), (np.float16, "HalfStorage"),
    (np.int64, "LongStorage"), (np.int32, "IntStorage"), (np.int16, "ShortStorage"),
    (np.int8, "CharStorage"), (np.uint8, "ByteStorage"), (np.bool_, "BoolStorage")]}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _stand_ins():
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch._utils = utils
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        def stand_in(*args):
            raise AssertionError("stand-ins only give pickle a name to write")
        stand_in.__module__, stand_in.__name__, stand_in.__qualname__ = "torch._utils", name, name
        setattr(utils, name, stand_in)
    for name in list(STORAGE_NAMES.values()) + ["BFloat16Storage"]:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    return {"torch": torch, "torch._utils": utils}


_STAND_INS = _stand_ins()


@contextlib.contextmanager
def _torch_names():
    saved = {name: sys.modules[name] for name in _STAND_INS if name in sys.modules}
    sys.modules.update(_STAND_INS)
    try:
        yield
    finally:
        for name in _STAND_INS:
            del sys.modules[name]
        sys.modules.update(saved)


class Storage:
    """A typed storage: its elements (1-D) and the torch class it pickles as."""

    def __init__(self, elements, name=None):
        self.elements = np.ascontiguousarray(elements).reshape(-1)
        self.name = name or STORAGE_NAMES[self.elements.dtype]


def bfloat16_storage(values):
    """bfloat16 is the high 16 bits of a float32 (truncated here: pick exact values)."""
    bits = np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint32) >> 16
    return Storage(bits.astype(np.uint16), "BFloat16Storage")


class Tensor:
    """`size` elements of `storage`, `stride` apart from `offset` on, pickled as torch
    pickles a tensor: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    backward_hooks)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def __reduce__(self):
        rebuild = _STAND_INS["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


class Parameter:
    """An nn.Parameter: _rebuild_parameter(tensor, requires_grad, backward_hooks)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return _STAND_INS["torch._utils"]._rebuild_parameter, (self.tensor, True, OrderedDict())


def contiguous_strides(shape):
    return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))


def tensor(array, storage=None):
    """A C-contiguous tensor holding `array` (in its own storage unless one is given)."""
    array = np.asarray(array)
    storage = storage or Storage(array)
    return Tensor(storage, 0, array.shape, contiguous_strides(array.shape))


class _Pickler(pickle.Pickler):
    """torch.save's pickling: each storage becomes a persistent id, its bytes go elsewhere."""

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)  # torch.save's default protocol
        self.legacy = legacy
        self.storages = {}  # key -> Storage, in first-use order

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        key = next((k for k, s in self.storages.items() if s is obj), str(len(self.storages)))
        self.storages[key] = obj
        storage_type = getattr(_STAND_INS["torch"], obj.name)
        pid = ("storage", storage_type, key, "cpu", obj.elements.size)
        return pid + (None,) if self.legacy else pid  # legacy: no storage view


def _raw(storage, byteorder):
    order = "<" if byteorder == "little" else ">"
    return storage.elements.astype(storage.elements.dtype.newbyteorder(order)).tobytes()


def save(obj, path, root="archive", byteorder="little", legacy=False):
    """Write `obj` as torch.save does: the zip layout of torch >= 1.6 under `root/`
    (`byteorder=None` leaves out the byteorder member, as torch < 1.10 did), or with
    `legacy` the format of torch < 1.6."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, legacy)
    with _torch_names():
        pickler.dump(obj)
    if legacy:
        _write_legacy(path, buffer.getvalue(), pickler.storages, byteorder)
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", buffer.getvalue())
        if byteorder:
            archive.writestr(f"{root}/byteorder", byteorder)
        for key, storage in pickler.storages.items():
            archive.writestr(f"{root}/data/{key}", _raw(storage, byteorder or "little"))
        archive.writestr(f"{root}/version", "3\n")


def _write_legacy(path, main_pickle, storages, byteorder):
    info = {"protocol_version": 1001, "little_endian": byteorder == "little",
            "type_sizes": {"short": 2, "int": 4, "long": 8}}
    count = np.dtype("<i8" if byteorder == "little" else ">i8")
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, info):
            f.write(pickle.dumps(header, protocol=2))
        f.write(main_pickle)
        f.write(pickle.dumps(list(storages), protocol=2))
        for storage in storages.values():  # each: element count, then the elements
            f.write(np.array(storage.elements.size, count).tobytes())
            f.write(_raw(storage, byteorder))


def save_raw_pickle(data_pkl, path, root="archive"):
    """A torch.save zip around a hand-made pickle (for pickles torch.save never writes)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl)
        archive.writestr(f"{root}/version", "3\n")


class RunsCommand:
    """A pickle that runs a shell command when loaded by an unrestricted unpickler."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)
