"""One training run per output directory: a second run stops at once with one line, a lock
left by a dead process is taken over, one from another machine is not; an output directory
that is a file is one line too."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import QUICK_START, ROOT, config_args, digits_overrides
from ppcls.engine.engine import Engine
from ppcls.utils.cli import run
from ppcls.utils.config import get_config, parse_args
from ppcls.weights import find_checkpoint, read_states
from tools import eval as eval_tool
from tools import train as train_tool

ARCH_DIR = "MnasNet_B1_x0_5"
LOCK = "run.lock"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def holder(lock):
    """What the lock file says about its holder, or None when it is free."""
    text = lock.read_text() if lock.exists() else ""
    return json.loads(text) if text.strip() else None


def write_holder(lock, host, pid):
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": "2024-05-01 10:00:00"}))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_training_run_on_the_same_output_dir_stops_at_once(digits, tmp_path, capsys):
    out, overrides = tmp_path / ARCH_DIR, digits_overrides(digits, tmp_path, epochs=2)
    first = subprocess.Popen([sys.executable, "tools/train.py", *config_args(overrides)],
                             cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and \
            (holder(out / LOCK) or {}).get("pid") != first.pid:
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # it keeps the lock while the second run starts
    try:
        assert (holder(out / LOCK) or {}).get("pid") == first.pid, "no lock was taken"
        code = run(train_tool.main, parse_args(config_args(overrides)))
    finally:
        first.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert str(out) in err and f"pid {first.pid}" in err and socket.gethostname() in err
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    # the first run's checkpoints are complete: each part matches its manifest
    assert read_states(find_checkpoint(str(out / "latest")))["epoch"] == 2
    assert read_states(find_checkpoint(str(out / "epoch_1")))["epoch"] == 1
    log = (out / "train.log").read_text()
    assert log.count(f"training {ARCH_DIR} for 2 epochs") == 1  # the second never started
    assert holder(out / LOCK) is None  # released when the first run ended


def test_a_lock_left_by_a_dead_process_is_taken_over(digits, tmp_path, capsys):
    out, pid = tmp_path / ARCH_DIR, dead_pid()
    write_holder(out / LOCK, socket.gethostname(), pid)
    engine = Engine(get_config(QUICK_START, digits_overrides(digits, tmp_path, epochs=1)))
    assert holder(out / LOCK)["pid"] == os.getpid()
    engine.train()
    assert holder(out / LOCK) is None
    log = capsys.readouterr().out
    assert f"pid {pid}" in log and "no longer running" in log and str(out) in log


def test_a_lock_from_another_host_is_not_stolen(digits, tmp_path, capsys):
    lock = tmp_path / ARCH_DIR / LOCK
    write_holder(lock, "node-7", 4242)
    before = lock.read_text()
    code = run(train_tool.main, parse_args(config_args(digits_overrides(digits, tmp_path))))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "node-7" in err and "pid 4242" in err and str(lock) in err and "delete" in err
    assert lock.read_text() == before
    assert not (tmp_path / ARCH_DIR / "train.log").exists()  # nothing written


def test_every_rank_stops_when_rank_0_cannot_lock(digits, tmp_path):
    """Rank 0 writes the directory, so it takes the lock; the other ranks learn that it
    could not and stop too, instead of waiting for it forever."""
    write_holder(tmp_path / ARCH_DIR / LOCK, "node-7", 4242)
    log_dir = tempfile.mkdtemp(dir=tmp_path)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", log_dir,
           "--nproc_per_node", "2", "tools/train.py",
           *config_args(digits_overrides(digits, tmp_path))]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    rank0 = open(os.path.join(log_dir, "workerlog.0")).read()
    rank1 = open(os.path.join(log_dir, "workerlog.1")).read()
    assert "error: " in rank0 and "node-7" in rank0, rank0[-3000:]
    assert "error: " in rank1 and "rank 0" in rank1, rank1[-3000:]
    assert "Traceback" not in rank0 + rank1


@pytest.mark.parametrize("tool", [train_tool, eval_tool], ids=["train", "eval"])
@pytest.mark.parametrize("which", ["output_dir", "arch_dir"])
def test_an_output_dir_that_is_a_file_is_one_line(digits, tmp_path, capsys, tool, which):
    output_dir = tmp_path / "out"
    a_file = output_dir if which == "output_dir" else output_dir / ARCH_DIR
    a_file.parent.mkdir(parents=True, exist_ok=True)
    a_file.write_text("not a directory")
    code = run(tool.main, parse_args(config_args(digits_overrides(digits, output_dir))))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "Global.output_dir" in errors[0] and str(a_file) in errors[0]
    assert a_file.read_text() == "not a directory"


def test_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path):
    """A data-loader worker forked by a run that then dies without releasing shares the
    lock's descriptor: it must not keep the directory locked."""
    pid_file, ready_file = tmp_path / "worker.pid", tmp_path / "worker.ready"
    code = (f"import os, sys, time; sys.path.insert(0, {ROOT!r})\n"
            "from ppcls.engine.run_lock import RunLock\n"
            f"RunLock.acquire({str(tmp_path)!r})\n"
            "child = os.fork()\n"
            "if child == 0:\n"  # the at-fork hooks have run once the child runs its code
            f"    open({str(ready_file)!r}, 'w').close(); time.sleep(120); os._exit(0)\n"
            f"while not os.path.exists({str(ready_file)!r}): time.sleep(0.01)\n"
            f"open({str(pid_file)!r}, 'w').write(str(child))\n"
            "os._exit(0)  # as if killed: no release\n")
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120, check=True)
    worker = int(pid_file.read_text())
    try:
        from ppcls.engine.run_lock import RunLock

        lock = RunLock.acquire(str(tmp_path))
        assert lock.notice and "no longer running" in lock.notice
        lock.release()
    finally:
        os.kill(worker, signal.SIGKILL)
