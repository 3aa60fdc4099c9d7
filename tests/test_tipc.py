"""The TIPC scripts: outcome lines, exit codes, and PaddleClas-written configs."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

B1_X0_5 = os.path.join(ROOT, "test_tipc", "configs", "MnasNet", "MnasNet_B1_x0_5_train_infer_python.txt")


def small_config(tmp_path, text, name):
    """The B1 x0.5 config cut down to one process, one trainer and one inference setting."""
    text = (text.replace("gpu_list:0|0,1", "gpu_list:0")
                .replace("trainer:norm_train|to_static_train", "trainer:norm_train")
                .replace("-o Global.use_gpu:True|False", "-o Global.use_gpu:False")
                .replace("-o Global.enable_mkldnn:True|False", "-o Global.enable_mkldnn:True")
                .replace("-o Global.cpu_num_threads:1|2", "-o Global.cpu_num_threads:2")
                .replace("-o Global.batch_size:1|2", "-o Global.batch_size:2")
                .replace("lite_train_lite_infer=2|", "lite_train_lite_infer=1|"))
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bash(*args):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def lite_data():
    proc = bash("test_tipc/prepare.sh", B1_X0_5, "lite_train_lite_infer")
    assert proc.returncode == 0, proc.stderr


def results(model, mode="lite_train_lite_infer"):
    return open(os.path.join(ROOT, "test_tipc", "output", model, mode, "results_python.log")).read()


def test_a_broken_command_is_reported_failed_with_nonzero_exit(lite_data, tmp_path):
    text = open(B1_X0_5).read().replace("-o Global.seed=1234", "-o Global.seeed=1234")
    text = text.replace("model_name:MnasNet_B1_x0_5", "model_name:tipc_broken_check")
    config = small_config(tmp_path, text, "broken.txt")
    proc = bash("test_tipc/test_train_inference_python.sh", config, "lite_train_lite_infer",
                "MnasNet_B1_x0_5")
    assert proc.returncode != 0
    log = results("MnasNet_B1_x0_5")
    assert " Run failed with command - MnasNet_B1_x0_5 - python tools/train.py" in log
    assert "Global.seeed" in log and "Run successfully" not in log
    assert "Global: unknown key 'seeed' (did you mean 'seed'?)" in proc.stdout  # the failing command's own message


def test_paddleclas_written_config_runs_with_our_model_name(lite_data, tmp_path):
    """A TIPC config in PaddleClas's format for its MobileNetV2 (the YAML here is in the
    upstream schema) runs the whole chain with MnasNet_B1_x0_5 given as the model name."""
    upstream_yaml = "tests/fixtures/upstream_mobilenetv2_schema.yaml"
    text = open(B1_X0_5).read().replace("configs/ImageNet/MnasNet/MnasNet_B1_x0_5.yaml", upstream_yaml)
    text = text.replace("model_name:MnasNet_B1_x0_5", "model_name:MobileNetV2")
    config = small_config(tmp_path, text, "MobileNetV2_train_infer_python.txt")
    proc = bash("test_tipc/test_train_inference_python.sh", config, "lite_train_lite_infer",
                "MnasNet_B1_x0_5")
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = results("MnasNet_B1_x0_5")
    lines = [line for line in log.splitlines() if line.startswith(" Run ")]
    assert len(lines) == 4 and all(" Run successfully" in line for line in lines)  # train, eval, export, infer
    assert all("-o Arch.name=MnasNet_B1_x0_5" in line for line in lines[:3])
    assert "Skipped (use_fp16=True runs on GPUs here)" in log


AMP_CHAIN = os.path.join(ROOT, "test_tipc", "configs", "MnasNet",
                         "MnasNet_B1_x0_5_train_amp_infer_python.txt")


def test_amp_chain_and_a_missing_interpreter_are_named_on_cpu(lite_data, tmp_path):
    """PaddleClas's AMP chain form (trainer amp_train) runs unchanged on a GPU machine; on
    CPU each of its trainings is one clear skip line, and a config naming an interpreter
    that is not installed (upstream's python3.7) runs with the current one and says so."""
    text = open(AMP_CHAIN).read().replace("python:python", "python:python3.7")
    text = text.replace("model_name:MnasNet_B1_x0_5", "model_name:tipc_amp_check")
    config = tmp_path / "amp.txt"
    config.write_text(text)
    proc = bash("test_tipc/test_train_inference_python.sh", str(config), "lite_train_lite_infer")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "the config's interpreter python3.7 is not installed: running with" in proc.stdout
    log = results("tipc_amp_check")
    skips = [line for line in log.splitlines()
             if line.startswith(" Skipped (amp_train needs a GPU")]
    assert len(skips) == 2  # gpu_list 0 and 0,1
    assert "-o AMP.use_amp=True" in skips[0] and "-o AMP.level=O2" in skips[0]
    assert "TIPC: 0 passed, 0 failed" in proc.stdout


PTQ_B1_X0_5 = os.path.join(ROOT, "test_tipc", "configs", "MnasNet", "MnasNet_B1_x0_5_train_ptq_infer_python.txt")


def test_ptq_chain_quantizes_and_predicts_in_int8(tmp_path):
    """PaddleClas's PTQ chain (klquant_whole_infer) on B1 x0.5, cut to one CPU setting: export,
    deploy/slim/quant_post_static.py, the predictor with oneDNN INT8, ONNX Runtime QDQ."""
    text = open(PTQ_B1_X0_5).read().replace("-o Global.enable_mkldnn:True|False", "-o Global.enable_mkldnn:True")
    text = text.replace("model_name:MnasNet_B1_x0_5", "model_name:tipc_ptq_check").replace("python:python", "python:python3.7")
    config = tmp_path / "ptq.txt"
    config.write_text(text)
    assert bash("test_tipc/prepare.sh", str(config), "klquant_whole_infer").returncode == 0
    proc = bash("test_tipc/test_ptq_inference_python.sh", str(config), "klquant_whole_infer")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "TIPC: 4 passed, 0 failed" in proc.stdout  # export, kl_quant, paddle int8, onnxruntime qdq
    log = results("tipc_ptq_check", "klquant_whole_infer")
    assert "-o Global.enable_mkldnn=True -o Global.use_int8=True" in log
    assert "Skipped (use_gpu=True needs a GPU)" in log
    out = os.path.join(ROOT, "test_tipc", "output", "tipc_ptq_check", "klquant_whole_infer")
    assert os.path.isfile(os.path.join(out, "MnasNet_B1_x0_5_infer", "quant_post_static_model", "inference.pdmodel"))


DY2STATIC_ARGS = "to_static_train:-o Global.to_static=True"


def one_epoch(text):
    return text.replace("lite_train_lite_infer=2|", "lite_train_lite_infer=1|")


def test_dy2static_check_passes_for_the_config_and_fails_on_a_different_pair(lite_data, tmp_path):
    """The to_static training of the B1 x0.5 config matches dygraph loss by loss; the same
    check on a pair that really differs (the to_static side at another learning rate) fails,
    naming the first step whose loss differs."""
    text = one_epoch(open(B1_X0_5).read())
    same = tmp_path / "same.txt"
    same.write_text(text)
    proc = bash("test_tipc/test_train_dy2static_python.sh", str(same))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "6 steps: losses agree within rtol 0.0001" in proc.stdout
    assert "TIPC: 3 passed, 0 failed" in proc.stdout

    assert DY2STATIC_ARGS in text
    other = tmp_path / "other.txt"
    other.write_text(text.replace(DY2STATIC_ARGS, DY2STATIC_ARGS + " -o Optimizer.lr.learning_rate=4.0"))
    proc = bash("test_tipc/test_train_dy2static_python.sh", str(other))
    assert proc.returncode != 0
    # the warm-up's first learning rate is 0, so step 1's update is the first that differs
    assert "error: losses differ at epoch 1 iteration 2:" in proc.stdout
    assert "TIPC: 2 passed, 1 failed" in proc.stdout


P2O_B1_X0_5 = os.path.join(ROOT, "test_tipc", "configs", "MnasNet",
                           "MnasNet_B1_x0_5_paddle2onnx_python_linux_cpu.txt")


def test_paddle2onnx_chain_with_upstream_interpreter_name(tmp_path):
    """PaddleClas's python3.7 (not installed here) runs with the current interpreter and says
    so; export, conversion, ONNX Runtime and Paddle Inference predictions all pass and agree."""
    config = tmp_path / "p2o.txt"
    config.write_text(open(P2O_B1_X0_5).read().replace("python:python", "python:python3.7"))
    proc = bash("test_tipc/prepare.sh", str(config), "paddle2onnx_infer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = bash("test_tipc/test_paddle2onnx.sh", str(config), "paddle2onnx_infer")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("the config's interpreter python3.7 is not installed: running with") == 1
    assert "TIPC: 5 passed, 0 failed" in proc.stdout
    assert os.path.isfile(os.path.join(ROOT, "deploy", "models", "MnasNet_B1_x0_5_infer", "inference.onnx"))
    assert "-o Global.use_onnx=True" in results_of("MnasNet_B1_x0_5", "paddle2onnx_infer",
                                                   "results_paddle2onnx.log")


def results_of(model, mode, name):
    return open(os.path.join(ROOT, "test_tipc", "output", model, mode, name)).read()


def test_prediction_comparison_fails_when_scores_differ(tmp_path):
    """compare_runs.py predictions (the paddle2onnx chain's last step) sees a score moved
    by more than atol, and a result list for other images."""
    import json
    import sys

    sys.path.insert(0, os.path.join(ROOT, "test_tipc"))
    from compare_runs import main

    result = {"file_name": "a.jpg", "class_ids": [3, 1], "scores": [0.5, 0.25]}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([result]))
    b.write_text(json.dumps([dict(result, scores=[0.5, 0.2502])]))
    assert main(["predictions", str(a), str(b), "--atol", "1e-4"]) == 1
    b.write_text(json.dumps([dict(result, scores=[0.50005, 0.25])]))
    assert main(["predictions", str(a), str(b), "--atol", "1e-4"]) == 0
    b.write_text(json.dumps([dict(result, file_name="b.jpg")]))
    assert main(["predictions", str(a), str(b)]) == 1


def test_benchmark_train_prints_ips_and_skips_fp16_on_cpu():
    proc = bash("test_tipc/prepare.sh", B1_X0_5, "benchmark_train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = bash("test_tipc/benchmark_train.sh", B1_X0_5, "benchmark_train", "dynamic_bs16_fp16_DP_N1C1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " Skipped (fp16 (AMP) needs a GPU)" in proc.stdout and "TIPC: 0 passed, 0 failed" in proc.stdout

    proc = bash("test_tipc/benchmark_train.sh", B1_X0_5, "benchmark_train", "dynamic_bs48_fp32_DP_N1C1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "TIPC: 2 passed, 0 failed" in proc.stdout
    # 240 images in batches of 48: 5 logged iterations, the first 2 left out
    assert "mean of 3 logged iterations after the first 2, x1 process(es)" in proc.stdout
    import json
    speed_file = os.path.join(ROOT, "test_tipc", "output", "MnasNet_B1_x0_5", "benchmark_train", "index",
                              f"{os.path.basename(ROOT)}_MnasNet_B1_x0_5_bs48_fp32_DP_N1C1_speed")
    speed = json.load(open(speed_file))
    assert speed["ips"] > 0 and speed["iterations"] == 3 and speed["speed_unit"] == "samples/s"


def common_func(snippet):
    """Runs SNIPPET in bash after sourcing test_tipc/common_func.sh; its stdout."""
    proc = subprocess.run(["bash", "-c", f"source test_tipc/common_func.sh; {snippet}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("entry,visible,plan", [
    ("0", 1, "gpu 1"),
    ("0,1", 1, "skip gpu_list 0,1 needs 2 GPUs (card 1); 1 visible"),
    ("0,1", 2, "gpu 2"),
    ("0,1,2,3", 2, "skip gpu_list 0,1,2,3 needs 4 GPUs (card 2); 2 visible"),
    ("0,1", 0, "cpu 2"),   # no GPU: two CPU processes over gloo
    ("-1", 8, "cpu 1"),
])
def test_gpu_list_entries_use_only_the_cards_that_are_visible(entry, visible, plan):
    """PaddleClas's gpu_list 0|0,1 on a one-GPU machine: 0 trains on the card, 0,1 is one
    skip line instead of a launch that fails on a card that is not there."""
    assert common_func(f"gpu_entry {entry} {visible}") == plan


def test_visible_gpus_are_counted_by_paddle():
    assert common_func("visible_gpus") == "0"  # this CPU build
    assert common_func("has_gpu && echo yes || echo no") == "no"


def test_eval_gets_the_training_commands_amp_settings():
    train = ("tools/train.py -c x.yaml -o Global.seed=1 -o AMP.use_amp=True -o AMP.scale_loss=128 "
             "-o AMP.level=O2 -o Global.eval_during_train=False")
    assert common_func(f'amp_overrides "{train}"').split() == [
        "-o", "AMP.use_amp=True", "-o", "AMP.scale_loss=128", "-o", "AMP.level=O2"]


def eval_log(path, *lines):
    path.write_text("".join(f"[2026/01/01 00:00:00] INFO: {line}\n" for line in lines))
    return str(path)


def test_eval_comparison_reads_the_last_eval_of_each_log(tmp_path):
    """compare_runs.py evals: the training's last [Eval] line against tools/eval.py's, as exact
    fractions; --max_diff allows that many images either way (GPU non-determinism)."""
    sys.path.insert(0, os.path.join(ROOT, "test_tipc"))
    from compare_runs import main

    train = eval_log(tmp_path / "train.log",
                     "[Eval][Epoch 1][Avg]loss: 1.50000, top1: 0.50000, top5: 1.00000 (top1 6/12, top5 12/12 correct, EMA weights)",
                     "[Eval][Epoch 2][Avg]loss: 1.20000, top1: 0.58333, top5: 1.00000 (top1 7/12, top5 12/12 correct, EMA weights)")
    same = eval_log(tmp_path / "same.log",
                    "[Eval][Epoch 0][Avg]loss: 1.20000, top1: 0.58333, top5: 1.00000 (top1 7/12, top5 12/12 correct, EMA weights)")
    first = eval_log(tmp_path / "first.log",
                     "[Eval][Epoch 0][Avg]loss: 1.50000, top1: 0.50000, top5: 1.00000 (top1 6/12, top5 12/12 correct, EMA weights)")
    model = eval_log(tmp_path / "model.log",
                     "[Eval][Epoch 0][Avg]loss: 1.20000, top1: 0.58333, top5: 1.00000 (top1 7/12, top5 12/12 correct, model weights)")
    assert main(["evals", train, same]) == 0
    assert main(["evals", train, first]) == 1
    assert main(["evals", train, first, "--max_diff", "1"]) == 0
    assert main(["evals", train, model]) == 1  # EMA against the raw weights is another measurement
    assert main(["evals", train, str(tmp_path / "none.log")]) == 1


def test_loss_comparison_of_a_resumed_run_takes_the_steps_it_ran(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "test_tipc"))
    from compare_runs import main

    def step(epoch, iteration, loss):
        return (f"[Train][Epoch {epoch}/2][Iter: {iteration}/3]lr: 0.01000, CELoss: {loss}, "
                f"loss: {loss}, top1: 0.5")
    full = eval_log(tmp_path / "full.log", *(step(e, i, 2.0 - e / 10 - i / 100)
                                             for e in (1, 2, 3) for i in range(3)))
    # resumed at epoch 2 iteration 1: its running average of epoch 2 restarts there
    resumed = eval_log(tmp_path / "resumed.log", step(2, 1, 1.5), step(2, 2, 1.6),
                       *(step(3, i, 1.7 - i / 100) for i in range(3)))
    assert main(["losses", full, resumed, "--resumed"]) == 0
    assert main(["losses", full, resumed]) == 1  # without --resumed the steps must be the same
    moved = eval_log(tmp_path / "moved.log", step(2, 1, 1.5), step(3, 0, 1.7), step(3, 1, 1.6))
    assert main(["losses", full, moved, "--resumed"]) == 1
    partial = eval_log(tmp_path / "partial.log", step(3, 1, 1.69), step(3, 2, 1.68))
    assert main(["losses", full, partial, "--resumed"]) == 1  # no whole epoch to compare


def test_prediction_comparison_can_require_the_same_top1(tmp_path):
    import json

    sys.path.insert(0, os.path.join(ROOT, "test_tipc"))
    from compare_runs import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"file_name": "x.jpg", "class_ids": [3, 1], "scores": [0.50001, 0.5]}]))
    b.write_text(json.dumps([{"file_name": "x.jpg", "class_ids": [1, 3], "scores": [0.50001, 0.5]}]))
    assert main(["predictions", str(a), str(b), "--atol", "1e-4"]) == 0
    assert main(["predictions", str(a), str(b), "--atol", "1e-4", "--same_top1"]) == 1
