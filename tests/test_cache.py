"""One cache rule (ppcls/utils/cache.py) for everything ppcls keeps: downloaded weights,
compiled operators and OpenVINO's compiled models, each in its folder of one root."""

import os

import pytest

from ppcls.inference import openvino_cache_dir
from ppcls.ops import depthwise_conv
from ppcls.utils.cache import cache_dir, cache_root
from ppcls.weights import download


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("PPCLS_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_root_precedence(clean_env, tmp_path):
    assert cache_root() == tmp_path / "home" / ".cache" / "ppcls"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ppcls"
    clean_env.setenv("PPCLS_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    with pytest.raises(ValueError, match="unknown cache folder 'models'"):
        cache_dir("models")


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "PPCLS_CACHE_DIR"])
def test_weights_kernels_and_openvino_share_one_root(clean_env, tmp_path, variable):
    root = tmp_path / "root"
    clean_env.setenv(variable, str(root))
    base = root if variable == "PPCLS_CACHE_DIR" else root / "ppcls"
    build = depthwise_conv._build_directory(depthwise_conv.compiler_flags())
    assert os.path.dirname(build) == str(base / "ops")
    assert openvino_cache_dir() == str(base / "openvino")
    if variable == "XDG_CACHE_HOME":  # $PPCLS_CACHE_DIR is still the weights folder itself
        assert download.cache_dir() == base / "weights"
