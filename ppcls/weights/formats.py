"""Weights files as name -> numpy array, whatever wrote them, recognised by their content.

    sniff(head)               what the first bytes announce: "zip", "pickle", "safetensors"
                              or None (the one test of a download's content, too)
    weights_format(path)      the format in detail: a key of FORMATS, or None
    read_weights(path)        any format; wrappers unwrapped, non-tensors dropped
    read_state_dict(path)     a `.pdparams` / `.pdema` file, every value a tensor
    read_states(prefix)       `<prefix>.pdstates`, our small training-state file
    resolve_params_path(path) a weights path given with or without `.pdparams`

Every pickle goes through paddle_pickle or torch_pickle, which refuse one that would run
code; every size a file declares is bounded by the file.
"""

import os
import zipfile

import numpy as np

from ppcls.utils.errors import WeightsError
from ppcls.weights.paddle_pickle import read_paddle_file
from ppcls.weights.torch_pickle import is_legacy_file, is_torch_zip, read_torch_file

PARAMS_SUFFIX = ".pdparams"
MAX_STATES_BYTES = 16 << 20  # ours hold a few kB: epoch, metrics, schedule, manifest

# Formats by what messages call them.
FORMATS = {"torch": "PyTorch torch.save (.pth/.pt/.bin)", "safetensors": "safetensors",
           "npz": "numpy .npz", "pdparams": "Paddle .pdparams"}
SNIFFED = ("torch.save (zip or legacy pickle), numpy .npz, safetensors or a Paddle .pdparams "
           "pickle")  # what sniff() lets through, in words
_SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on its JSON header
HEAD_BYTES = 64  # what sniff() and weights_format() look at


def strip_params_suffix(path):
    """The checkpoint prefix of a weights path given with or without `.pdparams`."""
    path = str(path)
    return path[: -len(PARAMS_SUFFIX)] if path.endswith(PARAMS_SUFFIX) else path


def resolve_params_path(path):
    """Accept a weights path with or without `.pdparams` (or another file, e.g. `.pdema`)."""
    params = strip_params_suffix(path) + PARAMS_SUFFIX
    for candidate in (params, str(path)):
        if os.path.isfile(candidate):
            return candidate
    raise WeightsError(
        f"weights file not found: {params} (give the path with or without "
        f"'{PARAMS_SUFFIX}', e.g. output/MnasNet_B1_x1_0/best_model, or an http(s) URL)"
    )


def sniff(head):
    """The kind of weights file the first bytes announce ("zip", "pickle" or
    "safetensors"), or None. A first look only: the readers check the rest."""
    if head.startswith(b"PK\x03\x04"):  # torch.save's own layout, or numpy's npz
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO of pickle 2-5
        return "pickle"
    # safetensors: a little-endian u64 header length, then that many bytes of JSON
    header_length = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header_length <= _SAFETENSORS_MAX_HEADER:
        return "safetensors"
    return None


def read_head(path, size=HEAD_BYTES):
    with open(path, "rb") as f:
        return f.read(size)


def weights_format(path):
    """A key of FORMATS, recognised by the file's content (never its name), or None."""
    head = read_head(path)
    kind = sniff(head)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as err:
            raise WeightsError(f"cannot read {path}: it is a truncated or damaged zip "
                               f"({err})") from None
        if is_torch_zip(names):
            return "torch"
        return "npz" if names and all(n.endswith(".npy") for n in names) else None
    if kind == "pickle":
        # An old torch.save, else read as Paddle's. Either reader refuses a pickle that
        # names anything outside its allow-list, whatever the file's name.
        return "torch" if is_legacy_file(head) else "pdparams"
    return kind


# An .npz may be compressed (np.savez_compressed): its members may unpack to more than the
# file, but weights compress little, so a ratio beyond this is a zip bomb, not weights.
_NPZ_MAX_RATIO, _NPZ_FLOOR = 64, 64 << 20


def _check_npz_sizes(path):
    """Bound what np.load would allocate by the file: each member's declared size (which
    zipfile never reads past) and each array's header (numpy allocates the header's shape
    before it reads a byte of data)."""
    limit = max(_NPZ_MAX_RATIO * os.path.getsize(path), _NPZ_FLOOR)
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        if declared > limit:
            raise WeightsError(f"{path}: its members unpack to {declared} bytes, more than "
                               f"{_NPZ_MAX_RATIO} times the file: refused as a zip bomb")
        for info in members:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = header(member)
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > info.file_size:
                    raise WeightsError(f"{path}: array {info.filename} claims {nbytes} bytes "
                                       f"but its member holds {info.file_size}")


def _read_npz(path):
    _check_npz_sizes(path)
    with np.load(path) as archive:  # allow_pickle stays False: arrays only
        return {k: archive[k] for k in archive.files}


def _read_safetensors(path):
    from safetensors.numpy import load_file

    return load_file(path)


_READERS = {"torch": read_torch_file, "safetensors": _read_safetensors,
            "npz": _read_npz, "pdparams": read_paddle_file}


def _unwrap(state):
    """Accept the usual checkpoint wrappers and DataParallel's `module.` prefix."""
    for wrapper in ("state_dict", "model", "model_state", "model_state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_weights(path):
    """Read a weights file as name -> numpy array. The format is recognised by the file's
    content, whatever its extension: a PyTorch `torch.save` file (zip or legacy; read
    without PyTorch), `.safetensors`, `.npz` or Paddle's `.pdparams` (any other pickle);
    pickles that would run code are refused. Usual wrappers ({'state_dict': ...},
    'module.' prefixes) are unwrapped; values that are not tensors (epoch counters and the
    like) are dropped. The tensor names stay the file's own."""
    path = str(path)
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint not found: {path}")
    kind = weights_format(path)
    if kind is None:
        raise WeightsError(f"{path} is not a checkpoint format this tool reads: "
                           + ", ".join(FORMATS.values()) + " (recognised by content)")
    try:
        state = _READERS[kind](path)
    except WeightsError:
        raise
    except Exception as err:
        raise WeightsError(f"cannot read {path}: it is truncated or not a valid "
                           f"{FORMATS[kind]} file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict "
                           "(a dict of name -> tensor)")
    state = _unwrap({k: v for k, v in state.items() if isinstance(k, str)})
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def read_state_dict(path):
    """Read a `.pdparams` (or `.pdema`) file into a dict of numpy arrays, with the safe
    reader (paddle_pickle); a corrupt or unsafe file is a WeightsError."""
    path = resolve_params_path(path)
    state = read_paddle_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: {str(key)[:100]!r} holds a {type(value).__name__}, "
                               "not a tensor: this is not a weights file")
    return state


def read_states(prefix):
    """The training state dict in `<prefix>.pdstates` (written by the engine and by
    checkpoint.save_checkpoint, or beside converted weights)."""
    path = prefix + ".pdstates"
    size = os.path.getsize(path)
    if size > MAX_STATES_BYTES:
        raise WeightsError(f"{path} is {size} bytes: a training state file is a few kB, so "
                           f"this is not one (at most {MAX_STATES_BYTES} bytes are read)")
    state = read_paddle_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a training state")
    return state
