"""SIGINT and SIGTERM during training: finish the current iteration, save `latest`, exit.

A scheduler's SIGTERM (or `paddle.distributed.launch` stopping its workers, which sends
SIGTERM to their process groups several times) and a first Ctrl-C only request the stop;
a second Ctrl-C quits at once without saving. Data-loader workers ignore both (see
`ppcls.data.WorkerSetup`). The training loop then returns a `Stop` saying where it stopped,
instead of raising, so that `latest` is saved on the way out.
"""

import dataclasses
import signal
import threading

from ppcls.utils import logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Stop:
    """Training stops, after a stop signal, with `iteration` iterations of `epoch` done.
    `evaluated`: whether that epoch's evaluation, if due, is done. `agreed`: whether every
    rank knows (when only this one does, no collective may run before saving)."""

    epoch: int
    iteration: int
    evaluated: bool = True
    agreed: bool = True


class StopSignals:
    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    def next_batch(self, batches):
        """The next batch, or None when a stop signal interrupted the loader (Ctrl-C in a
        terminal reaches its worker processes too)."""
        try:
            return next(batches)
        except Exception:
            if self.requested:
                return None
            raise

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        if self.signum is None:
            self.signum = signum
            logger.warning("received %s: stopping after this iteration and saving latest "
                           "(Ctrl-C again quits without saving)", signal.Signals(signum).name)

    def __enter__(self):
        # Handlers can only be installed from the main thread (e.g. not under some notebooks).
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
