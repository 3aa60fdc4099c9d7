"""Read what `paddle.save` wrote (`.pdparams`, `.pdopt`, `.pdema`, `.pdstates`, the weights
PaddleClas and other Paddle projects publish) as the values Paddle's own loader returns with
return_numpy=True, without running code from the file: the one reader of every Paddle pickle
here.

What paddle.save pickles (protocols 2 to 4; Paddle 2.x and 3.x, Python 3; Paddle 1.x's
fluid.save the same way):
  - a state dict (model or EMA weights; an optimizer state without master weights): a dict
    of name -> numpy array, plus 'StructuredToParameterName@@' (a table of Paddle's own
    tensor names, dropped as paddle.load drops it) and, under protocols 2 and 3 for arrays
    over 1 GB, slices listed under 'UnpackBigParamInfor@@' (joined as paddle.load joins them);
  - anything else (an optimizer state with master weights, our training state): its plain
    values and containers, each Tensor as the pair (name, array) through builtins.tuple,
    which paddle.load, as here, turns back into the array.
A numpy array pickles as _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype,
fortran, bytes); a dtype as dtype('f4', False, True) then BUILD (3, byte order, ...); a numpy
scalar as scalar(dtype, bytes). Protocol 2 writes bytes as _codecs.encode(text, 'latin1');
Python 2 wrote them as str, decoded as latin-1 as paddle.load does. numpy 1 named the module
numpy.core.multiarray, numpy 2 numpy._core.multiarray.

Those globals (`allowed_globals()`) resolve to stand-ins that only record their arguments;
arrays are made afterwards, only of numeric dtypes (an object array's elements are pickles
of anything), only from bytes that match their shape, and together no larger than the file.
"""

import io
import math

import numpy as np

from ppcls.utils.errors import WeightsError
from ppcls.weights.safe_pickle import (Allowed, RestrictedUnpickler, one_line, rebuild,
                                       scan)

NAME_TABLE = "StructuredToParameterName@@"  # paddle.save's Paddle tensor names
BIG_PARAM_SLICES = "UnpackBigParamInfor@@"  # (sic) paddle.save's split big arrays

# dtype names as numpy pickles them: numbers and booleans only.
_NUMERIC_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                   "c8", "c16"}
_MAX_DIMS = 32  # numpy 1's limit


class _Dtype:
    """numpy.dtype(name, align, copy), then BUILD with its byte order."""

    __slots__ = ("name", "byteorder", "built")

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or name not in _NUMERIC_DTYPES:
            raise WeightsError(f"an array of dtype {one_line(name)[:40]!r} is refused: only "
                               "numeric arrays are read (an object array's elements are "
                               "pickles of anything)")
        self.name, self.byteorder, self.built = name, "=", False

    def __setstate__(self, state):
        # (version, byte order, subarray, field names, fields, itemsize, alignment, flags
        # [, metadata]): a plain number type has no subarray, fields or metadata
        if (self.built or not isinstance(state, tuple) or len(state) not in (8, 9)
                or state[0] not in (3, 4) or state[1] not in ("<", ">", "|", "=")
                or any(part is not None for part in state[2:5] + state[8:])):
            raise WeightsError(f"a dtype {self.name!r} record is malformed")
        self.byteorder, self.built = state[1], True

    def numpy(self):
        order = "=" if self.byteorder == "|" else self.byteorder
        return np.dtype(self.name).newbyteorder(order)


class _Marker:
    """A global that is only ever an argument (numpy.ndarray, to _reconstruct)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __setstate__(self, state):
        raise WeightsError("the pickle tries to change an allowed global")


_NDARRAY = _Marker("numpy.ndarray")


def _raw_bytes(raw):
    """An array's bytes: bytes, or (Python 2's str) text decoded as latin-1."""
    if isinstance(raw, str):
        return raw.encode("latin-1")
    if not isinstance(raw, bytes):
        raise WeightsError("an array's data is not bytes (an object array's is a list)")
    return raw


class _Array:
    """numpy's _reconstruct(ndarray, (0,), b'b'), then BUILD with shape, dtype and bytes."""

    __slots__ = ("shape", "dtype", "fortran", "raw")

    def __init__(self, subtype, shape, typecode):
        if subtype is not _NDARRAY:
            raise WeightsError("an array record names another class than numpy.ndarray")
        self.raw = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if self.raw is not None or not isinstance(state, tuple) or len(state) != 4:
            raise WeightsError("an array record is malformed")
        shape, dtype, fortran, raw = state
        if (not isinstance(shape, tuple) or len(shape) > _MAX_DIMS
                or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(dtype, _Dtype) or type(fortran) not in (bool, int)):
            raise WeightsError("an array record is malformed (shape, dtype, order)")
        raw = _raw_bytes(raw)
        count = math.prod(shape)
        if count * np.dtype(dtype.name).itemsize != len(raw):
            raise WeightsError(f"an array holds {len(raw)} bytes for {count} elements of "
                               f"{np.dtype(dtype.name)}")
        self.shape, self.dtype, self.fortran, self.raw = shape, dtype, bool(fortran), raw

    def numpy(self):
        if self.raw is None:
            raise WeightsError("an array record has no data")
        flat = np.frombuffer(self.raw, self.dtype.numpy())
        array = flat.reshape(self.shape, order="F" if self.fortran else "C")
        return array.astype(array.dtype.newbyteorder("="), order="C", copy=True)


class _Scalar:
    """numpy's scalar(dtype, bytes): one number."""

    __slots__ = ("value",)

    def __init__(self, dtype, raw):
        if not isinstance(dtype, _Dtype):
            raise WeightsError("a numpy scalar record is malformed")
        raw = _raw_bytes(raw)
        if len(raw) != np.dtype(dtype.name).itemsize:
            raise WeightsError(f"a numpy scalar holds {len(raw)} bytes for one "
                               f"{np.dtype(dtype.name)}")
        self.value = np.frombuffer(raw, dtype.numpy())[0]

    def __setstate__(self, state):
        raise WeightsError("the pickle tries to change a numpy scalar")


def _latin1_bytes(text, encoding):
    """_codecs.encode as protocol 2 uses it for bytes: latin-1 text to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise WeightsError("_codecs.encode is called for another thing than latin-1 bytes")
    return text.encode("latin-1")


def _tuple(items):
    """builtins.tuple, as paddle.save's Tensor records call it: tuple(((name, array),))."""
    if type(items) not in (tuple, list):
        raise WeightsError("builtins.tuple is called on another thing than a tuple or list")
    return tuple(items)


def _ordered_dict(*args):
    import collections

    if len(args) > 1 or (args and type(args[0]) not in (list, tuple, dict)):
        raise WeightsError("collections.OrderedDict is called with another thing than pairs")
    return collections.OrderedDict(*args)


_ALLOWED = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): Allowed(_Dtype),
            ("_codecs", "encode"): Allowed(_latin1_bytes),
            ("builtins", "tuple"): Allowed(_tuple), ("__builtin__", "tuple"): Allowed(_tuple),
            ("collections", "OrderedDict"): Allowed(_ordered_dict)}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1, numpy 2
    _ALLOWED[(_module, "_reconstruct")] = Allowed(_Array)
    _ALLOWED[(_module, "scalar")] = Allowed(_Scalar)

_NEEDS = "paddle.save writes for weights, optimizer or training state"
_ADVICE = ("If you trust its source, load it there and re-save the weights as numpy arrays "
           "(a state_dict with paddle.save, .npz or .safetensors)")


def allowed_globals():
    """The globals a Paddle file may name, as 'module.name' (for documentation and tests)."""
    return sorted(f"{module}.{name}" for module, name in _ALLOWED)


def read_paddle_file(path):
    """The object paddle.save wrote to `path`, every tensor as a numpy array, dicts as plain
    dicts. Raises UnsafeFileError (one line naming the file and the global or operation) for
    a file outside the allow-list, WeightsError for a damaged or foreign one."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        return _read(path, data)
    except WeightsError as err:
        if str(err).startswith(path):
            raise
        raise type(err)(f"{path}: {err}") from None  # name the file in every message
    except Exception as err:  # a truncated or foreign pickle raises many types
        raise WeightsError(f"cannot read {path}: it is truncated or not a file paddle.save "
                           f"wrote ({type(err).__name__}: {one_line(err)[:200]})") from None


def _read(path, data):
    _, operations = scan(data, 0, path, "paddle.save")
    unpickler = RestrictedUnpickler(io.BytesIO(data), path, _ALLOWED, _NEEDS, _ADVICE,
                                    encoding="latin1")  # as paddle.load, for Python 2 files
    obj = unpickler.load()
    budget = {"bytes": len(data)}

    def convert(record):
        if isinstance(record, _Scalar):
            return record.value
        if not isinstance(record, _Array):
            raise WeightsError(f"holds an object of type {type(record).__name__.strip('_')}, "
                               f"which is not one {_NEEDS}")
        budget["bytes"] -= len(record.raw or b"")
        if budget["bytes"] < 0:  # arrays sharing one memoized buffer: each would copy it
            raise WeightsError(f"its arrays would take more bytes than the file's "
                               f"{len(data)}: paddle.save writes each array's data once")
        return record.numpy()

    result = rebuild(obj, path, operations, convert, on_tuple=_tensor_of_pair)
    if isinstance(result, dict):
        result.pop(NAME_TABLE, None)
        _join_big_params(result)
    return result


def _tensor_of_pair(pair):
    """paddle.save writes a Tensor outside a state dict as (name, array); paddle.load's
    return_numpy gives the array."""
    if len(pair) == 2 and type(pair[0]) is str and isinstance(pair[1], np.ndarray):
        return pair[1]
    return pair


def _join_big_params(state):
    info = state.pop(BIG_PARAM_SLICES, None)
    if info is None:
        return
    try:
        for name, record in info.items():
            slices = [state.pop(part) for part in record["slices"]]  # each used once
            state[name] = np.concatenate(slices).reshape(record["OriginShape"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise WeightsError(f"its {BIG_PARAM_SLICES} record does not match its arrays "
                           f"({type(err).__name__}: {one_line(err)[:80]})") from None
