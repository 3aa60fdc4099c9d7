"""What Paddle prints on its own that carries nothing for a ppcls user, turned off before
it is printed. `import ppcls` applies it (ppcls/__init__.py), once, before Paddle loads:

- glog's INFO lines (GLOG_minloglevel=1 unless set): Paddle's C++ progress notes, such as
  "New Executor is Running" when export writes the legacy program. Paddle reads the
  variable when it loads; its warnings and errors still print.
- "No ccache found", a UserWarning paddle.utils.cpp_extension gives at `import paddle`:
  ccache would only speed up recompiling C++ extensions, and ppcls compiles its one
  kernel once per machine and keeps it (ppcls/ops/depthwise_conv).
- "When training, we now always track global mean and variance.", a UserWarning every
  BatchNorm layer gives in training mode (Paddle 3.3.1's nn/layer/norm.py): a note on
  a change in Paddle's BatchNorm, about nothing a config can set.

Our own settings cause no Paddle output any more: see ppcls/utils/threads.py for the
OMP_NUM_THREADS warning Paddle gave at import, and ppcls/ops/depthwise_conv for the build's.
"""

import os
import sys
import warnings

NOTES = ("No ccache found", "When training, we now always track global mean and variance")


def quiet_paddle_console():
    if "paddle" not in sys.modules:  # later, Paddle has read it already
        os.environ.setdefault("GLOG_minloglevel", "1")
    for message in NOTES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
