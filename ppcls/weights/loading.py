"""Loading weights into a model, with errors that say what is wrong and where."""

import os

import numpy as np

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.weights.paddle_pickle import read_paddle_file

PARAMS_SUFFIX = ".pdparams"


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
