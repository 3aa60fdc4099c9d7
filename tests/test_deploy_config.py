"""The deploy config (deploy/python/predict_cls.py -c) goes through the same machinery as a
training config (issue 24): every Global key typed and bounded when the file is read, its
defaults filled in, and a bad value or unknown key one line naming the file and the key."""

import os
import sys

import pytest
from conftest import ROOT

from ppcls.inference import DEPLOY_DEFAULTS, read_deploy_config
from ppcls.utils.cli import run
from ppcls.utils.errors import ConfigError

sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))
import predict_cls  # noqa: E402

TRANSFORMS = "  transform_ops:\n    - NormalizeImage: {scale: 0.00392157}\n    - ToCHWImage: null\n"


@pytest.fixture
def deploy_yaml(tmp_path):
    """A deploy config that needs no exported model to be read: its own transform ops."""
    (tmp_path / "model").mkdir()
    path = tmp_path / "deploy.yaml"
    path.write_text(f"Global:\n  infer_imgs: {tmp_path}/images\n  inference_model_dir: "
                    f"{tmp_path}/model\n  batch_size: 4\nPreProcess:\n{TRANSFORMS}")
    return path


def test_values_arrive_typed_with_every_default(deploy_yaml, tmp_path):
    config = read_deploy_config(str(deploy_yaml), ["Global.use_openvino=False"])
    g = config["Global"]
    assert g == {**DEPLOY_DEFAULTS, "infer_imgs": f"{tmp_path}/images", "batch_size": 4,
                 "inference_model_dir": f"{tmp_path}/model", "use_openvino": False}
    for key, default in DEPLOY_DEFAULTS.items():
        if default is not None:
            assert type(g[key]) is type(default), key


@pytest.mark.parametrize("override, message", [
    ("Global.batch_size=two", "Global.batch_size must be int, got 'two'"),
    ("Global.batch_size=0", "Global.batch_size must be at least 1, got 0"),
    ("Global.batch_size=5000", "Global.batch_size must be at most 4096, got 5000"),
    ("Global.cpu_num_threads=1.5", "Global.cpu_num_threads must be int, got 1.5"),
    ("Global.gpu_mem=-1", "Global.gpu_mem must be at least 1, got -1"),
    ("Global.use_gpu=maybe", "Global.use_gpu must be bool, got 'maybe'"),
    ("Global.enable_mkldnn=1", "Global.enable_mkldnn must be bool, got 1"),
    ("Global.backend=3", "Global.backend must be str, got 3"),
    ("Global.infer_imgs=[a.jpg, 3]", "Global.infer_imgs must be str or list of str or null, got "
     "['a.jpg', 3]"),
    ("Global.inference_model_dir=[a]", "Global.inference_model_dir must be str or null, got ['a']"),
    ("Global.use_gpus=True", "Global: unknown key 'use_gpus' (did you mean 'use_gpu'?)"),
    ("PreProcess.transform_op=[]", "PreProcess: unknown key 'transform_op' (did you mean "
     "'transform_ops'?)"),
    ("Globl.batch_size=1", "unknown section 'Globl' (did you mean 'Global'?)"),
    ("Global.benchmark=.inf", "Global.benchmark must be bool, got inf"),
], ids=lambda v: v if "=" in str(v) else None)
def test_a_bad_deploy_value_is_one_line_naming_file_and_key(deploy_yaml, capsys, override, message):
    code = run(predict_cls.main, predict_cls.parse_args(["-c", str(deploy_yaml), "-o", override]))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {deploy_yaml}: {message}"), err


def test_a_bad_value_in_the_file_itself_is_named_too(deploy_yaml):
    deploy_yaml.write_text(deploy_yaml.read_text().replace("batch_size: 4", "batch_size: '4'"))
    with pytest.raises(ConfigError, match=f"^{deploy_yaml}: Global.batch_size must be int, got "
                                          "'4'$"):
        read_deploy_config(str(deploy_yaml))


def test_required_keys_are_named(deploy_yaml):
    with pytest.raises(ConfigError, match="Global.inference_model_dir is not set"):
        read_deploy_config(str(deploy_yaml), ["Global.inference_model_dir=null"])
