"""Reading pickles without running code from them: what the Paddle and PyTorch readers
(paddle_pickle.py, torch_pickle.py) share.

A pickle is a small program: GLOBAL names any function of any module and REDUCE calls it, so
`pickle.load` runs whatever the file says. Here a file is read in three steps, each bounded
by the file itself:

  1. `scan`: the opcodes are parsed (pickletools; nothing is built). Operations no saved
     state uses are refused (extension codes, INST/OBJ/NEWOBJ, protocol-5 buffers, and
     persistent ids unless the format has them), and so are memo indices beyond the
     operations before them: CPython's unpickler sizes its memo table by the largest index
     a file names, so 9 bytes could make it allocate gigabytes.
  2. `RestrictedUnpickler`: `find_class` answers only from the format's table. Each entry
     is a stand-in of ours that builds an inert record (numpy's or torch's own functions
     never run on the file's arguments); any other global refuses the file, naming it.
  3. `rebuild`: the unpickled containers are copied into plain dicts, lists and tuples, each
     record made into its array by the format's `convert`. An object the pickle shares is
     converted once; the tree it all spans may count no more nodes than the pickle has
     operations (a list holding the previous list twice, 60 deep, is 600 bytes but 2**60
     nodes to anything that walks it) and may nest at most MAX_DEPTH levels.
"""

import io
import pickle
import pickletools

from ppcls.utils.errors import UnsafeFileError, WeightsError

MAX_DEPTH = 100  # a saved state nests 4 levels at most (optimizer -> master_weights -> pair)
MAX_OPERATIONS = 20_000_000  # a state dict takes ~20 per tensor

# Operations that reach outside the allow-list or that nothing we read writes.
_REFUSED_OPERATIONS = {"EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
                       "NEXT_BUFFER", "READONLY_BUFFER", "BYTEARRAY8", "PERSID", "BINPERSID"}
_PERSISTENT_IDS = {"PERSID", "BINPERSID"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}

_PLAIN = {str, bytes, int, float, complex, bool, type(None)}
_KEYS = {str, int, float, bool, type(None)}


def one_line(value):
    return " ".join(str(value).split())


def scan(data, offset, path, format_name, persistent_ids=False):
    """Parse the pickle starting at `offset` of `data` without building anything. Returns
    (offset after its STOP, number of operations). Raises UnsafeFileError or a ValueError
    (not a pickle, or cut short)."""
    stream = io.BytesIO(data)
    stream.seek(offset)
    operations = 0
    for opcode, arg, _ in pickletools.genops(stream):
        operations += 1
        name = opcode.name
        if name in _REFUSED_OPERATIONS and not (persistent_ids and name in _PERSISTENT_IDS):
            raise UnsafeFileError(
                f"{path} uses the pickle operation {name}, which {format_name} never writes: "
                "such a file may run code when loaded, so it is refused (nothing in it ran)")
        if name in _MEMO_PUTS and arg > operations:
            raise WeightsError(f"{path} is not a file {format_name} wrote: it names memo "
                               f"index {arg} after {operations} operations")
        if operations > MAX_OPERATIONS:
            raise WeightsError(f"{path} holds more than {MAX_OPERATIONS} pickle operations: "
                               f"not a file {format_name} wrote")
    return stream.tell(), operations


class Allowed:
    """An allowed global, called for the REDUCE opcode. A wrapper rather than the function
    itself: pickle's BUILD opcode on a function could set its attributes, on this it fails."""

    __slots__ = ("_call",)

    def __init__(self, call):
        object.__setattr__(self, "_call", call)

    def __call__(self, *args):
        return self._call(*args)

    def __setstate__(self, state):
        raise WeightsError("the pickle tries to change an allowed function")


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only from `allowed` ((module, name) -> object). `needs` completes
    "which is not one ..." and `advice` says what to do, in the refusal message."""

    def __init__(self, file, path, allowed, needs, advice, encoding="ASCII"):
        super().__init__(file, encoding=encoding)
        self.path, self.allowed, self.needs, self.advice = path, allowed, needs, advice

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        refused = one_line(f"{module}.{name}")[:200]
        raise UnsafeFileError(
            f"{self.path} names the global {refused!r}, which is not one {self.needs}: such a "
            f"file may run code when loaded, so it is refused (nothing in it ran). {self.advice}")


_VISITING = object()


def rebuild(obj, path, operations, convert, on_tuple=None):
    """`obj` with its dicts (OrderedDicts too), lists and tuples copied as plain ones, every
    other value replaced by `convert(value)` unless it is a str, bytes, number, bool or None;
    `on_tuple(t)` may replace a rebuilt tuple. Shared objects are converted once and stay
    shared; see the module's docstring for the bounds."""
    done = {}  # id -> (result, number of nodes its tree spans)

    def visit(node, depth):
        kind = type(node)
        if kind in _PLAIN:
            return node, 1
        key = id(node)
        if key in done:
            if done[key][0] is _VISITING:
                raise WeightsError(f"{path} holds a container inside itself: not a saved state")
            return done[key]
        if depth > MAX_DEPTH:
            raise WeightsError(f"{path} is nested deeper than {MAX_DEPTH} levels: not a "
                               "saved state")
        done[key] = (_VISITING, 0)
        if isinstance(node, dict):
            result, size = {}, 1
            for name, value in node.items():
                if type(name) not in _KEYS:
                    raise WeightsError(f"{path} holds a dict key of type "
                                       f"{type(name).__name__}: not a saved state")
                result[name], nodes = visit(value, depth + 1)
                size = _grow(size, 1 + nodes)
        elif kind in (list, tuple):
            items, size = [], 1
            for value in node:
                item, nodes = visit(value, depth + 1)
                items.append(item)
                size = _grow(size, nodes)
            result = items if kind is list else tuple(items)
            if kind is tuple and on_tuple is not None:
                result = on_tuple(result)
        else:
            result, size = convert(node), 1
        done[key] = (result, size)
        return result, size

    def _grow(size, more):
        size += more
        if size > operations:
            raise WeightsError(
                f"{path} shares its containers more than a saved state does: walked as a "
                f"tree it spans more than its {operations} pickle operations")
        return size

    return visit(obj, 0)[0]
