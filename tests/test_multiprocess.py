"""Multi-process training is exactly right: one seed, every sample once per epoch, the
stored top-1 equal to eval.py's, resume refusing a different data plan mid-epoch, and two
`launch` commands training together as two nodes.

The runs learn (well above the 10% chance of the digits) with the seed unset: per-rank
seeds or per-rank BatchNorm statistics only show once the model's predictions depend on
them."""

import os
import re
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, config_args, digits_overrides
from ppcls.weights import read_states

ARCH_DIR = "MnasNet_B1_x0_5"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def learning_overrides(digits, output_dir, epochs=6, extra=()):
    """The whole digits set: 1,438 training images (23 steps of 32 per rank with 2 ranks),
    359 to evaluate."""
    return digits_overrides(digits, output_dir, epochs=epochs, seed=None, extra=[
        f"DataLoader.Train.dataset.cls_label_path={digits}/train_list.txt",
        f"DataLoader.Eval.dataset.cls_label_path={digits}/val_list.txt",
        "DataLoader.Train.sampler.batch_size=32", "DataLoader.Eval.sampler.batch_size=64",
        "Global.print_batch_step=10", *extra])


def launch(*args, nproc=2, extra_launch=(), log_dir=None, check=True):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir",
           str(log_dir or tempfile.mkdtemp()), "--nproc_per_node", str(nproc), *extra_launch,
           *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def top1_fraction(eval_line):
    return re.search(r"top1 (\d+/\d+)", eval_line).group(1)


def eval_tool_fraction(digits, tmp_path, weights, extra=(), nproc=None):
    args = ["tools/eval.py", *config_args(learning_overrides(digits, tmp_path / "eval"),
                                          f"Global.pretrained_model={weights}", *extra)]
    proc = launch(*args, nproc=nproc) if nproc else run(*args)
    output = proc.stdout + proc.stderr  # launch echoes rank 0's output
    line = re.search(r"\[Eval\]\[Epoch 0\]\[Avg\].*", output)
    assert line, output[-3000:]
    return top1_fraction(line.group(0)), line.group(0)


def stored_fraction(train_log, epoch):
    """The exact top-1 fraction training logged for `epoch`'s evaluation."""
    line = re.search(rf"\[Eval\]\[Epoch {epoch}\]\[Avg\].*", train_log)
    assert line, train_log[-3000:]
    return top1_fraction(line.group(0))


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_two_processes_learn_and_store_the_top1_eval_tool_gives(digits, tmp_path, ema):
    extra = ["EMA.decay=0.9"] if ema else []
    launch("tools/train.py", *config_args(learning_overrides(digits, tmp_path / "ddp",
                                                             extra=extra)))
    out = tmp_path / "ddp" / ARCH_DIR
    log = (out / "train.log").read_text()
    seed = int(re.search(r"seed (\d+), 2 process\(es\)", log).group(1))
    assert "2 process(es) trained on 1438 of the 1438 samples (0 padding repeats" in log
    assert "2 replicas hold identical weights and averaged BN statistics" in log

    state = read_states(str(out / "best_model"))
    assert state["seed"] == seed
    assert state["metric"] > 0.5, state  # chance is 0.1: the model learned
    stored = stored_fraction(log, state["best"]["epoch"])
    assert eval(stored) == state["metric"]  # noqa: S307 - "a/b" from our own log
    single, line = eval_tool_fraction(digits, tmp_path, out / "best_model", extra)
    assert single == stored, (line, stored)
    assert ("EMA weights" in line) == ema
    double, line = eval_tool_fraction(digits, tmp_path, out / "best_model", extra, nproc=2)
    assert double == stored, (line, stored)


def first_lr_of_epoch(train_log, epoch):
    return re.search(rf"\[Epoch {epoch}/\d+\]\[Iter: 0/\d+\]lr: ([\d.]+)", train_log).group(1)


def test_resume_at_an_epoch_end_with_another_world_size_replans(digits, tmp_path):
    """Epoch 1 on 2 processes, epoch 2 on 1: the second epoch is planned for 1 process and
    its learning rate is the one a 1-process run has at epoch 2. (Mid-epoch, a different
    plan is refused: see test_robustness's multi-process SIGTERM test.)"""
    launch("tools/train.py", *config_args(learning_overrides(digits, tmp_path / "two",
                                                             epochs=2)))
    epoch_1 = tmp_path / "two" / ARCH_DIR / "epoch_1"
    state = read_states(str(epoch_1))
    assert state["plan"]["world_size"] == 2 and state["iter"] == state["plan"]["steps_per_epoch"]

    resumed = run("tools/train.py", *config_args(learning_overrides(
        digits, tmp_path / "resumed", epochs=2, extra=[f"Global.checkpoints={epoch_1}"])))
    assert "a new data plan (world_size 2 -> 1, steps_per_epoch 23 -> 45)" in resumed.stdout
    assert "1 process(es) trained on 1438 of the 1438 samples" in resumed.stdout
    run("tools/train.py", *config_args(learning_overrides(digits, tmp_path / "one", epochs=2)))
    one_log = (tmp_path / "one" / ARCH_DIR / "train.log").read_text()
    assert first_lr_of_epoch(resumed.stdout, 2) == first_lr_of_epoch(one_log, 2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_together(digits, tmp_path):
    """Two `launch` commands with --nnodes 2 and one master, as on two machines."""
    master = f"127.0.0.1:{free_port()}"
    overrides = learning_overrides(digits, tmp_path / "out", epochs=1)
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir",
               str(tmp_path / f"node{node}"), "--nnodes", "2", "--master", master,
               "--nproc_per_node", "1", "tools/train.py", *config_args(overrides)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    log = (tmp_path / "out" / ARCH_DIR / "train.log").read_text()
    assert "2 process(es) trained on 1438 of the 1438 samples" in log
    assert "2 replicas hold identical weights" in log


def eval_lists(digits, sizes):
    """Validation lists of the first `sizes` images: with 2 processes, a list of 1 leaves
    rank 1 without an image (as 9 images on 8 GPUs would leave one), and 3 gives shards of
    2 and 1."""
    val = (digits / "val_list.txt").read_text().splitlines()
    paths = {}
    for n in sizes:
        paths[n] = digits / f"val_first_{n}.txt"
        paths[n].write_text("\n".join(val[:n]) + "\n")
    return paths


def exact_counts(eval_line):
    """The exact part of an [Avg] line: '(top1 a/n, top5 b/n correct, ... weights)'."""
    return re.search(r"\(top1 .*\)", eval_line).group(0)


def test_uneven_and_empty_evaluation_shards_give_the_single_process_metrics(digits, tmp_path):
    """Every collective of an evaluation has the same shape on every rank, whatever its
    shard holds: during 2-process training with 1 image to evaluate (rank 1 has none),
    and in eval.py with 1 and 3 images on 2 processes, the exact counts are eval.py's on
    one process."""
    lists = eval_lists(digits, (1, 3))
    launch("tools/train.py", *config_args(learning_overrides(digits, tmp_path / "ddp",
                                                             extra=["EMA.decay=0.9"]),
                                          f"DataLoader.Eval.dataset.cls_label_path={lists[1]}"))
    out = tmp_path / "ddp" / ARCH_DIR
    log = (out / "train.log").read_text()
    assert "[Eval][Epoch 6] evaluated 1 of the 1 images listed" in log, log[-3000:]
    lists[359] = digits / "val_list.txt"  # the whole set: the model learned
    for n, path in lists.items():
        extra = ["EMA.decay=0.9", f"DataLoader.Eval.dataset.cls_label_path={path}"]
        single, single_line = eval_tool_fraction(digits, tmp_path, out / "latest", extra)
        double, double_line = eval_tool_fraction(digits, tmp_path, out / "latest", extra, nproc=2)
        assert exact_counts(double_line) == exact_counts(single_line), (n, double_line)
        assert single.endswith(f"/{n}")
        if n == 1:
            assert single == stored_fraction(log, 6)
    # chance is 0.1; one run with the seed unset reached only 0.45 (160/359), so 0.3 it is
    assert eval(single) > 0.3, single_line  # noqa: S307 - "a/b" from our own log
