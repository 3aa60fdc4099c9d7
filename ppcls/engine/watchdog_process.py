"""The watcher process beside each rank of a multi-process training job (standard library
only: it must start fast and survive its rank crashing).

    python watchdog_process.py <own rank> <rank>:<pid> [<rank>:<pid> ...]

It watches the job's processes on this machine. If one ends before its rank wrote `stop`
or `error` on our stdin (killed, out of memory, crashed in native code), it prints which one to the
rank's log and stops its own rank (SIGTERM, then SIGKILL), so the job ends with a message
naming the lost worker instead of hanging in a collective that can never complete.
"""

import os
import select
import signal
import sys
import time

POLL_SECONDS = 0.2  # without pidfd (Linux < 5.3)
GRACE_SECONDS = 10  # for the rank to exit after SIGTERM
PEER_DEATH_SECONDS = 0.5  # after `error`: a killed peer is gone by then; an erroring
# peer is not (it waits for its own watcher, which waits this long)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return False


def report(own_rank, rank, pid):
    who = "this worker" if rank == own_rank else "a worker"
    print(f"[watchdog of rank {own_rank}] ERROR: {who}, rank {rank} (pid {pid}), ended "
          "before training finished. Without an error above it, it was killed (e.g. by "
          "the out-of-memory killer or a scheduler) or crashed in native code; see its log "
          f"(workerlog.{rank} under the launch log_dir). Stopping the job; resume with "
          "-o Global.checkpoints=<output_dir>/<Arch>/latest", flush=True)


def stop_rank(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + GRACE_SECONDS
    while time.time() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def wait_for_end(watched, stdin):
    """Block until a watched process ends (returns its (rank, pid)) or a word arrives on
    stdin (returns "stop", "error", or "eof" when the pipe closed without one)."""
    poller = select.poll()
    poller.register(stdin, select.POLLIN | select.POLLHUP)
    pidfds = {}
    for rank, pid in watched:
        try:
            pidfds[os.pidfd_open(pid)] = (rank, pid)
        except ProcessLookupError:
            return rank, pid
        except (AttributeError, OSError):  # no pidfd: poll /proc instead
            pass
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    polled = [w for w in watched if w not in pidfds.values()]
    while True:
        for fd, _ in poller.poll(POLL_SECONDS * 1000 if polled else None):
            if fd == stdin:
                word = os.read(stdin, 64).strip().decode(errors="replace")
                return word if word in ("stop", "error") else "eof"
            return pidfds[fd]
        for rank, pid in polled:
            if not alive(pid):
                return rank, pid


def ended_peer(peers):
    """The first peer seen ended within PEER_DEATH_SECONDS, else None."""
    deadline = time.time() + PEER_DEATH_SECONDS
    while True:
        for rank, pid in peers:
            if not alive(pid):
                return rank, pid
        if time.time() > deadline:
            return None
        time.sleep(0.05)


def main(argv):
    own_rank = int(argv[0])
    watched = [tuple(int(x) for x in spec.split(":")) for spec in argv[1:]]
    own_pid = dict(watched)[own_rank]
    ended = wait_for_end(watched, sys.stdin.fileno())
    if ended == "stop":
        return 0  # training finished or stopped cleanly
    if ended == "error":  # our rank raised; its error is in its log
        peer = ended_peer([w for w in watched if w[1] != own_pid])
        if peer:
            report(own_rank, *peer)
        return 1 if peer else 0
    if ended == "eof":  # our rank closed the pipe without `stop`: it ended abruptly
        ended = (own_rank, own_pid)
    report(own_rank, *ended)
    if ended[1] != own_pid:
        stop_rank(own_pid)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
