"""A run's output directory, `<Global.output_dir>/<Arch.name>`: created with a one-line error
when it cannot be, and locked so that one training run at a time writes it.

    make_output_dir(directory, configured)   create it; ConfigError naming Global.output_dir
    RunLock.acquire(directory) -> RunLock    ConfigError naming the holder when in use
    lock.release()                           at the end of the run (also at exit)

The lock is `run.lock` in the directory: an flock held for the run's life, which the kernel
drops when the process dies however it dies, and one JSON line naming the holder's host, pid
and start time for the messages. A second run finds the flock taken and stops at once. A free
flock under a holder line means that run ended without releasing (killed, or its machine
went down). On this host, when that pid is no longer running, the lock is taken over with a
log line. A holder on another host is not: this machine cannot see that host's processes,
and flock does not reach across hosts on every network filesystem; the message says to delete
the file if that run is over. A clean release empties the file.

Two runs on two machines sharing one directory are told apart only where the filesystem
passes flock between hosts (NFSv4, Lustre with flock): elsewhere, give each its own
Global.output_dir. Within one process, acquiring a directory the process already holds
returns the held lock (a notebook or a test building a second Engine for one directory).
Evaluation takes no lock: it writes only eval.log (appended a line at a time) and reads
checkpoints that the save protocol publishes atomically, so it can watch a training run.
"""

import atexit
import datetime
import json
import os
import socket

try:
    import fcntl
except ImportError:  # not POSIX: the holder line and its pid are all there is
    fcntl = None

from ppcls.utils.errors import ConfigError

LOCK_FILE = "run.lock"
_HOLDER_CHARS = 4096  # what is read of a lock file: a holder line is ~100 characters
_held = {}  # the real path of each lock file this process holds -> its RunLock


def make_output_dir(directory, configured):
    """Create `directory`, or raise a ConfigError naming `configured` (Global.output_dir)
    and what is in the way."""
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        culprit = _file_in_the_way(directory)
        where = ("" if culprit == os.path.abspath(configured) else f": {culprit}")
        raise ConfigError(
            f"Global.output_dir {configured}{where} is a file, not a folder: set "
            "Global.output_dir to a folder, or move that file") from None
    except OSError as err:
        raise ConfigError(
            f"Global.output_dir {configured}: cannot create {directory} ({err.strerror}): set "
            "Global.output_dir to a folder you can write to") from None


def _file_in_the_way(directory):
    """The first path on the way to `directory` that exists and is no folder."""
    path, way = os.path.abspath(directory), []
    while not way or os.path.dirname(path) != path:
        way.append(path)
        path = os.path.dirname(path)
    return next((p for p in reversed(way) if os.path.exists(p) and not os.path.isdir(p)),
                directory)


class RunLock:
    """The lock of one output directory, held by this process (see the module docstring).
    `notice`: a line for the run's log when the lock was taken over, else None."""

    def __init__(self, path, file, notice):
        self.path, self._file, self.notice = path, file, notice

    @classmethod
    def acquire(cls, directory):
        path = os.path.join(directory, LOCK_FILE)
        key = os.path.realpath(path)
        if key in _held:
            return _held[key]
        try:  # created if missing, never truncated here
            file = open(path, "a+", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot open the run lock {path} ({err.strerror}): set "
                              "Global.output_dir to a folder you can write to") from None
        try:
            _flock_or_raise(file, directory)
            notice = _check_stale_holder(_read_holder(file), path, directory)
            _write_holder(file)
        except BaseException:
            file.close()  # which drops the flock, if taken
            raise
        lock = _held[key] = cls(path, file, notice)
        atexit.register(lock.release)
        return lock

    def release(self):
        """Empty the holder line (a clean end: nothing to take over) and drop the flock."""
        if self._file is None:
            return
        try:
            self._file.truncate(0)
            self._file.flush()
            if fcntl is not None:  # for every process sharing the descriptor, too
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._forget()
            atexit.unregister(self.release)

    def _forget(self):
        """Close this process's descriptor without touching the holder line."""
        file, self._file = self._file, None
        _held.pop(os.path.realpath(self.path), None)
        if file is not None:
            file.close()


def _forget_locks_in_child():
    """A forked child (a data-loader worker) shares the parent's lock descriptor: it must
    not keep the flock alive after its parent died, nor empty the holder line at its exit."""
    for lock in list(_held.values()):
        lock._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _flock_or_raise(file, directory):
    if fcntl is None:
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"{directory} is in use by another training run ({_describe(_read_holder(file))}): "
            "wait for it to end or stop it, or give this run another Global.output_dir") from None
    except OSError:
        pass  # a filesystem without flock (ENOLCK): the holder line decides alone


def _read_holder(file):
    """The holder line's fields; {} for an empty file, None for one we did not write."""
    file.seek(0)
    try:
        text = file.read(_HOLDER_CHARS)
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    valid = (isinstance(holder, dict) and isinstance(holder.get("host"), str)
             and type(holder.get("pid")) is int and holder["pid"] > 0)
    return holder if valid else None


def _describe(holder):
    if not holder:
        return "its holder has not written its name yet"
    return (f"host {holder['host'][:100]}, pid {holder['pid']}, started "
            f"{str(holder.get('started', '?'))[:40]}")


def _check_stale_holder(holder, path, directory):
    """With the flock ours, whether the holder line left by an earlier run allows taking
    over: a notice to log if it does, a ConfigError if not."""
    if holder == {}:
        return None
    if holder is None:
        return f"took over {path}: it held no holder line of ours"
    if holder["host"] != socket.gethostname():
        raise ConfigError(
            f"{path} names a training run on another machine ({_describe(holder)}) as using "
            f"{directory}; this machine cannot tell whether it still runs: if it has ended, "
            f"delete {path} and start again, else give this run another Global.output_dir")
    if holder["pid"] != os.getpid() and _pid_running(holder["pid"]):
        raise ConfigError(
            f"{path} names pid {holder['pid']} on this machine, which is running, as the "
            f"training run using {directory} ({_describe(holder)}): stop it, or if that pid "
            f"is no training run (a reused pid), delete {path} and start again")
    return (f"took over the lock of {directory} left by pid {holder['pid']} (started "
            f"{str(holder.get('started', '?'))[:40]}), which is no longer running: that run "
            "ended without releasing it (killed or crashed)")


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):
        return False
    return True


def _write_holder(file):
    file.seek(0)
    file.truncate(0)
    file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": datetime.datetime.now().isoformat(" ", "seconds")}) + "\n")
    file.flush()
    os.fsync(file.fileno())
