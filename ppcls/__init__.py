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

# The Python API (ppcls/api.py), imported on first use so that `import ppcls` stays cheap.
_API_NAMES = ("list_models", "create_model")


def __getattr__(name):
    if name in _API_NAMES:
        from ppcls import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
