"""Bad input and crashes, each fed for real: a clear error naming the culprit, and nothing
lost that a checkpoint held."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, ROOT, config_args, copy_listed_images, digits_overrides
from ppcls.arch import build_model
from ppcls.data import build_dataloader
from ppcls.data.dataloader import ImageNetDataset
from ppcls.engine.engine import Engine
from ppcls.utils.cli import run
from ppcls.utils.config import get_config, parse_args
from ppcls.utils.errors import ConfigError, DataError, TrainingDiverged, WeightsError
from ppcls.weights import checkpoint, read_state_dict
from ppcls.weights.paddle_pickle import read_paddle_file
from tools import eval as eval_tool
from tools import train as train_tool

ARCH_DIR = "MnasNet_B1_x0_5"


def write_list(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


@pytest.fixture
def bad_digits(digits, tmp_path):
    """A copy of 20 training images plus a corrupt, an empty and a missing file."""
    root = tmp_path / "data"
    lines = (digits / "train_small.txt").read_text().splitlines()[:20]
    copy_listed_images(digits, lines, root)
    (root / "corrupt.png").write_bytes(b"this is not an image")
    (root / "empty.png").write_bytes(b"")
    return root, lines


# ------------------------------------------------------------------ dataset
@pytest.mark.parametrize("lines,error,message", [
    (["a.png 1", "b.png x"], DataError, r"list.txt:2: label 'x' is not an integer"),
    (["a.png"], DataError, r"list.txt:1: expected 'path label'"),
    ([], DataError, r"list.txt lists no images"),
    (["", "  "], DataError, r"list.txt lists no images"),
])
def test_list_file_problems_name_the_file_and_line(tmp_path, lines, error, message):
    with pytest.raises(error, match=message):
        ImageNetDataset(str(tmp_path), write_list(tmp_path / "list.txt", lines))


def test_missing_list_file_or_image_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"label list not found: .*missing.txt"):
        ImageNetDataset(str(tmp_path), str(tmp_path / "missing.txt"))
    listed = write_list(tmp_path / "list.txt", ["a.png 0"])
    with pytest.raises(ConfigError, match=r"image_root is not a directory: .*nowhere"):
        ImageNetDataset(str(tmp_path / "nowhere"), listed)


def loader_config(root, list_file, mode="Train", extra=()):
    return get_config(QUICK_START, [f"DataLoader.{mode}.dataset.image_root={root}",
                                    f"DataLoader.{mode}.dataset.cls_label_path={list_file}",
                                    *extra])


@pytest.mark.parametrize("label", [10, -1])
def test_label_outside_class_num_names_line_and_class_num(bad_digits, tmp_path, label):
    root, lines = bad_digits
    lines[3] = lines[3].rsplit(" ", 1)[0] + f" {label}"
    listed = write_list(tmp_path / "list.txt", lines)
    with pytest.raises(DataError, match=rf"outside \[0, 10\) in DataLoader.Train.dataset."
                                        rf"cls_label_path: .*list.txt:4: label {label}"):
        build_dataloader(loader_config(root, listed), "Train", 0, class_num=10)


def test_missing_files_fail_evaluation_up_front_and_leave_training(bad_digits, tmp_path,
                                                                    capsys):
    root, lines = bad_digits
    listed = write_list(tmp_path / "list.txt", lines + ["gone/0.png 0", "gone/1.png 1"])
    with pytest.raises(DataError, match=r"2 listed image\(s\) not found: .*list.txt:21: .*"
                                        r"gone/0.png; .*list.txt:22: .*DataLoader.Eval.dataset."
                                        r"on_bad_image: skip"):
        build_dataloader(loader_config(root, listed, "Eval"), "Eval", 0, 10)

    loader = build_dataloader(loader_config(
        root, listed, extra=["DataLoader.Train.dataset.max_bad_fraction=0.1"]), "Train", 0, 10)
    assert len(loader.dataset) == 20 and loader.dataset.listed == 22
    assert "left out 2 listed image(s) that do not exist" in capsys.readouterr().out

    with pytest.raises(DataError, match=r"2 of 22 listed images not found, more than "
                                        r"max_bad_fraction \(0.05\)"):
        build_dataloader(loader_config(
            root, listed, extra=["DataLoader.Train.dataset.max_bad_fraction=0.05"]),
            "Train", 0, 10)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_images_are_skipped_in_training_and_counted(bad_digits, tmp_path,
                                                               capsys, num_workers):
    root, lines = bad_digits
    listed = write_list(tmp_path / "list.txt", lines + ["corrupt.png 3", "empty.png 4"])
    engine = Engine(get_config(QUICK_START, digits_overrides(root, tmp_path / "out", epochs=1, extra=[
        f"DataLoader.Train.dataset.cls_label_path={listed}",
        f"DataLoader.Train.loader.num_workers={num_workers}",
        "DataLoader.Train.dataset.max_bad_fraction=0.2",
        "Global.eval_during_train=False"])), "train")
    engine.train()
    out = capsys.readouterr().out
    assert re.search(r"skipping unreadable image .*list.txt:21: .*corrupt.png: not a "
                     r"decodable image", out)
    assert re.search(r"skipping unreadable image .*list.txt:22: .*empty.png: empty file", out)
    assert "[Train][Epoch 1] skipped 2 unreadable image(s) this epoch" in out
    assert "[Train][Epoch 1/1][Avg]" in out  # the epoch ran to its end
    assert len(engine.train_loader.policy.skipped) == 2


def test_images_skipped_on_every_rank_are_named_in_rank_0s_log(bad_digits, tmp_path):
    """Unshuffled, rank 0 reads list lines 1, 3, ..., 21 and rank 1 lines 2, 4, ..., 22."""
    root, lines = bad_digits
    listed = write_list(tmp_path / "list.txt", lines + ["corrupt.png 3", "empty.png 4"])
    overrides = digits_overrides(root, tmp_path, epochs=1, extra=[
        f"DataLoader.Train.dataset.cls_label_path={listed}",
        "DataLoader.Train.sampler.shuffle=False",
        "DataLoader.Train.dataset.max_bad_fraction=0.2", "Global.eval_during_train=False"])
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir",
           str(tmp_path / "logs"), "--nproc_per_node", "2", "tools/train.py",
           *config_args(overrides)]
    subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True,
                   capture_output=True, timeout=600)
    log = (tmp_path / ARCH_DIR / "train.log").read_text()
    line = re.search(r"\[Train\]\[Epoch 1\] skipped 2 unreadable image\(s\) this epoch: .*", log)
    assert line, log[-3000:]
    assert re.search(r"list.txt:21: .*corrupt.png", line.group(0))  # rank 0's
    assert re.search(r"list.txt:22: .*empty.png", line.group(0))    # rank 1's


def test_too_many_unreadable_images_stop_training(bad_digits, tmp_path):
    root, lines = bad_digits
    listed = write_list(tmp_path / "list.txt", lines + ["corrupt.png 3", "empty.png 4"])
    engine = Engine(get_config(QUICK_START, digits_overrides(root, tmp_path / "out", epochs=1, extra=[
        f"DataLoader.Train.dataset.cls_label_path={listed}",
        "Global.eval_during_train=False"])), "train")  # default max_bad_fraction 0.01
    with pytest.raises(DataError, match=r"unreadable image\(s\) this pass, plus 0 missing "
                                        r"from the start: more than DataLoader.Train.dataset."
                                        r"max_bad_fraction \(0.01\) allows"):
        engine.train()


def run_cli(tool, args, capsys):
    """Run a tool's main in-process through the same wrapper as its command line."""
    code = run(tool.main, parse_args(args))
    return code, capsys.readouterr()


def test_evaluation_stops_at_an_unreadable_image_naming_it(bad_digits, tmp_path, capsys):
    root, lines = bad_digits
    listed = write_list(tmp_path / "val.txt", lines[:5] + ["corrupt.png 3"] + lines[5:])
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        root, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}"])),
        capsys)
    assert code == 2
    assert re.search(r"(?m)^error: cannot use image .*val.txt:6: .*corrupt.png: not a "
                     r"decodable image\. Fix or unlist it, or set DataLoader.Eval.dataset."
                     r"on_bad_image: skip to leave such images out\n\Z", out.err), out.err


def test_evaluation_logs_how_many_listed_images_it_counted(digits, tmp_path, capsys):
    engine = Engine(get_config(QUICK_START, digits_overrides(digits, tmp_path)), "eval")
    results = engine.evaluate()
    out = capsys.readouterr().out
    assert re.search(r"evaluated 37 of the 37 images listed in .*val_odd.txt\n", out)
    assert "(top1 " in out and 0 <= results["top1"] <= 1


# ------------------------------------------------------------------- config
BAD_CONFIGS = [  # a misspelt key or name in every section, and a few bad values
    ("Global.epoch=3", "Global: unknown key 'epoch' (did you mean 'epochs'?); allowed: "),
    ("AMP.levl=O1", "AMP: unknown key 'levl' (did you mean 'level'?)"),
    ("EMA.decy=0.9", "EMA: unknown key 'decy' (did you mean 'decay'?)"),
    ("Arch.name=MnasNet_B1_x0_55",
     "Arch.name: unknown model 'MnasNet_B1_x0_55' (did you mean 'MnasNet_B1_x0_5'?)"),
    ("Arch.stem_rel=False", "Arch.stem_rel is not an argument of MnasNet_B1_x0_5 (did you mean "
     "'stem_relu'?)"),
    ("Loss.Train=[{CELos: {weight: 1.0}}]", "unknown loss 'CELos' (did you mean 'CELoss'?)"),
    ("Loss.Train.0.CELoss.epsilom=0.1", "Loss.Train.0.CELoss: unknown argument 'epsilom' (did you "
     "mean 'epsilon'?)"),
    ("Optimizer.name=Momentun", "unknown optimizer 'Momentun' (did you mean 'Momentum'?)"),
    ("Optimizer.momentun=0.9", "Optimizer.Momentum: unknown argument 'momentun' (did you mean "
     "'momentum'?)"),
    ("Optimizer.lr.name=Cosin", "Optimizer.lr: unknown schedule 'Cosin' (did you mean 'Cosine'?)"),
    ("Optimizer.lr.warmup_epochs=2", "Optimizer.lr.Cosine: unknown argument 'warmup_epochs' (did "
     "you mean 'warmup_epoch'?)"),
    ("Optimizer.lr.learning_rate=fast", "Optimizer.lr.Cosine.learning_rate must be float, got "
     "'fast'"),
    ("Optimizer.multi_precision=maybe", "Optimizer.multi_precision must be true or false, got "
     "'maybe'"),
    ("Optimizer.regularizer.coef=1", "Optimizer.regularizer.L2: unknown argument 'coef' (did you "
     "mean 'coeff'?)"),
    ("DataLoader.Train.samplr.batch_size=1", "DataLoader.Train: unknown key 'samplr' (did you mean "
     "'sampler'?)"),
    ("DataLoader.Train.dataset.cls_labl_path=x", "DataLoader.Train.dataset.ImageNetDataset: "
     "unknown argument 'cls_labl_path' (did you mean 'cls_label_path'?)"),
    ("DataLoader.Train.dataset.transform_ops.1={RandCrop: {size: 3}}",
     "unknown image operator 'RandCrop' (did you mean 'RandCropImage'?); allowed: AutoAugment"),
    ("DataLoader.Eval.dataset.transform_ops.0.DecodeImage.to_rbg=True",
     "transform_ops.0.DecodeImage: unknown argument 'to_rbg' (did you mean 'to_rgb'?)"),
    ("DataLoader.Train.sampler.batch_sise=3", "DataLoader.Train.sampler.DistributedBatchSampler: "
     "unknown argument 'batch_sise' (did you mean 'batch_size'?)"),
    ("DataLoader.Train.loader.num_worker=2", "DataLoader.Train.loader: unknown key 'num_worker' "
     "(did you mean 'num_workers'?)"),
    ("Infer.batchsize=1", "Infer: unknown key 'batchsize' (did you mean 'batch_size'?)"),
    ("Infer.PostProcess.top_k=3", "Infer.PostProcess.Topk: unknown argument 'top_k' (did you mean "
     "'topk'?)"),
    ("Metric.Eval=[{TopAcc: {topk: [1]}}]", "unknown metric 'TopAcc' (did you mean 'TopkAcc'?)"),
    ("Globl.epochs=1", "unknown section 'Globl' (did you mean 'Global'?)"),
    ("Global.epochs=three", "Global.epochs must be int, got 'three'"),
    ("Global.epochs=0", "Global.epochs must be at least 1, got 0"),
    ("Global.epochs=[3", "value '[3' is not valid YAML"),
    ("Global.use_dali=True", "Global.use_dali: True is not supported (NVIDIA DALI is not "
     "implemented here"),
    ("DataLoader.Train.dataset.transform_ops.0.DecodeImage.backend=skimage",
     "DecodeImage: backend: 'skimage' is not supported, only 'cv2' or 'pil'"),
    ("DataLoader.Train.dataset.transform_ops.1.RandCropImage.interpolation=bicubc",
     "RandCropImage: interpolation: 'bicubc' is not supported with backend 'cv2' (did you "
     "mean 'bicubic'?)"),
    ("DataLoader.Train.sampler.batch_size=0", "batch_size must be a positive integer, got 0"),
]


@pytest.mark.parametrize("override,message", BAD_CONFIGS, ids=[b[0].split("=")[0] for b in BAD_CONFIGS])
def test_config_mistakes_are_one_line_naming_the_key(digits, tmp_path, capsys, override,
                                                     message):
    args = config_args(digits_overrides(digits, tmp_path), override)
    code, out = run_cli(train_tool, args, capsys)
    assert code == 2
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
    assert message in out.err, out.err
    if "YAML" not in message and "batch_size=0" not in override:  # found on reading the file
        assert out.err.startswith(f"error: {QUICK_START}: "), out.err


def test_tool_error_has_no_traceback_unless_debug(tmp_path):
    cmd = [sys.executable, "tools/train.py", "-c", QUICK_START, "-o", "Arch.name=Nope"]
    plain = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    # (Paddle itself prints warnings on import; ours is the last line.)
    last = plain.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {QUICK_START}: Arch.name: unknown model 'Nope'"), plain.stderr
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("suffix", ["", ".pdparams"])
@pytest.mark.parametrize("key,tool", [("Global.pretrained_model", eval_tool),
                                      ("Global.checkpoints", train_tool)])
def test_missing_weights_path_is_named(digits, tmp_path, capsys, suffix, key, tool):
    missing = tmp_path / "nowhere" / f"best_model{suffix}"
    args = config_args(digits_overrides(digits, tmp_path), f"{key}={missing}")
    code, out = run_cli(tool, args, capsys)
    assert code == 2
    assert re.fullmatch(r"error: weights file not found: .*nowhere/best_model\.pdparams "
                        r"\(give the path with or without '\.pdparams'.*\n", out.err), out.err


def test_checkpoint_of_another_architecture_is_refused(digits, tmp_path, capsys):
    other = build_model({"Arch": {"name": "MnasNet_A1_x0_5", "class_num": 10}})
    paddle.save(other.state_dict(), str(tmp_path / "a1.pdparams"))
    args = config_args(digits_overrides(digits, tmp_path),
                       f"Global.pretrained_model={tmp_path / 'a1'}")
    code, out = run_cli(eval_tool, args, capsys)
    assert code == 2
    assert re.search(r"a1.pdparams does not fit this model \(MnasNet\): shape mismatch "
                     r"\S+: file \[\d+(, \d+)*\] vs model \[\d+(, \d+)*\]", out.err), out.err


# ---------------------------------------------------------------- numerics
def test_nan_loss_stops_naming_the_iteration_and_keeps_the_checkpoint(digits, tmp_path, capsys):
    args = config_args(digits_overrides(digits, tmp_path, epochs=2))
    assert run_cli(train_tool, args + ["-o", "Global.epochs=1"], capsys)[0] == 0
    latest = tmp_path / ARCH_DIR / "latest"
    before = {ext: (latest.parent / (latest.name + ext)).read_bytes()
              for ext in (".pdparams", ".pdopt", ".pdstates")}
    # Resume with inputs of about 1e37 (std 0, which this test used, is now refused up front):
    # the first convolution overflows float32, then the loss is NaN.
    code, out = run_cli(train_tool, args + [
        "-o", f"Global.checkpoints={latest}",
        "-o", "DataLoader.Train.dataset.transform_ops.2.NormalizeImage.scale=1e35"], capsys)
    assert code == 1
    assert re.fullmatch(r"error: the loss became nan at epoch 2, iteration \d+: training stopped\. "
                        r"The last checkpoint, .*latest \(epoch 1, iteration 6\), is unchanged\. "
                        r".*\n", out.err), out.err
    for ext, data in before.items():
        assert (latest.parent / (latest.name + ext)).read_bytes() == data, ext


def test_nan_weights_are_never_saved(digits, tmp_path):
    engine = Engine(get_config(QUICK_START, digits_overrides(digits, tmp_path)), "train")
    engine.save("latest", 1, 0)
    saved = (tmp_path / ARCH_DIR / "latest.pdparams").read_bytes()
    weight = engine.model.fc.weight
    weight.set_value(paddle.full_like(weight, float("nan")))
    with pytest.raises(TrainingDiverged, match="fc.weight holds NaN or infinite values after "
                                               "epoch 1, iteration 3: training stopped without"):
        engine.save("latest", 1, 3)
    assert (tmp_path / ARCH_DIR / "latest.pdparams").read_bytes() == saved


# ---------------------------------------------------------- checkpoint I/O
class Crash(Exception):
    pass


def small_training_state(steps, seed):
    """A model and optimizer after `steps` steps on random data: distinct per `steps`."""
    paddle.seed(seed)
    model = build_model({"Arch": {"name": "MnasNet_small", "class_num": 10}})
    opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters())
    for _ in range(steps):
        loss = model(paddle.randn([4, 3, 32, 32])).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()
    return model, opt


def test_a_save_interrupted_anywhere_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    """Crash the save of generation B at every file operation in turn: the checkpoint that
    loads is always all of A or all of B, never a mix."""
    gen_a, gen_b = small_training_state(1, 0), small_training_state(2, 0)
    expected = {gen: {k: v.numpy() for k, v in model.state_dict().items()}
                for gen, (model, _) in (("A", gen_a), ("B", gen_b))}
    operations = ["replace", "link", "remove", "fsync"]
    outcomes = []
    for crash_at in range(100):
        prefix = str(tmp_path / f"run{crash_at}" / "latest")
        checkpoint.save_checkpoint(prefix, *gen_a, state={"epoch": 1, "gen": "A"})
        calls = {"n": 0}

        def failing(original):
            def wrapper(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] > crash_at:
                    raise Crash()
                return original(*args, **kwargs)
            return wrapper

        with monkeypatch.context() as patch:
            for name in operations:
                patch.setattr(checkpoint.os, name, failing(getattr(os, name)))
            patch.setattr(checkpoint.paddle, "save", failing(paddle.save))
            try:
                checkpoint.save_checkpoint(prefix, *gen_b, state={"epoch": 2, "gen": "B"})
                finished = True
            except Crash:
                finished = False
        model, opt = small_training_state(0, 1)
        found = checkpoint.find_checkpoint(prefix)
        state = checkpoint.resume_checkpoint(found, model, opt)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), expected[state["gen"]][key])
        outcomes.append(state["gen"])
        if finished:
            break
    assert finished and outcomes[-1] == "B" and outcomes[0] == "A"
    assert "B" in outcomes[:-1], "some crash after the new files were in place loads B"
    leftovers = [p for p in os.listdir(os.path.dirname(prefix)) if not p.startswith("latest.pd")]
    assert not leftovers, leftovers  # a finished save leaves no temporary or previous files


def test_a_corrupt_checkpoint_without_a_previous_copy_is_named(tmp_path):
    prefix = str(tmp_path / "latest")
    checkpoint.save_checkpoint(prefix, *small_training_state(1, 0), state={"epoch": 1})
    with open(prefix + ".pdopt", "r+b") as f:
        f.truncate(100)
    with pytest.raises(Exception, match=r"latest is incomplete or corrupt \(its files do not "
                                        r"match .*latest.pdstates\)"):
        checkpoint.find_checkpoint(prefix)


def tiny_training_state(seed):
    """A Linear(64, 64) and its Momentum state after one step: ~33 kB as a checkpoint."""
    paddle.seed(seed)
    model = paddle.nn.Linear(64, 64)
    opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters())
    model(paddle.randn([2, 64])).mean().backward()
    opt.step()
    return model, opt


def test_a_full_disk_fails_the_save_in_one_line_and_keeps_the_last_checkpoint(small_disk):
    prefix = str(small_disk / "latest")
    first = tiny_training_state(0)
    checkpoint.save_checkpoint(prefix, *first, state={"epoch": 1})
    stat = os.statvfs(small_disk)
    filler = stat.f_bavail * stat.f_frsize - 24 * 1024  # leaves less than a checkpoint needs
    (small_disk / "filler").write_bytes(bytes(filler))
    with pytest.raises(WeightsError) as err:
        checkpoint.save_checkpoint(prefix, *tiny_training_state(1), state={"epoch": 2})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"no space left on the device to save the checkpoint {prefix}:")
    assert f"free space in {small_disk}" in message and "Global.output_dir" in message
    assert sorted(os.listdir(small_disk)) == ["filler"] + [f"latest{ext}" for ext in (
        ".pdopt", ".pdparams", ".pdstates")]  # no temporary file left filling the disk
    model, opt = tiny_training_state(2)
    state = checkpoint.resume_checkpoint(checkpoint.find_checkpoint(prefix), model, opt)
    assert state["epoch"] == 1
    np.testing.assert_array_equal(model.weight.numpy(), first[0].weight.numpy())


def test_a_full_disk_stops_training_with_one_line(digits, small_disk, capsys):
    args = config_args(digits_overrides(digits, small_disk, epochs=1))
    code, out = run_cli(train_tool, args, capsys)
    assert code == 2, out.err
    assert re.fullmatch(rf"error: no space left on the device to save the checkpoint "
                        rf"{small_disk}/{ARCH_DIR}/\w+: free space in {small_disk}/{ARCH_DIR} "
                        r"or set Global.output_dir to a disk with room; .*\n", out.err), out.err


# ---------------------------------------------------------- kills and signals
def train_command(digits, output_dir, extra=()):
    overrides = digits_overrides(digits, output_dir, epochs=3, extra=[
        "Global.save_latest_steps=2", *extra])
    return [sys.executable, "tools/train.py", *config_args(overrides)]


ENV = dict(os.environ, OMP_NUM_THREADS="2")


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    """The final `latest` of an uninterrupted 3-epoch run (6 iterations per epoch)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_command(digits, out), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=600)
    return out / ARCH_DIR / "latest"


def latest_state(out):
    try:
        return checkpoint.read_states(str(out / "latest"))
    except Exception:  # noqa: BLE001 - not written yet
        return None


def assert_same_final_checkpoint(reference, resumed):
    full, again = (read_state_dict(f"{p}.pdparams") for p in (reference, resumed))
    for key in full:
        np.testing.assert_array_equal(full[key], again[key], err_msg=key)
    opt_full, opt_again = (read_paddle_file(f"{p}.pdopt") for p in (reference, resumed))
    assert opt_full.keys() == opt_again.keys()
    for key in opt_full:
        if key != "LR_Scheduler":
            np.testing.assert_array_equal(opt_full[key], opt_again[key], key)
    assert opt_full["LR_Scheduler"] == opt_again["LR_Scheduler"]
    best_full, best_again = (checkpoint.read_states(str(p))["best"] for p in (reference, resumed))
    assert best_full == best_again


def resume(digits, output_dir, latest):
    cmd = train_command(digits, output_dir, extra=[f"Global.checkpoints={latest}",
                                                   "Global.seed=999"])
    return subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, capture_output=True, text=True,
                          timeout=600).stdout


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(digits, tmp_path,
                                                                     uninterrupted):
    out = tmp_path / ARCH_DIR
    proc = subprocess.Popen(train_command(digits, tmp_path), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        state = latest_state(out)
        if state and state["epoch"] == 2 and 0 < state["iter"] < 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = latest_state(out)
    assert state["epoch"] == 2 and 0 < state["iter"] < 6, "killed too late or too early"
    log = resume(digits, tmp_path, out / "latest")
    assert f"resumed from {out / 'latest'}: epoch 2, iteration {state['iter']}" in log
    assert "seed 7" in log  # the checkpoint's seed wins over Global.seed
    assert_same_final_checkpoint(uninterrupted, out / "latest")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_saves_latest_and_resume_equals_the_uninterrupted_run(
        digits, tmp_path, uninterrupted, signum):
    """SIGINT goes to the whole process group, as Ctrl-C in a terminal does, so the data
    loader's worker processes are interrupted too."""
    out = tmp_path / ARCH_DIR
    cmd = train_command(digits, tmp_path, extra=["DataLoader.Train.loader.num_workers=2"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log_file = out / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log_file.is_file() and
                                          "[Epoch 1/3][Iter: 2/6]" in log_file.read_text()):
        time.sleep(0.05)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    stopped = re.search(r"stopped: received (\w+): saved (\S+) at epoch (\d+), iteration (\d+); "
                        r"resume with -o Global.checkpoints=\S+latest", err)
    assert stopped, err[-2000:]
    state = latest_state(out)
    assert stopped.group(1) == signal.Signals(signum).name
    assert (state["epoch"], state["iter"]) == (int(stopped.group(3)), int(stopped.group(4)))
    resume(digits, tmp_path, out / "latest")
    assert_same_final_checkpoint(uninterrupted, out / "latest")


def worker_pid(rank, marker):
    """The pid of the training process with PADDLE_TRAINER_ID=rank whose command line
    contains `marker`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "tools/train.py" in cmdline and \
                f"PADDLE_TRAINER_ID={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_dead_worker_takes_the_job_down_with_a_message(digits, tmp_path):
    logs = tmp_path / "launch_logs"
    overrides = digits_overrides(digits, tmp_path, epochs=20)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(logs),
           "--nproc_per_node", "2", "tools/train.py",
           *config_args(overrides)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        log = logs / "workerlog.0"
        if log.is_file() and "[Iter: 2/" in log.read_text(errors="replace"):
            break
        time.sleep(0.1)
    victim = worker_pid(1, str(tmp_path))
    assert victim, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)  # the job ends instead of hanging
    assert proc.returncode != 0
    message = f"rank 1 (pid {victim}), ended before training finished"
    assert message in output, output[-3000:]
    assert message in (logs / "workerlog.0").read_text(errors="replace")


def test_sigterm_to_a_multi_process_job_saves_latest(digits, tmp_path):
    """`launch` passes SIGTERM on to every worker's process group (data-loader workers
    included); the ranks agree on an iteration and rank 0 saves it."""
    logs = tmp_path / "launch_logs"
    overrides = digits_overrides(digits, tmp_path, epochs=20,
                                 extra=["DataLoader.Train.loader.num_workers=1",
                                        "DataLoader.Train.sampler.batch_size=2"])
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(logs),
           "--nproc_per_node", "2", "tools/train.py",
           *config_args(overrides)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker_log = logs / "workerlog.0"
    deadline = time.time() + 300
    while time.time() < deadline and not (
            worker_log.is_file() and "[Iter: 2/" in worker_log.read_text(errors="replace")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log = worker_log.read_text(errors="replace")
    stopped = re.search(r"stopped: received SIGTERM: saved \S+latest at epoch (\d+), "
                        r"iteration (\d+)", log)
    assert stopped, log[-3000:]
    state = latest_state(tmp_path / ARCH_DIR)
    assert (state["epoch"], state["iter"]) == (int(stopped.group(1)), int(stopped.group(2)))
    assert "stopped: received SIGTERM" in (logs / "workerlog.1").read_text(errors="replace")

    # That mid-epoch `latest` (24 steps per epoch: the stop lands well before the end)
    # holds a 2-process plan, which one process cannot replay.
    resumed = subprocess.run(
        [sys.executable, "tools/train.py", *config_args(
            overrides, f"Global.checkpoints={tmp_path / ARCH_DIR / 'latest'}")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 2, (state, resumed.stdout[-3000:])
    assert re.search(r"error: .*latest was saved in the middle of epoch \d+ \(iteration \d+ of "
                     r"24\), and this run plans the data differently \(world_size 2 -> 1, "
                     r"steps_per_epoch 24 -> 48\): resume with 2 process\(es\)", resumed.stderr)
    assert "Traceback" not in resumed.stderr


def _children(pid):
    """Pids of the processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_loader_workers_end_when_the_training_process_is_killed(digits, tmp_path):
    """Workers ignore SIGINT/SIGTERM (so a Ctrl-C cannot kill them mid-step); SIGKILL of the
    training process then left them blocked on their pipe for good, each holding batches in
    /dev/shm. They must end with it."""
    proc = subprocess.Popen(train_command(digits, tmp_path, extra=[
        "DataLoader.Train.loader.num_workers=2", "Global.epochs=50"]), cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        workers = []
        while time.time() < deadline and proc.poll() is None and len(workers) < 2:
            workers = [p for p in _children(proc.pid) if p != proc.pid]
            time.sleep(0.1)
        assert len(workers) >= 2, "the loader workers never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
            time.sleep(0.1)
        alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
        for w in alive:  # do not leave them behind for the rest of the suite
            os.kill(w, signal.SIGKILL)
        for w in workers:  # batches in flight stay in /dev/shm (Paddle's files): tidy up
            for leftover in glob.glob(f"/dev/shm/paddle_{w}_*"):
                os.remove(leftover)
        assert not alive, f"loader workers {alive} outlived the killed training process"
    finally:
        if proc.poll() is None:
            proc.kill()
