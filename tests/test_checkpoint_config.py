"""A checkpoint knows its config (issue 26): training keeps the resolved config beside its
checkpoints (config.yaml) and inside each one (`.pdstates`), so the mission's own line,
`python tools/eval.py -o Global.pretrained_model=<checkpoint>`, and infer and export run
without -c and rebuild the same model and data settings; -c and -o still win; weights that
carry no config ask for -o Arch.name in one line."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, ROOT, config_args, digits_overrides
from parity import load_fixture, reference_weights
from ppcls.engine.engine import Engine
from ppcls.utils.cli import run
from ppcls.utils.config import get_config, stored_config_text
from ppcls.utils.yaml_file import dump_yaml, load_yaml, yaml_load
from ppcls.weights import read_states
from tools import eval as eval_tool
from tools import export_model as export_tool
from tools import infer as infer_tool
from tools import train as train_tool

ARCH = "MnasNet_B1_x0_5"
TOOLS = {"eval": eval_tool, "infer": infer_tool, "export": export_tool}
INFER_YAML = os.path.join(ROOT, "infer.yaml")


def run_overrides(digits, output_dir, extra=()):
    """The quick start as a seconds-long run, with infer and export settings of its own."""
    return digits_overrides(digits, output_dir, epochs=2, extra=[
        f"Infer.infer_imgs={digits}/images/val/3/",
        f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt",
        f"Global.save_inference_dir={output_dir}/inference", *extra])


def train(digits, output_dir, extra=()):
    overrides = run_overrides(digits, output_dir, extra)
    Engine(get_config(QUICK_START, overrides), "train").train()
    return {"overrides": overrides, "dir": output_dir / ARCH,
            "best": str(output_dir / ARCH / "best_model")}


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    return train(digits, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def trained_ema(digits, tmp_path_factory):
    return train(digits, tmp_path_factory.mktemp("run_ema"), extra=["EMA.decay=0.9"])


def tool(name, args, capsys):
    """Run a tool in this process as its command line would: (exit code, stdout, stderr)."""
    module = TOOLS.get(name) or train_tool
    code = run(module.main, module.arguments(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def o(*overrides):
    return [arg for item in overrides for arg in ("-o", item)]


def eval_line(output):
    """The [Eval] line from its bracket on (the timestamp before it differs)."""
    found = re.findall(r"\[Eval\]\[Epoch 0\]\[Avg\].*", output)
    assert len(found) == 1, output[-3000:]
    return found[0]


def counted(line):
    return tuple(int(n) for n in re.search(r"top1 (\d+)/(\d+)", line).groups())


def one_error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# ------------------------------------------------------------ what training keeps
def test_training_keeps_its_resolved_config_beside_and_inside_its_checkpoints(trained):
    resolved = get_config(QUICK_START, trained["overrides"])
    path = trained["dir"] / "config.yaml"
    assert load_yaml(str(path)) == resolved
    path.read_bytes().decode("utf-8")  # UTF-8
    for name in ("best_model", "latest", "epoch_1", "epoch_2"):
        assert yaml_load(read_states(str(trained["dir"] / name))["config"]) == resolved, name


def test_the_mission_command_line_evaluates_as_with_c(trained):
    """`python tools/eval.py -o Global.pretrained_model=...`, in a process of its own,
    prints the [Eval] line that the same command with -c prints (failed before: argparse's
    "the following arguments are required: -c/--config")."""
    def command_line(*args):
        done = subprocess.run([sys.executable, "tools/eval.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr[-3000:]
        return eval_line(done.stdout + done.stderr)

    weights = f"Global.pretrained_model={trained['best']}"
    without_c = command_line("-o", weights)
    with_c = command_line(*config_args(trained["overrides"], weights))
    assert without_c == with_c
    assert counted(without_c)[0] / counted(without_c)[1] == \
        read_states(trained["best"])["metric"]


def test_eval_without_c_evaluates_the_ema_weights_training_evaluated(trained_ema, capsys):
    weights = f"Global.pretrained_model={trained_ema['best']}"
    code, out, err = tool("eval", o(weights), capsys)
    assert code == 0, err
    line = eval_line(out)
    assert "EMA weights" in line
    assert counted(line)[0] / counted(line)[1] == read_states(trained_ema["best"])["metric"]
    code, out, err = tool("eval", config_args(trained_ema["overrides"], weights), capsys)
    assert eval_line(out) == line


def write_list(digits, path, count):
    lines = (digits / "val_list.txt").read_text().splitlines()[:count]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_c_and_o_win_over_the_stored_config(trained, digits, tmp_path, capsys):
    weights = f"Global.pretrained_model={trained['best']}"
    code, out, err = tool("eval", o(weights), capsys)
    assert counted(eval_line(out))[1] == 37  # the stored config's list, val_odd.txt
    twenty = write_list(digits, tmp_path / "twenty.txt", 20)
    code, out, err = tool("eval", o(weights, f"DataLoader.Eval.dataset.cls_label_path={twenty}"),
                          capsys)
    assert code == 0, err
    assert counted(eval_line(out))[1] == 20
    # -c: the file is the config; the checkpoint's own is not read
    config = load_yaml(QUICK_START)
    config["DataLoader"]["Eval"]["dataset"].update(
        image_root=str(digits), cls_label_path=str(write_list(digits, tmp_path / "25.txt", 25)))
    config["Global"]["output_dir"] = str(tmp_path / "out")
    (tmp_path / "mine.yaml").write_text(dump_yaml(config), encoding="utf-8")
    code, out, err = tool("eval", ["-c", str(tmp_path / "mine.yaml"), *o(weights)], capsys)
    assert code == 0, err
    assert counted(eval_line(out))[1] == 25


def test_a_checkpoint_copied_alone_rebuilds_its_config_from_its_states(trained_ema, tmp_path,
                                                                       capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for suffix in (".pdparams", ".pdopt", ".pdema", ".pdstates"):
        shutil.copy(trained_ema["best"] + suffix, elsewhere)
    assert sorted(os.listdir(elsewhere)) == sorted(
        f"best_model{s}" for s in (".pdparams", ".pdopt", ".pdema", ".pdstates"))
    code, out, err = tool("eval", o(f"Global.pretrained_model={elsewhere / 'best_model'}"),
                          capsys)
    assert code == 0, err
    copied = eval_line(out)
    code, out, err = tool("eval", o(f"Global.pretrained_model={trained_ema['best']}"), capsys)
    assert copied == eval_line(out) and "EMA weights" in copied


def test_infer_without_c_predicts_what_infer_with_c_predicts(trained, digits, tmp_path, capsys):
    weights = f"Global.pretrained_model={trained['best']}"
    code, _, err = tool("infer", o(weights, f"Infer.save_path={tmp_path}/a.json"), capsys)
    assert code == 0, err
    code, _, err = tool("infer", config_args(trained["overrides"], weights,
                                             f"Infer.save_path={tmp_path}/b.json"), capsys)
    assert code == 0, err
    without_c = json.loads((tmp_path / "a.json").read_text())
    assert without_c == json.loads((tmp_path / "b.json").read_text())
    assert len(without_c) == len(os.listdir(digits / "images" / "val" / "3"))


def test_export_without_c_writes_what_export_with_c_writes(trained, tmp_path, capsys):
    weights = f"Global.pretrained_model={trained['best']}"
    code, _, err = tool("export", o(weights, f"Global.save_inference_dir={tmp_path}/a"), capsys)
    assert code == 0, err
    code, _, err = tool("export", config_args(trained["overrides"], weights,
                                              f"Global.save_inference_dir={tmp_path}/b"), capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "inference.yml").read_text() == \
        (tmp_path / "b" / "inference.yml").read_text()
    # the parameter files name tensors by creation order: compare what the models answer
    images = paddle.to_tensor(np.random.default_rng(0).random((2, 3, 32, 32), np.float32))
    a, b = (paddle.jit.load(str(tmp_path / d / "inference"))(images).numpy() for d in "ab")
    np.testing.assert_array_equal(a, b)


def test_train_resumes_from_a_checkpoint_without_c(trained, tmp_path, capsys):
    code, out, err = tool("train", o(f"Global.checkpoints={trained['dir'] / 'latest'}",
                                     f"Global.output_dir={tmp_path}", "Global.epochs=3"), capsys)
    assert code == 0, err
    assert f"resumed from {trained['dir'] / 'latest'}: epoch 3, iteration 0" in out
    assert read_states(str(tmp_path / ARCH / "latest"))["epoch"] == 3
    resumed = load_yaml(str(tmp_path / ARCH / "config.yaml"))
    assert resumed["Global"]["epochs"] == 3 and resumed["Global"]["output_dir"] == str(tmp_path)


def test_train_without_c_or_a_checkpoint_is_one_line(capsys):
    line = one_error_line(*tool("train", o("Global.epochs=3"), capsys)[::2])
    assert "-c" in line and "-o Global.checkpoints=" in line


# ------------------------------------------------------ what went stale elsewhere
def with_stored_config(prefix, target, change):
    """A copy of the checkpoint at `prefix` at `target`, its stored config changed by
    `change(config)`: what a checkpoint trained on another machine looks like here."""
    for suffix in (".pdparams", ".pdopt"):
        shutil.copy(prefix + suffix, target + suffix)
    state = read_states(prefix)
    config = yaml_load(state["config"])
    change(config)
    state["config"] = dump_yaml(config)
    paddle.save(state, target + ".pdstates")
    return target


def test_stale_dataset_paths_are_one_line_naming_the_key(trained, digits, tmp_path, capsys):
    def elsewhere(config):
        config["DataLoader"]["Eval"]["dataset"].update(
            image_root="/data/alice/digits", cls_label_path="/data/alice/digits/val.txt")

    moved = with_stored_config(trained["best"], str(tmp_path / "best_model"), elsewhere)
    line = one_error_line(*tool("eval", o(f"Global.pretrained_model={moved}"), capsys)[::2])
    assert "/data/alice/digits/val.txt" in line
    assert "-o DataLoader.Eval.dataset.cls_label_path=" in line
    line = one_error_line(*tool("eval", o(
        f"Global.pretrained_model={moved}",
        f"DataLoader.Eval.dataset.cls_label_path={digits}/val_odd.txt"), capsys)[::2])
    assert "/data/alice/digits" in line and "-o DataLoader.Eval.dataset.image_root=" in line
    code, out, err = tool("eval", o(
        f"Global.pretrained_model={moved}", f"DataLoader.Eval.dataset.image_root={digits}",
        f"DataLoader.Eval.dataset.cls_label_path={digits}/val_odd.txt"), capsys)
    assert code == 0, err
    assert counted(eval_line(out)) == counted(eval_line(tool(
        "eval", o(f"Global.pretrained_model={trained['best']}"), capsys)[1]))


# ------------------------------------------------ weights that carry no config
def torchvision_pth(path):
    """torchvision's MnasNet 0.5 (the parity fixture's reference weights) as its .pth."""
    import torch_format

    fixture = load_fixture(f"{ROOT}/tests/fixtures/parity/torchvision_mnasnet0_5.json")
    torch_format.save({k: torch_format.tensor(v) for k, v in reference_weights(fixture).items()},
                      path)
    return str(path)


@pytest.fixture
def weights_without_config(trained, tmp_path, request):
    if request.param == "pdparams":
        target = tmp_path / "bare.pdparams"
        shutil.copy(trained["best"] + ".pdparams", target)
        return str(target)
    if request.param == "pth":
        return torchvision_pth(tmp_path / "mnasnet0.5_top1_67.823-3ffadce67e.pth")
    return "http://127.0.0.1:9/mnasnet0.5_top1_67.823-3ffadce67e.pth"  # never fetched


@pytest.mark.parametrize("weights_without_config", ["pdparams", "pth", "url"], indirect=True)
@pytest.mark.parametrize("name", list(TOOLS))
def test_weights_without_a_config_ask_for_arch_name_in_one_line(weights_without_config, name,
                                                                capsys):
    line = one_error_line(*tool(name, o(f"Global.pretrained_model={weights_without_config}"),
                                capsys)[::2])
    assert weights_without_config in line and "-o Arch.name=" in line and "-c" in line


def test_a_fine_tuned_checkpoint_needs_not_the_weights_it_started_from(digits, tmp_path,
                                                                     capsys):
    """Fine-tuned from published weights (Arch.pretrained: a file here; a download
    elsewhere): its checkpoint, evaluated without -c, is all that is read, so the starting
    weights are neither fetched again nor needed (failed before: "weights file not found"
    for the deleted start.pth)."""
    start = torchvision_pth(tmp_path / "start.pth")
    run = train(digits, tmp_path / "run", extra=[f"Arch.pretrained={start}"])
    os.remove(start)
    code, out, err = tool("eval", o(f"Global.pretrained_model={run['best']}"), capsys)
    assert code == 0, err
    line = eval_line(out)
    assert counted(line)[0] / counted(line)[1] == read_states(run["best"])["metric"]


def test_published_weights_with_arch_name_predict_and_export_as_infer_yaml_does(tmp_path,
                                                                              capsys):
    """Without -c and a config in the weights, -o Arch.name picks the model and infer.yaml
    (the one-command prediction config) the rest: the same as -c infer.yaml."""
    pth = torchvision_pth(tmp_path / "mnasnet0.5_top1_67.823-3ffadce67e.pth")
    mine = [f"Global.pretrained_model={pth}", f"Arch.name={ARCH}",
            f"Infer.infer_imgs={ROOT}/demo"]
    for args, save in ((o(*mine), "a"), (["-c", INFER_YAML, *o(*mine)], "b")):
        code, out, err = tool("infer", args + o(f"Infer.save_path={tmp_path}/{save}.json"), capsys)
        assert code == 0, err
        code, out, err = tool("export", args + o(f"Global.save_inference_dir={tmp_path}/{save}"),
                              capsys)
        assert code == 0, err
    results = json.loads((tmp_path / "a.json").read_text())
    assert results == json.loads((tmp_path / "b.json").read_text())
    assert len(results) == 4 and all(len(r["label_names"]) == 5 for r in results)
    assert (tmp_path / "a" / "inference.yml").read_text() == \
        (tmp_path / "b" / "inference.yml").read_text()
    assert f"model_name: {ARCH}" in (tmp_path / "a" / "inference.yml").read_text()


def test_published_weights_with_arch_name_evaluate_with_the_variant_config(tmp_path, capsys):
    """eval's default is the variant's ImageNet config: its eval set, named when absent."""
    pth = torchvision_pth(tmp_path / "mnasnet0.5_top1_67.823-3ffadce67e.pth")
    line = one_error_line(*tool("eval", o(
        f"Global.pretrained_model={pth}", f"Arch.name={ARCH}", "Global.device=cpu",
        f"Global.output_dir={tmp_path}"), capsys)[::2])
    assert "./dataset/ILSVRC2012/val_list.txt" in line
    assert "-o DataLoader.Eval.dataset.cls_label_path=" in line


# ---------------------------------------------------------- the stored YAML itself
CONFIGS = sorted(
    [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(ROOT, "configs"))
     for name in names if name.endswith(".yaml")] + [INFER_YAML])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_a_stored_config_reads_back_as_the_config_it_was(path):
    config = get_config(path)
    text = stored_config_text(config)
    assert yaml_load(text) == config


def test_strings_that_look_like_numbers_stay_strings():
    document = {"a": "1e5", "b": "1.0/255.0", "c": "", "d": "null", "e": "True", "f": 1e-5,
                "g": "0x10", "h": "élan"}
    assert yaml_load(dump_yaml(document)) == document


def test_a_config_too_large_to_keep_in_the_states_is_left_out_with_a_warning(capsys):
    config = get_config(QUICK_START, [f"Infer.infer_imgs=[{', '.join(['x' * 1000] * 1100)}]"])
    assert stored_config_text(config) is None
    assert "not kept in the checkpoints" in capsys.readouterr().out


def test_weights_that_are_not_there_are_named_without_c(tmp_path, capsys):
    line = one_error_line(*tool("eval", o(f"Global.pretrained_model={tmp_path}/best_model"),
                                capsys)[::2])
    assert f"weights file not found: {tmp_path}/best_model.pdparams" in line


def test_a_stored_config_is_read_as_a_file_is(trained, tmp_path, capsys):
    """Through the same reader and checks: a bad value is named after the checkpoint."""
    def misspelt(config):
        config["Global"]["epoch"] = config["Global"].pop("epochs")

    bad = with_stored_config(trained["best"], str(tmp_path / "best_model"), misspelt)
    line = one_error_line(*tool("eval", o(f"Global.pretrained_model={bad}"), capsys)[::2])
    assert line.startswith(f"error: {bad}.pdstates: ") and "epoch" in line
    assert "did you mean 'epochs'" in line


def test_a_stored_config_that_would_run_code_is_refused(trained, tmp_path, capsys):
    from test_no_code_from_files import write_hostile

    marker = tmp_path / "ran"
    for suffix in (".pdparams", ".pdopt"):
        shutil.copy(trained["best"] + suffix, tmp_path / f"best_model{suffix}")
    state = read_states(trained["best"])
    write_hostile(tmp_path / "best_model.pdstates", marker, like=state)
    line = one_error_line(*tool("eval", o(f"Global.pretrained_model={tmp_path}/best_model"),
                                capsys)[::2])
    assert not marker.exists(), "the file's code ran"
    assert "best_model.pdstates" in line and "refused" in line
