"""ppcls as an installed package: pip builds it from the working tree and from a git URL, and
the installed copy works from another folder, without the repository on the path (its API,
its data files, the depthwise kernel built from site-packages). Installed with --target
beside this interpreter's own packages (Paddle and the rest), which is what a venv with the
dependencies gives, without copying them."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PathDistribution
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK_START, ROOT

PACKAGE_FILES = ("ppcls", "pyproject.toml", "README.md")  # what pip's build reads


def pip_install(target, requirement, cwd):
    """`pip install --no-deps --target`; skips the test when pip cannot fetch the build
    backend (setuptools) because no package index answers."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                           "--target", str(target), requirement], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    unreachable = re.search(r"(No matching distribution found for setuptools|Could not find "
                            r"a version that satisfies the requirement setuptools).*",
                            done.stderr)
    if done.returncode and unreachable:
        pytest.skip("pip cannot reach a package index for the build backend: "
                    + unreachable.group(0))
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The working tree's package files copied (so that the build leaves nothing in the
    repository) and installed with pip."""
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGE_FILES:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(os.path.join(ROOT, name), source / name)
    return pip_install(tmp_path_factory.mktemp("site"), str(source), cwd=source)


def run_elsewhere(site, code, tmp_path):
    """Run `code` in a fresh interpreter in an empty folder, with `site` as its only addition
    to the path (nothing of the repository)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_the_installed_api_works_from_another_folder(installed, tmp_path):
    out = run_elsewhere(installed, f"""
        import os, sys
        import ppcls
        assert ppcls.__file__.startswith({str(installed)!r}), ppcls.__file__
        assert {ROOT!r} not in [os.path.abspath(p) for p in sys.path]
        names = ppcls.list_models("MnasNet_B1*")
        assert "paddle" not in sys.modules, "import ppcls and list_models load no Paddle"
        print("models", names)

        import numpy as np
        import paddle
        from ppcls.ops import depthwise_conv
        assert depthwise_conv.SOURCE.startswith({str(installed)!r})
        assert depthwise_conv.custom_op() is not None, "the kernel builds from site-packages"
        model = ppcls.create_model("MnasNet_B1_x0_5", features_only=True)
        model.eval()
        maps = model(paddle.zeros([1, 3, 64, 64]))
        print("shapes", [tuple(m.shape) for m in maps])
        print("channels", model.feature_info.channels(), model.feature_info.reduction())
        classifier = ppcls.create_model("MnasNet_small", class_num=7)
        classifier.eval()
        print("logits", tuple(classifier(paddle.zeros([2, 3, 32, 32])).shape))
        labels = os.path.join(os.path.dirname(ppcls.__file__), "utils", "imagenet1k_label_list.txt")
        print("labels", len(open(labels).read().splitlines()))
        """, tmp_path)
    assert "models ['MnasNet_B1_x0_5', 'MnasNet_B1_x0_75', 'MnasNet_B1_x1_0', " \
           "'MnasNet_B1_x1_3', 'MnasNet_B1_x1_4']" in out
    assert "shapes [(1, 16, 16, 16), (1, 24, 8, 8), (1, 48, 4, 4), (1, 160, 2, 2)]" in out
    assert "channels [16, 24, 48, 160] [4, 8, 16, 32]" in out
    assert "logits (2, 7)" in out
    assert "labels 1000" in out


def test_the_installed_package_has_its_data_and_declares_its_dependencies(installed):
    """Every file of the package is installed (its modules, the label list, the kernel's
    source), nothing else; the metadata lists pyproject's dependencies and extras."""
    tracked = {str(p.relative_to(ROOT)) for p in Path(ROOT, "ppcls").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    got = {str(p.relative_to(installed)) for p in Path(installed, "ppcls").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
    assert got == tracked
    dist = PathDistribution(next(Path(installed).glob("ppcls_mnasnet-*.dist-info")))
    assert 'paddlepaddle==3.3.1; extra == "cpu"' in dist.requires
    assert {re.split(r"[<>=;]", r)[0] for r in dist.requires if "extra ==" not in r} == {
        "numpy", "PyYAML", "opencv-python-headless", "Pillow", "safetensors"}


def test_the_installed_predictor_answers_as_the_repository_one(installed, digits, tmp_path):
    """`ppcls.Predictor` over an export, from another folder: the CLI's result dicts, for a
    path and for decoded pixels, as the repository's predictor gives them."""
    import cv2

    from ppcls.export.inference_model import export_inference_model
    from ppcls.predictor import Predictor
    from ppcls.utils.config import get_config

    config = get_config(QUICK_START, [f"Infer.PostProcess.class_id_map_file={digits}/label_list.txt"])
    model_dir = str(tmp_path / "inference")
    export_inference_model(config, model_dir)
    image = str(digits / (digits / "val_odd.txt").read_text().split()[0])
    expected = Predictor(model_dir, engine="openvino").predict(
        [image, np.ascontiguousarray(cv2.imread(image)[:, :, ::-1])])
    out = run_elsewhere(installed, f"""
        import json
        import cv2, numpy as np
        import ppcls
        predictor = ppcls.Predictor({model_dir!r}, engine="openvino")
        rgb = np.ascontiguousarray(cv2.imread({image!r})[:, :, ::-1])
        print("RESULTS", json.dumps(predictor.predict([{image!r}, rgb])))
        """, tmp_path)
    got = json.loads(out.split("RESULTS ", 1)[1])
    assert got == json.loads(json.dumps(expected))
    assert got[0]["file_name"] == image and "file_name" not in got[1]
    assert got[0]["label_names"][0].startswith("digit")


def test_pip_installs_from_a_git_url(tmp_path):
    """`pip install git+file://<checkout>`: the committed tree, cloned and built by pip."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("the repository is not a git checkout here")
    site = pip_install(tmp_path / "site", f"git+file://{ROOT}", cwd=tmp_path)
    assert (site / "ppcls" / "ops" / "depthwise_conv" / "depthwise_conv.cc").is_file()
    out = run_elsewhere(site, """
        import ppcls
        print(ppcls.__file__, len(ppcls.list_models()))
        """, tmp_path)
    assert out.startswith(str(site / "ppcls" / "__init__.py"))


def requirement_names(lines):
    return {re.split(r"[<>=\[; ]", line.strip())[0].lower().replace("_", "-")
            for line in lines if line.strip() and not line.strip().startswith(("#", "-r"))}


def test_requirements_txt_and_pyproject_list_the_same_packages():
    """requirements.txt (the README's install lines) and pyproject.toml (pip install .)
    name the same packages: the dependencies plus every extra but the Paddle build."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project["optional-dependencies"]
    listed = set(project["dependencies"]) | {r for name, reqs in extras.items()
                                             if name != "cpu" for r in reqs}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        assert requirement_names(f) == requirement_names(listed) - {project["name"]}
    with open(os.path.join(ROOT, "requirements-cpu.txt")) as f:
        assert requirement_names(f) == requirement_names(extras["cpu"]) == {"paddlepaddle"}
