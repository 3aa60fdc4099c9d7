"""A tool's console holds our lines (issue 24): no third-party output that our own settings
cause, and the depthwise kernel's first build said once, with its time. Each tool runs in a
fresh process, as a user runs it from a shell that sets nothing, with a cache of its own."""

import os
import subprocess
import sys

import pytest
from conftest import QUICK_START, ROOT, digits_overrides

NOISE = ("OMP_NUM_THREADS set to", "No ccache found", "Compiling user custom op", "New Executor")
BUILDING = "building the fast CPU depthwise convolution kernel"
BUILT = "built the depthwise convolution kernel in"
ARCH = "MnasNet_B1_x0_5"


def tool(script, *args, cache):
    """stdout + stderr of `python script args` with a user's plain environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "PPCLS_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def config_args(overrides):
    return ["-c", QUICK_START, *(arg for o in overrides for arg in ("-o", o))]


@pytest.fixture(scope="module")
def consoles(digits, tmp_path_factory):
    """Every tool's console, in the order a user runs them: the first training builds the
    kernel into an empty cache, everything after loads it."""
    root = tmp_path_factory.mktemp("console")
    cache = root / "cache"
    train = config_args(digits_overrides(digits, root / "out", epochs=1))
    weights = root / "out" / ARCH / "latest"
    with_weights = train + ["-o", f"Global.pretrained_model={weights}",
                            "-o", f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"]
    model_dir = root / "inference"
    out = {"train (first)": tool("tools/train.py", *train, cache=cache)}
    out["train (again)"] = tool("tools/train.py", *train, "-o",
                                f"Global.output_dir={root / 'again'}", cache=cache)
    out["eval"] = tool("tools/eval.py", *with_weights, cache=cache)
    out["infer"] = tool("tools/infer.py", *with_weights, "-o",
                        f"Infer.infer_imgs={digits}/images/val/3", cache=cache)
    out["export"] = tool("tools/export_model.py", *with_weights, "-o",
                         f"Global.save_inference_dir={model_dir}", cache=cache)
    out["predict"] = tool("deploy/python/predict_cls.py", "-c", "deploy/configs/inference_digits.yaml",
                          "-o", f"Global.inference_model_dir={model_dir}",
                          "-o", f"Global.infer_imgs={digits}/images/val/3", cache=cache)
    return out


@pytest.mark.parametrize("run", ["train (first)", "train (again)", "eval", "infer", "export",
                                 "predict"])
def test_no_third_party_noise(consoles, run):
    found = [noise for noise in NOISE if noise in consoles[run]]
    assert found == [], consoles[run][-3000:]


def test_the_kernel_build_is_announced_once_with_its_time(consoles):
    first = consoles["train (first)"]
    assert first.count(BUILDING) == 1 and first.count(BUILT) == 1, first[-3000:]
    assert first.index(BUILDING) < first.index(BUILT) < first.index("[Train][Epoch 1/1][Iter: 0/")
    for run in ("train (again)", "eval", "infer", "export", "predict"):
        assert BUILDING not in consoles[run] and BUILT not in consoles[run], run


def test_a_training_console_is_our_log_lines(consoles):
    """Every line of a training run is one of ours (timestamped), as the README shows."""
    lines = consoles["train (again)"].splitlines()
    assert lines and all(line.startswith("[20") and "] INFO: " in line for line in lines), lines
