"""Training and evaluation end to end on the quick-start digits (small lists, 32 px)."""

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, ROOT, config_args, digits_overrides
from ppcls.engine.engine import Engine
from ppcls.ops import depthwise_conv
from ppcls.utils.config import get_config
from ppcls.weights import read_states

CHECKPOINT_FILES = (".pdparams", ".pdopt", ".pdstates")


def make_engine(digits, output_dir, mode="train", **kwargs):
    return Engine(get_config(QUICK_START, digits_overrides(digits, output_dir, **kwargs)), mode)


def read_log_losses(output_dir):
    log = open(os.path.join(output_dir, "MnasNet_B1_x0_5", "train.log")).read()
    return [float(x) for x in re.findall(r"\[Iter: \d+/\d+\]lr: [\d.]+, CELoss: ([\d.]+)", log)]


def test_training_lowers_loss_and_writes_checkpoints(digits, tmp_path):
    # With 10 classes torchvision's classifier init (bound sqrt(3 / class_num)) starts from
    # logits near 30, which 18 steps cannot bring down; 1000 outputs start near log(1000).
    engine = make_engine(digits, tmp_path, epochs=3, extra=["Arch.class_num=1000"])
    engine.train()
    losses = read_log_losses(tmp_path)
    assert len(losses) == 3 * 6  # 96 images / 16 per batch, every iteration logged
    epoch_means = [np.mean(losses[i:i + 6]) for i in (0, 6, 12)]
    assert epoch_means[2] < epoch_means[1] < epoch_means[0], epoch_means
    out = tmp_path / "MnasNet_B1_x0_5"
    for name in ("best_model", "latest", "epoch_1", "epoch_2", "epoch_3"):
        for suffix in CHECKPOINT_FILES:
            assert (out / (name + suffix)).is_file(), name + suffix
    state = read_states(str(out / "latest"))
    assert state["epoch"] == 3 and state["iter"] == 6 and state["seed"] == 7
    assert state["best"]["epoch"] >= 1 and 0 <= state["best"]["metric"] <= 1


def test_keep_checkpoint_max_keeps_the_newest_epochs(digits, tmp_path):
    make_engine(digits, tmp_path, epochs=3, extra=["Global.keep_checkpoint_max=2"]).train()
    out = tmp_path / "MnasNet_B1_x0_5"
    assert not list(out.glob("epoch_1.*"))
    for name in ("epoch_2", "epoch_3", "latest", "best_model"):
        assert (out / f"{name}.pdparams").is_file(), name


def test_checkpoints_auto_starts_fresh_then_resumes_latest(digits, tmp_path, capsys):
    make_engine(digits, tmp_path, epochs=1, extra=["Global.checkpoints=auto"]).train()
    assert "Global.checkpoints is auto and" in capsys.readouterr().out
    again = make_engine(digits, tmp_path, epochs=2, extra=["Global.checkpoints=auto"])
    assert (again.start_epoch, again.start_iter) == (2, 0)
    assert f"resumed from {tmp_path / 'MnasNet_B1_x0_5' / 'latest'}" in capsys.readouterr().out


def test_a_global_batch_other_than_the_tuned_one_warns_how_to_scale(digits, tmp_path, capsys):
    make_engine(digits, tmp_path, epochs=1, extra=["Global.global_batch_size=64"])
    out = capsys.readouterr().out
    assert ("global batch is 1 process(es) x 16 = 16, but the config's learning rate is tuned "
            "for Global.global_batch_size 64: scale Optimizer.lr.learning_rate linearly "
            "(0.05 x 16/64 = 0.0125)") in out
    make_engine(digits, tmp_path, epochs=1, extra=["Global.global_batch_size=16"])
    assert "global batch" not in capsys.readouterr().out


def test_same_seed_gives_identical_losses(digits, tmp_path):
    make_engine(digits, tmp_path / "a", epochs=1).train()
    make_engine(digits, tmp_path / "b", epochs=1).train()
    assert read_log_losses(tmp_path / "a") == read_log_losses(tmp_path / "b")


def run_tool(*args, nproc=None):
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "paddle.distributed.launch", "--log_dir", tempfile.mkdtemp(),
                "--nproc_per_node", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def eval_top1(output):
    line = re.search(r"\[Eval\]\[Epoch 0\]\[Avg\].*", output)
    assert line, output[-2000:]
    correct, total = re.search(r"top1 (\d+)/(\d+)", line.group(0)).groups()
    return int(correct) / int(total), line.group(0)


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_best_model_metric_equals_eval_tool(digits, tmp_path, ema):
    extra = ["EMA.decay=0.9"] if ema else []
    make_engine(digits, tmp_path, epochs=2, extra=extra).train()
    best = tmp_path / "MnasNet_B1_x0_5" / "best_model"
    state = read_states(str(best))
    assert os.path.isfile(str(best) + ".pdema") == ema
    output = run_tool("tools/eval.py", *config_args(digits_overrides(digits, tmp_path / "eval"),
                                                    f"Global.pretrained_model={best}", *extra))
    top1, line = eval_top1(output)
    assert top1 == state["metric"], line
    assert ("EMA weights" in line) == ema


UPSTREAM_SCHEMA = os.path.join(ROOT, "tests", "fixtures", "upstream_mobilenetv2_schema.yaml")


def test_upstream_paddleclas_config_runs(digits, tmp_path):
    """A config in upstream PaddleClas's ImageNet schema (its MobileNetV2 layout: 224 crops,
    Momentum + Cosine, L2, CELoss, TopkAcc, DistributedBatchSampler) runs with Arch.name and
    the data paths changed, plus the CPU device and a single short epoch for CI."""
    overrides = [
        "Arch.name=MnasNet_B1_x0_5",
        f"DataLoader.Train.dataset.image_root={digits}",
        f"DataLoader.Train.dataset.cls_label_path={digits}/val_odd.txt",
        f"DataLoader.Eval.dataset.image_root={digits}",
        f"DataLoader.Eval.dataset.cls_label_path={digits}/val_odd.txt",
        "Global.device=cpu", "Global.epochs=1", f"Global.output_dir={tmp_path}",
    ]
    engine = Engine(get_config(UPSTREAM_SCHEMA, overrides), "train")
    best = engine.train()
    assert best["epoch"] == 1
    assert (tmp_path / "MnasNet_B1_x0_5" / "latest.pdparams").is_file()


def test_amp_on_cpu_warns_and_trains_in_float32(digits, tmp_path, capsys):
    make_engine(digits, tmp_path / "fp32", epochs=1).train()
    amp = make_engine(digits, tmp_path / "amp", epochs=1,
                      extra=["AMP.use_amp=True", "AMP.level=O2"])
    assert amp.amp is None
    assert "AMP needs a GPU: training in float32" in capsys.readouterr().out
    amp.train()
    assert read_log_losses(tmp_path / "amp") == read_log_losses(tmp_path / "fp32")


def test_to_static_training_matches_dygraph(digits, tmp_path):
    """The compiled step uses Paddle's depthwise kernel, so dygraph does too here: early
    training at 32 px amplifies float32 rounding differences between kernels."""
    with depthwise_conv.enabled(False):
        make_engine(digits, tmp_path / "dy", epochs=1).train()
    make_engine(digits, tmp_path / "st", epochs=1, extra=["Global.to_static=True"]).train()
    assert depthwise_conv.applies(paddle.randn([1, 4, 8, 8]), paddle.randn([4, 1, 3, 3]), None,
                                  1, 1, 1, 4)  # to_static training left the kernel on
    np.testing.assert_allclose(read_log_losses(tmp_path / "st"), read_log_losses(tmp_path / "dy"),
                               rtol=1e-3)


def test_visualdl_records_the_logged_values(digits, tmp_path):
    """Every logged training loss and learning rate, and each epoch's eval top-1, read back
    from the VisualDL record with its step."""
    from visualdl import LogReader

    make_engine(digits, tmp_path, epochs=2, extra=["Global.use_visualdl=True"]).train()
    (record,) = (tmp_path / "MnasNet_B1_x0_5" / "vdl").glob("vdlrecords.*")
    reader = LogReader(file_path=str(record))
    log = (tmp_path / "MnasNet_B1_x0_5" / "train.log").read_text()
    logged = re.findall(r"\[Epoch (\d)/2\]\[Iter: (\d+)/6\]lr: ([\d.]+), CELoss: ([\d.]+)", log)
    steps = [(int(e) - 1) * 6 + int(i) for e, i, _, _ in logged]
    losses = reader.get_data("scalar", "Train/CELoss")
    assert [r.id for r in losses] == steps
    close = dict(abs=1.1e-5)  # the log prints 5 decimals; VisualDL stores float32
    assert [r.value for r in losses] == pytest.approx([float(x[3]) for x in logged], **close)
    lrs = reader.get_data("scalar", "Train/lr")
    assert [r.value for r in lrs] == pytest.approx([float(x[2]) for x in logged], **close)
    top1 = re.findall(r"\[Eval\]\[Epoch (\d)\]\[Avg\].*top1: ([\d.]+)", log)
    evals = reader.get_data("scalar", "Eval/top1")
    assert [r.id for r in evals] == [int(e) for e, _ in top1] == [1, 2]
    assert [r.value for r in evals] == pytest.approx([float(v) for _, v in top1], **close)


def test_amp_o2_master_weights_keep_the_loaded_float32_values():
    """O2 casts parameters to float16 in place (here through the same initialiser decorate
    uses on GPUs, which is a no-op on CPU); the optimizer's float32 masters must hold the
    loaded values, not their float16 rounding."""
    from paddle.amp.auto_cast import amp_initialize

    from ppcls.arch import build_model
    from ppcls.engine.engine import keep_float32_masters

    def cast_model():
        model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "class_num": 10}})
        loaded = {p.name: p.numpy().copy() for p in model.parameters()}
        return model, loaded

    model, loaded = cast_model()
    optimizer = paddle.optimizer.Momentum(0.1, parameters=model.parameters(),
                                          multi_precision=True)
    keep_float32_masters(optimizer, model)
    amp_initialize([model], "float16", None)
    cast = [p for p in model.parameters() if p.dtype == paddle.float16]
    assert cast, "nothing was cast to float16"
    for param in cast:
        master = optimizer._create_master_weight(param)  # what the first step will use
        np.testing.assert_array_equal(master.numpy(), loaded[param.name], err_msg=param.name)

    model, loaded = cast_model()  # without it, the masters are the float16 rounding
    optimizer = paddle.optimizer.Momentum(0.1, parameters=model.parameters(),
                                          multi_precision=True)
    amp_initialize([model], "float16", None)
    param = next(p for p in model.parameters() if p.dtype == paddle.float16)
    assert not np.array_equal(optimizer._create_master_weight(param).numpy(), loaded[param.name])


# Every way a tensor's value reaches Python; each makes the host wait for the device.
HOST_READS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__",
              "__array__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts reads of tensor values on the host, in Paddle's own Tensor methods."""
    reads = []
    for name in HOST_READS:
        original = getattr(paddle.Tensor, name, None)
        if original is None:
            continue

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(paddle.Tensor, name, counted)
    return reads


def test_training_reads_the_device_only_at_checked_steps(digits, tmp_path, host_reads):
    """24 steps logged at the first and the last only: losses and accuracies stay on the
    device and are read there and every 10 steps (where several processes agree on
    stopping), once each time; before, each step read them (288 reads in these 24 steps)."""
    engine = make_engine(digits, tmp_path, epochs=1, extra=[
        "DataLoader.Train.sampler.batch_size=4", "Global.print_batch_step=1000", "EMA.decay=0.9"])
    assert engine.steps_per_epoch == 24
    del host_reads[:]
    engine.train_epoch(1)
    checked_steps = [0, 10, 20, 23]
    assert len(host_reads) <= len(checked_steps), host_reads
