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

Every part is written by paddle.save, as PaddleClas writes them (its tools read ours), and
read back by paddle_pickle's allow-list reader: nothing in a checkpoint can run code. The
`.pdstates` stays a paddle.save pickle for the same reason, rather than JSON.

A training run's `.pdstates` also keeps the run's resolved config, as YAML text under
CONFIG_KEY (`stored_config`): the checkpoint's four files alone rebuild its model and data
settings (ppcls.utils.config.tool_config).
"""

import errno
import glob
import hashlib
import os
import shutil

import paddle

from ppcls.utils import logger
from ppcls.utils.errors import UnsafeFileError, WeightsError
from ppcls.weights.formats import (MAX_STATES_BYTES, read_state_dict,  # noqa: F401
                                   read_states, resolve_params_path, strip_params_suffix)
from ppcls.weights.loading import check_compatible, is_url
from ppcls.weights.paddle_pickle import read_paddle_file

PARTS = (".pdparams", ".pdopt", ".pdema", ".pdstates")  # .pdstates, the manifest, last
CONFIG_KEY = "config"  # of .pdstates: the training run's resolved config, as YAML text


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
    """True when `<prefix>.pdstates` reads and every part it lists matches its manifest
    (all sizes first, then the digests). Checkpoints written before manifests existed are
    trusted if their `.pdparams` exists. A `.pdstates` that would run code is refused."""
    try:
        state = read_states(prefix)
    except UnsafeFileError:
        raise
    except (OSError, WeightsError):  # missing or truncated: not complete
        return False
    manifest = state.get("files")
    if manifest is None:
        return os.path.isfile(prefix + ".pdparams")
    if not isinstance(manifest, dict) or not all(
            ext in PARTS and isinstance(entry, tuple) and len(entry) == 2
            for ext, entry in manifest.items()):
        return False
    if not all(os.path.isfile(prefix + ext) and os.path.getsize(prefix + ext) == size
               for ext, (size, _) in manifest.items()):
        return False
    return all(_sha256(prefix + ext) == digest for ext, (_, digest) in manifest.items())


def save_checkpoint(prefix, model, optimizer=None, ema=None, state=None):
    """Write a checkpoint so that `prefix` or its `.previous` copy is always complete. A full
    disk is a one-line WeightsError naming the directory, after removing what this save
    staged (so that the disk is not left full)."""
    directory = os.path.dirname(prefix) or "."
    try:
        _save(prefix, directory, model, optimizer, ema, state)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _remove_staged(prefix)
        raise WeightsError(
            f"no space left on the device to save the checkpoint {prefix}: free space in "
            f"{directory} or set Global.output_dir to a disk with room; the last complete "
            "checkpoint there is kept") from None


def _remove_staged(prefix):
    for staged in glob.glob(glob.escape(prefix) + ".*.tmp*"):
        os.remove(staged)


def _save(prefix, directory, model, optimizer, ema, state):
    os.makedirs(directory, exist_ok=True)
    _remove_staged(prefix)  # from a save that crashed
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


def stored_config(location):
    """(the config text, the .pdstates holding it) of the checkpoint at `location` (a prefix,
    or one of its files); None for a URL, for weights without a .pdstates beside them and
    for a checkpoint saved without its config. Weights that are not there, and a .pdstates
    that cannot be read safely, are a WeightsError naming the file."""
    location = str(location)
    if is_url(location):
        return None
    prefix = next((location[: -len(ext)] for ext in PARTS if location.endswith(ext)), location)
    path = prefix + ".pdstates"
    if not os.path.isfile(path):
        if not os.path.isfile(location):
            resolve_params_path(location)  # raises "weights file not found" unless a prefix
        return None
    text = read_states(prefix).get(CONFIG_KEY)
    return None if text is None else (text, path)


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


def _read_optimizer_state(prefix, model):
    """`<prefix>.pdopt` as the optimizer's `set_state_dict` needs it. It takes accumulators
    and the schedule's state as arrays, but keeps master weights as it gets them and computes
    with them, so those become Tensors (as paddle.load made them)."""
    path = prefix + ".pdopt"
    if not os.path.isfile(path):
        raise WeightsError(f"{path} is missing; cannot resume the optimizer")
    state = read_paddle_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not an optimizer state")
    state = optimizer_state_for_loading(state, model)
    masters = state.get("master_weights")
    if isinstance(masters, dict):
        state["master_weights"] = {name: paddle.to_tensor(value)
                                   for name, value in masters.items()}
    return state


def resume_checkpoint(prefix, model, optimizer=None, ema=None, convert_optimizer_state=None):
    """Continue a training run: restore everything the complete checkpoint at `prefix` (see
    `find_checkpoint`) holds into the model, optimizer and EMA; returns its `.pdstates` dict
    (epoch, iteration, schedule, seed...). `convert_optimizer_state(state)`, when given,
    adapts the optimizer state (Paddle's names, after the weights are loaded) before it is
    set (the engine's AMP level conversion, ppcls/engine/amp.py). For weights alone use
    loading.load_into."""
    state = read_states(prefix)
    weights = read_state_dict(prefix + ".pdparams")
    model.set_state_dict(check_compatible(model, weights, prefix + ".pdparams"))
    if optimizer is not None:
        opt_state = _read_optimizer_state(prefix, model)
        if convert_optimizer_state is not None:
            opt_state = convert_optimizer_state(opt_state)
        optimizer.set_state_dict(opt_state)
    if ema is not None:
        if os.path.isfile(prefix + ".pdema"):
            ema.set_state_dict(read_state_dict(prefix + ".pdema"))
        else:
            ema.set_state_dict(model.state_dict())
    return state
