"""ppcls: a small PaddleClas-style framework for training and deploying MnasNet.

Importing ppcls applies two process defaults, here and nowhere else; it reads no file and
imports nothing else:
  - CPU: OpenMP threads and MKL's code path, set as soon as Paddle is imported
    (ppcls/utils/threads.py);
  - console: Paddle's C++ INFO lines and its "No ccache found" warning off
    (ppcls/utils/paddle_console.py).
"""

from ppcls.utils.paddle_console import quiet_paddle_console
from ppcls.utils.threads import apply_cpu_defaults

apply_cpu_defaults()
quiet_paddle_console()

# The Python API and where each name lives, imported on first use so that `import ppcls`
# stays cheap (the predictor's module imports Paddle).
_API = {"list_models": "ppcls.api", "create_model": "ppcls.api",
        "Predictor": "ppcls.predictor"}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
