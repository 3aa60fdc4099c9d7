"""ppcls: a small PaddleClas-style framework for training and deploying MnasNet."""

from ppcls.utils.threads import set_default_threads

set_default_threads()  # before Paddle is imported where possible; see ppcls/utils/threads.py

# The Python API (ppcls/api.py), imported on first use so that `import ppcls` stays cheap.
_API_NAMES = ("list_models", "create_model")


def __getattr__(name):
    if name in _API_NAMES:
        from ppcls import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
