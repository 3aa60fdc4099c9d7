"""Where ppcls keeps what it fetches or builds once and reuses: one root, fixed folders.

    cache_root()       $PPCLS_CACHE_DIR, else $XDG_CACHE_HOME/ppcls, else ~/.cache/ppcls
    cache_dir(kind)    cache_root() / kind, one of
        weights        downloaded weights (ppcls/weights/download.py)
        ops            compiled custom operators (ppcls/ops/depthwise_conv)
        openvino       OpenVINO's compiled models (the predictor, ppcls/inference.py)
        engines        which engine `Global.engine: auto` found fastest, per model and
                       settings (ppcls/engine_choice.py); small JSON files

Nothing here creates a folder: each user creates its own, as it needs it.
"""

import os
from pathlib import Path

KINDS = ("weights", "ops", "openvino", "engines")


def cache_root():
    if os.environ.get("PPCLS_CACHE_DIR"):
        return Path(os.environ["PPCLS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ppcls"


def cache_dir(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown cache folder {kind!r}; one of {', '.join(KINDS)}")
    return cache_root() / kind
