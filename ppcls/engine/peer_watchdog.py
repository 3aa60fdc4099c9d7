"""A dead worker must take a multi-process job down with a message, not hang it.

`paddle.distributed.launch` stops the other workers once it sees one fail, but its report
names whichever worker it polls first (often a survivor that aborted in a collective), and
a worker on another machine, or an NCCL collective, can wait for a long time. So each rank
starts `watchdog_process.py`, which watches the job's processes on this machine and, when
one ends early, says which one in the logs and stops its own rank.

Ranks tell their watchers `stop` before a final barrier, so no rank exits while another's
watcher still runs: a normal end is never mistaken for a crash. A rank leaving on an error
tells its watcher `error`: a collective that fails because a peer was killed raises on the
survivors at the moment the peer dies, and the watcher then still names the dead peer.
"""

import os
import socket
import subprocess
import sys

import paddle.distributed as dist

WATCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog_process.py")


class PeerWatchdog:
    def __init__(self, world_size, rank):
        self.world_size, self.rank = world_size, rank
        self.process = None

    def __enter__(self):
        if self.world_size > 1:
            everyone = []
            dist.all_gather_object(everyone, (socket.gethostname(), os.getpid()))
            here = [f"{r}:{pid}" for r, (host, pid) in enumerate(everyone)
                    if host == socket.gethostname()]
            self.process = subprocess.Popen([sys.executable, WATCHER, str(self.rank), *here],
                                            stdin=subprocess.PIPE)
        return self

    def _stop_watching(self, word=b"stop"):
        if self.process is None:
            return
        try:
            self.process.stdin.write(word + b"\n")
            self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        self.process = None

    def finish(self):
        """Every rank calls this at the same point (end of training, or an agreed stop)."""
        if self.process is not None:
            self._stop_watching()
            dist.barrier()

    def __exit__(self, exc_type, exc, tb):
        # Leaving on an error: our watcher names a peer that ended (often the cause of the
        # error) and otherwise stays quiet; the other ranks' watchers then report this rank
        # as ended early, which is the truth.
        self._stop_watching(b"stop" if exc_type is None else b"error")
