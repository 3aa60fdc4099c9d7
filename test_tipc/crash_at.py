"""tools/train.py, killed by SIGKILL as it logs one training iteration: a crash at a known step,
whatever the speed of the machine. What survives is the `latest` that Global.save_latest_steps
wrote last (test_gpu_check.sh resumes from it and compares with the uninterrupted run).

    python test_tipc/crash_at.py EPOCH ITERATION -c CONFIG [-o KEY=VALUE ...]

ITERATION is the 0-based index of the `[Train][Epoch EPOCH/E][Iter: ITERATION/N]` line, so it
needs Global.print_batch_step=1. An iteration is logged before `latest` is saved after it, so
with save_latest_steps=2 a crash at iteration 3 leaves the checkpoint of iteration 2.
Single-process runs only. Exits 1 if training ended without reaching that iteration.
"""

import logging
import os
import signal
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import parse_args  # noqa: E402
from tools.train import main  # noqa: E402


class CrashAt(logging.Filter):
    """A filter on the `ppcls` logger (which keeps its filters when the engine replaces its
    handlers): the matching record kills the process before any handler writes it."""

    def __init__(self, epoch, iteration):
        super().__init__()
        self.prefix = f"[Train][Epoch {epoch}/"
        self.step = f"][Iter: {iteration}/"

    def filter(self, record):
        message = record.getMessage()
        if message.startswith(self.prefix) and self.step in message:
            print(f"crash_at: SIGKILL at {self.prefix}...{self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return True


if __name__ == "__main__":
    epoch, iteration = int(sys.argv[1]), int(sys.argv[2])
    logging.getLogger("ppcls").addFilter(CrashAt(epoch, iteration))
    code = run(main, parse_args(sys.argv[3:], description="train, then crash at a step"))
    print(f"crash_at: training ended (exit {code}) before epoch {epoch} iteration {iteration}",
          file=sys.stderr)
    sys.exit(1)
