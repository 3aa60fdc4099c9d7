"""Nothing from a file runs code (issue 22). A pickle that would call os.system to create a
marker file is put in every place the tools read weights, optimizer or training state from:
Global.pretrained_model and Arch.pretrained of train/eval/infer/export (a path and an
http://127.0.0.1 URL), tools/convert_weights.py, each part of a resume folder (with the
manifest rewritten to match), a `.pdstates` beside good weights, and pickles named like
PyTorch or safetensors files. Each is refused with one line naming the file and the global,
exit code 2, and the marker never appears."""

import hashlib
import os
import pickle
import shutil

import numpy as np
import paddle
import pytest

from conftest import QUICK_START, config_args, digits_overrides
from ppcls.engine.engine import Engine
from ppcls.utils.cli import run
from ppcls.utils.config import get_config, parse_args
from tools import convert_weights
from tools import eval as eval_tool
from tools import export_model as export_tool
from tools import infer as infer_tool
from tools import train as train_tool

ARCH_DIR = "MnasNet_B1_x0_5"
SYSTEM = f"'{os.system.__module__}.system'"  # how the refusal names os.system (posix on Linux)
TOOLS = {"train": train_tool, "eval": eval_tool, "infer": infer_tool, "export": export_tool}


class RunsCommand:
    """Unpickled without restriction, this runs `command` in a shell."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_hostile(path, marker, like=None, protocol=4):
    """A pickle of `like` (by default a one-tensor state dict) plus one value that would
    touch `marker`."""
    obj = dict(like if like is not None else {"stem.conv.weight": np.zeros(3, np.float32)})
    obj["payload"] = RunsCommand(f"touch {marker}")
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def assert_refused(code, err, path_text, marker):
    """`err` ends with the one error line (eval.py may warn before it)."""
    assert not marker.exists(), "the file's code ran"
    assert code == 2, err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    line = err.splitlines()[-1]
    assert line.startswith("error: ") and err.endswith(line + "\n"), err
    assert path_text in line and f"names the global {SYSTEM}" in line, err
    assert "may run code" in line and "refused" in line, err


def run_tool(tool, args, capsys):
    code = run(tool.main, parse_args(args))
    return code, capsys.readouterr().err


def tool_overrides(digits, tmp_path, *extra):
    return digits_overrides(digits, tmp_path / "out", epochs=1, extra=[
        f"Infer.infer_imgs={digits}/images/val/0/",
        f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt",
        f"Global.save_inference_dir={tmp_path / 'inference'}", *extra])


# ---------------------------------------- Global.pretrained_model, Arch.pretrained
@pytest.mark.parametrize("where", ["path", "url"])
@pytest.mark.parametrize("key", ["Global.pretrained_model", "Arch.pretrained"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_weights_that_would_run_code_are_refused_by_every_tool(digits, tmp_path, server,
                                                               capsys, tool, key, where):
    marker = tmp_path / "ran"
    path = write_hostile(server.root / "evil.pdparams", marker)
    location = server.url("evil.pdparams") if where == "url" else str(path)
    code, err = run_tool(TOOLS[tool], config_args(
        tool_overrides(digits, tmp_path, f"{key}={location}")), capsys)
    assert_refused(code, err, "evil.pdparams", marker)


@pytest.mark.parametrize("name", ["evil.pdparams", "evil.pth", "model.safetensors",
                                  "evil.bin"])
def test_convert_weights_refuses_any_pickle_that_would_run_code(tmp_path, capsys, name):
    """Whatever the name: a pickle is read by the Paddle or the PyTorch reader, both
    restricted (before, a plain pickle named .pth or .safetensors went to paddle.load)."""
    marker = tmp_path / "ran"
    path = write_hostile(tmp_path / name, marker, protocol=2)
    code = convert_weights.main(["--source", "torchvision", "--arch", "MnasNet_B1_x0_5",
                                 str(path), str(tmp_path / "out.pdparams")])
    assert_refused(code, capsys.readouterr().err, str(path), marker)
    assert not (tmp_path / "out.pdparams").exists()


@pytest.mark.parametrize("name", ["evil.pth", "model.safetensors"])
def test_a_pickle_named_like_another_format_is_refused_as_pretrained_weights(
        digits, tmp_path, capsys, name):
    marker = tmp_path / "ran"
    path = write_hostile(tmp_path / name, marker)
    code, err = run_tool(eval_tool, config_args(
        tool_overrides(digits, tmp_path, f"Global.pretrained_model={path}")), capsys)
    assert_refused(code, err, str(path), marker)


# ------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A genuine one-epoch checkpoint with EMA (all four parts), and the training state its
    `.pdstates` holds (without the manifest)."""
    root = tmp_path_factory.mktemp("trained")
    overrides = digits_overrides(digits, root, epochs=1, extra=[
        "EMA.decay=0.5", "Global.eval_during_train=False"])
    engine = Engine(get_config(QUICK_START, overrides), "train")
    engine.train()
    state = engine._state(1, engine.steps_per_epoch, True)
    return root / ARCH_DIR, state


def copy_checkpoint(trained, tmp_path):
    source, state = trained
    target = tmp_path / "resume"
    target.mkdir()
    for ext in (".pdparams", ".pdopt", ".pdema", ".pdstates"):
        shutil.copy(source / f"latest{ext}", target / f"latest{ext}")
    return target / "latest", state


def manifest_of(prefix):
    manifest = {}
    for ext in (".pdparams", ".pdopt", ".pdema"):
        data = open(f"{prefix}{ext}", "rb").read()
        manifest[ext] = (len(data), hashlib.sha256(data).hexdigest())
    return manifest


@pytest.mark.parametrize("part", [".pdstates", ".pdparams", ".pdopt", ".pdema"])
def test_a_resume_folder_with_any_part_that_would_run_code_is_refused(
        digits, tmp_path, capsys, trained, part):
    """The manifest is rewritten to match the hostile part, as an attacker would; a hostile
    .pdstates was unpickled by the manifest check itself."""
    prefix, state = copy_checkpoint(trained, tmp_path)
    marker = tmp_path / "ran"
    if part == ".pdstates":
        write_hostile(prefix.with_suffix(part), marker,
                      like=dict(state, files=manifest_of(prefix)))
    else:
        write_hostile(prefix.with_suffix(part), marker)
        paddle.save(dict(state, files=manifest_of(prefix)), f"{prefix}.pdstates")
    code, err = run_tool(train_tool, config_args(digits_overrides(
        digits, tmp_path / "out", epochs=2, extra=["EMA.decay=0.5",
                                                   f"Global.checkpoints={prefix}"])), capsys)
    assert_refused(code, err, f"latest{part}", marker)


def test_a_states_file_beside_good_weights_that_would_run_code_is_refused(
        digits, tmp_path, capsys, trained):
    """Our weights record their topology in a `.pdstates` beside them, read when they load."""
    source, state = trained
    shutil.copy(source / "latest.pdparams", tmp_path / "good.pdparams")
    marker = tmp_path / "ran"
    write_hostile(tmp_path / "good.pdstates", marker, like={"stem_relu": True})
    code, err = run_tool(eval_tool, config_args(
        tool_overrides(digits, tmp_path, f"Global.pretrained_model={tmp_path / 'good'}")),
        capsys)
    assert_refused(code, err, "good.pdstates", marker)


def test_the_genuine_checkpoint_still_resumes(digits, tmp_path, capsys, trained):
    prefix, _ = copy_checkpoint(trained, tmp_path)
    code, err = run_tool(train_tool, config_args(digits_overrides(
        digits, tmp_path / "out", epochs=2, extra=[
            "EMA.decay=0.5", "Global.eval_during_train=False", f"Global.checkpoints={prefix}"])),
        capsys)
    assert code == 0, err


def test_no_python_file_of_the_repository_calls_an_unrestricted_unpickler():
    """The rule itself, over every Python file we ship or run (tools, tests, logs' scripts):
    no call of paddle.load, pickle.load(s), torch.load (unless weights_only=True, torch's own
    allow-list, which a test uses to check our writer with real torch) or
    np.load(allow_pickle=...); files are read through ppcls/weights/paddle_pickle.py and
    torch_pickle.py. (It caught a test merged with a paddle.load once.)"""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in root.rglob("*.py"):
        if any(part.startswith(".") or part in ("output", "__pycache__") for part in
               path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            unsafe = (node.func.attr in ("load", "loads") and name in ("paddle", "pickle")
                      or node.func.attr == "load" and name == "torch"
                      and keywords.get("weights_only") is not True
                      or node.func.attr == "load" and "allow_pickle" in keywords)
            if unsafe:
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}.{node.func.attr}")
    assert not found, found
