"""Weights into a model: `load_into`, and the check every load goes through.

Which loader to use:
    load_into(model, location)                  weights to start from (Global.pretrained_model,
                                                Arch.pretrained): any file, prefix or URL; a
                                                classifier of another class_num stays fresh
    load_into(model, location, for_eval=True,   weights to evaluate, export or predict with:
              prefer_ema=...)                   every tensor required; the EMA copy of one of
                                                our checkpoints when asked and saved
    checkpoint.resume_checkpoint(prefix, ...)   continue a training run: weights, optimizer,
                                                EMA and the training state (checkpoint.py)

A model whose tensors are named differently in the files it accepts (other libraries'
checkpoints of the same network) says so with a hook: `model.adapt_state_dict(state,
weights_file)` returns (the state in the model's own names, the name of the source that
wrote it); it may also adjust the model to the weights (a parameter-free layer they were
trained with or without). Models without the hook load files in their own naming only.
"""

import os
from typing import NamedTuple

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.weights.download import fetch
from ppcls.weights.formats import (PARAMS_SUFFIX, read_states, read_weights,
                                   resolve_params_path, strip_params_suffix)

OURS = "ppcls"  # the source name of weights in a model's own naming
# Tensors a fine-tuning load may leave freshly initialised when their shapes differ: the
# classifier, which our models (as PaddleClas's) call `fc`.
CLASSIFIER_PREFIXES = ("fc.",)


class WeightsFile(NamedTuple):
    """The file an `adapt_state_dict` hook adapts."""
    location: str  # as the config gave it: a path, a prefix or a URL
    path: str  # the local file read

    def recorded(self):
        """What the training run that saved these weights recorded beside them
        (`<prefix>.pdstates`, see checkpoint.py), or {} when nothing is there."""
        prefix = os.path.splitext(self.path)[0]
        return read_states(prefix) if os.path.isfile(prefix + ".pdstates") else {}


class Loaded(NamedTuple):
    location: str  # as given
    path: str  # the local file read
    source: str  # whose naming the file used: OURS, or what the model's hook said
    kind: str  # "EMA" (an EMA copy) or "model"


def is_url(location):
    return str(location).startswith(("http://", "https://"))


def local_file(location, sha256=None, max_bytes=None):
    """The local file for a path, a prefix (`.pdparams` added) or a URL (downloaded, see
    download.fetch for `sha256` and `max_bytes`)."""
    location = str(location)
    if is_url(location):
        return str(fetch(location, sha256=sha256, max_bytes=max_bytes))
    return location if os.path.isfile(location) else resolve_params_path(location)


def _ema_copy(location):
    """`<prefix>.pdema` of one of our checkpoints when it was saved, else the location."""
    prefix = strip_params_suffix(location)
    if is_url(location) or not os.path.isfile(prefix + PARAMS_SUFFIX):
        return location, "model"
    if os.path.isfile(prefix + ".pdema"):
        return prefix + ".pdema", "EMA"
    logger.warning("EMA is configured but %s.pdema does not exist: using the model weights",
                   prefix)
    return location, "model"


def load_into(model, location, *, for_eval=False, prefer_ema=False, max_bytes=None,
              sha256=None):
    """Read the weights at `location` (a file or checkpoint prefix in any format
    formats.read_weights knows, or an http(s) URL, downloaded once into the cache and
    checked against `sha256` and `max_bytes`), rename them with the model's
    `adapt_state_dict` hook when it has one, check them against the model and load them.

    for_eval: every tensor must fit (evaluation, export, prediction); otherwise tensors of
        the classifier whose shapes differ (another class_num) stay freshly initialised,
        with a log line (fine-tuning).
    prefer_ema: for one of our checkpoints, load its EMA copy (`.pdema`) when it was saved.
    Returns a Loaded record."""
    location, kind = _ema_copy(location) if prefer_ema else (location, "model")
    path = local_file(location, sha256, max_bytes)
    state, source = read_weights(path), OURS
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state, source = adapt(state, WeightsFile(str(location), path))
    skip = () if for_eval else CLASSIFIER_PREFIXES
    model.set_state_dict(check_compatible(model, state, path, skip_prefixes=skip))
    logger.info("loaded %s weights from %s", source, path)
    return Loaded(str(location), path, source, kind)


def check_compatible(model, state, source, skip_prefixes=()):
    """Compare `state` against the model's tensors. Returns the state to load, without
    tensors under `skip_prefixes` whose shapes differ (e.g. a classifier of another
    class_num); any other mismatch is a WeightsError naming the first tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, list(state[k].shape), list(expected[k].shape))
        for k in expected if k in state and list(state[k].shape) != list(expected[k].shape)
    ]
    skipped = [m for m in mismatched if m[0].startswith(tuple(skip_prefixes))] if skip_prefixes else []
    mismatched = [m for m in mismatched if m not in skipped]
    problems = []
    if mismatched:
        problems.append("shape mismatch " + ", ".join(
            f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:5]))
    if missing:
        problems.append(f"{len(missing)} model tensors missing from the file, first: "
                        + ", ".join(missing[:5]))
    if unexpected:
        problems.append(f"{len(unexpected)} file tensors unknown to the model, first: "
                        + ", ".join(unexpected[:5]))
    if problems:
        raise WeightsError(f"{source} does not fit this model ({type(model).__name__}): "
                           + "; ".join(problems)
                           + ". Check Arch.name and Arch.class_num against the checkpoint.")
    if skipped:
        logger.warning("not loading %s from %s: " + ", ".join(
            f"{k} file {a} vs model {b}" for k, a, b in skipped)
            + " (different class_num; these stay freshly initialised)",
            "/".join(k for k, _, _ in skipped), source)
    return {k: v for k, v in state.items() if k not in {m[0] for m in skipped}}
