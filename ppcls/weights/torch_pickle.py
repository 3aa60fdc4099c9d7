"""Read PyTorch `torch.save` files as numpy arrays, without PyTorch and without running code
from the file.

A `.pth` is a pickle, and unpickling calls whatever functions the file names. Here only the
few names a saved state_dict needs are honoured; any other name refuses the file. Tensors
come back as C-contiguous numpy arrays (bfloat16 as float32); everything else a pickle can
hold without naming a function (dict, list, tuple, str, int, float, bool, None) is kept.

Two layouts are read:
  zip (torch >= 1.6): `<root>/data.pkl` is the pickle; a storage's bytes are the member
      `<root>/data/<key>`; `<root>/byteorder` ("little" or "big") where written.
  legacy (torch < 1.6): pickles back to back (magic number, protocol 1001, system info,
      the object, the list of storage keys), then each storage as an 8-byte element count
      and its bytes, in the order of that list.
"""

import collections
import io
import pickle
import pickletools
import zipfile

import numpy as np

from ppcls.utils.errors import WeightsError

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
    gives a dict of name -> array. Raises WeightsError (one line) for a file that names any
    function outside the allowed few, and for a damaged or foreign file."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"PK\x03\x04"):  # a zip's first local header
            return _read_zip(path)
        return _read_legacy(path, data)
    except WeightsError as err:
        if path in str(err):
            raise
        raise WeightsError(f"{path}: {err}") from None  # name the file in every message
    except Exception as err:
        raise WeightsError(f"cannot read the PyTorch file {path}: it is truncated or damaged "
                           f"({type(err).__name__}: {_one_line(err)})") from None


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = _data_pkl(names)
        if len(pickles) != 1:
            raise WeightsError(f"{path} is a zip but not a torch.save file: it needs exactly "
                               "one <folder>/data.pkl")
        root = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:  # older torch wrote none, and wrote little-endian
            byteorder = archive.read(root + "byteorder").decode("ascii").strip()
        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()

        def storage(key, dtype):
            return _array(archive.read(f"{root}data/{key}"), dtype, byteorder)

        return _materialize(obj, _cached(storage))


def _read_legacy(path, data):
    if not is_legacy_file(data[:64]):
        raise WeightsError(f"{path} is neither a torch.save zip nor a legacy torch.save file")
    stream = io.BytesIO(data)

    def load():
        return _Unpickler(stream, path).load()

    load()  # the magic number
    protocol, info = load(), load()
    if protocol != LEGACY_PROTOCOL or not isinstance(info, dict):
        raise WeightsError(f"{path}: legacy torch.save protocol {protocol!r} is not "
                           f"{LEGACY_PROTOCOL}; re-save it with a recent torch")
    unpickler = _Unpickler(stream, path)
    obj = unpickler.load()
    keys = load()
    byteorder = "little" if info.get("little_endian", True) else "big"
    count_type = np.dtype("<i8" if byteorder == "little" else ">i8")
    storages, offset = {}, stream.tell()
    for key in keys:  # each storage: its element count, then its bytes
        dtype = unpickler.dtypes[key]
        count = int(np.frombuffer(data, count_type, 1, offset)[0])
        offset += count_type.itemsize
        end = offset + count * np.dtype(dtype).itemsize
        if count < 0 or end > len(data):
            raise WeightsError(f"{path} is truncated: storage {key} runs past the end")
        storages[key] = _array(memoryview(data)[offset:end], dtype, byteorder)
        offset = end
    return _materialize(obj, lambda key, dtype: storages[key])


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


class _Allowed:
    """An allowed global, called for the REDUCE opcode. A wrapper rather than the function
    itself: pickle's BUILD opcode on a function could set its attributes, on this it fails."""

    __slots__ = ("_call",)

    def __init__(self, call):
        object.__setattr__(self, "_call", call)

    def __call__(self, *args):
        return self._call(*args)

    def __setstate__(self, state):
        raise WeightsError("the pickle tries to change an allowed function")


_ALLOWED = {
    ("collections", "OrderedDict"): _Allowed(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor"): _Allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(_rebuild_parameter),
}


def allowed_globals():
    """The globals a file may name, as 'module.name' (for documentation and tests)."""
    return sorted([f"{m}.{n}" for m, n in _ALLOWED] + [f"torch.{n}" for n in _STORAGE_DTYPES])


class _Unpickler(pickle.Unpickler):
    """Resolves only the allowed globals; storages become _StorageRefs. `dtypes` records
    each storage key's element type (a legacy file's storage records need it)."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.dtypes = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        refused = _one_line(f"{module}.{name}")[:200]
        raise WeightsError(
            f"{self.path} names the global {refused!r}, which is not one a state_dict needs: "
            "such a file may run code when loaded, so it is refused. Save the state_dict as "
            ".safetensors or .npz (numpy arrays) and convert that")

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel) in a zip; a legacy file adds view metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise WeightsError(f"{self.path}: unknown persistent id {_one_line(pid)[:80]}")
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
        raise WeightsError(f"unknown byte order {_one_line(byteorder)[:20]!r}")
    raw = np.frombuffer(data, np.dtype(dtype).newbyteorder(order))
    array = raw.astype(raw.dtype.newbyteorder("="), copy=False)
    if dtype == _BFLOAT16:  # bfloat16 is the high half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _cached(read):
    """Storages shared by several tensors are read once."""
    cache = {}

    def storage(key, dtype):
        if key not in cache:
            cache[key] = read(key, dtype)
        return cache[key]

    return storage


def _materialize(obj, storage):
    """Replace each _TensorRef in the containers by its array; dicts keep their order."""
    if isinstance(obj, _TensorRef):
        return _tensor(storage(obj.storage.key, obj.storage.dtype), obj)
    if isinstance(obj, dict):
        return {k: _materialize(v, storage) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storage) for v in obj)
    if isinstance(obj, (_StorageRef, _StorageType, _Allowed)):
        raise WeightsError("the pickle holds a bare storage or function, not a tensor")
    return obj


def _tensor(storage, ref):
    """The elements of `ref` (offset, size, stride into `storage`) as a new C-contiguous
    array. Indexing checks every element lies inside the storage, whatever the pickle says."""
    numel = int(np.prod(ref.size, dtype=np.int64))
    if numel == 0:
        return np.zeros(ref.size, storage.dtype)
    contiguous = tuple(int(np.prod(ref.size[i + 1:])) for i in range(len(ref.size)))
    if ref.stride == contiguous:  # the common case: a slice, no index arrays
        flat = storage[ref.offset:ref.offset + numel]
        if flat.size != numel:
            raise WeightsError("a tensor runs past the end of its storage")
        return flat.reshape(ref.size).copy()
    index = np.array(ref.offset, np.int64)
    for n, s in zip(ref.size, ref.stride):  # every element's position in the storage
        index = index[..., None] + np.arange(n, dtype=np.int64) * s
    if index.max() >= storage.size:
        raise WeightsError("a tensor runs past the end of its storage")
    return storage[index]


def _one_line(value):
    return " ".join(str(value).split())
