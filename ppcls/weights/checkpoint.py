"""Checkpoints in PaddleClas's layout: `<prefix>.pdparams` (model), `.pdopt` (optimizer),
`.pdema` (EMA weights, when EMA is on) and `.pdstates` (epoch, iteration, metrics, schedule,
seed, and the size and SHA-256 of the other files).

A save must never leave a checkpoint that cannot be resumed, wherever it is interrupted
(a crash, SIGKILL, a full disk). Renaming one file is atomic but renaming four is not, so:
  1. every part is written to a temporary file and flushed to disk;
  2. if `<prefix>` is complete, its files are hard-linked to `<dir>/.<name>.previous.*`;
  3. the parts are renamed into place, `.pdstates` last;
  4. the `.previous` links are removed.
A reader checks the parts against the manifest in `.pdstates`; if they do not match (the
save stopped in step 3) it uses the `.previous` copy, which step 2 left complete.
"""

import glob
import hashlib
import os
import shutil

import paddle

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.weights.loading import (check_compatible, read_state_dict, resolve_params_path,
                                  strip_params_suffix)

PARTS = (".pdparams", ".pdopt", ".pdema", ".pdstates")  # .pdstates, the manifest, last


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in blocks


def _write_flushed(obj, path):
    """paddle.save to a temporary name beside `path`, on disk before returning it."""
    tmp = f"{path}.tmp{os.getpid()}"
    paddle.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    return tmp


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_prefix(prefix):
    directory, name = os.path.split(prefix)
    return os.path.join(directory, f".{name}.previous")


def _remove_parts(prefix, parts=PARTS):
    for ext in parts:
        if os.path.lexists(prefix + ext):
            os.remove(prefix + ext)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, dst)


def is_complete(prefix):
    """True when `<prefix>.pdstates` reads and every part it lists matches its manifest.
    Checkpoints written before manifests existed are trusted if their `.pdparams` exists."""
    try:
        state = paddle.load(prefix + ".pdstates")
    except Exception:  # noqa: BLE001 - missing or truncated: not complete
        return False
    manifest = state.get("files") if isinstance(state, dict) else None
    if manifest is None:
        return os.path.isfile(prefix + ".pdparams")
    for ext, (size, digest) in manifest.items():
        path = prefix + ext
        if not os.path.isfile(path) or os.path.getsize(path) != size or _sha256(path) != digest:
            return False
    return True


def save_checkpoint(prefix, model, optimizer=None, ema=None, state=None):
    """Write a checkpoint so that `prefix` or its `.previous` copy is always complete."""
    directory = os.path.dirname(prefix) or "."
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(glob.escape(prefix) + ".*.tmp*"):  # from a save that crashed
        os.remove(stale)
    parts = {".pdparams": model.state_dict()}
    if optimizer is not None:
        parts[".pdopt"] = optimizer_state_for_saving(optimizer, model)
    if ema is not None:
        parts[".pdema"] = ema.state_dict()
    staged = {ext: _write_flushed(obj, prefix + ext) for ext, obj in parts.items()}
    manifest = {ext: (os.path.getsize(tmp), _sha256(tmp)) for ext, tmp in staged.items()}
    staged[".pdstates"] = _write_flushed(dict(state or {}, files=manifest), prefix + ".pdstates")

    previous = previous_prefix(prefix)
    if is_complete(prefix):  # else keep the .previous copy an interrupted save left
        _remove_parts(previous)
        for ext in PARTS:
            if os.path.isfile(prefix + ext):
                _link_or_copy(prefix + ext, previous + ext)
        _fsync_dir(directory)
    for ext in PARTS:
        if ext in staged:
            os.replace(staged[ext], prefix + ext)
    _fsync_dir(directory)
    _remove_parts(prefix, [ext for ext in PARTS if ext not in staged])  # e.g. an old .pdema
    _remove_parts(previous)


def remove_checkpoint(prefix):
    """Delete a checkpoint and any copy an interrupted save of it left."""
    _remove_parts(prefix)
    _remove_parts(previous_prefix(prefix))


def find_checkpoint(path):
    """The prefix of a complete training checkpoint at `path` (with or without .pdparams):
    the checkpoint itself, or the copy kept while a save to it was interrupted."""
    prefix = strip_params_suffix(path)
    if is_complete(prefix):
        return prefix
    previous = previous_prefix(prefix)
    if is_complete(previous):
        logger.warning("%s was being written when training stopped; resuming from the copy "
                       "of its previous version, %s", prefix, previous)
        return previous
    if not os.path.isfile(prefix + ".pdparams") and not os.path.isfile(prefix + ".pdstates"):
        resolve_params_path(prefix)  # raises "weights file not found", naming the path
    if not os.path.isfile(prefix + ".pdstates"):
        raise WeightsError(f"{prefix}.pdstates is missing: {prefix} is not a training "
                           "checkpoint (use Global.pretrained_model to load bare weights)")
    raise WeightsError(f"{prefix} is incomplete or corrupt (its files do not match "
                       f"{prefix}.pdstates) and no complete previous copy exists")


def _rename_keys(state, renames):
    """Rename optimizer-state keys `<old>_<accumulator>` (and master-weight keys `<old>`)."""
    ordered = sorted(renames, key=len, reverse=True)  # longest first: conv2d_10 before conv2d_1

    def rename(key):
        if key in renames:
            return renames[key]
        for old in ordered:
            if key.startswith(old + "_"):
                return renames[old] + key[len(old):]
        return key

    renamed = {}
    for key, value in state.items():
        if key == "LR_Scheduler":  # the schedule's own state, not per parameter
            renamed[key] = value
        elif isinstance(value, dict):  # master weights, keyed by parameter name
            renamed[key] = _rename_keys(value, renames)
        else:
            renamed[rename(key)] = value
    return renamed


def _param_names(model):
    """Paddle names parameters by creation order within a process (conv2d_104.w_0); the
    model's structured names (blocks.0.0.dw.conv.weight) are stable across processes."""
    return {param.name: name for name, param in model.named_parameters()}


def optimizer_state_for_saving(optimizer, model):
    return _rename_keys(optimizer.state_dict(), _param_names(model))


def optimizer_state_for_loading(state, model):
    return _rename_keys(state, {v: k for k, v in _param_names(model).items()})


def read_states(prefix):
    return paddle.load(prefix + ".pdstates")


def load_checkpoint(prefix, model, optimizer=None, ema=None, convert_optimizer_state=None):
    """Restore everything the complete checkpoint at `prefix` (see `find_checkpoint`) holds;
    returns its `.pdstates` dict. `convert_optimizer_state(state)`, when given, adapts the
    optimizer state (Paddle's names, after the weights are loaded) before it is set (the
    engine's AMP level conversion, ppcls/engine/amp.py)."""
    state = read_states(prefix)
    weights = read_state_dict(prefix + ".pdparams")
    model.set_state_dict(check_compatible(model, weights, prefix + ".pdparams"))
    if optimizer is not None:
        if not os.path.isfile(prefix + ".pdopt"):
            raise WeightsError(f"{prefix}.pdopt is missing; cannot resume the optimizer")
        opt_state = optimizer_state_for_loading(paddle.load(prefix + ".pdopt"), model)
        if convert_optimizer_state is not None:
            opt_state = convert_optimizer_state(opt_state)
        optimizer.set_state_dict(opt_state)
    if ema is not None:
        if os.path.isfile(prefix + ".pdema"):
            ema.set_state_dict(read_state_dict(prefix + ".pdema"))
        else:
            ema.set_state_dict(model.state_dict())
    return state
