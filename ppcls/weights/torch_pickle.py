"""Read PyTorch `torch.save` files as numpy arrays, without PyTorch and without running code
from the file.

A `.pth` is a pickle, and unpickling calls whatever functions the file names. Here only the
few names a saved state_dict needs are honoured; any other name refuses the file. Tensors
come back as C-contiguous numpy arrays (bfloat16 as float32); everything else a pickle can
hold without naming a function (dict, list, tuple, str, int, float, bool, None) is kept.
What is shared with the Paddle reader (the opcode scan, the restricted unpickler, the bounded
rebuild of the containers) is in safe_pickle.py. Sizes are bounded by the file: a zip member
may not unpack to more than the whole zip, a tensor may not hold more elements than its
storage, nor all tensors more than all storages.

Two layouts are read:
  zip (torch >= 1.6): `<root>/data.pkl` is the pickle; a storage's bytes are the member
      `<root>/data/<key>`; `<root>/byteorder` ("little" or "big") where written.
  legacy (torch < 1.6): pickles back to back (magic number, protocol 1001, system info,
      the object, the list of storage keys), then each storage as an 8-byte element count
      and its bytes, in the order of that list.
"""

import collections
import io
import math
import pickletools
import zipfile

import numpy as np

from ppcls.utils.errors import WeightsError
from ppcls.weights.safe_pickle import Allowed, RestrictedUnpickler, one_line, rebuild, scan

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a legacy file
LEGACY_PROTOCOL = 1001

# numpy has no bfloat16: its raw 16 bits are read as this, then widened to float32.
_BFLOAT16 = "<u2"
# Typed storage class (pickled as the global `torch.<name>`) -> little-endian element type.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": _BFLOAT16, "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16",
}


def is_torch_zip(names):
    """Whether the member names of a zip are torch.save's: one `<root>/data.pkl`."""
    return len(_data_pkl(names)) == 1


def _data_pkl(names):
    # the root folder is the saved file's name without extension, or "archive" for a buffer
    return [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]


def is_legacy_file(head):
    """Whether `head` (the first bytes of a file) starts a legacy torch.save file: its first
    pickle holds only the magic number. Parsed, not unpickled: nothing is called."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name not in ("PROTO", "FRAME"):
                return opcode.name in ("LONG1", "LONG") and arg == LEGACY_MAGIC
    except ValueError:  # not a pickle, or cut off by `head`'s length
        pass
    return False


def read_torch_file(path):
    """The object torch.save wrote to `path`, every tensor as a numpy array: a state_dict
    gives a dict of name -> array. Raises UnsafeFileError (one line) for a file that names
    any function outside the allowed few, WeightsError for a damaged or foreign file."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"PK\x03\x04"):  # a zip's first local header
            return _read_zip(path, len(data))
        return _read_legacy(path, data)
    except WeightsError as err:
        if path in str(err):
            raise
        raise type(err)(f"{path}: {err}") from None  # name the file in every message
    except Exception as err:
        raise WeightsError(f"cannot read the PyTorch file {path}: it is truncated or damaged "
                           f"({type(err).__name__}: {one_line(err)[:200]})") from None


def _load(data, offset, path, persistent_ids=False):
    """The pickle at `offset` of `data`, scanned before it is unpickled. Returns the object,
    its unpickler, where the pickle ends and its number of operations."""
    end, operations = scan(data, offset, path, "torch.save", persistent_ids)
    stream = io.BytesIO(data)
    stream.seek(offset)
    unpickler = _Unpickler(stream, path)
    return unpickler.load(), unpickler, end, operations


def _read_zip(path, file_size):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = _data_pkl(names)
        if len(pickles) != 1:
            raise WeightsError(f"{path} is a zip but not a torch.save file: it needs exactly "
                               "one <folder>/data.pkl")
        root = pickles[0][: -len("data.pkl")]

        def member(name):
            # torch.save stores members uncompressed: none can be larger than the zip
            size = archive.getinfo(name).file_size
            if size > file_size:
                raise WeightsError(f"its member {name} unpacks to {size} bytes, more than "
                                   f"the whole file ({file_size}): not a torch.save file")
            return archive.read(name)

        byteorder = "little"
        if root + "byteorder" in names:  # older torch wrote none, and wrote little-endian
            byteorder = member(root + "byteorder").decode("ascii").strip()
        obj, _, _, operations = _load(member(pickles[0]), 0, path, persistent_ids=True)

        def storage(key, dtype):
            return _array(member(f"{root}data/{key}"), dtype, byteorder)

        return _materialize(obj, path, operations, storage)


def _read_legacy(path, data):
    if not is_legacy_file(data[:64]):
        raise WeightsError(f"{path} is neither a torch.save zip nor a legacy torch.save file")
    _, _, offset, _ = _load(data, 0, path)  # the magic number
    protocol, _, offset, _ = _load(data, offset, path)
    info, _, offset, _ = _load(data, offset, path)
    if protocol != LEGACY_PROTOCOL or not isinstance(info, dict):
        raise WeightsError(f"{path}: legacy torch.save protocol {protocol!r} is not "
                           f"{LEGACY_PROTOCOL}; re-save it with a recent torch")
    obj, unpickler, offset, operations = _load(data, offset, path, persistent_ids=True)
    keys, _, offset, _ = _load(data, offset, path)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise WeightsError(f"{path}: its list of storages is malformed")
    byteorder = "little" if info.get("little_endian", True) else "big"
    count_type = np.dtype("<i8" if byteorder == "little" else ">i8")
    storages = {}
    for key in keys:  # each storage: its element count, then its bytes
        dtype = unpickler.dtypes[key]
        count = int(np.frombuffer(data, count_type, 1, offset)[0])
        offset += count_type.itemsize
        end = offset + count * np.dtype(dtype).itemsize
        if count < 0 or end > len(data):
            raise WeightsError(f"{path} is truncated: storage {key} runs past the end")
        storages[key] = _array(memoryview(data)[offset:end], dtype, byteorder)
        offset = end
    return _materialize(obj, path, operations, lambda key, dtype: storages[key])


class _StorageType(str):
    """The global `torch.<name>Storage`: just its name. No __dict__ or slots, so a pickle's
    BUILD opcode cannot change it."""

    __slots__ = ()


class _StorageRef:
    """A storage the pickle refers to by key; read once the whole pickle is parsed (a legacy
    file stores the bytes after the pickle)."""

    def __init__(self, key, dtype):
        self.key, self.dtype = key, dtype


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, offset, size, stride, *ignored):
    """_rebuild_tensor(_v2): the rest (requires_grad, backward hooks, metadata) is autograd
    state, meaningless for an array."""
    geometry = (offset,) + tuple(size) + tuple(stride)
    if (not isinstance(storage, _StorageRef) or len(size) != len(stride)
            or not all(type(n) is int and n >= 0 for n in geometry)):
        raise WeightsError("a tensor record is malformed (storage, offset, size, stride)")
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *ignored):
    """An nn.Parameter is its tensor plus autograd flags."""
    if not isinstance(data, _TensorRef):
        raise WeightsError("a parameter record does not hold a tensor")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): Allowed(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor"): Allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): Allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Allowed(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Allowed(_rebuild_parameter),
}


def allowed_globals():
    """The globals a file may name, as 'module.name' (for documentation and tests)."""
    return sorted([f"{m}.{n}" for m, n in _ALLOWED] + [f"torch.{n}" for n in _STORAGE_DTYPES])


class _Unpickler(RestrictedUnpickler):
    """Resolves only the allowed globals; storages become _StorageRefs. `dtypes` records
    each storage key's element type (a legacy file's storage records need it)."""

    def __init__(self, file, path):
        super().__init__(file, path, _ALLOWED, "a state_dict needs",
                         "Save the state_dict as .safetensors or .npz (numpy arrays) and "
                         "convert that")
        self.dtypes = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel) in a zip; a legacy file adds view metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise WeightsError(f"{self.path}: unknown persistent id {one_line(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise WeightsError(f"{self.path} uses storage views of a very old torch; load "
                               "and re-save it with a recent torch")
        dtype = _STORAGE_DTYPES[str(pid[1])]
        if self.dtypes.setdefault(pid[2], dtype) != dtype:
            raise WeightsError(f"{self.path}: storage {pid[2]} is read as two element types")
        return _StorageRef(pid[2], dtype)


def _array(data, dtype, byteorder):
    """A storage's bytes as a 1-D array in native byte order (bfloat16 widened to float32)."""
    order = {"little": "<", "big": ">"}.get(byteorder)
    if order is None:
        raise WeightsError(f"unknown byte order {one_line(byteorder)[:20]!r}")
    raw = np.frombuffer(data, np.dtype(dtype).newbyteorder(order))
    array = raw.astype(raw.dtype.newbyteorder("="), copy=False)
    if dtype == _BFLOAT16:  # bfloat16 is the high half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _materialize(obj, path, operations, read_storage):
    """Replace each _TensorRef in the containers by its array (see safe_pickle.rebuild); dicts
    keep their order. Storages are read once each. A tensor may hold no more elements than
    its storage, and all tensors together no more than all storages: a state_dict's tensors
    do not overlap, while a stride-0 view of one element could claim terabytes."""
    storages, counts = {}, {"storage": 0, "tensor": 0}

    def convert(ref):
        if not isinstance(ref, _TensorRef):
            raise WeightsError("the pickle holds a bare storage or function, or an object of "
                               f"type {type(ref).__name__.strip('_')}, not a tensor")
        key = ref.storage.key
        if key not in storages:
            storages[key] = read_storage(key, ref.storage.dtype)
            counts["storage"] += storages[key].size
        storage = storages[key]
        numel = math.prod(ref.size)
        if numel > storage.size:
            raise WeightsError(
                f"a tensor of shape {list(ref.size)} ({numel} elements) views a storage of "
                f"{storage.size}: expanded views (stride 0 or overlapping) are not what a "
                "state_dict holds, so the file is refused")
        counts["tensor"] += numel
        if counts["tensor"] > counts["storage"]:
            raise WeightsError(
                f"its tensors would hold more elements than its storages ({counts['storage']}): "
                "the tensors of a state_dict do not overlap, so the file is refused")
        return _tensor(storage, ref)

    return rebuild(obj, path, operations, convert)


def _tensor(storage, ref):
    """The elements of `ref` (offset, size, stride into `storage`) as a new C-contiguous
    array, after checking the last element it reaches lies inside the storage."""
    if math.prod(ref.size) == 0:
        return np.zeros(ref.size, storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= storage.size:
        raise WeightsError("a tensor runs past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:], ref.size, [s * storage.itemsize for s in ref.stride],
        writeable=False)
    return np.array(view, order="C")
